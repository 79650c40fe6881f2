//! Waiting for a condition rather than for a time: a test that sleeps and
//! hopes is slow on a fast machine and flaky on a loaded one; a test that
//! polls a condition under a generous deadline is neither.

use std::time::{Duration, Instant};

/// How long [`until`] waits before it gives up: long enough for a machine
/// whose every core is busy, so reaching it means the condition is false.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `done` every few milliseconds until it holds; panics naming
/// `what` if it does not within [`PATIENCE`]. Blocks the calling thread,
/// so call it outside an async runtime's worker.
pub fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "gave up after {PATIENCE:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn returns_once_the_condition_holds() {
        let polls = AtomicU32::new(0);
        until("three polls", || polls.fetch_add(1, Ordering::Relaxed) >= 3);
        assert_eq!(polls.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn sees_a_condition_another_thread_makes_true() {
        let flag = Arc::new(AtomicU32::new(0));
        let setter = {
            let flag = flag.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                flag.store(1, Ordering::Relaxed);
            })
        };
        until("the other thread", || flag.load(Ordering::Relaxed) == 1);
        setter.join().unwrap();
    }
}
