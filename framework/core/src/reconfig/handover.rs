//! The links of the chain of membership epochs: each new configuration
//! with the certificate, signed by the epoch before, of the checkpoint it
//! started at, and the check a joiner, a laggard or a client makes of it.

use super::Configuration;
use crate::types::{Digest, SeqNo};
use serde::{Deserialize, Serialize};

/// One link of the chain of epochs: an epoch's configuration, and the
/// certificate, signed by a quorum of the epoch before, of the checkpoint it
/// started at. Every vote of the certificate names the digest of
/// `config`, so the link proves the configuration without the state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// The configuration of the new epoch.
    pub config: Configuration,
    /// The handover checkpoint, certified by the previous epoch's members.
    pub cert: crate::message::CheckpointCert,
}

/// Why a link of the chain was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandoverError {
    /// Not the epoch after the one it is checked against, or another
    /// cluster or view manager.
    NotNext,
    /// The certificate does not name this configuration.
    WrongConfiguration,
    /// The certificate does not hold under the previous epoch's members.
    BadCertificate(crate::checkpoint::CertError),
}

impl Handover {
    /// Checks this link against `prev`, the configuration of the epoch
    /// before, with `crypto` verifying that epoch's signatures.
    pub fn verify<C: crate::crypto::Crypto + ?Sized>(
        &self,
        prev: &Configuration,
        crypto: &C,
        checkpoint_interval: u64,
    ) -> Result<(), HandoverError> {
        let c = &self.config;
        if c.epoch != prev.epoch + 1 || c.cluster != prev.cluster || c.view_manager != prev.view_manager {
            return Err(HandoverError::NotNext);
        }
        if self.cert.proof.first().map(|v| v.body.config) != Some(c.digest()) {
            return Err(HandoverError::WrongConfiguration);
        }
        let membership = prev.membership();
        // Any certificate with a proof is above this stand-in genesis.
        let genesis = crate::checkpoint::Genesis { seq: SeqNo(0), state: Digest::default() };
        crate::checkpoint::verify_cert(
            crypto,
            &membership,
            membership.quorum(),
            checkpoint_interval,
            genesis,
            &self.cert,
        )
        .map_err(HandoverError::BadCertificate)
    }
}
