//! Checkpoint certificates: a quorum of signed, matching CHECKPOINT messages.

use crate::crypto::{self, Crypto, Domain};
use crate::message::{CheckpointBody, CheckpointCert, Signed};
use crate::types::{Digest, Membership, SeqNo};
use std::collections::BTreeSet;

/// The certificate every replica starts from: sequence number 0, the state
/// of a freshly created service, no proof needed.
pub fn genesis(state: Digest) -> CheckpointCert {
    Genesis::new(state).cert()
}

/// Where a replica's log starts: the checkpoint it takes on trust because it
/// computed or verified it itself. For the first epoch that is sequence
/// number 0 and the fresh service's state; for a later epoch, the handover
/// checkpoint the previous epoch's members certified (docs/reconfiguration.md):
/// no certificate of one epoch is ever checked against another's members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Genesis {
    /// Its sequence number.
    pub seq: SeqNo,
    /// The state there.
    pub state: Digest,
}

impl Genesis {
    /// Sequence number 0 with `state`.
    pub fn new(state: Digest) -> Genesis {
        Genesis { seq: SeqNo(0), state }
    }

    /// The certificate standing for it: no proof.
    pub fn cert(self) -> CheckpointCert {
        CheckpointCert { seq: self.seq, state: self.state, proof: Vec::new() }
    }
}

/// Why a checkpoint certificate was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertError {
    /// The genesis sequence number with another state, or a sequence
    /// number below it.
    WrongGenesis,
    /// Not a multiple of the checkpoint interval.
    NotACheckpoint,
    /// A proof entry for another sequence number or state.
    Mismatch,
    /// A signer outside the membership, or the same signer twice.
    BadSigner,
    /// A signature that does not verify.
    BadSignature,
    /// Fewer distinct signers than a quorum.
    TooFewSigners,
}

/// Checks that `cert` proves a stable checkpoint under `membership`.
pub fn verify_cert<C: Crypto + ?Sized>(
    crypto: &C,
    membership: &Membership,
    quorum: usize,
    interval: u64,
    genesis: Genesis,
    cert: &CheckpointCert,
) -> Result<(), CertError> {
    if cert.seq < genesis.seq {
        return Err(CertError::WrongGenesis);
    }
    if cert.seq == genesis.seq {
        return if cert.state == genesis.state && cert.proof.is_empty() {
            Ok(())
        } else {
            Err(CertError::WrongGenesis)
        };
    }
    if cert.seq.0 % interval != 0 {
        return Err(CertError::NotACheckpoint);
    }
    if cert.proof.len() > membership.n() {
        return Err(CertError::BadSigner);
    }
    let mut signers = BTreeSet::new();
    let config = cert.proof.first().map(|v| v.body.config);
    for vote in &cert.proof {
        if vote.body.seq != cert.seq || vote.body.state != cert.state || Some(vote.body.config) != config {
            return Err(CertError::Mismatch);
        }
        if !membership.contains(vote.body.replica) || !signers.insert(vote.body.replica) {
            return Err(CertError::BadSigner);
        }
        if !verify_vote(crypto, vote) {
            return Err(CertError::BadSignature);
        }
    }
    if signers.len() < quorum {
        return Err(CertError::TooFewSigners);
    }
    Ok(())
}

/// Checks one signed CHECKPOINT against its stated author.
pub fn verify_vote<C: Crypto + ?Sized>(crypto: &C, vote: &Signed<CheckpointBody>) -> bool {
    crypto::verify(crypto, Domain::Checkpoint, vote.body.replica, vote)
}
