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
}

impl Faults {
    pub(crate) fn draw(rng: &mut Rng, f: usize, cfg: &SimConfig) -> Faults {
        let crashes = if rng.chance(0.6) { rng.range(1, f as u64 + 1) as usize } else { 0 };
        let amnesia = rng.chance(0.3);
        let byzantine_clients = usize::from(rng.chance(0.3));
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
        }
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "loss={:.2} dup={:.2} delay<={}ms partitions={}{} crashes={}{}{} clogged={} asynchrony={} byzantine-clients={}",
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
