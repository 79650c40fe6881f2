//! The core's `Crypto` trait with real keys: ed25519 for replica
//! statements, client signatures checked with the cluster-wide rule.

use bytes::Bytes;
use ed25519_dalek::{Signature as EdSignature, Signer, SigningKey, VerifyingKey};
use palisade_core::message::Signature;
use palisade_core::{Crypto, ReplicaId, Request};
use std::collections::BTreeMap;

/// One replica's keys and its view of everyone else's.
pub struct Ed25519Crypto {
    key: SigningKey,
    replicas: BTreeMap<ReplicaId, VerifyingKey>,
    client_signatures: bool,
}

impl Ed25519Crypto {
    /// A replica's crypto from its key and the cluster's public keys.
    pub fn new(key: SigningKey, replicas: BTreeMap<ReplicaId, VerifyingKey>, client_signatures: bool) -> Self {
        Ed25519Crypto { key, replicas, client_signatures }
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
        // trusted to come from the primary (docs/security.md).
        !self.client_signatures || palisade_wire::verify::verify_request(request).is_ok()
    }
}
