//! The requests waiting to be ordered: each timed from when this replica
//! first saw it (the request timer), queued in arrival order for the
//! primary's batches, and remembered by id once delivered so that a late
//! retransmission is neither ordered nor timed again.

use crate::exec::IdWindow;
use crate::message::{Batch, Request};
use crate::types::{ClientId, RequestId};
use std::collections::{BTreeMap, BTreeSet};

/// A request, by its client and the client's number for it.
pub(super) type Key = (ClientId, RequestId);

#[derive(Clone, Debug)]
pub(super) struct Pending {
    pub request: Request,
    /// When its timer started: first seen, or the start of the current view.
    pub arrival_ms: u64,
    /// When it was last forwarded to the primary.
    pub forwarded_ms: u64,
    order: u64,
    /// Inside some PRE-PREPARE of this view: out of the primary's queue.
    proposed: bool,
    /// Its signature was checked (forwarded by a peer, or already by the
    /// primary's check or a timer's), so proposing it needs no second check.
    verified: bool,
}

pub(super) struct RequestPool {
    pending: BTreeMap<Key, Pending>,
    /// Pending requests by the start of their timers: the oldest first.
    by_arrival: BTreeSet<(u64, ClientId, RequestId)>,
    /// Requests not yet proposed, in arrival order.
    queue: BTreeMap<u64, Key>,
    order_counter: u64,
    delivered: BTreeMap<ClientId, IdWindow>,
    client_window: u64,
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

    /// When `key`'s timer started, if it is pending.
    pub fn arrival_ms(&self, key: &Key) -> Option<u64> {
        self.pending.get(key).map(|p| p.arrival_ms)
    }

    pub fn add(&mut self, request: Request, now_ms: u64, verified: bool) {
        let key = (request.client, request.id);
        let order = self.order_counter;
        self.order_counter += 1;
        self.by_arrival.insert((now_ms, key.0, key.1));
        self.queue.insert(order, key);
        self.pending.insert(
            key,
            Pending { request, arrival_ms: now_ms, forwarded_ms: now_ms, order, proposed: false, verified },
        );
    }

    pub fn remove(&mut self, key: Key) {
        if let Some(p) = self.pending.remove(&key) {
            self.by_arrival.remove(&(p.arrival_ms, key.0, key.1));
            self.queue.remove(&p.order);
        }
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
                self.queue.remove(&p.order);
            }
        }
    }

    /// The requests of a delivered batch are done.
    pub fn delivered(&mut self, batch: &Batch) {
        for r in &batch.requests {
            self.remove((r.client, r.id));
            let window = self.client_window;
            self.delivered.entry(r.client).or_default().insert(r.id.0, window);
        }
    }

    /// Takes the next batch's requests off the queue, oldest first, within
    /// the limits (one request always fits, however large: the core refuses
    /// requests larger than a batch before they get here).
    pub fn take_batch(
        &mut self,
        max_requests: usize,
        max_bytes: usize,
        mut accept: impl FnMut(&Request) -> bool,
    ) -> (Vec<Request>, usize) {
        let mut requests = Vec::new();
        let mut refused = 0;
        let mut bytes = 0usize;
        while let Some((&order, &key)) = self.queue.first_key_value() {
            let p = self.pending.get_mut(&key).expect("queued requests are pending");
            if !p.verified {
                if !accept(&p.request) {
                    self.remove(key);
                    refused += 1;
                    continue;
                }
                p.verified = true;
            }
            let size = p.request.size_bytes();
            if !requests.is_empty() && (requests.len() >= max_requests || bytes + size > max_bytes) {
                break;
            }
            p.proposed = true;
            bytes += size;
            requests.push(p.request.clone());
            self.queue.remove(&order);
        }
        (requests, refused)
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
    /// `now_ms`. On a backup, requests not proposed in the new view go back
    /// in the queue, and every pending request is returned to be forwarded
    /// to the new primary. On the primary, every pending request goes back
    /// in the queue (what an older view proposed must be proposed again
    /// unless the new view re-proposes it: see `mark_proposed`).
    pub fn restart_view(&mut self, now_ms: u64, primary: bool) -> Vec<Request> {
        let mut forward = Vec::new();
        self.by_arrival.clear();
        for (&key, p) in self.pending.iter_mut() {
            p.arrival_ms = now_ms;
            p.forwarded_ms = now_ms;
            if !p.proposed || primary {
                p.proposed = false;
                self.queue.insert(p.order, key);
            }
            self.by_arrival.insert((now_ms, key.0, key.1));
            if !primary {
                forward.push(p.request.clone());
            }
        }
        forward
    }
}
