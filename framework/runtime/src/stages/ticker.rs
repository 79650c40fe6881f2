//! The ticker: the clocks the core runs on, sent to the consensus stage
//! every period.

use crate::queue::{Ended, Tx};
use crate::runner::Stage;
use crossbeam_channel::TrySendError;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Milliseconds since the Unix epoch: stamps batches.
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Milliseconds on a monotonic clock (since this process first asked),
/// which drives the core's timers, and on the wall clock. A jump of the
/// wall clock moves only batch timestamps, never a timer.
pub fn clocks() -> (u64, u64) {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    // Start at one so that no timer deadline is ever at zero.
    (start.elapsed().as_millis() as u64 + 1, wall_clock_ms())
}

/// Sends `(monotonic, wall)` clock readings to the consensus stage every
/// period. A tick that finds the queue full is dropped; the next one
/// carries the time.
pub struct Ticker {
    /// Ticks out.
    pub tx: Tx<(u64, u64)>,
    /// Tick period.
    pub period: Duration,
    /// When the next tick is due.
    pub next: Instant,
}

impl Stage for Ticker {
    fn name(&self) -> &'static str {
        "ticker"
    }

    fn poll(&mut self) -> Result<bool, Ended> {
        let now = Instant::now();
        if now >= self.next {
            self.next = now + self.period;
            if let Err(TrySendError::Disconnected(_)) = self.tx.try_send(clocks()) {
                return Err(Ended);
            }
        }
        // Ticking is not work that should keep the thread from parking.
        Ok(false)
    }

    fn next_deadline(&self) -> Option<Instant> {
        Some(self.next)
    }
}
