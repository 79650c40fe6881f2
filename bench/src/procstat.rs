//! CPU time and peak memory of a process, from Linux's /proc.

/// Clock ticks per second for /proc/<pid>/stat times (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds (user + system) used so far by `pid`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line: 11 and 12 here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// Peak resident set size of `pid`, in KiB (VmHWM).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// The machine's CPU time so far, in ticks summed over its cores, from the
/// first line of /proc/stat: what a run's figures need beside them to be
/// read on a shared machine (a hypervisor's steal slows everything).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineTimes {
    /// Every tick counted.
    pub total: u64,
    /// Idle, and waiting on I/O.
    pub idle: u64,
    /// Taken by the hypervisor for other guests.
    pub steal: u64,
}

impl MachineTimes {
    /// Now, or `None` off Linux.
    pub fn now() -> Option<MachineTimes> {
        MachineTimes::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    fn parse(stat: &str) -> Option<MachineTimes> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        // user nice system idle iowait irq softirq steal (guest times are
        // already inside user and nice).
        let f: Vec<u64> = line.split_whitespace().skip(1).take(8).map(|x| x.parse().ok()).collect::<Option<_>>()?;
        let &[user, nice, system, idle, iowait, irq, softirq, steal] = f.as_slice() else { return None };
        Some(MachineTimes {
            total: user + nice + system + idle + iowait + irq + softirq + steal,
            idle: idle + iowait,
            steal,
        })
    }

    /// Percent of the machine's time between `earlier` and `self` that was
    /// idle, and that was stolen.
    pub fn percent_since(&self, earlier: &MachineTimes) -> (f64, f64) {
        let total = self.total.saturating_sub(earlier.total).max(1) as f64;
        (
            100.0 * self.idle.saturating_sub(earlier.idle) as f64 / total,
            100.0 * self.steal.saturating_sub(earlier.steal) as f64 / total,
        )
    }
}

/// The CPU model and core count of this machine.
pub fn machine() -> (String, usize) {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    (model, std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let me = std::process::id();
        // CPU time is counted in 10 ms ticks: work until one registers.
        let started = std::time::Instant::now();
        while cpu_seconds(me).unwrap() == 0.0 {
            let spin: u64 = (0..1_000_000u64).map(std::hint::black_box).sum();
            assert!(spin > 0);
            assert!(started.elapsed() < std::time::Duration::from_secs(5), "no CPU time registered");
        }
        assert!(peak_rss_kib(me).unwrap() > 100);
        assert!(machine().1 >= 1);
    }

    #[test]
    fn machine_times_read_idle_and_steal() {
        let a = MachineTimes::parse("cpu  100 5 50 800 20 3 2 20 0 0\ncpu0 1 2 3\n").unwrap();
        assert_eq!(a, MachineTimes { total: 1000, idle: 820, steal: 20 });
        let b = MachineTimes { total: 1200, idle: 900, steal: 60 };
        assert_eq!(b.percent_since(&a), (40.0, 20.0));
        assert_eq!(MachineTimes::parse("cpu  1 2 3\n"), None);
        assert_eq!(MachineTimes::parse("intr 5\n"), None);
        assert!(MachineTimes::now().is_some());
    }
}
