//! `palisade keygen`: a ready-to-run configuration directory.
//!
//! Writes `cluster.toml` (public: ids, addresses, public keys) and one secret
//! key file per identity, each readable by its owner only:
//! `replica-<id>.key`, `view-manager.key` and `client.key` (a default
//! identity for command-line clients).

use palisade_core::{Membership, Mode, ReplicaId};
use palisade_wire::address::HostPort;
use palisade_wire::config::{ClusterConfig, ReplicaInfo, CLUSTER_FILE};
use palisade_wire::frame::DEFAULT_MAX_FRAME_BYTES;
use palisade_wire::keys;
use palisade_wire::RequestAuth;
use rand_core::{OsRng, RngCore};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// What to generate.
#[derive(Clone, Debug)]
pub struct KeygenOptions {
    /// Replicas.
    pub replicas: usize,
    /// Where to write.
    pub out: PathBuf,
    /// BFT or CFT.
    pub mode: Mode,
    /// Faults to tolerate; the most the mode allows when `None`.
    pub f: Option<usize>,
    /// Explicit `ip:port` per replica; loopback from `base_port` when empty.
    pub addresses: Vec<HostPort>,
    /// First port for loopback addresses.
    pub base_port: u16,
    /// Cluster id; random when `None`.
    pub cluster_id: Option<u64>,
    /// How backups know a proposed request came from its client.
    pub request_auth: RequestAuth,
    /// Whether clients send every request to every replica (arming the
    /// backups' watch on the primary's batches).
    pub requests_to_all: bool,
}

/// Secret key file of replica `id`.
pub fn replica_key_file(dir: &Path, id: ReplicaId) -> PathBuf {
    dir.join(format!("replica-{}.key", id.0))
}

/// Secret key file of the view manager.
pub fn view_manager_key_file(dir: &Path) -> PathBuf {
    dir.join("view-manager.key")
}

/// Secret key file of the default command-line client.
pub fn client_key_file(dir: &Path) -> PathBuf {
    dir.join("client.key")
}

/// The file `keygen --new-replica` writes beside the key: where the new
/// replica listens, for `palisade replica --join`.
pub fn joining_file(dir: &Path, id: ReplicaId) -> PathBuf {
    dir.join(format!("joining-{}.toml", id.0))
}

/// Where a replica started with `--join` listens, from its joining file.
pub fn joining_address(dir: &Path, id: ReplicaId) -> Result<std::net::SocketAddr, String> {
    let path = joining_file(dir, id);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e} (write it with `palisade keygen --new-replica --id {} --address HOST:PORT`)",
            path.display(),
            id.0
        )
    })?;
    let address = text
        .lines()
        .find_map(|l| {
            l.trim().strip_prefix("address").map(|r| r.trim_start_matches([' ', '=']).trim().trim_matches('"'))
        })
        .ok_or_else(|| format!("{}: no address line", path.display()))?;
    let address = HostPort::parse(address).map_err(|e| format!("{}: {e}", path.display()))?;
    address.resolve().ok_or_else(|| format!("{}: {address} does not resolve", path.display()))
}

/// Generates keys and writes the directory; returns the configuration.
pub fn keygen(opts: &KeygenOptions) -> Result<ClusterConfig, String> {
    let n = opts.replicas;
    let f = opts.f.unwrap_or(opts.mode.max_f(n));
    let ids: Vec<ReplicaId> = (0..n as u32).map(ReplicaId).collect();
    let membership = Membership::new(ids.clone(), f, opts.mode).map_err(|e| format!("--replicas {n}: {e}"))?;
    if !opts.addresses.is_empty() && opts.addresses.len() != n {
        return Err(format!("--addresses lists {} addresses for {n} replicas", opts.addresses.len()));
    }
    let addresses: Vec<HostPort> = if opts.addresses.is_empty() {
        (0..n)
            .map(|i| {
                let port = opts.base_port.checked_add(i as u16).ok_or("--base-port too high for this many replicas")?;
                Ok(HostPort::from(SocketAddr::from(([127, 0, 0, 1], port))))
            })
            .collect::<Result<_, String>>()?
    } else {
        opts.addresses.clone()
    };
    std::fs::create_dir_all(&opts.out).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    let cluster_file = opts.out.join(CLUSTER_FILE);
    if cluster_file.exists() {
        return Err(format!("{} exists; choose another --out or remove it first", cluster_file.display()));
    }
    let mut rng = OsRng;
    let mut replicas = BTreeMap::new();
    for (id, address) in ids.iter().zip(addresses) {
        let key = keys::generate(&mut rng);
        keys::write_secret(&replica_key_file(&opts.out, *id), &key).map_err(|e| e.to_string())?;
        replicas.insert(*id, ReplicaInfo { address, public_key: key.verifying_key() });
    }
    let vm = keys::generate(&mut rng);
    keys::write_secret(&view_manager_key_file(&opts.out), &vm).map_err(|e| e.to_string())?;
    let client = keys::generate(&mut rng);
    keys::write_secret(&client_key_file(&opts.out), &client).map_err(|e| e.to_string())?;
    let config = ClusterConfig {
        cluster_id: opts.cluster_id.unwrap_or_else(|| rng.next_u64() >> 11),
        membership,
        request_auth: opts.request_auth,
        requests_to_all: opts.requests_to_all,
        max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        view_manager: vm.verifying_key(),
        replicas,
    };
    std::fs::write(&cluster_file, config.to_toml()).map_err(|e| format!("{}: {e}", cluster_file.display()))?;
    // Prove the directory loads the way a replica will load it.
    let loaded = ClusterConfig::load(&opts.out).map_err(|e| e.to_string())?;
    for id in &ids {
        let key = keys::read_secret(&replica_key_file(&opts.out, *id)).map_err(|e| e.to_string())?;
        if key.verifying_key() != loaded.replicas[id].public_key {
            return Err(format!("replica {id}'s key file does not match cluster.toml"));
        }
    }
    Ok(loaded)
}
