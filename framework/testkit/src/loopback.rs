//! Clusters on 127.0.0.1 for tests with real sockets: a configuration with
//! fresh keys, on ports no other test of this process uses.

use ed25519_dalek::SigningKey;
use palisade_core::{Membership, Mode, ReplicaId};
use palisade_wire::config::{ClusterConfig, ReplicaInfo, RequestAuth};
use palisade_wire::keys::generate;
use rand_core::OsRng;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// `n` ports for one test: each process gets its own range (by process
/// id), and each test in it the next ports of that range, so tests and
/// test binaries can run in parallel.
pub fn ports(n: usize) -> Vec<u16> {
    let base = 20_000 + (std::process::id() % 100) as u16 * 100;
    let first = NEXT_PORT.fetch_add(n as u16, Ordering::Relaxed);
    (0..n as u16).map(|i| base + first + i).collect()
}

/// A cluster of `n` replicas on loopback in `mode`, and each replica's key.
pub fn cluster(n: usize, mode: Mode, request_auth: RequestAuth) -> (ClusterConfig, Vec<SigningKey>) {
    let keys: Vec<SigningKey> = (0..n).map(|_| generate(&mut OsRng)).collect();
    let replicas: BTreeMap<ReplicaId, ReplicaInfo> = ports(n)
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let address: SocketAddr = ([127, 0, 0, 1], p).into();
            (ReplicaId(i as u32), ReplicaInfo { address, public_key: keys[i].verifying_key() })
        })
        .collect();
    let config = ClusterConfig {
        cluster_id: 99,
        membership: Membership::with_size(n, mode).expect("a valid cluster size"),
        request_auth,
        max_frame_bytes: 4 << 20,
        view_manager: generate(&mut OsRng).verifying_key(),
        replicas,
    };
    (config, keys)
}
