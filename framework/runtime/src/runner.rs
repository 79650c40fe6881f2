//! Running stages: a runner thread runs one stage or several and parks only
//! when all are idle; or the stages run as one task of the network thread.

use crate::queue::{Bell, Ended};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a stage blocks before looking at the stop flag again.
const POLL: Duration = Duration::from_millis(50);

/// A stage's wake-up that takes this long is logged (rate-limited).
const SLOW_WAKE_UP: Duration = Duration::from_millis(250);

/// A stage of the pipeline: an actor that owns its state, takes from its
/// inboxes without blocking and reports whether it did anything. A runner
/// thread parks only when every stage it runs is idle, so a stage may run
/// on its own thread or share one with others (see [`StageThreads`]).
pub trait Stage: Send {
    /// The stage's name (its thread's name when it runs alone).
    fn name(&self) -> &'static str;
    /// Does the work that is ready, up to the stage's per-wake-up limit.
    fn poll(&mut self) -> Result<bool, Ended>;
    /// When the stage next has work even if nobody rings (timers).
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
}

/// How the CPU stages map to threads. The stages and their queues are the
/// same in every placement; only who runs them changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageThreads {
    /// Each stage on its own thread: stages overlap on many cores.
    Dedicated,
    /// All CPU stages on one thread, in pipeline order, beside the network
    /// thread: no hand-off between stages costs a thread wake-up.
    Shared,
    /// All CPU stages on the network thread, as one more task between
    /// socket events: a replica is a single thread, and no hand-off in it
    /// costs a wake-up. For small machines and many replicas per machine.
    Network,
}

impl StageThreads {
    /// The placement for this machine's core count (see docs/configuration.md
    /// for the measurements behind it).
    pub fn for_machine() -> StageThreads {
        match std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) {
            n if n < 4 => StageThreads::Network,
            _ => StageThreads::Dedicated,
        }
    }
}

/// A stage whose wake-ups that find work are timed into a histogram (the
/// `stage_seconds` metric): one clock read before and after, nothing when
/// the stage is idle.
pub struct Timed {
    inner: Box<dyn Stage>,
    clock: crate::metrics::Histogram,
}

impl Timed {
    /// `inner`, timed into its stage's histogram in `metrics`.
    pub fn wrap(inner: Box<dyn Stage>, metrics: &crate::metrics::RuntimeMetrics) -> Box<dyn Stage> {
        let clock = metrics.latency.stage(inner.name());
        Box::new(Timed { inner, clock })
    }
}

impl Stage for Timed {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn poll(&mut self) -> Result<bool, Ended> {
        let t0 = Instant::now();
        let busy = self.inner.poll()?;
        if busy {
            let took = t0.elapsed();
            self.clock.observe(took.as_secs_f64());
            if took >= SLOW_WAKE_UP {
                crate::events::warn_limited!(
                    stage = self.inner.name(),
                    ms = took.as_millis() as u64,
                    "a stage took long over one wake-up (a large state, a slow disk, or an overloaded machine)"
                );
            }
        }
        Ok(busy)
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.inner.next_deadline()
    }
}

/// Polls every stage once: `Some(idle wait)` when none had work, `None`
/// while busy; `Err` when one ended.
fn poll_all(stages: &mut [Box<dyn Stage>]) -> Result<Option<Duration>, Ended> {
    let mut busy = false;
    for s in stages.iter_mut() {
        busy |= s.poll()?;
    }
    if busy {
        return Ok(None);
    }
    let now = Instant::now();
    let wait = stages.iter().filter_map(|s| s.next_deadline()).map(|d| d.saturating_duration_since(now)).min();
    Ok(Some(wait.unwrap_or(POLL).min(POLL)))
}

/// Runs `stages` on the current thread until `stop` is set or one ends.
pub fn run_stages(mut stages: Vec<Box<dyn Stage>>, bell: Bell, stop: Arc<AtomicBool>) {
    bell.bind();
    while !stop.load(Ordering::Relaxed) {
        match poll_all(&mut stages) {
            Ok(None) => {}
            Ok(Some(wait)) => std::thread::park_timeout(wait),
            Err(Ended) => return,
        }
    }
}

/// Runs `stages` as a task of the network thread's event loop: after each
/// busy pass it yields to socket events, and when idle it waits for its
/// bell or the next deadline.
pub async fn run_stages_on_network(mut stages: Vec<Box<dyn Stage>>, bell: Bell, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match poll_all(&mut stages) {
            Ok(None) => tokio::task::yield_now().await,
            Ok(Some(wait)) => {
                tokio::select! {
                    _ = bell.rung() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Err(Ended) => return,
        }
    }
}
