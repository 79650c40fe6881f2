//! The way out of the pipeline: stages hand frame bodies to peers and
//! clients through [`Egress`], never through the connection layer's types,
//! so that no stage depends on the network stage and each can be tested
//! without it.

use bytes::Bytes;
use palisade_core::{ClientId, PeerMessage, ReplicaId};
use palisade_wire::envelope::ReplicaMessage;
use std::collections::BTreeMap;

/// Hands `bodies` to peer `to`, counting them in `peer_sends_dropped` when
/// its connection is down or full (the protocol retransmits).
pub fn send_to_peer(egress: &dyn Egress, metrics: &crate::metrics::RuntimeMetrics, to: ReplicaId, bodies: Vec<Bytes>) {
    let n = bodies.len() as u64;
    if !egress.to_peer(to, bodies) {
        crate::metrics::RuntimeMetrics::add(&metrics.counters.peer_sends_dropped, n);
    }
}

/// Most bytes of frame bodies handed to a connection in one mailbox message.
pub const BATCH_BYTES: usize = 256 << 10;

/// Where the pipeline's output goes.
pub trait Egress: Send + Sync {
    /// This replica.
    fn me(&self) -> ReplicaId;
    /// The largest frame body a connection carries.
    fn max_frame_bytes(&self) -> usize;
    /// Encodes `msg`, from this replica's core of `epoch`, once for the
    /// peer channel.
    fn peer_body(&self, epoch: u64, msg: &PeerMessage) -> Bytes;
    /// Encodes `msg` once for the client channel.
    fn client_body(&self, msg: &ReplicaMessage) -> Bytes;
    /// Hands frame bodies to replica `to`'s connection; false if it is
    /// down or its mailbox is full (the bodies are then dropped).
    fn to_peer(&self, to: ReplicaId, bodies: Vec<Bytes>) -> bool;
    /// Hands frame bodies to `client`'s connection; false as above.
    fn to_client(&self, client: ClientId, bodies: Vec<Bytes>) -> bool;
    /// Hands one frame body to every connected client; returns how many
    /// took it.
    fn to_all_clients(&self, body: Bytes) -> usize;
    /// Closes `client`'s connections (it misbehaved).
    fn close_client(&self, client: ClientId);
    /// The replicas to keep connections with, and to accept connections
    /// from: those of the epochs this replica is concerned with. Called
    /// when that set changes.
    fn set_peers(&self, peers: Vec<PeerAddress>);
}

/// A replica to keep a connection with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddress {
    /// Its id.
    pub id: ReplicaId,
    /// Where it listens; a host name is looked up at each dial.
    pub address: palisade_wire::address::HostPort,
    /// Its identity key.
    pub key: ed25519_dalek::VerifyingKey,
}

/// Frame bodies for several connections, gathered during one wake-up so that
/// each connection gets one mailbox message instead of one per frame. A
/// message holds at most [`BATCH_BYTES`] (a single larger frame goes alone),
/// so a mailbox bounded in messages stays bounded in bytes.
pub struct Outbox<K> {
    open: BTreeMap<K, (usize, Vec<Bytes>)>,
}

impl<K: Ord + Copy> Outbox<K> {
    /// An empty outbox.
    pub fn new() -> Self {
        Outbox { open: BTreeMap::new() }
    }

    /// Adds `body` for `to`; returns a full batch for `to` to send now.
    pub fn push(&mut self, to: K, body: Bytes) -> Option<Vec<Bytes>> {
        let (bytes, bodies) = self.open.entry(to).or_default();
        let full = (!bodies.is_empty() && *bytes + body.len() > BATCH_BYTES).then(|| {
            *bytes = 0;
            std::mem::take(bodies)
        });
        *bytes += body.len();
        bodies.push(body);
        full
    }

    /// Everything still gathered, one batch per connection.
    pub fn drain(&mut self) -> impl Iterator<Item = (K, Vec<Bytes>)> {
        std::mem::take(&mut self.open).into_iter().map(|(k, (_, bodies))| (k, bodies))
    }
}

impl<K: Ord + Copy> Default for Outbox<K> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use parking_lot::Mutex;

    /// Keeps what the stages send, to count it.
    #[derive(Default)]
    pub(crate) struct Collect {
        peers: Mutex<BTreeMap<ReplicaId, usize>>,
        clients: Mutex<BTreeMap<ClientId, usize>>,
        pub peer_set: Mutex<Vec<ReplicaId>>,
        pub closed: Mutex<Vec<ClientId>>,
    }

    impl Collect {
        pub fn peer_bodies(&self, to: ReplicaId) -> usize {
            self.peers.lock().get(&to).copied().unwrap_or(0)
        }
        pub fn client_bodies(&self, to: ClientId) -> usize {
            self.clients.lock().get(&to).copied().unwrap_or(0)
        }
    }

    impl Egress for Collect {
        fn me(&self) -> ReplicaId {
            ReplicaId(0)
        }
        fn max_frame_bytes(&self) -> usize {
            1 << 20
        }
        fn peer_body(&self, epoch: u64, msg: &PeerMessage) -> Bytes {
            palisade_wire::envelope::encode_peer(1, epoch, msg)
        }
        fn client_body(&self, msg: &ReplicaMessage) -> Bytes {
            palisade_wire::envelope::encode(1, msg)
        }
        fn to_peer(&self, to: ReplicaId, bodies: Vec<Bytes>) -> bool {
            *self.peers.lock().entry(to).or_default() += bodies.len();
            true
        }
        fn to_client(&self, to: ClientId, bodies: Vec<Bytes>) -> bool {
            *self.clients.lock().entry(to).or_default() += bodies.len();
            true
        }
        fn to_all_clients(&self, _body: Bytes) -> usize {
            0
        }
        fn close_client(&self, client: ClientId) {
            self.closed.lock().push(client);
        }
        fn set_peers(&self, peers: Vec<PeerAddress>) {
            *self.peer_set.lock() = peers.iter().map(|p| p.id).collect();
        }
    }

    #[test]
    fn an_outbox_batches_per_connection_within_the_byte_bound() {
        let mut o = Outbox::new();
        let half = Bytes::from(vec![0u8; BATCH_BYTES / 2]);
        assert!(o.push(1u32, half.clone()).is_none());
        assert!(o.push(2u32, half.clone()).is_none());
        assert!(o.push(1u32, half.clone()).is_none(), "exactly BATCH_BYTES still fits");
        let full = o.push(1u32, Bytes::from_static(b"x")).expect("the next body closes the batch");
        assert_eq!(full.len(), 2);
        let big = Bytes::from(vec![0u8; BATCH_BYTES * 2]);
        assert!(o.push(3u32, big).is_none(), "a single larger frame goes alone");
        let rest: BTreeMap<u32, usize> = o.drain().map(|(k, b)| (k, b.len())).collect();
        assert_eq!(rest, BTreeMap::from([(1, 1), (2, 1), (3, 1)]));
        assert_eq!(o.drain().count(), 0);
    }
}
