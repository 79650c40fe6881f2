//! The unreplicated baseline: one server running the same service behind the
//! same client, wire format and channel authentication, without consensus.
//! Palisade's throughput divided by this one's is what replication costs.

use bytes::BytesMut;
use ed25519_dalek::SigningKey;
use palisade_core::{Batch, ClientId, Executor, ReplicaId, RequestId, SeqNo, Service, ViewNo};
use palisade_runtime::net::accept_handshake;
use palisade_wire::envelope::{self, Answer, ClientMessage, ReplicaMessage};
use palisade_wire::frame::FrameDecoder;
use palisade_wire::handshake::Keyring;
use palisade_wire::ClusterConfig;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves `cluster`'s single "replica" forever, running `service`.
/// Timestamps come from this server's clock, as a primary's would.
pub async fn serve<S: Service + Send + 'static>(
    cluster: ClusterConfig,
    key: SigningKey,
    service: S,
) -> std::io::Result<()> {
    let me = ReplicaId(0);
    let address = cluster.replicas[&me]
        .address
        .resolve()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "the server's address does not resolve"))?;
    let listener = TcpListener::bind(address).await?;
    let keyring = Arc::new(Keyring::from_config(&cluster));
    let key = Arc::new(key);
    let exec = Arc::new(Mutex::new(Executor::new(service, 1024)));
    let seq = Arc::new(AtomicU64::new(1));
    let cluster_id = cluster.cluster_id;
    let max_frame = cluster.max_frame_bytes + palisade_wire::channel::MAC_BYTES;
    loop {
        let (mut stream, _) = listener.accept().await?;
        let (keyring, key, exec, seq) = (keyring.clone(), key.clone(), exec.clone(), seq.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let Ok(session) = accept_handshake(&mut stream, me, &key, &keyring).await else { return };
            let (mut sealer, mut opener) = (session.sealer, session.opener);
            let frames = FrameDecoder::new(max_frame);
            let mut inbuf = BytesMut::with_capacity(256 << 10);
            let mut out = BytesMut::with_capacity(256 << 10);
            loop {
                match stream.read_buf(&mut inbuf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                // Everything that arrived in one read is one batch.
                let mut requests = Vec::new();
                while let Ok(Some(payload)) = frames.decode(&mut inbuf) {
                    let Ok(body) = opener.open(payload) else { return };
                    match envelope::decode_client(cluster_id, &body) {
                        Ok(ClientMessage::Request(r)) => requests.push(r),
                        Ok(ClientMessage::Requests(rs)) => requests.extend(rs),
                        // One unreplicated server: no membership to tell.
                        Ok(ClientMessage::ChainQuery { .. } | ClientMessage::Status) => {}
                        Err(_) => return,
                    }
                }
                if requests.is_empty() {
                    continue;
                }
                // Reads are answered at once from the state, as replicas answer
                // them on the read-only path; the rest is one batch.
                let mut by_client: BTreeMap<ClientId, Vec<(RequestId, Answer)>> = BTreeMap::new();
                let (reads, requests): (Vec<_>, Vec<_>) = requests.into_iter().partition(|r| r.read_only);
                {
                    let exec = exec.lock();
                    for r in &reads {
                        by_client.entry(r.client).or_default().push((r.id, Answer::Full(exec.execute_read_only(r))));
                    }
                }
                let executed = if requests.is_empty() {
                    Vec::new()
                } else {
                    let s = SeqNo(seq.fetch_add(1, Ordering::Relaxed));
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    let batch = Batch { timestamp_ms: now, proposed_in: ViewNo(0), requests };
                    exec.lock().execute_batch(s, ViewNo(0), &batch)
                };
                // Answered as a replica answers: one frame per client per batch.
                out.clear();
                for e in executed {
                    by_client.entry(e.client).or_default().push((e.request, Answer::Full(e.result)));
                }
                for (client, answers) in by_client {
                    for chunk in answers.chunks(envelope::MAX_LIST) {
                        let msg =
                            ReplicaMessage::Replies { view: ViewNo(0), replica: me, client, answers: chunk.to_vec() };
                        sealer.seal_message(cluster_id, &msg, &mut out);
                    }
                }
                if stream.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}
