//! The core's `Crypto` trait with real keys: ed25519 for replica
//! statements, client signatures checked with the cluster-wide rule.

use bytes::Bytes;
use ed25519_dalek::{Signature as EdSignature, Signer, SigningKey, VerifyingKey};
use palisade_core::message::Signature;
use palisade_core::{Crypto, Digest, ReplicaId, Request};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

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

/// One replica's keys and its view of everyone else's.
pub struct Ed25519Crypto {
    key: SigningKey,
    replicas: BTreeMap<ReplicaId, VerifyingKey>,
    client_signatures: bool,
    verified: Arc<VerifiedRequests>,
}

impl Ed25519Crypto {
    /// A replica's crypto from its key, the cluster's public keys and the
    /// verification stage's cache of checked requests.
    pub fn new(
        key: SigningKey,
        replicas: BTreeMap<ReplicaId, VerifyingKey>,
        client_signatures: bool,
        verified: Arc<VerifiedRequests>,
    ) -> Self {
        Ed25519Crypto { key, replicas, client_signatures, verified }
    }
}

impl Crypto for Ed25519Crypto {
    fn sign(&self, payload: &[u8]) -> Signature {
        Signature(Bytes::copy_from_slice(&self.key.sign(payload).to_bytes()))
    }

    fn verify(&self, signer: ReplicaId, payload: &[u8], signature: &Signature) -> bool {
        let Some(key) = self.replicas.get(&signer) else {
            return false;
        };
        let Ok(bytes) = <[u8; 64]>::try_from(signature.0.as_ref()) else {
            return false;
        };
        // The cofactored rule, as for clients, so every replica agrees.
        ed25519_dalek::verify_batch(&[payload], &[EdSignature::from_bytes(&bytes)], &[*key]).is_ok()
    }

    fn verify_request(&self, request: &Request) -> bool {
        // Without client signatures a request inside a PRE-PREPARE is
        // trusted to come from the primary (docs/security.md). With them,
        // the verification stage has usually checked it already, in a batch.
        !self.client_signatures
            || self.verified.contains(request)
            || palisade_wire::verify::verify_request(request).is_ok()
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
