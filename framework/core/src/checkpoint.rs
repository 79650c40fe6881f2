//! Checkpoint certificates: a quorum of signed, matching CHECKPOINT messages.

use crate::crypto::{self, Crypto, Domain};
use crate::message::{CheckpointBody, CheckpointCert, Signed};
use crate::types::{Digest, Membership, SeqNo};
use std::collections::BTreeSet;

/// The certificate every replica starts from: sequence number 0, the state
/// of a freshly created service, no proof needed.
pub fn genesis(state: Digest) -> CheckpointCert {
    CheckpointCert { seq: SeqNo(0), state, proof: Vec::new() }
}

/// Why a checkpoint certificate was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertError {
    /// Sequence number 0 with a state other than this replica's genesis.
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
    genesis_state: Digest,
    cert: &CheckpointCert,
) -> Result<(), CertError> {
    if cert.seq == SeqNo(0) {
        return if cert.state == genesis_state && cert.proof.is_empty() {
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
    for vote in &cert.proof {
        if vote.body.seq != cert.seq || vote.body.state != cert.state {
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
