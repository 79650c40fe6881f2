//! What makes a client send a request again to every replica: the
//! retransmission period it learns from the latency it measures, and the
//! count of its resends by cause.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The longest first wait before a resend, whatever latency the client
/// measured (see [`crate::ClientOptions::retransmit_ms`]); also where doubling stops.
pub const RETRANSMIT_CEILING: Duration = Duration::from_secs(2);

/// A smoothed round trip and its deviation (TCP's estimator, RFC 6298),
/// in microseconds, from ordered requests, each timed from its first send
/// (a resent request's time is an upper bound of its latency: replicas
/// execute it once, so there is no ambiguity to avoid as in TCP, and a
/// client whose every request waits past the period must still learn).
#[derive(Default)]
pub(crate) struct Rtt {
    smoothed_us: u64,
    deviation_us: u64,
}

impl Rtt {
    pub(crate) fn sample(&mut self, us: u64) {
        if self.smoothed_us == 0 {
            self.smoothed_us = us;
            self.deviation_us = us / 2;
        } else {
            self.deviation_us = (3 * self.deviation_us + self.smoothed_us.abs_diff(us)) / 4;
            self.smoothed_us = (7 * self.smoothed_us + us) / 8;
        }
    }

    /// The wait before a resend: at least `floor`, and long enough that a
    /// request answered as fast as most are never resent. Past saturation
    /// every request waits long in queues; resending them would add work
    /// exactly when the cluster has none to spare.
    ///
    /// Never above [`RETRANSMIT_CEILING`]: a request that went to the
    /// primary alone reaches the backups, which time the primary, only when
    /// it is resent, and a faulty primary controls the latencies a client
    /// measures (it could answer some requests late on purpose to stretch
    /// the period, then drop others unseen).
    pub(crate) fn retransmit_after(&self, floor: Duration) -> Duration {
        let learned = Duration::from_micros(self.smoothed_us.saturating_add(self.deviation_us.saturating_mul(4)));
        floor.max(learned.min(RETRANSMIT_CEILING))
    }
}

/// The counters behind [`Resends`], shared by a client's tasks.
#[derive(Default)]
pub(crate) struct ResendCounters {
    pub(crate) timeouts: AtomicU64,
    pub(crate) full_result: AtomicU64,
    pub(crate) primary_lost: AtomicU64,
    pub(crate) moved: AtomicU64,
}

impl ResendCounters {
    pub(crate) fn snapshot(&self) -> Resends {
        Resends {
            timeouts: self.timeouts.load(Ordering::Relaxed),
            full_result: self.full_result.load(Ordering::Relaxed),
            primary_lost: self.primary_lost.load(Ordering::Relaxed),
            moved: self.moved.load(Ordering::Relaxed),
        }
    }
}

/// Requests a client sent again to every replica, by cause (see
/// [`crate::Client::resends`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resends {
    /// No answer within the retransmission period.
    pub timeouts: u64,
    /// f+1 replicas agreed on a result's digest but its designated
    /// replica did not send it in full in time.
    pub full_result: u64,
    /// The connection to the primary closed.
    pub primary_lost: u64,
    /// The client adopted a new membership.
    pub moved: u64,
}

impl std::ops::AddAssign for Resends {
    fn add_assign(&mut self, o: Resends) {
        self.timeouts += o.timeouts;
        self.full_result += o.full_result;
        self.primary_lost += o.primary_lost;
        self.moved += o.moved;
    }
}

impl Resends {
    /// The resends since `before` (an earlier reading of the same clients).
    pub fn since(self, before: Resends) -> Resends {
        Resends {
            timeouts: self.timeouts.saturating_sub(before.timeouts),
            full_result: self.full_result.saturating_sub(before.full_result),
            primary_lost: self.primary_lost.saturating_sub(before.primary_lost),
            moved: self.moved.saturating_sub(before.moved),
        }
    }

    /// All of them, whatever the cause.
    pub fn total(&self) -> u64 {
        self.timeouts + self.full_result + self.primary_lost + self.moved
    }
}

#[cfg(test)]
mod tests {
    use super::{Rtt, RETRANSMIT_CEILING};
    use std::time::Duration;

    #[test]
    fn the_retransmission_wait_follows_the_latency_requests_get_and_never_goes_below_the_floor() {
        let floor = Duration::from_millis(500);
        let mut rtt = Rtt::default();
        assert_eq!(rtt.retransmit_after(floor), floor, "nothing measured yet");
        // Fast answers: the floor holds.
        for _ in 0..50 {
            rtt.sample(2_000);
        }
        assert_eq!(rtt.retransmit_after(floor), floor);
        // Past saturation every request waits 300-400 ms in queues: the
        // wait grows past them, so none of them is sent to everyone again.
        for i in 0..200 {
            rtt.sample(300_000 + (i % 2) * 100_000);
        }
        let wait = rtt.retransmit_after(floor);
        assert!(wait > Duration::from_millis(400) && wait < Duration::from_millis(1_000), "{wait:?}");
        // Back to fast answers: back down to the floor.
        for _ in 0..200 {
            rtt.sample(2_000);
        }
        assert_eq!(rtt.retransmit_after(floor), floor);
        // However slow the answers (a faulty primary may answer some late on
        // purpose), a request not answered within the ceiling reaches every
        // replica, and the backups start timing the primary.
        for _ in 0..200 {
            rtt.sample(30_000_000);
        }
        assert_eq!(rtt.retransmit_after(floor), RETRANSMIT_CEILING);
    }
}
