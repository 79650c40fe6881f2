//! The core's `Crypto` trait with real keys: ed25519 for replica
//! statements, client signatures checked with the cluster-wide rule.

use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey};
use palisade_core::message::Signature;
use palisade_core::reconfig::Configuration;
use palisade_core::{ClientId, Crypto, Digest, ReplicaId, Request};
use palisade_wire::chain::EpochKeys;
use palisade_wire::RequestAuth;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a client's request-MAC key stays good after its channel
/// closes: requests MACed under it may still be retransmitted, or proposed
/// by the primary, a while after a reconnect.
pub const CLIENT_KEY_GRACE: Duration = Duration::from_secs(30);

/// Keys one client may hold at once with this replica (its live channels
/// and those in their grace period).
const KEYS_PER_CLIENT: usize = 4;

/// A client's key, and when it stops being good (`None` while its channel
/// is open).
type HeldKey = ([u8; 32], Option<Instant>);

/// The request-MAC key each client shares with this replica, one per
/// channel (derived in its handshake). A key outlives its channel by a
/// grace period, so that a request MACed under it (retransmitted, or
/// proposed later by the primary) still checks after a reconnect. Bounded:
/// beyond `capacity` clients, expired keys go first, and a new key that
/// still finds no room is not kept (that client's requests then fall back
/// to their signatures).
pub struct ClientKeys {
    inner: Mutex<HashMap<ClientId, Vec<HeldKey>>>,
    grace: Duration,
    capacity: usize,
}

impl ClientKeys {
    /// A table of at most `capacity` clients, keeping keys `grace` after
    /// their channel closes.
    pub fn new(capacity: usize, grace: Duration) -> ClientKeys {
        ClientKeys { inner: Mutex::new(HashMap::new()), grace, capacity: capacity.max(1) }
    }

    /// A channel with `client` opened with `key`.
    pub fn connected(&self, client: ClientId, key: [u8; 32]) {
        let now = Instant::now();
        let mut g = self.inner.lock();
        if !g.contains_key(&client) && g.len() >= self.capacity {
            g.retain(|_, keys| {
                keys.retain(|(_, until)| live(until, now));
                !keys.is_empty()
            });
            if g.len() >= self.capacity {
                return;
            }
        }
        let keys = g.entry(client).or_default();
        keys.retain(|(_, until)| live(until, now));
        if keys.len() >= KEYS_PER_CLIENT {
            keys.remove(0);
        }
        keys.push((key, None));
    }

    /// The channel with `client` that used `key` closed: the key is good
    /// for the grace period more.
    pub fn disconnected(&self, client: ClientId, key: &[u8; 32]) {
        let until = Instant::now() + self.grace;
        if let Some(keys) = self.inner.lock().get_mut(&client) {
            for (_, t) in keys.iter_mut().filter(|(k, _)| k == key) {
                *t = Some(until);
            }
        }
    }

    /// Whether `request`'s MAC for `me` checks under a key its client holds.
    pub fn check(&self, request: &Request, me: ReplicaId) -> bool {
        let now = Instant::now();
        // At most `KEYS_PER_CLIENT` keys, copied out so that no MAC is
        // computed under the lock.
        let mut keys = [[0u8; 32]; KEYS_PER_CLIENT];
        let mut n = 0;
        match self.inner.lock().get(&request.client) {
            Some(held) => {
                for (k, _) in held.iter().filter(|(_, t)| live(t, now)).take(KEYS_PER_CLIENT) {
                    keys[n] = *k;
                    n += 1;
                }
            }
            None => return false,
        }
        palisade_wire::verify::mac_checks_any(request, me, &keys[..n])
    }
}

/// Whether a key that expires at `until` (never, while its channel is
/// open) is still good at `now`.
fn live(until: &Option<Instant>, now: Instant) -> bool {
    until.is_none_or(|t| t > now)
}

/// Requests whose client signature the verification stage has checked, so
/// the consensus stage need not check them again. Keyed by a digest of the
/// whole request including its signature: a primary that alters a request
/// under someone else's signature gets a full check (and a refusal).
pub struct VerifiedRequests {
    inner: Mutex<(HashSet<Digest>, VecDeque<Digest>)>,
    capacity: usize,
}

impl VerifiedRequests {
    /// A cache of at most `capacity` requests (the oldest go first).
    pub fn new(capacity: usize) -> Self {
        VerifiedRequests { inner: Mutex::new((HashSet::new(), VecDeque::new())), capacity: capacity.max(1) }
    }

    fn key(r: &Request) -> Digest {
        Digest::of_parts(&[&r.signing_bytes(), &r.auth])
    }

    /// Records that `r`'s signature verified.
    pub fn insert(&self, r: &Request) {
        let k = Self::key(r);
        let mut g = self.inner.lock();
        if g.0.insert(k) {
            g.1.push_back(k);
            while g.1.len() > self.capacity {
                if let Some(old) = g.1.pop_front() {
                    g.0.remove(&old);
                }
            }
        }
    }

    /// Whether `r` (exactly, signature included) was verified.
    pub fn contains(&self, r: &Request) -> bool {
        self.inner.lock().0.contains(&Self::key(r))
    }
}

/// One replica's keys and its view of everyone else's, in one epoch.
pub struct Ed25519Crypto {
    me: ReplicaId,
    key: SigningKey,
    peers: EpochKeys,
    auth: RequestAuth,
    verified: Arc<VerifiedRequests>,
    client_keys: Arc<ClientKeys>,
}

impl Ed25519Crypto {
    /// Replica `me`'s crypto in `config`'s epoch, from its key, how
    /// requests are authenticated, the verification stage's cache of
    /// checked requests and the clients' request-MAC keys.
    pub fn new(
        me: ReplicaId,
        key: SigningKey,
        config: &Configuration,
        auth: RequestAuth,
        verified: Arc<VerifiedRequests>,
        client_keys: Arc<ClientKeys>,
    ) -> Self {
        Ed25519Crypto { me, key, peers: EpochKeys::of(config), auth, verified, client_keys }
    }
}

impl Crypto for Ed25519Crypto {
    fn sign(&self, payload: &[u8]) -> Signature {
        Signature(Bytes::copy_from_slice(&self.key.sign(payload).to_bytes()))
    }

    fn verify(&self, signer: ReplicaId, payload: &[u8], signature: &Signature) -> bool {
        self.peers.verify(signer, payload, signature)
    }

    fn verify_request(&self, request: &Request) -> bool {
        // With `trust-primary` a request inside a PRE-PREPARE is trusted to
        // come from the primary (docs/security.md). Otherwise the
        // verification stage has usually checked it already, in a batch.
        !self.auth.clients_sign()
            || self.verified.contains(request)
            || palisade_wire::verify::verify_request(request).is_ok()
    }

    fn accept_proposed(&self, request: &Request) -> bool {
        (self.auth == RequestAuth::Authenticators && self.client_keys.check(request, self.me))
            || self.verify_request(request)
    }

    fn epoch(&self) -> u64 {
        self.peers.epoch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_core::{ClientId, RequestId};

    fn req(op: &'static [u8], sig: &'static [u8]) -> Request {
        Request {
            client: ClientId(1),
            id: RequestId(1),
            read_only: false,
            operation: Bytes::from_static(op),
            auth: Bytes::from_static(sig),
        }
    }

    #[test]
    fn the_cache_matches_exact_requests_only_and_forgets_the_oldest() {
        let c = VerifiedRequests::new(2);
        c.insert(&req(b"a", b"s1"));
        assert!(c.contains(&req(b"a", b"s1")));
        assert!(!c.contains(&req(b"b", b"s1")), "another operation under the same signature");
        assert!(!c.contains(&req(b"a", b"s2")), "another signature");
        c.insert(&req(b"b", b"s1"));
        c.insert(&req(b"c", b"s1"));
        assert!(!c.contains(&req(b"a", b"s1")));
        assert!(c.contains(&req(b"c", b"s1")));
    }
}
