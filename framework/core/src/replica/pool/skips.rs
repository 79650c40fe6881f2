//! The pool's side of the watch on the primary's batches (see
//! `replica::watch`): which requests a backup forwards late, and which a
//! PRE-PREPARE left out with room to spare.

use super::{Key, Pending, RequestPool};
use crate::message::{Batch, Request};
use std::collections::BTreeSet;

/// Requests the batch watch looks through for candidates, at most, per
/// PRE-PREPARE (see `RequestPool::count_skips`).
const SCAN_MAX: usize = 1024;

/// The batches a backup holds of the undelivered slots before a
/// PRE-PREPARE's and after it (see `RequestPool::count_skips`).
pub(in crate::replica) struct Around {
    /// Every slot's from the last delivered to the PRE-PREPARE's.
    pub earlier: Vec<std::sync::Arc<Batch>>,
    /// Those after it that this replica holds.
    pub later: Vec<std::sync::Arc<Batch>>,
}

/// What the batch watch found in one PRE-PREPARE (see
/// `RequestPool::count_skips`).
pub(in crate::replica) struct Skips {
    /// The most skips any request left out has now.
    pub most: Option<u32>,
    /// Requests to send the primary (again): left out for the first time
    /// since the grace, or still left out a grace after the last send.
    pub resend: Vec<Request>,
    /// Requests dropped because their signatures failed.
    pub dropped: usize,
}

impl RequestPool {
    /// On a backup whose clients send to every replica: each client's
    /// oldest request (the timed one) that has waited `grace_ms` as such
    /// without being proposed and was never sent to the primary, now marked
    /// sent, for the caller to forward; at most `max` of them, oldest first.
    /// A faulty client may have sent it to the backups alone, and the batch
    /// watch only blames the primary for what it was sent. Only the oldest:
    /// only they are timed and watched, and forwarding every late request
    /// would send a saturated primary n-1 more copies of its backlog. A
    /// flood's are not timed, and wait for their first timer expiry.
    pub fn due_forwards(&mut self, now_ms: u64, grace_ms: u64, max: usize) -> Vec<Request> {
        let mut due = Vec::new();
        for &(since, client, id) in &self.by_arrival {
            if due.len() >= max || now_ms < since.saturating_add(grace_ms) {
                break;
            }
            if self.pending.get(&(client, id)).is_some_and(|p| !p.forwarded && !p.proposed) {
                due.push((client, id));
            }
        }
        due.into_iter()
            .filter_map(|key| {
                let p = self.pending.get_mut(&key)?;
                p.forwarded = true;
                p.forwarded_ms = now_ms;
                Some(p.request.clone())
            })
            .collect()
    }

    /// The batch watch, after a PRE-PREPARE of this view at `seq` was
    /// accepted (before anything it completes is delivered): the oldest
    /// requests waiting here (not a flood's; also each client's oldest
    /// marked proposed, a mark a faulty primary's split PRE-PREPARE can
    /// leave on a request whose slot was decided without it) that have
    /// waited a grace here, or since this replica last sent them to the
    /// primary, and are in neither `batch` nor the batches around it are
    /// candidates, the 64 oldest of them. Those batches come from `around`,
    /// asked only once some request is due (with a correct primary, none
    /// usually is); `None` (a batch below `seq` is missing here, and may
    /// hold the request) stops the watch for this PRE-PREPARE. If `batch`, counting only its
    /// new requests (in no earlier undelivered batch, not delivered, not
    /// repeated: padding is not room used), had room for a candidate
    /// within `max_requests` and `max_bytes`: the first time, the candidate
    /// is sent to the primary (`Skips::resend`: a faulty client may have
    /// sent it to the backups alone, and a forward may be lost), and from
    /// a grace after that, at sequence numbers past `horizon` (what this
    /// replica has seen plus a pipeline), it counts one more skip each
    /// time, and is sent again once per grace. A request too old for its
    /// client's window, or whose signature `authentic` rejects, is dropped
    /// instead: a correct primary refuses it.
    #[allow(clippy::too_many_arguments)]
    pub fn count_skips(
        &mut self,
        now_ms: u64,
        grace_ms: u64,
        (seq, horizon): (u64, u64),
        batch: &Batch,
        around: impl FnOnce() -> Option<Around>,
        (max_requests, max_bytes): (usize, usize),
        mut authentic: impl FnMut(&Request) -> bool,
    ) -> Skips {
        const LIMIT: usize = 64;
        let mut out = Skips { most: None, resend: Vec::new(), dropped: 0 };
        let due = |p: &Pending| {
            let since = match p.watch_sent {
                Some((t, _)) => t,
                None if p.forwarded => p.forwarded_ms,
                None => p.arrival_ms,
            };
            now_ms >= since.saturating_add(grace_ms)
        };
        // Arrival times grow along the queue (a new view gives every
        // request the same): the scan stops at the first that has not
        // waited a grace. With a correct primary that is usually the first.
        let mut due_keys: BTreeSet<Key> = BTreeSet::new();
        for &key in self.queue.values().take(SCAN_MAX) {
            let Some(p) = self.pending.get(&key) else { continue };
            if now_ms < p.arrival_ms.saturating_add(grace_ms) {
                break;
            }
            if !self.floods(key.0, now_ms) && due(p) {
                due_keys.insert(key);
            }
        }
        for &(_, client, id) in self.by_arrival.iter().take(SCAN_MAX) {
            if self.pending.get(&(client, id)).is_some_and(|p| p.proposed && due(p)) {
                due_keys.insert((client, id));
            }
        }
        if due_keys.is_empty() {
            return out;
        }
        let Some(around) = around() else { return out };
        // Room, from the batch alone unless it looks full: then only its
        // new requests count.
        let mut count = batch.requests.len();
        let mut bytes = batch.size_bytes();
        if count >= max_requests || bytes >= max_bytes / 2 {
            let mut seen: BTreeSet<Key> =
                around.earlier.iter().flat_map(|b| b.requests.iter().map(|r| (r.client, r.id))).collect();
            (count, bytes) = (0, 0);
            for r in &batch.requests {
                let key = (r.client, r.id);
                if !self.is_delivered(key) && seen.insert(key) {
                    count += 1;
                    bytes += r.size_bytes();
                }
            }
        }
        if count >= max_requests {
            return out;
        }
        // What the undelivered batches hold is not left out.
        for b in around.earlier.iter().chain(&around.later).map(|b| b.as_ref()).chain([batch]) {
            for r in &b.requests {
                due_keys.remove(&(r.client, r.id));
            }
        }
        let mut candidates: Vec<(u64, Key)> =
            due_keys.into_iter().filter_map(|k| self.pending.get(&k).map(|p| (p.order, k))).collect();
        candidates.sort_unstable();
        let mut gone = Vec::new();
        for (_, key) in candidates.into_iter().take(LIMIT) {
            if self.is_delivered(key) {
                gone.push(key);
                continue;
            }
            let Some(p) = self.pending.get_mut(&key) else { continue };
            if bytes + p.request.size_bytes() > max_bytes {
                continue;
            }
            if !p.verified {
                if !authentic(&p.request) {
                    gone.push(key);
                    out.dropped += 1;
                    continue;
                }
                p.verified = true;
            }
            let Some((_, floor)) = p.watch_sent else {
                p.watch_sent = Some((now_ms, horizon));
                p.watch_last_ms = now_ms;
                out.resend.push(p.request.clone());
                continue;
            };
            if seq <= floor {
                continue;
            }
            p.skips += 1;
            out.most = Some(out.most.unwrap_or(0).max(p.skips));
            if now_ms >= p.watch_last_ms.saturating_add(grace_ms) {
                p.watch_last_ms = now_ms;
                out.resend.push(p.request.clone());
            }
        }
        for key in gone {
            self.remove(key);
        }
        out
    }
}
