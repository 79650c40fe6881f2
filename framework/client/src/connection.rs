//! The task behind each replica's connection: dialling, the handshake,
//! batching requests into frames, and reading answers.

use super::{Inner, Out};
use bytes::{Bytes, BytesMut};
use palisade_core::{ReplicaId, Request};
use palisade_wire::envelope::{self, ClientMessage, ReplicaMessage, Role};
use palisade_wire::frame::FrameDecoder;
use palisade_wire::handshake::{Initiator, Keyring};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How long a replica that missed a full result's grace period is asked at
/// once for the results it is designated to send.
pub(crate) const SLOW_FOR: Duration = Duration::from_secs(1);

/// A connection that wrote this recently counts as busy.
const BUSY: Duration = Duration::from_micros(200);

/// One replica's connection, for as long as the client lives and the
/// replica is a member: dials with backoff, handshakes, then writes what the
/// outbox holds and hands what it reads to the client.
pub(crate) async fn run(inner: std::sync::Weak<Inner>, to: ReplicaId, mut outbox: mpsc::Receiver<Out>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        // A replica no longer a member had its outbox dropped: this
        // connection's task ends (a new one starts if it is added again).
        if outbox.is_closed() {
            return;
        }
        let Some(me) = inner.upgrade() else { return };
        let (address, keyring, cluster, max_frame, epoch) = {
            let m = me.members.read();
            // No longer a member: this connection ends.
            let Some(r) = m.cluster.replicas.get(&to) else { return };
            (
                r.address.clone(),
                Keyring::from_config(&m.cluster),
                m.cluster.cluster_id,
                m.cluster.max_frame_bytes,
                m.chain.newest().epoch,
            )
        };
        let key = me.key.clone();
        drop(me);
        let attempt = async {
            let mut stream = TcpStream::connect(address.as_str()).await?;
            palisade_wire::address::tune_connection(&stream);
            let (initiator, hello) = Initiator::start(cluster, Role::Client, &key, to, &mut rand_core::OsRng);
            write_frame(&mut stream, &hello).await?;
            let reply = read_frame(&mut stream, palisade_wire::handshake::HANDSHAKE_MAX_FRAME_BYTES).await?;
            let (session, finish) = initiator
                .on_reply(&keyring, &reply)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            write_frame(&mut stream, &finish).await?;
            Ok::<_, std::io::Error>((stream, session))
        };
        let Ok(Ok((stream, session))) = tokio::time::timeout(Duration::from_secs(5), attempt).await else {
            if let Some(me) = inner.upgrade() {
                me.failed_dials.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            continue;
        };
        backoff = Duration::from_millis(50);
        if let Some(me) = inner.upgrade() {
            me.request_keys.lock().insert(to, session.request_key);
            me.connected.lock().insert(to, true);
        }
        let (mut read, mut write) = stream.into_split();
        let mut sealer = session.sealer;
        let mut opener = session.opener;
        // First, ask whether the membership moved on since the epoch known.
        let mut out = BytesMut::new();
        sealer.seal_message(cluster, &ClientMessage::ChainQuery { after: epoch }, &mut out);
        if write.write_all(&out).await.is_err() {
            continue;
        }
        let weak = inner.clone();
        let reader = async move {
            let frames = FrameDecoder::new(max_frame + palisade_wire::channel::MAC_BYTES);
            let mut buf = BytesMut::with_capacity(64 << 10);
            loop {
                while let Some(payload) = frames.decode(&mut buf).map_err(|_| ())? {
                    let body = opener.open(payload).map_err(|_| ())?;
                    let msg = envelope::decode_replica(cluster, &body).map_err(|_| ())?;
                    let Some(me) = weak.upgrade() else {
                        return Err(());
                    };
                    match msg {
                        ReplicaMessage::Chain(links) => me.adopt(links),
                        msg => me.on_message(to, msg),
                    }
                }
                if read.read_buf(&mut buf).await.map_err(|_| ())? == 0 {
                    return Err::<(), ()>(());
                }
            }
        };
        let writer = async {
            let mut out = BytesMut::with_capacity(64 << 10);
            // Requests queued together travel in one frame, so the replica
            // checks one MAC for all of them; a frame stays well inside the
            // frame limit.
            let max_bytes = (max_frame / 2).min(256 << 10);
            let mut last_write = Instant::now() - BUSY;
            // A message that is not a request, taken while batching: it
            // goes right after the batch.
            let mut next: Option<Out> = None;
            while let Some(first) = match next.take() {
                Some(o) => Some(o),
                None => outbox.recv().await,
            } {
                let first = match first {
                    Out::Request(r) => r,
                    Out::Message(msg) => {
                        out.clear();
                        sealer.seal_message(cluster, &msg, &mut out);
                        if write.write_all(&out).await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                // On a busy connection, let the tasks that are ready run
                // first: operations invoked together then leave together, in
                // one frame and one write. An idle one sends at once.
                if last_write.elapsed() < BUSY {
                    tokio::task::yield_now().await;
                }
                let mut bytes = first.size_bytes();
                let mut batch = vec![first];
                while batch.len() < envelope::MAX_LIST && bytes < max_bytes {
                    match outbox.try_recv() {
                        Ok(Out::Request(more)) => {
                            bytes += more.size_bytes();
                            batch.push(more);
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let msg = match <[Request; 1]>::try_from(batch) {
                    Ok([one]) => ClientMessage::Request(one),
                    Err(many) => ClientMessage::Requests(many),
                };
                out.clear();
                sealer.seal_message(cluster, &msg, &mut out);
                if write.write_all(&out).await.is_err() {
                    return;
                }
                last_write = Instant::now();
            }
        };
        tokio::select! {
            _ = reader => {}
            _ = writer => {}
        }
        if let Some(me) = inner.upgrade() {
            me.connected.lock().insert(to, false);
            me.connection_lost(to);
        } else {
            return;
        }
    }
}

async fn write_frame(stream: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(body.len() + 4);
    palisade_wire::frame::write_frame(body, &mut out);
    stream.write_all(&out).await
}

async fn read_frame(stream: &mut TcpStream, max: usize) -> std::io::Result<Bytes> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "handshake frame too large"));
    }
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    Ok(Bytes::from(buf))
}
