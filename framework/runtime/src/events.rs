//! What a replica tells its operator: one structured `tracing` event for
//! each thing worth knowing (docs/operations.md, *Logs*), and a limit on
//! the events an attacker could make frequent, so that a replica under
//! attack does not flood its own log.

use crate::metrics::CoreSnapshot;
use palisade_core::ReplicaId;
use palisade_wire::envelope::MemberRole;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// At most one event a period from each rate-limited call site.
const PERIOD_MS: u64 = 10_000;

/// A call site's rate limit: it lets one event through each period and
/// counts the ones it holds back, reported with the next one let through.
pub struct Limiter {
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Limiter {
    /// A limit that lets the first event through.
    pub const fn new() -> Limiter {
        Limiter { next_ms: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// `Some(events held back since the last one let through)` when this
    /// one may be logged.
    pub fn allow(&self) -> Option<u64> {
        let now = now_ms();
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self.next_ms.compare_exchange(next, now + PERIOD_MS, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new()
    }
}

/// `tracing::warn!` at most once every ten seconds from this call site,
/// with a `suppressed` field counting the events held back.
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::events::Limiter = $crate::events::Limiter::new();
        if let Some(suppressed) = LIMIT.allow() {
            tracing::warn!(suppressed, $($arg)+);
        }
    }};
}
pub(crate) use warn_limited;

/// Whether anything [`core_changed`] logs differs between two snapshots
/// (cheap: the consensus stage asks at every wake-up).
pub(crate) fn worth_logging(before: &CoreSnapshot, after: &CoreSnapshot) -> bool {
    before.epoch != after.epoch
        || before.role != after.role
        || before.view != after.view
        || before.normal != after.normal
        || before.view_changes != after.view_changes
        || before.stable != after.stable
        || before.state_transfers != after.state_transfers
        || before.alarms != after.alarms
        || before.rejoining != after.rejoining
}

/// Logs what changed in the core between two of the consensus stage's
/// snapshots: epochs, membership, views, checkpoints, state transfers and
/// rejoining. Each happens rarely, or (checkpoints) logs at debug level.
pub(crate) fn core_changed(me: ReplicaId, before: &CoreSnapshot, after: &CoreSnapshot) {
    let me = me.0;
    if before.members.is_empty() {
        // The first snapshot: the command line says how the replica started.
        return;
    }
    if after.epoch != before.epoch {
        tracing::info!(
            replica = me,
            epoch = after.epoch,
            members = ?after.members.iter().map(|m| m.0).collect::<Vec<_>>(),
            f = after.f,
            primary = after.primary_id.0,
            "entered a new membership epoch"
        );
    }
    if after.role != before.role {
        match after.role {
            MemberRole::Member => tracing::info!(replica = me, epoch = after.epoch, "admitted as a member"),
            MemberRole::Joining => tracing::info!(replica = me, "waiting to be admitted"),
            MemberRole::Removed => {
                tracing::warn!(replica = me, removed_in = after.removed_in, "removed from the cluster")
            }
        }
    }
    if after.epoch == before.epoch && after.view_changes > before.view_changes {
        // A request timer that fired names the request: whether it was a
        // lone client's or a flooding one's is the first thing to know.
        match after.last_late_request.filter(|_| after.last_late_request != before.last_late_request) {
            Some(late) => tracing::info!(
                replica = me,
                epoch = after.epoch,
                from = before.view,
                to = after.view,
                reason = after.last_view_change.unwrap_or("unknown"),
                client = late.client.0,
                request = late.request.0,
                waited_ms = late.waited_ms,
                timeout_ms = late.timeout_ms,
                client_pending = late.client_pending,
                proposed = late.proposed,
                delivered = late.delivered.0,
                next_pre_prepared = late.next.pre_prepared,
                next_batch = late.next.batch,
                next_prepares = late.next.prepares,
                next_commits = late.next.commits,
                "view change started"
            ),
            None => tracing::info!(
                replica = me,
                epoch = after.epoch,
                from = before.view,
                to = after.view,
                reason = after.last_view_change.unwrap_or("unknown"),
                "view change started"
            ),
        }
    }
    if after.normal && (!before.normal || after.view != before.view) && after.epoch == before.epoch {
        tracing::info!(
            replica = me,
            epoch = after.epoch,
            view = after.view,
            primary = after.primary_id.0,
            "view change completed"
        );
    }
    if after.stable > before.stable {
        tracing::debug!(replica = me, seq = after.stable, "checkpoint stable");
    }
    if after.alarms > before.alarms {
        tracing::error!(
            replica = me,
            alarms = after.alarms,
            stable = after.stable,
            "ALARM: this replica's state differs from what a quorum certified (or a safety check failed)"
        );
    }
    if after.state_transfers > before.state_transfers {
        tracing::info!(replica = me, delivered = after.delivered, stable = after.stable, "state transfer finished");
    }
    if before.rejoining && !after.rejoining {
        tracing::info!(replica = me, stable = after.stable, "rejoined: voting again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limiter_lets_one_event_through_a_period_and_counts_the_rest() {
        let l = Limiter::new();
        assert_eq!(l.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(l.allow(), None);
        }
        // The next period: the five held back are reported.
        l.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(l.allow(), Some(5));
    }
}
