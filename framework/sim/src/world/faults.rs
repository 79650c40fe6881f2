//! The fault mix a seed draws, and the faults it schedules.

use super::{Event, World};
use crate::config::SimConfig;
use crate::rng::Rng;

/// The fault mix of one seed.
#[derive(Clone, Debug)]
pub(crate) struct Faults {
    pub(crate) loss: f64,
    pub(crate) duplicate: f64,
    pub(crate) delay_max_ms: u64,
    pub(crate) partitions: bool,
    pub(crate) one_way: bool,
    pub(crate) crashes: usize,
    /// Crash victims lose their disks: they restart without their votes.
    pub(crate) amnesia: bool,
    /// Chance that a crash victim crashes right after any one record of a
    /// step is durable, before the rest of the step happens.
    pub(crate) torn_steps: f64,
    pub(crate) clogged: bool,
    /// Bursts of delays near the request timeout: views change again and
    /// again, and Q sets churn.
    pub(crate) asynchrony: bool,
    pub(crate) byzantine_clients: usize,
    /// Crash victims' disks tear the write in flight at a crash.
    pub(crate) disk_faults: bool,
    /// And a sector of a crash victim's disk may rot while it is down
    /// (the replica then restarts without the votes it cannot trust).
    pub(crate) disk_rot: bool,
    /// Every correct replica crashes at once, once or more.
    pub(crate) crash_all: bool,
}

impl Faults {
    pub(crate) fn draw(rng: &mut Rng, f: usize, cfg: &SimConfig) -> Faults {
        let crashes = if rng.chance(0.6) { rng.range(1, f as u64 + 1) as usize } else { 0 };
        let amnesia = rng.chance(0.3);
        let byzantine_clients = usize::from(rng.chance(0.3));
        let disk_faults = rng.chance(0.5);
        let crash_all = rng.chance(0.15);
        Faults {
            loss: if rng.chance(0.7) { rng.unit() * 0.3 } else { 0.0 },
            duplicate: if rng.chance(0.5) { rng.unit() * 0.5 } else { 0.0 },
            delay_max_ms: *[2u64, 10, 40, 120].get(rng.below(4) as usize).expect("index"),
            partitions: rng.chance(0.6),
            one_way: rng.chance(0.5),
            crashes: if cfg.amnesia == Some(true) { crashes.max(1) } else { crashes },
            amnesia: cfg.amnesia.unwrap_or(amnesia),
            torn_steps: if rng.chance(0.5) { 0.05 + rng.unit() * 0.25 } else { 0.0 },
            clogged: rng.chance(0.3),
            asynchrony: rng.chance(0.2),
            byzantine_clients: cfg.byzantine_clients.unwrap_or(byzantine_clients).min(cfg.clients),
            disk_faults: cfg.disk_faults.unwrap_or(disk_faults),
            disk_rot: rng.chance(0.5),
            // Only when disks survive: replicas that all lost their votes
            // could never rejoin.
            crash_all: cfg.crash_all.unwrap_or(crash_all) && !cfg.amnesia.unwrap_or(amnesia),
        }
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "loss={:.2} dup={:.2} delay<={}ms partitions={}{} crashes={}{}{} clogged={} asynchrony={} byzantine-clients={} disk-faults={}{} crash-all={}",
            self.loss,
            self.duplicate,
            self.delay_max_ms,
            self.partitions,
            if self.partitions && self.one_way { "(one-way too)" } else { "" },
            self.crashes,
            if self.crashes > 0 && self.amnesia { "(losing their votes)" } else { "" },
            if self.crashes > 0 && self.torn_steps > 0.0 { "(mid-step too)" } else { "" },
            self.clogged,
            self.asynchrony,
            self.byzantine_clients,
            self.disk_faults,
            if self.disk_faults && self.disk_rot { "(rot too)" } else { "" },
            self.crash_all,
        )
    }
}

impl World {
    pub(crate) fn schedule_faults(&mut self) {
        let phase = self.cfg.fault_phase_ms;
        if self.faults.partitions {
            let mut t = self.rng.range(200, 1500);
            while t < phase {
                self.schedule(t, Event::Partition);
                let len = self.rng.range(300, 3000);
                self.schedule((t + len).min(phase), Event::HealPartition);
                t += len + self.rng.range(200, 1500);
            }
        }
        if self.faults.clogged {
            let n = self.n();
            for _ in 0..n {
                let a = self.rng.below(n as u64) as usize;
                let b = self.rng.below(n as u64) as usize;
                if a != b {
                    self.clogged.insert((a, b));
                }
            }
        }
        if self.faults.asynchrony {
            let mut t = self.rng.range(100, 1000);
            while t < phase {
                let len = self.rng.range(500, 2500);
                self.slow_windows.push((t, (t + len).min(phase)));
                t += len + self.rng.range(200, 1500);
            }
        }
        if self.faults.crash_all {
            let mut t = self.rng.range(500, phase / 2);
            while t < phase {
                self.schedule(t, Event::CrashAll);
                t += self.rng.range(2_000, 5_000);
            }
        }
        // Crashes: each crash victim is honest; a restart replays its
        // durable records, or, with amnesia, starts without its votes.
        let mut candidates: Vec<usize> = (0..self.n()).filter(|r| !self.is_byzantine(*r)).collect();
        for _ in 0..self.faults.crashes {
            if candidates.is_empty() {
                break;
            }
            let i = self.rng.below(candidates.len() as u64) as usize;
            let victim = candidates.swap_remove(i);
            self.victims.insert(victim);
            let mut t = self.rng.range(100, phase / 2);
            while t < phase {
                self.schedule(t, Event::Crash(victim));
                let down = self.rng.range(200, 3000);
                if t + down < phase {
                    self.schedule(t + down, Event::Restart(victim));
                }
                t += down + self.rng.range(500, 4000);
            }
        }
    }

    /// Every correct replica crashes at once; each restarts from its disk
    /// a little later.
    pub(crate) fn crash_all(&mut self) {
        if self.cfg.trace {
            eprintln!("{:>6} every correct replica crashes", self.now);
        }
        self.disk_stats.crash_alls += 1;
        let correct: Vec<usize> = (0..self.n()).filter(|r| !self.is_byzantine(*r)).collect();
        // Rot would make more than f replicas lose their votes at once.
        let rot = std::mem::replace(&mut self.faults.disk_rot, false);
        for &r in &correct {
            if self.replicas[r].consensus.is_some() {
                self.crash(r);
            }
        }
        self.faults.disk_rot = rot;
        for r in correct {
            let down = self.rng.range(100, 1500);
            self.schedule(self.now + down, Event::Restart(r));
        }
    }

    pub(crate) fn partition(&mut self) {
        self.blocked.clear();
        let nodes = self.n() + self.clients.len();
        let side: Vec<bool> = (0..nodes).map(|_| self.rng.chance(0.5)).collect();
        let one_way = self.faults.one_way && self.rng.chance(0.5);
        for a in 0..nodes {
            for b in 0..nodes {
                if side[a] && !side[b] {
                    self.blocked.insert((a, b));
                    if !one_way {
                        self.blocked.insert((b, a));
                    }
                }
            }
        }
    }
}
