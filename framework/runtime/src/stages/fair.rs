//! Fair intake: requests wait per client, each client at most its quota,
//! and leave one client at a time in turn. A client that floods then gets
//! its share of verification and ordering, not the share its sending rate
//! would take from a first-come queue.

use palisade_core::{ClientId, Request};
use std::collections::{HashMap, VecDeque};

/// Requests waiting, per client, served in turn.
pub struct FairIntake {
    /// Most requests one client may have waiting.
    quota: usize,
    /// Most requests waiting in all.
    capacity: usize,
    waiting: HashMap<ClientId, VecDeque<Request>>,
    /// Clients with requests waiting, in the order they are served next.
    turn: VecDeque<ClientId>,
    len: usize,
}

impl FairIntake {
    /// An empty intake: `quota` per client, `capacity` in all.
    pub fn new(quota: usize, capacity: usize) -> FairIntake {
        FairIntake { quota: quota.max(1), capacity, waiting: HashMap::new(), turn: VecDeque::new(), len: 0 }
    }

    /// Queues `r`, or hands it back when its client's quota, or the
    /// intake, is full.
    pub fn push(&mut self, r: Request) -> Result<(), Request> {
        if self.len >= self.capacity {
            return Err(r);
        }
        let q = self.waiting.entry(r.client).or_default();
        if q.len() >= self.quota {
            return Err(r);
        }
        if q.is_empty() {
            self.turn.push_back(r.client);
        }
        q.push_back(r);
        self.len += 1;
        Ok(())
    }

    /// Up to `max` requests, one client at a time in turn (each client's
    /// in its order), from the clients `ready` admits.
    pub fn take(&mut self, max: usize, mut ready: impl FnMut(ClientId) -> bool) -> Vec<Request> {
        let mut out = Vec::with_capacity(max.min(self.len));
        let mut held = Vec::new();
        while out.len() < max {
            let Some(client) = self.turn.pop_front() else { break };
            if !ready(client) {
                held.push(client);
                continue;
            }
            let Some(q) = self.waiting.get_mut(&client) else { continue };
            if let Some(r) = q.pop_front() {
                out.push(r);
                self.len -= 1;
            }
            if q.is_empty() {
                self.waiting.remove(&client);
            } else {
                self.turn.push_back(client);
            }
        }
        // Those held back keep their place at the front.
        for c in held.into_iter().rev() {
            self.turn.push_front(c);
        }
        out
    }

    /// Most requests waiting in all.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use palisade_core::RequestId;

    fn req(client: u64, id: u64) -> Request {
        Request {
            client: ClientId(client),
            id: RequestId(id),
            read_only: false,
            operation: Bytes::new(),
            auth: Bytes::new(),
        }
    }

    #[test]
    fn a_flooding_client_gets_its_turn_and_its_quota_and_no_more() {
        let mut f = FairIntake::new(4, 100);
        for id in 0..10 {
            let r = f.push(req(1, id));
            assert_eq!(r.is_ok(), id < 4, "client 1's quota is 4 (request {id})");
        }
        f.push(req(2, 0)).unwrap();
        f.push(req(2, 1)).unwrap();
        f.push(req(3, 0)).unwrap();
        let order: Vec<(u64, u64)> = f.take(5, |_| true).iter().map(|r| (r.client.0, r.id.0)).collect();
        assert_eq!(order, vec![(1, 0), (2, 0), (3, 0), (1, 1), (2, 1)], "in turn, each client's in order");
        assert_eq!(f.len(), 2);
        // A client held back (no room downstream) keeps its requests.
        assert!(f.take(10, |c| c != ClientId(1)).is_empty());
        assert_eq!(f.len(), 2);
        let rest: Vec<(u64, u64)> = f.take(10, |_| true).iter().map(|r| (r.client.0, r.id.0)).collect();
        assert_eq!(rest, vec![(1, 2), (1, 3)]);
        assert!(f.is_empty());
        // The whole intake is bounded too.
        let mut small = FairIntake::new(10, 3);
        for c in 0..3 {
            small.push(req(c, 0)).unwrap();
        }
        assert!(small.push(req(9, 0)).is_err());
    }
}
