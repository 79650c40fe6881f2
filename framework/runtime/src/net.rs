//! The network stage: one actix actor per connection.
//!
//! A connection starts with the handshake (over raw frames, at most 1 KiB
//! each, within `handshake_timeout_ms`); a connection that fails it is
//! closed and counted and nothing from it reaches the pipeline. After it, a
//! `Connection` actor owns the socket: its read side checks each frame's
//! MAC, decodes the channel's message type and hands it to the next stage;
//! its mailbox (bounded) takes frames to seal and write.
//!
//! Replicas dial each other: the connection a replica opens carries its
//! messages to that peer, the one it accepts carries the peer's messages to
//! it. Clients dial every replica and get replies on the same connection.

use crate::egress::{Egress, PeerAddress};
use crate::metrics::RuntimeMetrics;
use crate::queue::{offer_peer, Tx};
use crate::shared::PublishedChain;
use actix::io::{FramedWrite, WriteHandler};
use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use ed25519_dalek::SigningKey;
use palisade_core::{ClientId, PeerMessage, ReplicaId, Request};
use palisade_host::epochs::LINKS_PER_ANSWER;
use palisade_wire::address::HostPort;
use palisade_wire::channel::{Opener, Sealer};
use palisade_wire::envelope::{self, ClientMessage, RejectReason, ReplicaMessage, Role, StatusReport};
use palisade_wire::frame::FrameDecoder;
use palisade_wire::handshake::{Initiator, Keyring, Peer, Responder, Session, HANDSHAKE_MAX_FRAME_BYTES};
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Decoder, Encoder, FramedRead};

mod dial;
mod paced;

pub use dial::dial_members;
pub use paced::ClientPace;

// ----- raw frames for the handshake -------------------------------------------

/// Reads one frame of at most `max` bytes.
pub async fn read_raw_frame(stream: &mut TcpStream, max: usize) -> io::Result<Bytes> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes over {max}")));
    }
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    Ok(Bytes::from(buf))
}

/// Writes one frame.
pub async fn write_raw_frame(stream: &mut TcpStream, body: &[u8]) -> io::Result<()> {
    let mut out = BytesMut::with_capacity(body.len() + 4);
    palisade_wire::frame::write_frame(body, &mut out);
    stream.write_all(&out).await
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Runs the responder side of the handshake.
pub async fn accept_handshake(
    stream: &mut TcpStream,
    me: ReplicaId,
    key: &SigningKey,
    keyring: &Keyring,
) -> io::Result<Session> {
    let hello = read_raw_frame(stream, HANDSHAKE_MAX_FRAME_BYTES).await?;
    let (responder, reply) = Responder::on_hello(me, key, keyring, &hello, &mut rand_core::OsRng).map_err(invalid)?;
    write_raw_frame(stream, &reply).await?;
    let finish = read_raw_frame(stream, HANDSHAKE_MAX_FRAME_BYTES).await?;
    responder.on_finish(&finish).map_err(invalid)
}

/// Runs the initiator side of the handshake with replica `to`.
pub async fn dial_handshake(
    stream: &mut TcpStream,
    role: Role,
    key: &SigningKey,
    to: ReplicaId,
    keyring: &Keyring,
) -> io::Result<Session> {
    let (initiator, hello) = Initiator::start(keyring.cluster, role, key, to, &mut rand_core::OsRng);
    write_raw_frame(stream, &hello).await?;
    let reply = read_raw_frame(stream, HANDSHAKE_MAX_FRAME_BYTES).await?;
    let (session, finish) = initiator.on_reply(keyring, &reply).map_err(invalid)?;
    write_raw_frame(stream, &finish).await?;
    Ok(session)
}

// ----- codecs -------------------------------------------------------------------

/// Cuts authenticated frames and checks their MACs; yields bodies.
pub struct OpenCodec {
    frames: FrameDecoder,
    opener: Opener,
}

impl OpenCodec {
    /// A codec for one connection's receiving direction.
    pub fn new(max_frame_bytes: usize, opener: Opener) -> OpenCodec {
        OpenCodec { frames: FrameDecoder::new(max_frame_bytes + palisade_wire::channel::MAC_BYTES), opener }
    }
}

impl Decoder for OpenCodec {
    type Item = Bytes;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Bytes>> {
        match self.frames.decode(src).map_err(invalid)? {
            Some(payload) => self.opener.open(payload).map(Some).map_err(invalid),
            None => Ok(None),
        }
    }
}

/// Seals bodies into authenticated frames.
pub struct SealCodec {
    sealer: Sealer,
}

impl SealCodec {
    /// A codec for one connection's sending direction.
    pub fn new(sealer: Sealer) -> SealCodec {
        SealCodec { sealer }
    }
}

impl Encoder<Bytes> for SealCodec {
    type Error = io::Error;

    fn encode(&mut self, body: Bytes, dst: &mut BytesMut) -> io::Result<()> {
        self.sealer.seal(&body, dst);
        Ok(())
    }
}

// ----- routing ------------------------------------------------------------------

/// A connection's id and mailbox.
type Route = (u64, Addr<Connection>);

/// Live connections by peer, so stages can reach them.
pub struct Routes<K> {
    map: RwLock<HashMap<K, Vec<Route>>>,
    /// Whether a message goes to every connection of its key (clients: two
    /// processes may share a key, as two view managers do, and each takes
    /// the answers to its own requests) or to the newest only (peers: a
    /// reconnecting peer's old connection is on its way out).
    fan_out: bool,
}

impl<K: std::hash::Hash + Eq + Copy> Routes<K> {
    fn new(fan_out: bool) -> Self {
        Routes { map: RwLock::new(HashMap::new()), fan_out }
    }

    /// How many distinct peers or clients have a live connection.
    pub fn distinct(&self) -> usize {
        self.map.read().values().filter(|routes| !routes.is_empty()).count()
    }

    fn insert(&self, k: K, id: u64, addr: Addr<Connection>) {
        let mut m = self.map.write();
        let routes = m.entry(k).or_default();
        if !self.fan_out {
            routes.clear();
        }
        routes.push((id, addr));
    }

    fn remove(&self, k: K, id: u64) {
        let mut m = self.map.write();
        if let Some(routes) = m.get_mut(&k) {
            routes.retain(|(i, _)| *i != id);
            if routes.is_empty() {
                m.remove(&k);
            }
        }
    }

    /// Queues a body for `k`; false if there is no connection or every
    /// mailbox is full.
    pub fn send(&self, k: K, body: Bytes) -> bool {
        self.each(k, body, |addr, body| addr.try_send(Outgoing(body)).is_ok())
    }

    /// Queues several bodies for `k` as one mailbox message, so that the
    /// connection wakes and writes once for all of them.
    pub fn send_batch(&self, k: K, bodies: Vec<Bytes>) -> bool {
        self.each(k, bodies, |addr, bodies| addr.try_send(OutgoingBatch(bodies)).is_ok())
    }

    /// Offers `msg` to each connection of `k`, copying it only for the
    /// extra ones; whether any took it.
    fn each<M: Clone>(&self, k: K, msg: M, offer: impl Fn(&Addr<Connection>, M) -> bool) -> bool {
        let map = self.map.read();
        let Some(((_, last), rest)) = map.get(&k).and_then(|r| r.split_last()) else { return false };
        let others = rest.iter().fold(false, |ok, (_, addr)| offer(addr, msg.clone()) | ok);
        offer(last, msg) | others
    }

    /// Queues a body for every connection; returns how many took it.
    pub fn send_all(&self, body: Bytes) -> usize {
        self.map.read().values().flatten().filter(|(_, addr)| addr.try_send(Outgoing(body.clone())).is_ok()).count()
    }

    /// Live connections.
    pub fn len(&self) -> usize {
        self.map.read().values().map(Vec::len).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the network stage shares with the rest of the pipeline.
pub struct Net {
    /// This replica.
    pub me: ReplicaId,
    /// Cluster id.
    pub cluster: u64,
    /// Largest frame body.
    pub max_frame_bytes: usize,
    /// Largest client operation.
    pub max_operation_bytes: usize,
    /// Per-connection mailbox capacity.
    pub mailbox: usize,
    /// Write buffer watermarks.
    pub write_buffer: (usize, usize),
    /// Handshake time limit.
    pub handshake_timeout: Duration,
    /// Client connection limit.
    pub max_client_connections: usize,
    /// Handshakes under way at once; more connections are closed at once.
    pub handshakes: Arc<tokio::sync::Semaphore>,
    /// Connections to peers (outgoing).
    pub peers: Routes<ReplicaId>,
    /// Connections from clients.
    pub clients: Routes<ClientId>,
    /// Peer messages to the consensus stage.
    pub tx_peer: Tx<crate::queue::PeerItem>,
    /// Client requests to the verification stage (or to the request filter).
    pub tx_verify: Tx<Request>,
    /// PRE-PREPAREs to the verification stage, when clients sign requests.
    pub tx_preprepare: Option<Tx<crate::queue::PeerItem>>,
    /// Counters.
    pub metrics: Arc<RuntimeMetrics>,
    /// Connections open from each peer, for the consensus stage.
    pub links: Arc<crate::shared::PeerLinks>,
    /// Wakes the dialer of a peer as soon as that peer connects to us: it
    /// is up, so there is no reason to wait out the reconnection backoff.
    redial: RwLock<HashMap<ReplicaId, Arc<tokio::sync::Notify>>>,
    next_id: AtomicU64,
    /// Each client's request-MAC keys, from its channels.
    pub client_keys: Arc<crate::crypto::ClientKeys>,
    /// Whose identities handshakes accept: the replicas of the epochs
    /// this replica deals with (it follows the membership).
    pub keyring: RwLock<Keyring>,
    /// The replicas to keep a connection to, and where they listen.
    wanted: tokio::sync::watch::Sender<BTreeMap<ReplicaId, HostPort>>,
    /// The chain of epochs, for clients that ask.
    pub chain: Arc<PublishedChain>,
    /// Clients over their quota at verification: their reading pauses.
    pub over_quota: Arc<crate::shared::OverQuota>,
    /// Clients closed for forged requests: refused for a while.
    pub banned: Arc<crate::shared::Banned>,
    /// Each client's request rate.
    pub pace: ClientPace,
    /// Each client's requests waiting for verification (its queue and the
    /// verifier's intake), at most its quota; when clients sign (else
    /// there is no verification stage).
    pub waiting: Option<Arc<crate::shared::ClientCredits>>,
}

impl Net {
    /// The network stage's shared state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: ReplicaId,
        cluster: u64,
        max_frame_bytes: usize,
        cfg: &crate::RuntimeConfig,
        tx_peer: Tx<crate::queue::PeerItem>,
        tx_verify: Tx<Request>,
        tx_preprepare: Option<Tx<crate::queue::PeerItem>>,
        metrics: Arc<RuntimeMetrics>,
        client_keys: Arc<crate::crypto::ClientKeys>,
        keyring: Keyring,
        chain: Arc<PublishedChain>,
    ) -> Net {
        let signing = tx_preprepare.is_some();
        Net {
            me,
            cluster,
            max_frame_bytes,
            max_operation_bytes: cfg.max_operation_bytes,
            mailbox: cfg.connection_mailbox,
            write_buffer: cfg.write_buffer,
            handshake_timeout: Duration::from_millis(cfg.handshake_timeout_ms),
            max_client_connections: cfg.max_client_connections,
            handshakes: Arc::new(tokio::sync::Semaphore::new(cfg.max_handshakes)),
            peers: Routes::new(false),
            clients: Routes::new(true),
            tx_peer,
            tx_verify,
            tx_preprepare,
            metrics,
            links: Arc::default(),
            redial: RwLock::new(HashMap::new()),
            client_keys,
            next_id: AtomicU64::new(1),
            keyring: RwLock::new(keyring),
            wanted: tokio::sync::watch::Sender::new(BTreeMap::new()),
            chain,
            over_quota: Arc::default(),
            banned: Arc::default(),
            pace: ClientPace::new(cfg.client_rate_max),
            waiting: signing.then(|| Arc::new(crate::shared::ClientCredits::new(cfg.client_quota as u32))),
        }
    }

    /// What a connection answers an operator's status question with.
    fn status(&self) -> StatusReport {
        let core = self.metrics.core.lock().clone();
        StatusReport {
            replica: self.me,
            role: core.role,
            epoch: core.epoch,
            view: palisade_core::ViewNo(core.view),
            primary: core.primary_id,
            normal: core.normal,
            delivered: core.delivered,
            stable: core.stable,
            members: core.members,
            f: core.f as u64,
            peers_connected: self.peers.distinct() as u64,
            clients_connected: self.clients.distinct() as u64,
            queues: self
                .metrics
                .queues()
                .into_iter()
                .map(|(name, depth, capacity)| palisade_wire::envelope::QueueDepth {
                    name: name.to_string(),
                    depth: depth as u64,
                    capacity: capacity.min(u64::MAX as usize) as u64,
                })
                .collect(),
        }
    }
}

impl Egress for Net {
    fn me(&self) -> ReplicaId {
        self.me
    }

    fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    fn peer_body(&self, epoch: u64, msg: &PeerMessage) -> Bytes {
        envelope::encode_peer(self.cluster, epoch, msg)
    }

    fn client_body(&self, msg: &ReplicaMessage) -> Bytes {
        envelope::encode(self.cluster, msg)
    }

    fn to_peer(&self, to: ReplicaId, bodies: Vec<Bytes>) -> bool {
        self.peers.send_batch(to, bodies)
    }

    fn to_client(&self, client: ClientId, bodies: Vec<Bytes>) -> bool {
        self.clients.send_batch(client, bodies)
    }

    fn close_client(&self, client: ClientId) {
        self.clients.each(client, (), |addr, _| addr.try_send(Close).is_ok());
    }

    fn to_all_clients(&self, body: Bytes) -> usize {
        self.clients.send_all(body)
    }

    fn set_peers(&self, peers: Vec<PeerAddress>) {
        {
            let mut keyring = self.keyring.write();
            let mine = keyring.replicas.get(&self.me).copied();
            keyring.replicas = peers.iter().map(|p| (p.id, p.key)).collect();
            if let Some(k) = mine {
                keyring.replicas.insert(self.me, k);
            }
        }
        self.wanted.send_replace(peers.iter().map(|p| (p.id, p.address.clone())).collect());
    }
}

// ----- the connection actor ---------------------------------------------------------

/// A frame body to seal and send.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Outgoing(pub Bytes);

/// Frame bodies to seal and send together.
#[derive(Message)]
#[rtype(result = "()")]
pub struct OutgoingBatch(pub Vec<Bytes>);

/// Close the connection (its client misbehaved).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close;

impl Handler<Close> for Connection {
    type Result = ();

    fn handle(&mut self, _: Close, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Accepted from a replica: carries its messages to us.
    FromReplica(ReplicaId),
    /// Opened by us to a replica: carries our messages to it.
    ToReplica(ReplicaId),
    /// Accepted from a client: requests in, replies out.
    Client(ClientId),
}

/// One authenticated connection.
pub struct Connection {
    id: u64,
    kind: Kind,
    /// The other end's address, for the log.
    peer: Option<SocketAddr>,
    /// The channel's request-MAC key (used on client channels).
    request_key: [u8; 32],
    writer: FramedWrite<Bytes, OwnedWriteHalf, SealCodec>,
    net: Arc<Net>,
}

impl Connection {
    fn start(net: Arc<Net>, kind: Kind, stream: TcpStream, session: Session) -> Addr<Connection> {
        let id = net.next_id.fetch_add(1, Ordering::Relaxed);
        let peer = stream.peer_addr().ok();
        let (read, write) = stream.into_split();
        let Session { sealer, opener, request_key, .. } = session;
        let mailbox = net.mailbox;
        let (low, high) = net.write_buffer;
        let max = net.max_frame_bytes;
        let shared = net.clone();
        let addr = Connection::create(move |ctx| {
            ctx.set_mailbox_capacity(mailbox);
            let frames = FramedRead::new(read, OpenCodec::new(max, opener));
            let paced = match kind {
                Kind::Client(c) => Some((shared.clone(), c)),
                _ => None,
            };
            ctx.add_stream(paced::PacedRead::new(frames, paced));
            let mut writer = FramedWrite::new(write, SealCodec::new(sealer), ctx);
            writer.set_buffer_capacity(low, high);
            Connection { id, kind, peer, request_key, writer, net: shared }
        });
        log_connection(net.me, kind, peer, "up");
        match kind {
            Kind::ToReplica(r) => net.peers.insert(r, id, addr.clone()),
            Kind::Client(c) => {
                net.client_keys.connected(c, request_key);
                net.clients.insert(c, id, addr.clone())
            }
            Kind::FromReplica(r) => net.links.opened(r),
        }
        addr
    }

    fn on_body(&mut self, body: Bytes, ctx: &mut Context<Self>) {
        let net = self.net.clone();
        match self.kind {
            Kind::FromReplica(from) => match envelope::decode_peer(net.cluster, &body) {
                Ok((epoch, msg)) => {
                    RuntimeMetrics::add(&net.metrics.counters.peer_messages_received, 1);
                    // With client signatures, a PRE-PREPARE's requests are
                    // checked in the verification stage before consensus.
                    let tx = match (&msg, &net.tx_preprepare) {
                        (PeerMessage::PrePrepare(_), Some(tx)) => tx,
                        _ => &net.tx_peer,
                    };
                    if !offer_peer(tx, (from, epoch, msg), &net.metrics) {
                        ctx.stop();
                    }
                }
                Err(_) => self.bad_frame(ctx),
            },
            Kind::Client(client) => match envelope::decode_client(net.cluster, &body) {
                Ok(ClientMessage::Request(_) | ClientMessage::Requests(_)) if net.over_quota.is_over(client) => {
                    // Its quota is full at verification: drop these; its
                    // connections read nothing more for a moment (TCP
                    // pushes back; see `paced`), while replies still go.
                    RuntimeMetrics::add(&net.metrics.counters.requests_over_quota, 1);
                }
                Ok(ClientMessage::Request(req)) => {
                    let taken = self.on_request(client, req, ctx);
                    net.pace.charge(client, usize::from(taken), std::time::Instant::now());
                }
                Ok(ClientMessage::Requests(reqs)) => {
                    let mut taken = 0;
                    for req in reqs {
                        taken += usize::from(self.on_request(client, req, ctx));
                    }
                    net.pace.charge(client, taken, std::time::Instant::now());
                }
                Ok(ClientMessage::ChainQuery { after }) => {
                    let links = net.chain.after(after, LINKS_PER_ANSWER);
                    if !links.is_empty() {
                        RuntimeMetrics::add(&net.metrics.counters.chain_links_sent, links.len() as u64);
                        self.writer.write(net.client_body(&ReplicaMessage::Chain(links)));
                    }
                }
                Ok(ClientMessage::Status) => {
                    let report = net.status();
                    self.writer.write(net.client_body(&ReplicaMessage::Status(report)));
                }
                Err(_) => self.bad_frame(ctx),
            },
            // Nothing may arrive on a connection we opened to send on.
            Kind::ToReplica(_) => self.bad_frame(ctx),
        }
    }

    /// Whether the request counts against its client's rate: it went on to
    /// verification, or was refused as invalid (a correct client sends
    /// none, and each costs this replica a rejection to write).
    fn on_request(&mut self, client: ClientId, req: Request, ctx: &mut Context<Self>) -> bool {
        let net = &self.net;
        RuntimeMetrics::add(&net.metrics.counters.requests_received, 1);
        if req.client != client || req.operation.len() > net.max_operation_bytes {
            // A client may only speak for itself, within the size limit.
            RuntimeMetrics::add(&net.metrics.counters.requests_invalid, 1);
            self.reject(req.id, RejectReason::Invalid);
            return true;
        }
        let id = req.id;
        if net.waiting.as_ref().is_some_and(|w| !w.has_room(client)) {
            // Its quota already waits for verification: a correct client
            // keeps far fewer outstanding. Dropped unanswered, and this
            // connection reads nothing more for a moment.
            RuntimeMetrics::add(&net.metrics.counters.requests_over_quota, 1);
            net.over_quota.mark(client);
            return false;
        }
        if let Some(w) = &net.waiting {
            w.take(client);
        }
        match net.tx_verify.try_send(req) {
            Ok(()) => true,
            Err(crossbeam_channel::TrySendError::Full(_)) => {
                if let Some(w) = &net.waiting {
                    w.give_back(client);
                }
                RuntimeMetrics::add(&net.metrics.counters.requests_busy, 1);
                self.reject(id, RejectReason::Busy);
                false
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                ctx.stop();
                false
            }
        }
    }

    fn reject(&mut self, request: palisade_core::RequestId, reason: RejectReason) {
        let body = self.net.client_body(&ReplicaMessage::Rejected { replica: self.net.me, request, reason });
        self.writer.write(body);
    }

    fn bad_frame(&mut self, ctx: &mut Context<Self>) {
        RuntimeMetrics::add(&self.net.metrics.counters.bad_frames, 1);
        crate::events::warn_limited!(
            replica = self.net.me.0,
            from = %shown(self.peer),
            "closed a connection that sent a frame that did not open, decode or fit"
        );
        ctx.stop();
    }
}

impl Actor for Connection {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        log_connection(self.net.me, self.kind, self.peer, "down");
        match self.kind {
            Kind::ToReplica(r) => self.net.peers.remove(r, self.id),
            Kind::Client(c) => {
                self.net.client_keys.disconnected(c, &self.request_key);
                self.net.clients.remove(c, self.id)
            }
            Kind::FromReplica(r) => self.net.links.closed(r),
        }
    }
}

impl StreamHandler<Result<Bytes, io::Error>> for Connection {
    fn handle(&mut self, item: Result<Bytes, io::Error>, ctx: &mut Context<Self>) {
        match item {
            Ok(body) => self.on_body(body, ctx),
            Err(_) => self.bad_frame(ctx),
        }
    }
}

impl WriteHandler<io::Error> for Connection {}

impl Handler<Outgoing> for Connection {
    type Result = ();

    fn handle(&mut self, msg: Outgoing, _: &mut Context<Self>) {
        self.writer.write(msg.0);
    }
}

impl Handler<OutgoingBatch> for Connection {
    type Result = ();

    fn handle(&mut self, msg: OutgoingBatch, _: &mut Context<Self>) {
        for body in msg.0 {
            self.writer.write(body);
        }
    }
}

// ----- accepting and dialling ---------------------------------------------------------

/// Accepts connections forever.
pub async fn listen(listener: TcpListener, net: Arc<Net>, key: SigningKey) {
    let key = Arc::new(key);
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // A stranger gets a bounded share: a handshake slot (or the door),
        // 1 KiB frames and `handshake_timeout_ms`.
        let Ok(permit) = net.handshakes.clone().try_acquire_owned() else {
            RuntimeMetrics::add(&net.metrics.counters.connections_refused, 1);
            crate::events::warn_limited!(
                replica = net.me.0,
                from = %shown(stream.peer_addr().ok()),
                "refused a connection: every handshake slot is taken"
            );
            continue;
        };
        let (net, key) = (net.clone(), key.clone());
        let keyring = net.keyring.read().clone();
        actix_rt::spawn(async move {
            palisade_wire::address::tune_connection(&stream);
            let session =
                tokio::time::timeout(net.handshake_timeout, accept_handshake(&mut stream, net.me, &key, &keyring))
                    .await;
            drop(permit);
            let session = match session {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    RuntimeMetrics::add(&net.metrics.counters.handshakes_failed, 1);
                    crate::events::warn_limited!(
                        replica = net.me.0,
                        from = %shown(stream.peer_addr().ok()),
                        error = %e,
                        "a handshake failed"
                    );
                    return;
                }
                Err(_) => {
                    RuntimeMetrics::add(&net.metrics.counters.handshakes_failed, 1);
                    crate::events::warn_limited!(
                        replica = net.me.0,
                        from = %shown(stream.peer_addr().ok()),
                        "a handshake took longer than handshake_timeout_ms"
                    );
                    return;
                }
            };
            match session.peer {
                Peer::Replica(r) => {
                    if let Some(wake) = net.redial.read().get(&r) {
                        wake.notify_one();
                    }
                    Connection::start(net, Kind::FromReplica(r), stream, session);
                }
                // The view manager's requests are ordered like a client's,
                // under the client id of its key.
                Peer::Client(..) | Peer::ViewManager => {
                    let c = match session.peer {
                        Peer::Client(c, _) => c,
                        _ => ClientId::of_key(keyring.view_manager.as_bytes()),
                    };
                    if net.banned.is_banned(c) {
                        RuntimeMetrics::add(&net.metrics.counters.connections_refused, 1);
                        crate::events::warn_limited!(
                            replica = net.me.0,
                            client = c.0,
                            "refused a client connection: closed lately for forged requests"
                        );
                        return;
                    }
                    if net.clients.len() >= net.max_client_connections {
                        RuntimeMetrics::add(&net.metrics.counters.connections_refused, 1);
                        crate::events::warn_limited!(
                            replica = net.me.0,
                            client = c.0,
                            limit = net.max_client_connections,
                            "refused a client connection: max_client_connections reached"
                        );
                        return;
                    }
                    Connection::start(net, Kind::Client(c), stream, session);
                }
            }
        });
    }
}

/// An address for the log ("?" when the socket no longer knows it).
fn shown(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "?".to_string(), |a| a.to_string())
}

/// Logs a connection going up or down: replicas at info level, clients
/// (many, and coming and going) at debug level.
fn log_connection(me: ReplicaId, kind: Kind, peer: Option<SocketAddr>, state: &'static str) {
    let peer = shown(peer);
    match kind {
        Kind::ToReplica(r) => {
            tracing::info!(replica = me.0, peer = r.0, addr = %peer, state, "connection to a replica")
        }
        Kind::FromReplica(r) => {
            tracing::info!(replica = me.0, peer = r.0, addr = %peer, state, "connection from a replica")
        }
        Kind::Client(c) => tracing::debug!(replica = me.0, client = c.0, addr = %peer, state, "client connection"),
    }
}
