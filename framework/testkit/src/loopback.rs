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

/// Where test ports live: below Linux's ephemeral range (32768 and up), so
/// that no outgoing connection's local port can take a port a replica is
/// about to listen on.
const PORTS_FROM: u16 = 10_000;
/// Each process (test binary) gets a window of this many ports, chosen by
/// its process id; 22 windows fit below the ephemeral range.
const WINDOW: u16 = 1_000;

/// The first of `n` consecutive ports for one test, free when chosen.
/// Each process draws from its own window (by process id) and each test in
/// it takes the next block, so tests and test binaries can run in parallel;
/// a block with a port something else holds is skipped.
pub fn port_block(n: usize) -> u16 {
    let n = u16::try_from(n).expect("fewer than a window of ports");
    assert!(n > 0 && n <= WINDOW / 4, "{n} ports is more than a test needs");
    let base = PORTS_FROM + (std::process::id() % 22) as u16 * WINDOW;
    for _ in 0..2 * WINDOW / n + 2 {
        let offset = NEXT_PORT.fetch_add(n, Ordering::Relaxed) % WINDOW;
        if offset + n > WINDOW {
            continue;
        }
        let first = base + offset;
        let free = (first..first + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return first;
        }
    }
    panic!("no {n} free consecutive ports in {base}..{}", base + WINDOW)
}

/// `n` ports for one test (see [`port_block`]).
pub fn ports(n: usize) -> Vec<u16> {
    let first = port_block(n);
    (first..first + n as u16).collect()
}

/// A cluster of `n` replicas on loopback in `mode`, and each replica's key.
pub fn cluster(n: usize, mode: Mode, request_auth: RequestAuth) -> (ClusterConfig, Vec<SigningKey>) {
    let keys: Vec<SigningKey> = (0..n).map(|_| generate(&mut OsRng)).collect();
    let replicas: BTreeMap<ReplicaId, ReplicaInfo> = ports(n)
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let address: SocketAddr = ([127, 0, 0, 1], p).into();
            (ReplicaId(i as u32), ReplicaInfo { address: address.into(), public_key: keys[i].verifying_key() })
        })
        .collect();
    let config = ClusterConfig {
        cluster_id: 99,
        membership: Membership::with_size(n, mode).expect("a valid cluster size"),
        request_auth,
        requests_to_all: false,
        max_frame_bytes: 4 << 20,
        view_manager: generate(&mut OsRng).verifying_key(),
        replicas,
    };
    (config, keys)
}
