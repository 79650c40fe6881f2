//! A flooding client: the `flood` role the harness starts with
//! `--flood-client`. It connects to every replica as one client and sends
//! fresh requests as fast as its connections take them, never waiting for
//! answers (it reads and drops them, so its connections stay open): valid
//! ones, authenticated as a real client does, or invalid ones whose
//! signatures fail, which cost the replicas a signature check each.

use bytes::BytesMut;
use ed25519_dalek::SigningKey;
use palisade_core::{ReplicaId, Request, RequestId};
use palisade_wire::envelope::{ClientMessage, Role};
use palisade_wire::handshake::{Initiator, Keyring};
use palisade_wire::keys::{client_id, generate};
use palisade_wire::ClusterConfig;
use rand_core::OsRng;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a flooding client sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FloodKind {
    /// Requests a correct client could send: each is executed.
    Valid,
    /// Requests whose signature does not check: each costs a verification.
    Invalid,
}

/// Requests per frame.
const GROUP: usize = 64;

/// Floods the cluster in `config` for `seconds`, after waiting until the
/// wall clock reaches `start_unix_ms`.
pub(crate) fn run(config: &Path, kind: FloodKind, start_unix_ms: u64, seconds: f64) -> ExitCode {
    let cluster = match ClusterConfig::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("palisade-bench flood: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    match rt.block_on(flood(&cluster, kind, start_unix_ms, seconds)) {
        Ok(sent) => {
            eprintln!("palisade-bench flood: sent {sent} {kind:?} requests to each replica");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("palisade-bench flood: {e}");
            ExitCode::from(2)
        }
    }
}

/// One connection's sending half, and what authenticates requests on it.
struct Conn {
    replica: ReplicaId,
    write: tokio::net::tcp::OwnedWriteHalf,
    sealer: palisade_wire::channel::Sealer,
    request_key: [u8; 32],
}

/// Connects to `replica` as the client holding `key`.
async fn connect(cluster: &ClusterConfig, key: &SigningKey, replica: ReplicaId) -> Result<Conn, String> {
    let keyring = Keyring::from_config(cluster);
    let address = &cluster.replicas.get(&replica).ok_or("no such replica")?.address;
    let mut s =
        tokio::net::TcpStream::connect(address.as_str()).await.map_err(|e| format!("replica {replica}: {e}"))?;
    let (init, hello) = Initiator::start(cluster.cluster_id, Role::Client, key, replica, &mut OsRng);
    palisade_runtime::net::write_raw_frame(&mut s, &hello).await.map_err(|e| e.to_string())?;
    let reply = palisade_runtime::net::read_raw_frame(&mut s, 1 << 16).await.map_err(|e| e.to_string())?;
    let (session, finish) = init.on_reply(&keyring, &reply).map_err(|e| format!("replica {replica}: {e:?}"))?;
    palisade_runtime::net::write_raw_frame(&mut s, &finish).await.map_err(|e| e.to_string())?;
    let (mut read, write) = s.into_split();
    // Answers are read and dropped, so the replicas keep the connection
    // and the flood is all requests.
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        while matches!(read.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    Ok(Conn { replica, write, sealer: session.sealer, request_key: session.request_key })
}

async fn flood(cluster: &ClusterConfig, kind: FloodKind, start_unix_ms: u64, seconds: f64) -> Result<u64, String> {
    let key = generate(&mut OsRng);
    let me = client_id(key.verifying_key().as_bytes());
    let mut conns = Vec::new();
    for id in cluster.replicas.keys() {
        // The replicas may still be starting.
        let mut tries = 0;
        let conn = loop {
            match connect(cluster, &key, *id).await {
                Ok(c) => break c,
                Err(e) if tries >= 100 => return Err(e),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        conns.push(conn);
    }
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    tokio::time::sleep(Duration::from_millis(start_unix_ms.saturating_sub(now_ms))).await;
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let (mut next, mut sent, mut reconnects) = (1u64, 0u64, 0u64);
    let mut out = BytesMut::new();
    let operation = palisade_services::echo::request(0, 0);
    while Instant::now() < until {
        let macs: Vec<(ReplicaId, [u8; 32])> = conns.iter().map(|c| (c.replica, c.request_key)).collect();
        let mut group: Vec<Request> = (0..GROUP)
            .map(|i| Request {
                client: me,
                id: RequestId(next + i as u64),
                read_only: false,
                operation: operation.clone(),
                auth: bytes::Bytes::new(),
            })
            .collect();
        next += GROUP as u64;
        palisade_wire::verify::authenticate_group(&key, &macs, &mut group);
        if kind == FloodKind::Invalid {
            // Altered after signing: the signature (and MACs) no longer
            // check, and each request is its own leaf, so its own check.
            for r in &mut group {
                r.operation = bytes::Bytes::from(r.id.0.to_le_bytes().to_vec());
            }
        }
        let msg = ClientMessage::Requests(group);
        for c in conns.iter_mut() {
            out.clear();
            c.sealer.seal_message(cluster.cluster_id, &msg, &mut out);
            if c.write.write_all(&out).await.is_err() {
                // Closed on us: shake hands again (which costs a signature
                // on both sides) and go on.
                reconnects += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                if let Ok(again) = connect(cluster, &key, c.replica).await {
                    *c = again;
                }
            }
        }
        sent += GROUP as u64;
    }
    eprintln!("palisade-bench flood: {reconnects} reconnections");
    Ok(sent)
}
