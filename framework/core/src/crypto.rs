//! The one place the core touches cryptography, behind a small trait.
//!
//! The runtime implements it with ed25519; the simulator with a fast keyed
//! hash that still models who can sign what (a Byzantine replica only holds
//! its own key). Digests (SHA-256) are computed in the core directly because
//! they need no secrets.

use crate::message::{canonical_bytes, Request, Signature, Signed};
use crate::types::ReplicaId;
use serde::Serialize;

/// Signing and verification on behalf of one replica.
pub trait Crypto {
    /// Signs `payload` with this replica's key.
    fn sign(&self, payload: &[u8]) -> Signature;
    /// Whether `signature` is `signer`'s over `payload`.
    fn verify(&self, signer: ReplicaId, payload: &[u8], signature: &Signature) -> bool;
    /// Whether the request carries its client's valid signature: the
    /// verdict every correct replica reaches alike. The primary asks it of
    /// every request before proposing it (so that a faulty client cannot
    /// get a correct primary's proposal refused), and a backup asks it of a
    /// request it would otherwise blame the primary for not ordering.
    fn verify_request(&self, request: &Request) -> bool;

    /// Whether a request inside a PRE-PREPARE came from its client: this
    /// replica's own MAC in the request's authenticator checks, or else its
    /// signature does (PBFT's authenticators, with Aardvark's signature
    /// as the fallback, so a client cannot split the correct replicas).
    /// Implementations without authenticators check the signature.
    fn accept_proposed(&self, request: &Request) -> bool {
        self.verify_request(request)
    }

    /// The epoch this replica's statements belong to: signed into every
    /// CHECKPOINT, VIEW-CHANGE and NEW-VIEW, so that none can be replayed
    /// in another epoch, where views start again from 0.
    fn epoch(&self) -> u64 {
        0
    }
}

/// Domain separation: a signature for one kind of statement can never be
/// passed off as another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// CHECKPOINT bodies.
    Checkpoint,
    /// VIEW-CHANGE bodies.
    ViewChange,
    /// NEW-VIEW bodies.
    NewView,
}

impl Domain {
    fn tag(self) -> &'static [u8] {
        match self {
            Domain::Checkpoint => b"palisade/checkpoint/v1",
            Domain::ViewChange => b"palisade/view-change/v1",
            Domain::NewView => b"palisade/new-view/v1",
        }
    }
}

/// The bytes signed for `body` in `domain` and `epoch`. Epoch 0 adds
/// nothing, so a cluster that was never reconfigured signs as before.
pub fn signing_bytes<T: Serialize>(domain: Domain, epoch: u64, body: &T) -> Vec<u8> {
    let mut out = domain.tag().to_vec();
    if epoch > 0 {
        out.extend_from_slice(b"/epoch/");
        out.extend_from_slice(&epoch.to_le_bytes());
    }
    out.extend_from_slice(&canonical_bytes(body));
    out
}

/// Signs `body` in `domain`, for the signer's epoch.
pub fn sign<C: Crypto + ?Sized, T: Serialize>(crypto: &C, domain: Domain, body: T) -> Signed<T> {
    let signature = crypto.sign(&signing_bytes(domain, crypto.epoch(), &body));
    Signed { body, signature }
}

/// Checks `signed` is `signer`'s statement in `domain`.
pub fn verify<C: Crypto + ?Sized, T: Serialize>(
    crypto: &C,
    domain: Domain,
    signer: ReplicaId,
    signed: &Signed<T>,
) -> bool {
    crypto.verify(signer, &signing_bytes(domain, crypto.epoch(), &signed.body), &signed.signature)
}
