//! The chain of epochs as the runtime and clients hold it: the genesis
//! configuration from `cluster.toml`, the links that follow it, their
//! checks, and the file that keeps them beside the configuration.
//!
//! Each link is certified by a quorum of the epoch before it
//! (docs/reconfiguration.md), so a chain from any single replica can be
//! checked from `cluster.toml` alone: a client or a joiner adopts it
//! without trusting whoever sent it.

use crate::address::HostPort;
use crate::config::{ClusterConfig, ReplicaInfo};
use ed25519_dalek::VerifyingKey;
use palisade_core::message::Signature;
use palisade_core::reconfig::{Configuration, Handover, Member};
use palisade_core::{Crypto, ReplicaId, Request};
use std::collections::BTreeMap;
use std::path::Path;

/// The chain file's name inside a configuration or data directory.
pub const CHAIN_FILE: &str = "chain.bin";

/// First bytes of a chain file, with its format version.
const CHAIN_MAGIC: &[u8; 8] = b"PLSCHN02";

/// Whether `signature` is the holder of `key`'s over `payload`, by the
/// cofactored rule every replica uses (see [`crate::verify`]).
pub fn signature_checks(key: &VerifyingKey, payload: &[u8], signature: &Signature) -> bool {
    <[u8; 64]>::try_from(signature.0.as_ref())
        .is_ok_and(|bytes| crate::verify::signature_checks(key.as_bytes(), payload, &bytes))
}

/// The replicas' public keys in one epoch: enough to check that epoch's
/// signed statements (a handover certificate among them). It holds no
/// secret, so it signs nothing: its signatures are empty, and an empty
/// signature verifies under no key.
pub struct EpochKeys {
    keys: BTreeMap<ReplicaId, VerifyingKey>,
    epoch: u64,
}

impl EpochKeys {
    /// The keys of `config`'s members. A member whose key is not a valid
    /// point has no key here, so nothing it signs checks.
    pub fn of(config: &Configuration) -> EpochKeys {
        let keys = config
            .members
            .iter()
            .filter_map(|m| VerifyingKey::from_bytes(&m.public_key).ok().map(|k| (m.id, k)))
            .collect();
        EpochKeys { keys, epoch: config.epoch }
    }
}

impl Crypto for EpochKeys {
    fn sign(&self, _payload: &[u8]) -> Signature {
        Signature(bytes::Bytes::new())
    }

    fn verify(&self, signer: ReplicaId, payload: &[u8], signature: &Signature) -> bool {
        self.keys.get(&signer).is_some_and(|k| signature_checks(k, payload, signature))
    }

    fn verify_request(&self, _request: &Request) -> bool {
        false
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl ClusterConfig {
    /// Epoch 0: the membership `cluster.toml` describes.
    pub fn genesis(&self) -> Configuration {
        let members = self
            .replicas
            .iter()
            .map(|(id, r)| Member { id: *id, address: r.address.to_string(), public_key: r.public_key.to_bytes() })
            .collect();
        Configuration::new(
            0,
            self.cluster_id,
            members,
            self.membership.f(),
            self.membership.mode(),
            self.view_manager.to_bytes(),
        )
        .expect("a loaded cluster.toml is a valid membership")
    }

    /// This cluster with `config`'s members, f and mode: what a client or
    /// the network stage connects to in that epoch. A member whose address
    /// is malformed, or whose key is not a valid point, is left out
    /// (and named in the error when none is left).
    pub fn at(&self, config: &Configuration) -> Result<ClusterConfig, String> {
        let mut replicas = BTreeMap::new();
        let mut bad = Vec::new();
        for m in &config.members {
            match (HostPort::parse(&m.address), VerifyingKey::from_bytes(&m.public_key)) {
                (Ok(address), Ok(public_key)) => {
                    replicas.insert(m.id, ReplicaInfo { address, public_key });
                }
                _ => bad.push(m.id),
            }
        }
        if replicas.is_empty() {
            return Err(format!("no member of epoch {} can be reached (bad addresses or keys: {bad:?})", config.epoch));
        }
        Ok(ClusterConfig { membership: config.membership(), replicas, ..self.clone() })
    }
}

/// Why links were refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainError(pub String);

impl std::fmt::Display for ChainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ChainError {}

/// A chain held from the genesis configuration on: every link checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    genesis: Configuration,
    links: Vec<Handover>,
}

impl Chain {
    /// Only the genesis configuration.
    pub fn new(genesis: Configuration) -> Chain {
        Chain { genesis, links: Vec::new() }
    }

    /// The newest configuration.
    pub fn newest(&self) -> &Configuration {
        self.links.last().map_or(&self.genesis, |l| &l.config)
    }

    /// The links after genesis, in epoch order.
    pub fn links(&self) -> &[Handover] {
        &self.links
    }

    /// Checks `links` (in any order, duplicates and known ones skipped)
    /// from the newest configuration on, and keeps those that check.
    /// Returns how many were new; a link that does not check stops the
    /// walk, and is the error when nothing new was kept.
    pub fn extend(&mut self, mut links: Vec<Handover>) -> Result<usize, ChainError> {
        links.sort_by_key(|l| l.config.epoch);
        let mut added = 0;
        for link in links {
            let prev = self.newest();
            if link.config.epoch <= prev.epoch {
                continue;
            }
            // A client does not know the replicas' checkpoint interval; the
            // quorum's signatures are what it relies on.
            if let Err(e) = link.verify(prev, &EpochKeys::of(prev), 1) {
                if added == 0 {
                    return Err(ChainError(format!("the link to epoch {} does not check: {e:?}", link.config.epoch)));
                }
                break;
            }
            self.links.push(link);
            added += 1;
        }
        Ok(added)
    }

    /// Reads `dir/chain.bin`, if there is one, and checks it from
    /// `genesis`. A file that is unreadable or does not check is an error:
    /// it was written by this software from checked links.
    pub fn load(dir: &Path, genesis: Configuration) -> Result<Chain, ChainError> {
        let mut chain = Chain::new(genesis);
        let path = dir.join(CHAIN_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(chain),
            Err(e) => return Err(ChainError(format!("{}: {e}", path.display()))),
        };
        let links = bytes
            .strip_prefix(CHAIN_MAGIC.as_slice())
            .and_then(|rest| postcard::from_bytes::<Vec<Handover>>(rest).ok())
            .ok_or_else(|| ChainError(format!("{}: not a chain file of this version", path.display())))?;
        let n = links.len();
        let added = chain.extend(links).map_err(|e| ChainError(format!("{}: {e}", path.display())))?;
        if added != n {
            return Err(ChainError(format!("{}: only {added} of {n} links check", path.display())));
        }
        Ok(chain)
    }

    /// Writes the links to `dir/chain.bin` (see [`save_links`]).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        save_links(dir, &self.links)
    }
}

/// Writes `links` to `dir/chain.bin`, whole or not at all (a temporary file
/// synced, then renamed over the old one).
pub fn save_links(dir: &Path, links: &[Handover]) -> std::io::Result<()> {
    let mut bytes = CHAIN_MAGIC.to_vec();
    bytes.extend(postcard::to_allocvec(links).map_err(std::io::Error::other)?);
    // Unique per write: two clients of one process (two view managers at
    // once) may save the same directory's chain together.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("{CHAIN_FILE}.tmp-{}-{n}", std::process::id()));
    std::fs::write(&tmp, &bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(CHAIN_FILE))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The newest membership a configuration directory knows: `cluster.toml`,
/// then the chain saved beside it, if any.
pub fn load_current(dir: &Path) -> Result<(ClusterConfig, Chain), String> {
    let genesis = ClusterConfig::load(dir).map_err(|e| e.to_string())?;
    let chain = Chain::load(dir, genesis.genesis()).map_err(|e| e.to_string())?;
    let current = genesis.at(chain.newest())?;
    Ok((current, chain))
}
