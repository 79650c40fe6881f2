//! What a run found: results.json, the table, the charts and the `BENCH`
//! line, all from one [`Report`].

use crate::cli::{Level, RunArgs};
use crate::load::{LoadResult, MachineWindow};
use palisade_bench::svg;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// One replica process over a measurement window.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ReplicaStat {
    pub(crate) id: u32,
    pub(crate) cpu_percent: f64,
    pub(crate) peak_rss_mib: f64,
    /// View changes this replica started or joined since it started.
    pub(crate) view_changes: u64,
    /// Of those, started by the watch on the primary's batches.
    pub(crate) skip_suspicions: u64,
    /// Requests it forwarded late, since it started.
    pub(crate) late_forwards: u64,
}

/// What the replicas said about a measurement window.
#[derive(Debug, Default)]
pub(crate) struct WindowStats {
    pub(crate) replicas: Vec<ReplicaStat>,
    pub(crate) primary_ordered_per_sec: Option<f64>,
    pub(crate) mean_batch_size: Option<f64>,
    /// Client signatures the primary verified per request it ordered: how
    /// well clients' request groups amortise signing and checking.
    pub(crate) signatures_per_request: Option<f64>,
    pub(crate) queue_depth_max: BTreeMap<String, u64>,
}

/// One load level of a run.
#[derive(Debug, Serialize)]
pub(crate) struct LevelReport {
    pub(crate) level: Level,
    pub(crate) palisade: LoadResult,
    pub(crate) primary_ordered_per_sec: Option<f64>,
    pub(crate) mean_batch_size: Option<f64>,
    pub(crate) signatures_per_request: Option<f64>,
    pub(crate) replicas: Vec<ReplicaStat>,
    pub(crate) queue_depth_max: BTreeMap<String, u64>,
}

impl LevelReport {
    pub(crate) fn new(level: Level, palisade: LoadResult, w: WindowStats) -> LevelReport {
        LevelReport {
            level,
            palisade,
            primary_ordered_per_sec: w.primary_ordered_per_sec,
            mean_batch_size: w.mean_batch_size,
            signatures_per_request: w.signatures_per_request,
            replicas: w.replicas,
            queue_depth_max: w.queue_depth_max,
        }
    }
}

/// The faults a run injected.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Events {
    pub(crate) kill_primary_at_s: Option<f64>,
    pub(crate) killed: Option<u32>,
    pub(crate) restart_at_s: Option<f64>,
    /// When the restarted replica had caught up with the others (and, if it
    /// had lost its votes, rejoined), seconds into the measurement.
    pub(crate) caught_up_at_s: Option<f64>,
    /// Membership changes made during the measurement.
    pub(crate) changes: Vec<Change>,
    /// The Byzantine replica and its mode (`--byzantine-replica`).
    pub(crate) byzantine: Option<String>,
    /// When it began to misbehave, if not from the start.
    pub(crate) byzantine_at_s: Option<f64>,
    /// When some replica first changed view after that (from the
    /// measurement's start, or the Byzantine replica's): the defence acted.
    pub(crate) view_change_at_s: Option<f64>,
}

/// A membership change the run made, and what clients saw of it.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Change {
    /// When the view manager sent it, seconds into the measurement.
    pub(crate) at_s: f64,
    pub(crate) label: String,
    /// What the cluster answered.
    pub(crate) outcome: String,
    /// How long the view manager waited for that answer.
    pub(crate) answered_s: f64,
    /// The longest time no client operation completed, from the change on
    /// (see [`Report::stall_after`]).
    pub(crate) stall_s: Option<f64>,
}

/// Everything a run measured, as written to results.json.
#[derive(Serialize)]
pub(crate) struct Report {
    pub(crate) command: String,
    pub(crate) git_revision: String,
    pub(crate) date_unix: u64,
    pub(crate) cpu_model: String,
    pub(crate) cores: usize,
    /// Replicas and faults tolerated of the cluster measured.
    pub(crate) n: usize,
    pub(crate) f: usize,
    pub(crate) args: RunArgs,
    pub(crate) levels: Vec<LevelReport>,
    pub(crate) baseline: Option<LoadResult>,
    pub(crate) baseline_ratio: Option<f64>,
    pub(crate) events: Events,
    /// With `--repeat`: every repetition's figures and their spread (the
    /// rest of the report is the last repetition's).
    pub(crate) repeat: Option<RepeatSummary>,
}

/// The figures of one repetition of a `--repeat` run.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RepeatRow {
    pub(crate) ops_per_sec: f64,
    pub(crate) baseline_ops_per_sec: Option<f64>,
    pub(crate) baseline_ratio: Option<f64>,
    pub(crate) machine: Option<MachineWindow>,
    pub(crate) baseline_machine: Option<MachineWindow>,
}

/// Median, smallest and largest of a figure over the repetitions.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Spread {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Spread {
    /// `None` for no values.
    pub(crate) fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let v: Vec<f64> = values.into_iter().collect();
        let (min, max) = v
            .iter()
            .fold(None, |m: Option<(f64, f64)>, &x| Some(m.map_or((x, x), |(lo, hi)| (lo.min(x), hi.max(x)))))?;
        Some(Spread { median: median(v), min, max })
    }
}

/// The median of `v` (the mean of the middle two for an even count; 0 for none).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The repetitions of a `--repeat` run, and the spread of each figure;
/// ratios are taken pair by pair, each replicated run against the baseline
/// measured right after it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RepeatSummary {
    pub(crate) rows: Vec<RepeatRow>,
    pub(crate) ops_per_sec: Option<Spread>,
    pub(crate) baseline_ops_per_sec: Option<Spread>,
    pub(crate) baseline_ratio: Option<Spread>,
    pub(crate) steal_percent: Option<Spread>,
}

impl RepeatSummary {
    pub(crate) fn new(rows: Vec<RepeatRow>) -> RepeatSummary {
        RepeatSummary {
            ops_per_sec: Spread::of(rows.iter().map(|r| r.ops_per_sec)),
            baseline_ops_per_sec: Spread::of(rows.iter().filter_map(|r| r.baseline_ops_per_sec)),
            baseline_ratio: Spread::of(rows.iter().filter_map(|r| r.baseline_ratio)),
            steal_percent: Spread::of(
                rows.iter().flat_map(|r| [r.machine, r.baseline_machine]).flatten().map(|m| m.steal_percent),
            ),
            rows,
        }
    }
}

/// The revision of the working directory's repository, for results.json.
pub(crate) fn git_revision() -> String {
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

impl Report {
    /// The level with the highest throughput: the headline, and the level
    /// the baseline runs at.
    pub(crate) fn best(levels: &[LevelReport]) -> Option<&LevelReport> {
        levels.iter().max_by(|x, y| x.palisade.ops_per_sec.total_cmp(&y.palisade.ops_per_sec))
    }

    /// The one line scripts read.
    pub(crate) fn bench_line(&self) -> String {
        let h = Report::best(&self.levels).expect("at least one level");
        if let Some(r) = &self.repeat {
            let mut line = format!("BENCH repeat={}", r.rows.len());
            if let Some(o) = r.ops_per_sec {
                line += &format!(" ops_per_sec={:.0}", o.median);
            }
            if let Some(x) = r.baseline_ratio {
                line += &format!(" baseline_ratio={:.3} ratio_min={:.3} ratio_max={:.3}", x.median, x.min, x.max);
            }
            if let Some(s) = r.steal_percent {
                line += &format!(" steal_pct_max={:.1}", s.max);
            }
            return line;
        }
        let mut line = format!(
            "BENCH ops_per_sec={:.0} p50_us={} p99_us={}",
            h.palisade.ops_per_sec, h.palisade.latency.p50_us, h.palisade.latency.p99_us
        );
        if let Some(r) = self.baseline_ratio {
            line += &format!(" baseline_ratio={r:.3}");
        }
        if let Some(m) = h.palisade.machine {
            line += &format!(" steal_pct={:.1} idle_pct={:.1}", m.steal_percent, m.idle_percent);
        }
        line
    }

    /// The table on stdout.
    pub(crate) fn print_table(&self) {
        let a = &self.args;
        println!();
        let workload = self.workload();
        println!(
            "palisade-bench: n={} {:?} f={}, {workload}, durability {}, request auth {}{}, {:.0} s after {:.0} s warm-up, on {} cores ({})",
            self.n,
            a.mode,
            self.f,
            a.tuning.durability,
            a.request_auth,
            if a.requests_to_all { ", requests to all replicas" } else { "" },
            a.duration,
            a.warmup,
            self.cores,
            self.cpu_model
        );
        println!(
            "{:<18} {:>11} {:>9} {:>9} {:>9} {:>10} {:>8} {:>12} {:>10} {:>9}",
            "load", "ops/s", "p50 us", "p90 us", "p99 us", "p99.9 us", "errors", "primary/s", "batch", "sigs/req"
        );
        let opt = |v: Option<f64>, digits: usize| v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "-".into());
        for r in &self.levels {
            let l = &r.palisade.latency;
            println!(
                "{:<18} {:>11.0} {:>9} {:>9} {:>9} {:>10} {:>8} {:>12} {:>10} {:>9}",
                format!("palisade {}x{}", r.level.clients, r.level.outstanding),
                r.palisade.ops_per_sec,
                l.p50_us,
                l.p90_us,
                l.p99_us,
                l.p999_us,
                r.palisade.errors,
                opt(r.primary_ordered_per_sec, 0),
                opt(r.mean_batch_size, 1),
                opt(r.signatures_per_request, 3),
            );
        }
        if let Some(b) = &self.baseline {
            let l = &b.latency;
            println!(
                "{:<18} {:>11.0} {:>9} {:>9} {:>9} {:>10} {:>8}",
                "baseline", b.ops_per_sec, l.p50_us, l.p90_us, l.p99_us, l.p999_us, b.errors
            );
        }
        if let Some(r) = self.baseline_ratio {
            println!("replicated / unreplicated throughput: {r:.3}");
        }
        let machine = |what: &str, r: Option<&LoadResult>| {
            if let Some((m, n)) = r.and_then(|r| r.machine.map(|m| (m, r.generators))) {
                let processes = if n > 1 { format!(" in {n} processes") } else { String::new() };
                println!(
                    "machine during {what}: {:.0}% idle, {:.1}% stolen; load generator {:.0}% of a core{processes}",
                    m.idle_percent, m.steal_percent, m.generator_cpu_percent
                );
            }
        };
        if let Some(best) = Report::best(&self.levels) {
            machine("the best level", Some(&best.palisade));
        }
        machine("the baseline", self.baseline.as_ref());
        if let Some(r) = &self.repeat {
            let show = |name: &str, s: Option<Spread>, digits: usize| {
                if let Some(s) = s {
                    println!(
                        "{name:<34} median {:>12.digits$}   min {:>12.digits$}   max {:>12.digits$}",
                        s.median, s.min, s.max
                    );
                }
            };
            println!("over {} repetitions (A B A B ...):", r.rows.len());
            show("replicated ops/s", r.ops_per_sec, 0);
            show("unreplicated ops/s", r.baseline_ops_per_sec, 0);
            show("ratio (pair by pair)", r.baseline_ratio, 3);
            show("steal %", r.steal_percent, 1);
        }
        if let Some(r) = self.levels.last() {
            let stats: Vec<String> = r
                .replicas
                .iter()
                .map(|s| {
                    let mut line = format!(
                        "r{}: {:.0}% cpu, {:.1} MiB peak, {} view changes",
                        s.id, s.cpu_percent, s.peak_rss_mib, s.view_changes
                    );
                    if s.skip_suspicions > 0 {
                        line.push_str(&format!(" ({} for skipped requests)", s.skip_suspicions));
                    }
                    if s.late_forwards > 0 {
                        line.push_str(&format!(", {} late forwards", s.late_forwards));
                    }
                    line
                })
                .collect();
            if !stats.is_empty() {
                println!("replicas: {}", stats.join("; "));
            }
            let rs = &r.palisade.resends;
            if rs.total() > 0 {
                let per_k = 1000.0 * rs.total() as f64 / (r.palisade.timeline.iter().sum::<u64>().max(1)) as f64;
                println!(
                    "clients resent to every replica: {} after no answer, {} for a full result, {} after losing the primary, {} for a new membership ({per_k:.1} per 1000 operations)",
                    rs.timeouts, rs.full_result, rs.primary_lost, rs.moved
                );
            }
            let q: Vec<String> = r.queue_depth_max.iter().map(|(k, v)| format!("{k}={v}")).collect();
            if !q.is_empty() {
                println!("largest queue depths seen: {}", q.join(" "));
            }
        }
        if let Some(at) = self.args.kill_all_at {
            println!(
                "killed every replica at {at:.1} s; restarted them at {:?} s; first answer after it at {:?} s",
                self.events.restart_at_s,
                self.first_answer_after(self.events.restart_at_s.unwrap_or(at))
            );
        }
        if let Some(k) = self.events.killed {
            let at = self.events.kill_primary_at_s.unwrap_or(0.0);
            println!(
                "killed the primary (replica {k}) at {at:.1} s (clients stalled {:?} s); restart at {:?} s (stalled {:?} s); caught up and voting at {:?} s",
                self.stall_after(at),
                self.events.restart_at_s,
                self.events.restart_at_s.and_then(|r| self.stall_after(r)),
                self.events.caught_up_at_s
            );
        }
        for c in &self.events.changes {
            println!(
                "{} at {:.1} s: {} after {:.2} s; clients stalled {:?} s",
                c.label, c.at_s, c.outcome, c.answered_s, c.stall_s
            );
        }
        if let Some(b) = &self.events.byzantine {
            let from = self.events.byzantine_at_s;
            let acted = self.events.view_change_at_s;
            println!(
                "Byzantine {b} from {} s; first view change at {} s ({} s to act); ops/s before it {}, after it {}",
                from.map_or("the start".into(), |f| format!("{f:.1}")),
                acted.map_or("-".into(), |a| format!("{a:.1}")),
                acted.map_or("-".into(), |a| format!("{:.1}", a - from.unwrap_or(0.0))),
                self.mean_ops(from.unwrap_or(0.0), acted.unwrap_or(self.args.duration))
                    .map_or("-".into(), |o| format!("{o:.0}")),
                acted
                    .and_then(|a| self.mean_ops(a + 0.5, self.args.duration))
                    .map_or("-".into(), |o| format!("{o:.0}")),
            );
            if let Some((worst, median)) = self.client_p99_spread() {
                println!(
                    "clients' p99: worst {worst} us, median {median} us ({:.2}x)",
                    worst as f64 / median.max(1) as f64
                );
            }
        }
    }

    /// The first level's clients' p99s: the worst, and the median.
    pub(crate) fn client_p99_spread(&self) -> Option<(u64, u64)> {
        let mut v = self.levels.first()?.palisade.client_p99_us.clone();
        v.sort_unstable();
        Some((*v.last()?, v[v.len() / 2]))
    }

    /// Mean throughput of the first level between `from` and `to` seconds
    /// into the measurement (100 ms buckets).
    pub(crate) fn mean_ops(&self, from: f64, to: f64) -> Option<f64> {
        let timeline = &self.levels.first()?.palisade.timeline;
        let (a, b) = (((self.args.warmup + from) * 10.0) as usize, ((self.args.warmup + to) * 10.0) as usize);
        let b = b.min(timeline.len());
        (b > a).then(|| timeline[a..b].iter().sum::<u64>() as f64 * 10.0 / (b - a) as f64)
    }

    /// The client-visible stall after an event at `t`: the longest run of
    /// 100 ms buckets without a completed operation (of the first level's
    /// timeline) that starts within 5 s of `t` and before the next event,
    /// so that one stall is not counted against two events. A stall
    /// shorter than one bucket reads 0.
    pub(crate) fn stall_after(&self, t: f64) -> Option<f64> {
        let timeline = &self.levels.first()?.palisade.timeline;
        let from = ((self.args.warmup + t) * 10.0) as usize;
        let next = self.event_times().into_iter().filter(|e| *e > t + 0.05).fold(t + 5.0, f64::min);
        let until = ((self.args.warmup + next) * 10.0) as usize;
        let (mut best, mut i) = (0usize, from);
        while i < timeline.len().min(until) {
            let run = timeline[i..].iter().take_while(|c| **c == 0).count();
            best = best.max(run);
            i += run.max(1);
        }
        Some(best as f64 / 10.0)
    }

    /// When the run's events happened, seconds into the measurement.
    fn event_times(&self) -> Vec<f64> {
        let e = &self.events;
        e.kill_primary_at_s.into_iter().chain(e.restart_at_s).chain(e.changes.iter().map(|c| c.at_s)).collect()
    }

    /// Fills in each membership change's stall.
    pub(crate) fn measure_stalls(&mut self) {
        let stalls: Vec<Option<f64>> = self.events.changes.iter().map(|c| self.stall_after(c.at_s)).collect();
        for (c, s) in self.events.changes.iter_mut().zip(stalls) {
            c.stall_s = s;
        }
    }

    /// Seconds into the measurement of the first 100 ms with a completed
    /// operation at or after `t` (of the first level's timeline).
    pub(crate) fn first_answer_after(&self, t: f64) -> Option<f64> {
        let timeline = &self.levels.first()?.palisade.timeline;
        let from = ((self.args.warmup + t) * 10.0) as usize;
        let i = (from..timeline.len()).find(|i| timeline[*i] > 0)?;
        Some(i as f64 / 10.0 - self.args.warmup)
    }

    /// results.json, timeline.svg and, for a sweep, curve.svg.
    pub(crate) fn write_outputs(&self, out: &Path) {
        if std::fs::create_dir_all(out).is_err() {
            eprintln!("palisade-bench: cannot create {}", out.display());
            return;
        }
        let json = serde_json::to_string_pretty(self).expect("the report serializes");
        let _ = std::fs::write(out.join("results.json"), json);
        let _ = std::fs::write(out.join("timeline.svg"), self.timeline_chart());
        if self.levels.len() > 1 {
            let _ = std::fs::write(out.join("curve.svg"), self.curve_chart());
        }
        eprintln!("palisade-bench: wrote {}", out.display());
    }

    fn timeline_chart(&self) -> String {
        let per_second = |timeline: &[u64]| -> Vec<(f64, f64)> {
            timeline.iter().enumerate().map(|(i, c)| (i as f64 / 10.0, *c as f64 * 10.0)).collect()
        };
        let mut series: Vec<svg::Series> = self
            .levels
            .iter()
            .map(|r| svg::Series {
                name: format!("palisade {}x{}", r.level.clients, r.level.outstanding),
                points: per_second(&r.palisade.timeline),
            })
            .collect();
        if let Some(b) = &self.baseline {
            series.push(svg::Series { name: "baseline (unreplicated)".into(), points: per_second(&b.timeline) });
        }
        let warmup = self.args.warmup;
        let mut events = vec![svg::Event { x: warmup, label: "measurement starts".into() }];
        if let (Some(k), Some(at)) = (self.events.killed, self.events.kill_primary_at_s) {
            events.push(svg::Event { x: warmup + at, label: format!("primary (r{k}) killed") });
        }
        if let (Some(_), Some(at)) = (self.events.killed, self.events.restart_at_s) {
            let label = if self.args.restart_empty { "restarted with an empty disk" } else { "restarted" };
            events.push(svg::Event { x: warmup + at, label: label.into() });
        }
        if let Some(at) = self.args.kill_all_at {
            events.push(svg::Event { x: warmup + at, label: "every replica killed".into() });
            if let Some(r) = self.events.restart_at_s {
                events.push(svg::Event { x: warmup + r, label: "all restarted from disk".into() });
            }
        }
        if let (Some(_), Some(at)) = (self.events.killed, self.events.caught_up_at_s) {
            events.push(svg::Event { x: warmup + at, label: "caught up, voting".into() });
        }
        for c in &self.events.changes {
            events.push(svg::Event { x: warmup + c.at_s, label: c.label.clone() });
        }
        if let Some(b) = &self.events.byzantine {
            events.push(svg::Event { x: warmup + self.events.byzantine_at_s.unwrap_or(0.0), label: b.clone() });
        }
        if let Some(at) = self.events.view_change_at_s {
            events.push(svg::Event { x: warmup + at, label: "view change".into() });
        }
        let title = format!("Throughput over time: {}", self.shape());
        svg::line_chart(&title, "time (s)", "ops/s (100 ms buckets)", &series, &events)
    }

    fn curve_chart(&self) -> String {
        let curve = svg::Series {
            name: "palisade".into(),
            points: self
                .levels
                .iter()
                .map(|r| (r.palisade.ops_per_sec, r.palisade.latency.p50_us as f64 / 1000.0))
                .collect(),
        };
        let title = format!("Throughput vs latency: {}", self.shape());
        svg::line_chart(&title, "throughput (ops/s)", "p50 latency (ms)", &[curve], &[])
    }

    fn shape(&self) -> String {
        format!("n={} {:?}, {}", self.n, self.args.mode, self.workload())
    }

    /// The service and its workload, in words.
    fn workload(&self) -> String {
        let a = &self.args;
        match a.service {
            crate::cli::ServiceArg::Echo => format!("echo {}/{} bytes", a.request_bytes, a.reply_bytes),
            crate::cli::ServiceArg::Kv => {
                format!("kv {} keys of {} bytes, {}% reads", a.keys, a.value_bytes, a.read_percent)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ops: f64, baseline: Option<f64>, steal: f64) -> RepeatRow {
        let m = MachineWindow { idle_percent: 10.0, steal_percent: steal, generator_cpu_percent: 50.0 };
        RepeatRow {
            ops_per_sec: ops,
            baseline_ops_per_sec: baseline,
            baseline_ratio: baseline.map(|b| ops / b),
            machine: Some(m),
            baseline_machine: baseline.map(|_| m),
        }
    }

    #[test]
    fn repetitions_report_median_and_spread_with_ratios_taken_pair_by_pair() {
        // The baseline swings; each ratio is to the baseline measured
        // right after its run, so a fast baseline next to a fast run cancels.
        let s = RepeatSummary::new(vec![
            row(100.0, Some(400.0), 0.0),
            row(50.0, Some(100.0), 30.0),
            row(80.0, Some(200.0), 5.0),
        ]);
        let r = s.baseline_ratio.unwrap();
        assert_eq!((r.min, r.median, r.max), (0.25, 0.4, 0.5));
        let o = s.ops_per_sec.unwrap();
        assert_eq!((o.min, o.median, o.max), (50.0, 80.0, 100.0));
        assert_eq!(s.steal_percent.unwrap().max, 30.0);
        // An even count takes the mean of the middle two; none, nothing.
        assert_eq!(Spread::of([1.0, 3.0, 2.0, 10.0]).unwrap().median, 2.5);
        assert!(Spread::of([]).is_none());
        let no_baseline = RepeatSummary::new(vec![row(10.0, None, 0.0)]);
        assert!(no_baseline.baseline_ratio.is_none());
    }
}
