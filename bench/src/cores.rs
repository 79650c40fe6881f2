//! `--split-cores`: the machine's CPUs split between the client side and
//! the servers, so that a benchmark on one machine keeps the servers' CPU
//! out of the client's way, as when they run on machines of their own.
//!
//! PBFT's BFS ran the Andrew benchmark on a client machine and each
//! replica (or the unreplicated server) on another. On one machine the
//! replicas' CPU is otherwise taken from the compiler, which no separate
//! deployment pays.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Which CPUs each side runs on.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Split {
    /// The harness, its mount and what it runs (the compiler).
    pub(crate) client: Vec<usize>,
    /// Every server process.
    pub(crate) servers: Vec<usize>,
}

impl Split {
    /// Halves `cpus` (those this process may use): the first half for
    /// the client side, the rest for the servers.
    pub(crate) fn of(cpus: &[usize]) -> Result<Split, String> {
        if cpus.len() < 2 {
            return Err(format!("--split-cores needs at least 2 CPUs, this process may use {}", cpus.len()));
        }
        let half = cpus.len() / 2;
        Ok(Split { client: cpus[..half].to_vec(), servers: cpus[half..].to_vec() })
    }

    /// The split of the CPUs this process may use now.
    pub(crate) fn of_this_machine() -> Result<Split, String> {
        Split::of(&allowed()?)
    }

    /// Keeps every thread of this process, and whatever it starts from now
    /// on, on the client's CPUs.
    pub(crate) fn pin_this_process(&self) -> Result<(), String> {
        let set = cpu_set(&self.client);
        let tasks = std::fs::read_dir("/proc/self/task").map_err(|e| format!("/proc/self/task: {e}"))?;
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<libc::pid_t>().ok()) else { continue };
            // SAFETY: `set` is a valid, initialised cpu_set_t of the size given.
            let r = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
            // A thread that ended meanwhile is no concern.
            if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH) {
                return Err(format!("pinning thread {tid}: {}", std::io::Error::last_os_error()));
            }
        }
        Ok(())
    }

    /// Starts `cmd` on the servers' CPUs (all its threads inherit them).
    pub(crate) fn pin_server(&self, cmd: &mut Command) {
        let set = cpu_set(&self.servers);
        // SAFETY: between fork and exec the closure makes one system call
        // on a value it owns, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
}

/// The CPUs this process may run on.
fn allowed() -> Result<Vec<usize>, String> {
    // SAFETY: an all-zero cpu_set_t is a valid (empty) set, and the call
    // writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Err(format!("reading this process's CPUs: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: CPU_ISSET reads the set within its size.
    Ok((0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect())
}

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: as in `allowed`; CPU_SET writes within the set for any CPU
    // below CPU_SETSIZE, and `allowed` lists no other.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_half_of_the_cpus_is_the_clients_and_one_cpu_is_refused() {
        assert_eq!(Split::of(&[0, 1]).unwrap(), Split { client: vec![0], servers: vec![1] });
        assert_eq!(Split::of(&[2, 3, 5]).unwrap(), Split { client: vec![2], servers: vec![3, 5] });
        assert_eq!(Split::of(&[0, 1, 2, 3]).unwrap(), Split { client: vec![0, 1], servers: vec![2, 3] });
        assert!(Split::of(&[7]).is_err());
    }

    #[test]
    fn a_server_started_on_a_split_runs_only_on_the_servers_cpus() {
        let split = match Split::of_this_machine() {
            Ok(split) => split,
            // One CPU: nothing to split, and the harness says so.
            Err(e) => return assert!(e.contains("at least 2 CPUs"), "{e}"),
        };
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "grep Cpus_allowed_list /proc/self/status"]);
        split.pin_server(&mut cmd);
        let out = cmd.output().expect("sh runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let list = text.split(':').nth(1).expect("a Cpus_allowed_list line").trim().to_string();
        let cpus: Vec<usize> = list
            .split(',')
            .flat_map(|part| match part.split_once('-') {
                Some((a, b)) => (a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()).collect::<Vec<_>>(),
                None => vec![part.parse().unwrap()],
            })
            .collect();
        assert_eq!(cpus, split.servers);
    }
}
