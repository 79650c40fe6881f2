//! Values one stage publishes for others, kept apart from the metrics so
//! that counters never double as a control channel.

use palisade_core::reconfig::Handover;
use palisade_core::{ClientId, ViewNo};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The current view, set by the consensus stage after each wake-up and read
/// by the stages that answer clients without the core (cached replies
/// carry it, so clients learn who is primary), with whether this replica
/// is its primary (the verification stage checks signatures only then).
#[derive(Debug, Default)]
pub struct CurrentView {
    view: AtomicU64,
    primary: AtomicBool,
}

impl CurrentView {
    /// The view as last published.
    pub fn get(&self) -> ViewNo {
        ViewNo(self.view.load(Ordering::Relaxed))
    }

    /// Whether this replica was the primary when last published.
    pub fn is_primary(&self) -> bool {
        self.primary.load(Ordering::Relaxed)
    }

    /// Publishes `view`, and whether this replica is its primary.
    pub fn set(&self, view: ViewNo, primary: bool) {
        self.view.store(view.0, Ordering::Relaxed);
        self.primary.store(primary, Ordering::Relaxed);
    }
}

/// The chain of epochs this replica holds, for the connections that answer
/// clients' questions about it without the consensus stage.
#[derive(Debug, Default)]
pub struct PublishedChain(RwLock<Vec<Handover>>);

impl PublishedChain {
    /// How many links are published.
    pub fn len(&self) -> usize {
        self.0.read().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.0.read().is_empty()
    }

    /// Publishes `links`, the whole chain held.
    pub fn set(&self, links: &[Handover]) {
        *self.0.write() = links.to_vec();
    }

    /// At most `max` links after epoch `after`.
    pub fn after(&self, after: u64, max: usize) -> Vec<Handover> {
        self.0.read().iter().filter(|l| l.config.epoch > after).take(max).cloned().collect()
    }
}

/// Connections open from each peer, as the network stage sees them: the
/// consensus stage tells the core when a peer's last one closes or a first
/// one opens (`Input::PeerLink`), so that a crashed primary is suspected
/// without waiting out the whole request timeout.
#[derive(Default)]
pub struct PeerLinks {
    open: parking_lot::Mutex<std::collections::BTreeMap<palisade_core::ReplicaId, u32>>,
    changed: AtomicBool,
}

impl PeerLinks {
    /// A connection from `peer` opened.
    pub fn opened(&self, peer: palisade_core::ReplicaId) {
        *self.open.lock().entry(peer).or_default() += 1;
        self.changed.store(true, Ordering::Release);
    }

    /// A connection from `peer` closed.
    pub fn closed(&self, peer: palisade_core::ReplicaId) {
        if let Some(n) = self.open.lock().get_mut(&peer) {
            *n = n.saturating_sub(1);
        }
        self.changed.store(true, Ordering::Release);
    }

    /// Whether each peer ever connected has a connection open now, if
    /// anything changed since the last call.
    pub fn changes(&self) -> Option<Vec<(palisade_core::ReplicaId, bool)>> {
        if !self.changed.swap(false, Ordering::AcqRel) {
            return None;
        }
        Some(self.open.lock().iter().map(|(p, n)| (*p, *n > 0)).collect())
    }
}

/// Each client's requests between verification and the core (in the
/// filter's and the consensus stage's queues), so that verification hands
/// on no more than `max` of one client's at a time. Those queues are
/// first come, first served: without this, a client that floods would fill
/// them and every other client's request would wait behind its thousands,
/// however fairly verification took turns.
#[derive(Debug)]
pub struct ClientCredits {
    taken: Mutex<HashMap<ClientId, u32>>,
    max: u32,
}

impl ClientCredits {
    /// At most `max` of one client's requests downstream.
    pub fn new(max: u32) -> ClientCredits {
        ClientCredits { taken: Mutex::new(HashMap::new()), max: max.max(1) }
    }

    /// Whether `client` may hand on one more.
    pub fn has_room(&self, client: ClientId) -> bool {
        self.taken.lock().get(&client).is_none_or(|n| *n < self.max)
    }

    /// One of `client`'s requests went downstream.
    pub fn take(&self, client: ClientId) {
        *self.taken.lock().entry(client).or_default() += 1;
    }

    /// One of `client`'s requests left the queues.
    pub fn give_back(&self, client: ClientId) {
        let mut taken = self.taken.lock();
        if let Some(n) = taken.get_mut(&client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                taken.remove(&client);
            }
        }
    }
}

/// Clients whose requests verification lately dropped for their quota:
/// their connections stop reading a moment, so that a flood waits in its
/// sender's socket instead of costing this replica a read, a MAC and a
/// decode per request.
#[derive(Debug, Default)]
pub struct OverQuota(Mutex<HashMap<ClientId, std::time::Instant>>);

impl OverQuota {
    /// How long a client counts as over its quota after a drop.
    const FOR: std::time::Duration = std::time::Duration::from_millis(100);

    /// `client` went over its quota just now.
    pub fn mark(&self, client: ClientId) {
        let now = std::time::Instant::now();
        let mut m = self.0.lock();
        if m.len() >= 4_096 {
            m.retain(|_, at| now.duration_since(*at) < Self::FOR);
        }
        m.insert(client, now);
    }

    /// Whether `client` went over its quota lately.
    pub fn is_over(&self, client: ClientId) -> bool {
        self.0.lock().get(&client).is_some_and(|at| at.elapsed() < Self::FOR)
    }
}

/// Clients whose connections were closed for requests that kept failing
/// verification: their next connections are refused for a while (1 s, then
/// twice as long each time, up to a minute), so a forger that shakes hands
/// again at once does not get another round of signature checks at once.
/// By key only: addresses are shared (a NAT, or every client on one host).
#[derive(Debug, Default)]
pub struct Banned(Mutex<HashMap<ClientId, (std::time::Instant, u32)>>);

impl Banned {
    /// `client` was closed for its requests: refuse it for a while.
    pub fn ban(&self, client: ClientId) {
        let now = std::time::Instant::now();
        let mut m = self.0.lock();
        if m.len() >= 65_536 {
            m.retain(|_, (until, _)| *until > now);
        }
        let strikes = m.get(&client).map_or(0, |(_, n)| *n) + 1;
        let secs = 1u64 << (strikes - 1).min(6);
        m.insert(client, (now + std::time::Duration::from_secs(secs), strikes));
    }

    /// Whether `client`'s connections are refused now.
    pub fn is_banned(&self, client: ClientId) -> bool {
        self.0.lock().get(&client).is_some_and(|(until, _)| *until > std::time::Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_banned_client_is_refused_for_a_while_and_others_never() {
        let b = Banned::default();
        assert!(!b.is_banned(ClientId(1)));
        b.ban(ClientId(1));
        assert!(b.is_banned(ClientId(1)));
        assert!(!b.is_banned(ClientId(2)));
        // Each ban lasts twice the one before.
        b.ban(ClientId(1));
        let until = b.0.lock()[&ClientId(1)].0;
        assert!(until > std::time::Instant::now() + std::time::Duration::from_millis(1_500));
    }
}
