//! Signature stand-ins for tests and benchmarks.

use bytes::Bytes;
use palisade_core::message::Signature;
use palisade_core::{Crypto, Digest, ReplicaId, Request};

/// Signatures are a keyed hash of the signer's id: enough to tell signers
/// apart, and to forge one in a test only on purpose. Client requests are
/// authentic when their `auth` is `signed`.
#[derive(Clone, Debug)]
pub struct TestCrypto(pub ReplicaId);

fn tag(who: ReplicaId, payload: &[u8]) -> Bytes {
    Bytes::copy_from_slice(&Digest::of_parts(&[b"k", &who.0.to_le_bytes(), payload]).0)
}

impl Crypto for TestCrypto {
    fn sign(&self, payload: &[u8]) -> Signature {
        Signature(tag(self.0, payload))
    }
    fn verify(&self, signer: ReplicaId, payload: &[u8], sig: &Signature) -> bool {
        sig.0 == tag(signer, payload)
    }
    fn verify_request(&self, r: &Request) -> bool {
        r.auth.as_ref() == b"signed"
    }
}

/// Signs nothing and accepts everything: what the core itself costs.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCrypto;

impl Crypto for NoCrypto {
    fn sign(&self, _: &[u8]) -> Signature {
        Signature(Bytes::new())
    }
    fn verify(&self, _: ReplicaId, _: &[u8], _: &Signature) -> bool {
        true
    }
    fn verify_request(&self, _: &Request) -> bool {
        true
    }
}
