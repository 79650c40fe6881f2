//! The requests waiting to be ordered: queued in arrival order for the
//! primary's batches, each client's oldest timed (the request timer), and
//! remembered by id once delivered so that a late retransmission is
//! neither ordered nor timed again.
//!
//! Only a client's oldest pending request is timed, from when it became
//! the oldest: batches are cut fairly between clients, so a client with
//! many requests waiting sees them ordered a share at a time, and a correct
//! primary owes each client progress, not all of a flood at once (a client
//! flooding every replica would otherwise make the backups suspect a
//! correct primary).

mod skips;

pub(super) use skips::Around;

use crate::exec::IdWindow;
use crate::message::{Batch, Request};
use crate::types::{ClientId, RequestId};
use std::collections::{BTreeMap, BTreeSet};

/// A client with at most this many requests waiting has its oldest timed
/// from its arrival (see `RequestPool::time_head`).
const FEW_PENDING: usize = 64;

/// A request, by its client and the client's number for it.
pub(super) type Key = (ClientId, RequestId);

#[derive(Clone, Debug)]
pub(super) struct Pending {
    pub request: Request,
    /// When this replica first saw it, or the start of the current view.
    pub arrival_ms: u64,
    /// When its timer started, while it is its client's oldest pending
    /// request (and so timed).
    timed_from: Option<u64>,
    /// When it was last forwarded to the primary.
    pub forwarded_ms: u64,
    /// Whether the primary of this view was sent it: at its arrival, when
    /// its timer first expired, or at the view's start.
    pub forwarded: bool,
    /// When its timer first expired and it was forwarded then: the
    /// primary's wait for it counts from here (see `retime_unforwarded`).
    late_forward_ms: Option<u64>,
    order: u64,
    /// Inside some PRE-PREPARE of this view: out of the primary's queue.
    proposed: bool,
    /// Its signature was checked (forwarded by a peer, or already by the
    /// primary's check or a timer's), so proposing it needs no second check.
    verified: bool,
    /// PRE-PREPAREs of this view with room for it that left it out, once
    /// the primary had had it for the forward grace (see `count_skips`).
    skips: u32,
    /// When the batch watch first sent it to this view's primary, and the
    /// lowest sequence number whose PRE-PREPARE may count a skip (a
    /// pipeline beyond anything this replica had seen then): a primary is
    /// blamed only for what it was sent and had time to propose.
    watch_sent: Option<(u64, u64)>,
    /// When the batch watch last sent it (again once per grace while it
    /// counts: the primary may have refused a copy, or lost it).
    watch_last_ms: u64,
}

impl Pending {
    fn since_ms(&self) -> u64 {
        self.late_forward_ms.map_or(self.arrival_ms, |t| t.max(self.arrival_ms))
    }
}

pub(super) struct RequestPool {
    pending: BTreeMap<Key, Pending>,
    /// Timed requests (each client's oldest) by the start of their
    /// timers: the oldest first.
    by_arrival: BTreeSet<(u64, ClientId, RequestId)>,
    /// Each client's pending requests, in arrival order.
    client_pending: BTreeMap<ClientId, BTreeSet<(u64, RequestId)>>,
    /// The core's clock, for the timer of a request that becomes its
    /// client's oldest.
    pub clock_ms: u64,
    /// Clients with more pending than this are not timed (see `time_head`).
    pub timed_max: usize,
    /// How long a client that had more than `timed_max` pending stays
    /// untimed after it falls back within (see `floods`).
    pub flood_memory_ms: u64,
    /// Clients that flooded lately, and until when they count as flooding.
    flooded_until: BTreeMap<ClientId, u64>,
    /// Requests not yet proposed, in arrival order.
    queue: BTreeMap<u64, Key>,
    order_counter: u64,
    delivered: BTreeMap<ClientId, IdWindow>,
    client_window: u64,
    /// Queued requests per client (for fair batches).
    queued_per_client: BTreeMap<ClientId, usize>,
}

impl RequestPool {
    pub fn new(client_window: u64) -> RequestPool {
        RequestPool {
            pending: BTreeMap::new(),
            by_arrival: BTreeSet::new(),
            queue: BTreeMap::new(),
            order_counter: 0,
            delivered: BTreeMap::new(),
            client_window,
            queued_per_client: BTreeMap::new(),
            client_pending: BTreeMap::new(),
            clock_ms: 0,
            timed_max: usize::MAX,
            flood_memory_ms: 0,
            flooded_until: BTreeMap::new(),
        }
    }

    /// Starts the timer of `client`'s oldest pending request, if any and
    /// not yet timed.
    /// A client with more than this many requests pending here is not
    /// timed: it floods, and a correct primary, which orders each client a
    /// share at a time and may drop what is past its quota, owes it no
    /// deadline (a correct client keeps far fewer outstanding).
    fn time_head(&mut self, client: ClientId, now_ms: u64) {
        self.time_head_at(client, now_ms, true)
    }

    /// `time_head`, but a head that may not count its wait from its
    /// arrival (`from_arrival` false) is timed from `now_ms`.
    fn time_head_at(&mut self, client: ClientId, now_ms: u64, mut from_arrival: bool) {
        // A flood remembered until now ends here as in `forget_floods`,
        // whichever comes first: its head counts from now.
        if self.flooded_until.get(&client).is_some_and(|&t| now_ms >= t) {
            self.flooded_until.remove(&client);
            from_arrival = false;
        }
        let pending = self.pending_of(client);
        if pending > self.timed_max {
            self.flooded_until.insert(client, now_ms.saturating_add(self.flood_memory_ms));
        }
        let Some(&(_, id)) = self.client_pending.get(&client).and_then(|s| s.first()) else { return };
        let flooding = self.floods(client, now_ms);
        if let Some(p) = self.pending.get_mut(&(client, id)) {
            match p.timed_from {
                None if !flooding => {
                    // A client with few waiting gets them all ordered within
                    // a batch or two: its oldest is timed from its arrival,
                    // so a primary cannot order it one request per timeout.
                    // One with more is ordered a share at a time: timed from
                    // when its previous request executed.
                    let start = if pending <= FEW_PENDING && from_arrival { p.since_ms().min(now_ms) } else { now_ms };
                    p.timed_from = Some(start);
                    self.by_arrival.insert((start, client, id));
                }
                Some(t) if flooding => {
                    p.timed_from = None;
                    self.by_arrival.remove(&(t, client, id));
                }
                _ => {}
            }
        }
    }

    /// Whether `client` floods: more than `timed_max` pending here now, or
    /// within the last `flood_memory_ms`. A flooding client sending to
    /// every replica has each keep a different part of its flood (each
    /// drops what is past its quota at a different moment), so when its
    /// backlog here dips, the request at its head here may sit deep in the
    /// primary's: timing it then would blame a correct primary. A correct
    /// client never has more than `timed_max` outstanding, so it is never
    /// remembered as flooding.
    pub fn floods(&self, client: ClientId, now_ms: u64) -> bool {
        self.pending_of(client) > self.timed_max || self.flooded_until.get(&client).is_some_and(|&t| now_ms < t)
    }

    /// Forgets the floods older than `flood_memory_ms`: those clients'
    /// oldest requests are timed from now (the primary may have been busy
    /// with their backlog until then).
    pub fn forget_floods(&mut self, now_ms: u64) {
        let over: Vec<ClientId> = self.flooded_until.iter().filter(|&(_, &t)| now_ms >= t).map(|(&c, _)| c).collect();
        for c in over {
            self.flooded_until.remove(&c);
            self.time_head_at(c, now_ms, false);
        }
    }

    /// Requests `client` has pending.
    pub fn pending_of(&self, client: ClientId) -> usize {
        self.client_pending.get(&client).map_or(0, BTreeSet::len)
    }

    fn enqueue(&mut self, order: u64, key: Key) {
        if self.queue.insert(order, key).is_none() {
            *self.queued_per_client.entry(key.0).or_default() += 1;
        }
    }

    fn dequeue(&mut self, order: u64) {
        if let Some((client, _)) = self.queue.remove(&order) {
            if let Some(n) = self.queued_per_client.get_mut(&client) {
                *n -= 1;
                if *n == 0 {
                    self.queued_per_client.remove(&client);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Requests waiting to be proposed.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn get_mut(&mut self, key: &Key) -> Option<&mut Pending> {
        self.pending.get_mut(key)
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.pending.contains_key(key)
    }

    /// Whether `key` was delivered, or is too old to matter.
    pub fn is_delivered(&self, key: Key) -> bool {
        self.delivered.get(&key.0).is_some_and(|w| w.contains(key.1 .0, self.client_window))
    }

    /// When the oldest pending request's timer started.
    pub fn oldest_arrival_ms(&self) -> Option<u64> {
        self.by_arrival.first().map(|(t, _, _)| *t)
    }

    /// The oldest timed request: when its timer started, and its key.
    pub fn oldest_timed(&self) -> Option<(u64, Key)> {
        self.by_arrival.first().map(|&(t, c, id)| (t, (c, id)))
    }

    /// Since when the primary could have ordered `key`, if it is pending:
    /// its arrival, or its forward after a first expiry.
    pub fn arrival_ms(&self, key: &Key) -> Option<u64> {
        self.pending.get(key).map(Pending::since_ms)
    }

    pub fn add(&mut self, request: Request, now_ms: u64, verified: bool) {
        let key = (request.client, request.id);
        let order = self.order_counter;
        self.order_counter += 1;
        self.enqueue(order, key);
        self.client_pending.entry(key.0).or_default().insert((order, key.1));
        self.pending.insert(
            key,
            Pending {
                request,
                arrival_ms: now_ms,
                timed_from: None,
                forwarded_ms: now_ms,
                forwarded: false,
                late_forward_ms: None,
                order,
                proposed: false,
                verified,
                skips: 0,
                watch_sent: None,
                watch_last_ms: 0,
            },
        );
        self.time_head(key.0, now_ms);
    }

    pub fn remove(&mut self, key: Key) {
        if self.remove_quiet(key) {
            self.drop_stale_heads(key.0);
            // The client's next request is its oldest now: timed from here.
            self.time_head(key.0, self.clock_ms);
        }
    }

    /// Removes `key`, leaving its client's next request untimed; whether
    /// it was pending.
    fn remove_quiet(&mut self, key: Key) -> bool {
        let Some(p) = self.pending.remove(&key) else { return false };
        if let Some(t) = p.timed_from {
            self.by_arrival.remove(&(t, key.0, key.1));
        }
        if let Some(set) = self.client_pending.get_mut(&key.0) {
            set.remove(&(p.order, key.1));
            if set.is_empty() {
                self.client_pending.remove(&key.0);
            }
        }
        self.dequeue(p.order);
        true
    }

    /// `key` was sent to this view's primary.
    pub fn mark_forwarded(&mut self, key: &Key, now_ms: u64) {
        if let Some(p) = self.pending.get_mut(key) {
            p.forwarded = true;
            p.forwarded_ms = now_ms;
        }
    }

    /// The requests whose timers started at or before `cutoff_ms` though
    /// this view's primary was never sent them nor proposed them: each is
    /// counted as sent and timed again from `now_ms` (and from then on,
    /// should its timer stop and start again), for the caller to forward.
    pub fn retime_unforwarded(&mut self, cutoff_ms: u64, now_ms: u64) -> Vec<Request> {
        let overdue: Vec<(u64, ClientId, RequestId)> =
            self.by_arrival.range(..=(cutoff_ms, ClientId(u64::MAX), RequestId(u64::MAX))).copied().collect();
        let mut out = Vec::new();
        for (start, client, id) in overdue {
            let Some(p) = self.pending.get_mut(&(client, id)).filter(|p| !p.forwarded && !p.proposed) else {
                continue;
            };
            p.forwarded = true;
            p.forwarded_ms = now_ms;
            p.late_forward_ms = Some(now_ms);
            p.timed_from = Some(now_ms);
            out.push(p.request.clone());
            self.by_arrival.remove(&(start, client, id));
            self.by_arrival.insert((now_ms, client, id));
        }
        out
    }

    /// Forgets every pending request (after a state transfer jumped past
    /// them; clients retransmit whatever still needs ordering).
    pub fn clear(&mut self) {
        let keys: Vec<Key> = self.pending.keys().copied().collect();
        for k in keys {
            self.remove(k);
        }
    }

    /// The requests of `batch` are proposed: out of the queue, still timed.
    pub fn mark_proposed(&mut self, batch: &Batch) {
        for r in &batch.requests {
            if let Some(p) = self.pending.get_mut(&(r.client, r.id)) {
                p.proposed = true;
                let order = p.order;
                self.dequeue(order);
            }
        }
    }

    /// The requests of a delivered batch are done. A client's pending
    /// request that fell below its window of ids with them can never be
    /// ordered (replicas refuse it as too old): it goes too, or it would
    /// stay its client's timed oldest for good (a faulty client's way to
    /// get correct primaries suspected), as soon as it is that oldest.
    pub fn delivered(&mut self, batch: &Batch) {
        for r in &batch.requests {
            let window = self.client_window;
            self.delivered.entry(r.client).or_default().insert(r.id.0, window);
            self.remove((r.client, r.id));
        }
    }

    /// Removes `client`'s oldest pending requests while they are too old
    /// to be ordered (see `delivered`), so that none is ever its timed
    /// oldest.
    fn drop_stale_heads(&mut self, client: ClientId) {
        while let Some(&(_, id)) = self.client_pending.get(&client).and_then(|s| s.first()) {
            if !self.is_delivered((client, id)) || !self.remove_quiet((client, id)) {
                break;
            }
        }
    }

    /// Takes the next batch's requests off the queue, oldest first, within
    /// the limits (one request always fits, however large: the core refuses
    /// requests larger than a batch before they get here). Fair between
    /// clients: a first pass takes at most an equal share of the batch per
    /// client with requests queued, so a client that floods cannot crowd
    /// the others out of a batch; a second pass fills what room is left,
    /// oldest first, so a lone busy client still gets full batches.
    pub fn take_batch(
        &mut self,
        max_requests: usize,
        max_bytes: usize,
        mut accept: impl FnMut(&Request) -> bool,
    ) -> (Vec<Request>, usize) {
        let share = (max_requests / self.queued_per_client.len().max(1)).max(1);
        let mut taken: Vec<(u64, Key)> = Vec::new();
        let mut refused: std::collections::BTreeSet<Key> = std::collections::BTreeSet::new();
        let mut bytes = 0usize;
        let mut in_batch: BTreeMap<ClientId, usize> = BTreeMap::new();
        let mut chosen = std::collections::BTreeSet::new();
        let mut full = false;
        for fair in [true, false] {
            for (&order, &key) in self.queue.iter() {
                if full {
                    break;
                }
                if chosen.contains(&order) || refused.contains(&key) {
                    continue;
                }
                if fair && in_batch.get(&key.0).copied().unwrap_or(0) >= share {
                    continue;
                }
                let p = self.pending.get_mut(&key).expect("queued requests are pending");
                if !p.verified {
                    if !accept(&p.request) {
                        refused.insert(key);
                        continue;
                    }
                    p.verified = true;
                }
                let size = p.request.size_bytes();
                if !taken.is_empty() && taken.len() >= max_requests {
                    full = true;
                    break;
                }
                if !taken.is_empty() && bytes + size > max_bytes {
                    // Too large for what is left: the next batch starts
                    // with it, and smaller ones may still fit this one.
                    continue;
                }
                bytes += size;
                *in_batch.entry(key.0).or_default() += 1;
                chosen.insert(order);
                taken.push((order, key));
            }
        }
        // In the order they arrived.
        taken.sort_unstable_by_key(|(order, _)| *order);
        let mut requests = Vec::with_capacity(taken.len());
        for (order, key) in taken {
            let p = self.pending.get_mut(&key).expect("queued requests are pending");
            p.proposed = true;
            requests.push(p.request.clone());
            self.dequeue(order);
        }
        let n = refused.len();
        for key in refused {
            self.remove(key);
        }
        (requests, n)
    }

    /// Drops the pending requests not yet checked that `authentic` says
    /// no client sent (and marks the rest checked), so that they neither
    /// wait in the queue nor keep a timer running; returns how many went.
    pub fn drop_unauthentic(&mut self, mut authentic: impl FnMut(&Request) -> bool) -> usize {
        let mut gone = Vec::new();
        for (k, p) in self.pending.iter_mut().filter(|(_, p)| !p.proposed && !p.verified) {
            if authentic(&p.request) {
                p.verified = true;
            } else {
                gone.push(*k);
            }
        }
        for key in &gone {
            self.remove(*key);
        }
        gone.len()
    }

    /// Whether the pending copy of `key` has had its signature checked.
    pub fn is_verified(&self, key: &Key) -> bool {
        self.pending.get(key).is_some_and(|p| p.verified)
    }

    /// Whether `key` is inside some PRE-PREPARE of this view.
    pub fn is_proposed(&self, key: &Key) -> bool {
        self.pending.get(key).is_some_and(|p| p.proposed)
    }

    /// Puts `request`, whose signature checked, in the place of the pending
    /// copy with its key (a faulty client may have sent this replica a
    /// badly signed copy and the others a good one).
    pub fn replace_verified(&mut self, request: Request) {
        if let Some(p) = self.pending.get_mut(&(request.client, request.id)) {
            p.request = request;
            p.verified = true;
        }
    }

    /// A new view starts: every pending request's timer starts again from
    /// `now_ms`, and every one goes back in the queue as not proposed: what
    /// an older view proposed must be proposed again unless the new view
    /// re-proposes it, which the caller marks next (`mark_proposed`), so
    /// that `proposed` means a PRE-PREPARE of this view on every replica.
    /// On a backup, every pending request but a flood's is returned to be
    /// forwarded to the new primary, unless clients send to every replica
    /// (`to_all`): the new primary then has its own copies, and what it
    /// does not propose goes later (`due_forwards`).
    pub fn restart_view(&mut self, now_ms: u64, primary: bool, to_all: bool) -> Vec<Request> {
        let mut forward = Vec::new();
        let mut requeue = Vec::new();
        self.by_arrival.clear();
        let flooding: BTreeSet<ClientId> =
            self.client_pending.keys().copied().filter(|&c| self.floods(c, now_ms)).collect();
        for (&key, p) in self.pending.iter_mut() {
            p.arrival_ms = now_ms;
            p.timed_from = None;
            p.forwarded_ms = now_ms;
            p.late_forward_ms = None;
            // A backup sends the new primary everything (returned below)
            // but a flood: the primary has its own copy or owes it nothing,
            // and a flooding client's request that becomes timed later is
            // forwarded at its first expiry (`retime_unforwarded`).
            let send = !primary && !to_all && !flooding.contains(&key.0);
            p.forwarded = send;
            p.skips = 0;
            p.watch_sent = None;
            if p.proposed {
                p.proposed = false;
                requeue.push((p.order, key));
            }
            if send {
                forward.push(p.request.clone());
            }
        }
        for (order, key) in requeue {
            self.enqueue(order, key);
        }
        let clients: Vec<ClientId> = self.client_pending.keys().copied().collect();
        for c in clients {
            self.time_head(c, now_ms);
        }
        forward
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn req(client: u64, id: u64) -> Request {
        Request {
            client: ClientId(client),
            id: RequestId(id),
            read_only: false,
            operation: Bytes::from_static(b"op"),
            auth: Bytes::new(),
        }
    }

    #[test]
    fn batches_are_cut_fairly_between_clients_and_a_lone_client_still_fills_them() {
        let mut pool = RequestPool::new(1024);
        // Client 1 floods 10 requests before clients 2 and 3 send 2 each.
        for id in 0..10 {
            pool.add(req(1, id), 0, false);
        }
        for c in [2, 3] {
            for id in 0..2 {
                pool.add(req(c, id), 1, true);
            }
        }
        assert_eq!(pool.pending_of(ClientId(1)), 10);
        // A batch of 6 shared by 3 clients: 2 each, in arrival order.
        let (batch, refused) = pool.take_batch(6, usize::MAX, |_| true);
        assert_eq!(refused, 0);
        let got: Vec<(u64, u64)> = batch.iter().map(|r| (r.client.0, r.id.0)).collect();
        assert_eq!(got, vec![(1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)]);
        // Only client 1 is left: it fills the next batch alone.
        let (batch, _) = pool.take_batch(6, usize::MAX, |_| true);
        assert_eq!(batch.len(), 6);
        assert!(batch.iter().all(|r| r.client == ClientId(1)));
        // Still pending (proposed, not delivered) until they execute.
        assert_eq!(pool.pending_of(ClientId(1)), 10);
        assert_eq!(pool.queued(), 2);
        // Refused requests leave the pool and count.
        let (batch, refused) = pool.take_batch(6, usize::MAX, |r| r.id.0 != 9);
        assert_eq!((batch.len(), refused), (1, 1));
        assert_eq!(pool.pending_of(ClientId(1)), 9);
    }

    #[test]
    fn only_each_clients_oldest_request_is_timed_and_a_busy_clients_from_when_it_became_the_oldest() {
        let mut pool = RequestPool::new(1024);
        for id in 0..3 {
            pool.add(req(1, id), 10, true);
        }
        assert_eq!(pool.oldest_arrival_ms(), Some(10));
        assert_eq!(pool.by_arrival.len(), 1, "client 1's later requests wait their turn untimed");
        pool.add(req(2, 0), 50, true);
        assert_eq!(pool.by_arrival.len(), 2);
        // Client 1's oldest executes at 100. With few waiting, its next is
        // timed from its own arrival: a primary owes it the lot at once.
        pool.clock_ms = 100;
        pool.remove((ClientId(1), RequestId(0)));
        assert!(pool.by_arrival.contains(&(10, ClientId(1), RequestId(1))));
        // A busy client's next is timed from when its previous executed.
        for id in 0..(FEW_PENDING as u64 + 2) {
            pool.add(req(3, id), 200, true);
        }
        pool.clock_ms = 300;
        pool.remove((ClientId(3), RequestId(0)));
        assert!(pool.by_arrival.contains(&(300, ClientId(3), RequestId(1))));
        assert_eq!(pool.by_arrival.len(), 3);
        // A new view times every client's oldest from its start.
        pool.restart_view(400, false, false);
        assert_eq!(pool.oldest_arrival_ms(), Some(400));
        assert_eq!(pool.by_arrival.len(), 3);
        // A client with more waiting than `timed_max` floods: not timed,
        // until it has been back within for `flood_memory_ms`.
        pool.timed_max = FEW_PENDING;
        pool.flood_memory_ms = 1_000;
        pool.add(req(3, 1000), 410, true);
        assert_eq!(pool.by_arrival.len(), 2, "client 3, past timed_max, is not timed");
        pool.clock_ms = 500;
        pool.remove((ClientId(3), RequestId(1)));
        pool.remove((ClientId(3), RequestId(2)));
        assert!(pool.floods(ClientId(3), 500));
        assert_eq!(pool.by_arrival.len(), 2, "back within, but it flooded a moment ago");
        assert!(
            pool.restart_view(600, false, false).iter().all(|r| r.client != ClientId(3)),
            "a flood is not forwarded"
        );
        assert_eq!(pool.by_arrival.len(), 2);
        // It was last past timed_max at 500, with 65 left after the first
        // removal.
        pool.forget_floods(1_499);
        assert_eq!(pool.by_arrival.len(), 2, "remembered for flood_memory_ms after it was last past timed_max");
        pool.forget_floods(1_500);
        assert!(!pool.floods(ClientId(3), 1_500));
        assert_eq!(pool.by_arrival.len(), 3);
        assert!(
            pool.by_arrival.contains(&(1_500, ClientId(3), RequestId(3))),
            "timed from when the flood was forgotten"
        );
    }

    #[test]
    fn a_flood_whose_memory_ran_out_times_its_head_from_then_even_before_the_sweep() {
        let mut pool = RequestPool::new(1024);
        pool.timed_max = 2;
        pool.flood_memory_ms = 1_000;
        for id in 0..4 {
            pool.add(req(1, id), 10, true);
        }
        pool.clock_ms = 20;
        pool.remove((ClientId(1), RequestId(0)));
        pool.remove((ClientId(1), RequestId(1)));
        assert!(pool.by_arrival.is_empty(), "back within timed_max, but it flooded a moment ago");
        // The memory ran out at 1,020; no tick has swept it yet when the
        // next request executes: its successor counts from then, not from
        // its arrival at 10.
        pool.clock_ms = 2_000;
        pool.remove((ClientId(1), RequestId(2)));
        assert!(pool.by_arrival.contains(&(2_000, ClientId(1), RequestId(3))));
    }
}
