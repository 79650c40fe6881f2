//! Envelopes: what every frame body is, on every channel.
//!
//! ```text
//! body = version:u8  cluster_id:u64le  message:postcard
//! ```
//!
//! Each channel has its own closed message enum, so a decoder only ever
//! builds the types that may arrive on that channel: [`PeerMessage`]
//! between replicas, [`ClientMessage`] from clients, [`ReplicaMessage`] to
//! clients, [`HandshakeMessage`] before a channel is authenticated. Enum
//! variants are only ever appended; docs/wire.md specifies every byte.

use crate::WireError;
use bytes::{BufMut, Bytes, BytesMut};
use palisade_core::message::Reply;
use palisade_core::reconfig::Handover;
use palisade_core::{PeerMessage, ReplicaId, Request, RequestId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The format version this build speaks.
pub const VERSION: u8 = 4;

/// Bytes before the postcard-encoded message.
pub const HEADER_BYTES: usize = 9;

/// From a client to a replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// A request to order (or, if read-only, to answer directly).
    Request(Request),
    /// Several requests in one frame: what a client with many operations
    /// in flight sends, so a replica checks one MAC and decodes one frame
    /// for all of them. At most [`MAX_LIST`].
    Requests(#[serde(deserialize_with = "bounded_list")] Vec<Request>),
    /// Asks for the links of the chain of epochs after `after`: a client
    /// that knows only an old membership learns every later one from any
    /// single replica, because each link is certified
    /// (docs/reconfiguration.md).
    ChainQuery {
        /// The newest epoch the client knows.
        after: u64,
    },
    /// Asks for the replica's status, for operators' tools.
    Status,
}

/// Most items a list message may carry; a longer list is malformed, so a
/// frame never makes a decoder build more than this many items.
pub const MAX_LIST: usize = 4096;

fn bounded_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a list of at most {MAX_LIST} items")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            if seq.size_hint().is_some_and(|n| n > MAX_LIST) {
                return Err(serde::de::Error::custom(format!("a list of more than {MAX_LIST} items")));
            }
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
            while let Some(item) = seq.next_element()? {
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Bounded(std::marker::PhantomData))
}

/// One answer inside [`ReplicaMessage::Replies`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// The result in full.
    Full(Bytes),
    /// The result's SHA-256 (PBFT's digest reply).
    Digest(palisade_core::Digest),
    /// The result is larger than a frame may carry, so no replica sends
    /// it: the operation executed (if ordered), and its result is `len`
    /// bytes with this digest. Clients report it as an error; services
    /// page large results instead (a range of keys, a part of a file).
    TooLarge {
        /// The result's length.
        len: u64,
        /// Its SHA-256.
        digest: palisade_core::Digest,
    },
    /// [`Answer::Full`] from a tentative execution (PBFT 5.1): the batch
    /// is prepared at this replica but not committed. It counts towards a
    /// quorum of matching tentative answers from one view, where a
    /// committed answer counts towards f+1.
    TentativeFull(Bytes),
    /// [`Answer::Digest`] from a tentative execution.
    TentativeDigest(palisade_core::Digest),
}

impl Answer {
    /// Whether the answer comes from a tentative execution.
    pub fn is_tentative(&self) -> bool {
        matches!(self, Answer::TentativeFull(_) | Answer::TentativeDigest(_))
    }

    /// The same answer from a tentative execution (a result too large to
    /// send stays as it is: it settles nothing tentatively).
    pub fn tentative(self) -> Answer {
        match self {
            Answer::Full(b) => Answer::TentativeFull(b),
            Answer::Digest(d) => Answer::TentativeDigest(d),
            other => other,
        }
    }
}

/// Why a replica turned a client request away without executing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// The replica is overloaded; retry after backing off.
    Busy,
    /// The request id is below the client's window: it can never execute.
    Stale,
    /// The request failed a check (size, signature, client id).
    Invalid,
    /// The request is larger than a batch may be: no primary can order it.
    TooLarge,
}

/// From a replica to a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaMessage {
    /// The result of a request.
    Reply(Reply),
    /// The request was turned away.
    Rejected {
        /// The replica saying so.
        replica: ReplicaId,
        /// Which request.
        request: RequestId,
        /// Why.
        reason: RejectReason,
    },
    /// PBFT's digest reply: the result's SHA-256 instead of the result,
    /// from every replica but the one designated to send it in full.
    ReplyDigest {
        /// The replica's view.
        view: palisade_core::ViewNo,
        /// Author.
        replica: ReplicaId,
        /// Request answered.
        client: palisade_core::ClientId,
        /// Request answered.
        request: RequestId,
        /// SHA-256 of the result.
        digest: palisade_core::Digest,
    },
    /// Several answers to one client from one replica in one view, in one
    /// frame: what a replica sends per delivered batch, so the client
    /// checks one MAC for all of them. At most [`MAX_LIST`].
    Replies {
        /// The replica's view.
        view: palisade_core::ViewNo,
        /// Author.
        replica: ReplicaId,
        /// The client answered.
        client: palisade_core::ClientId,
        /// Request ids and their answers.
        #[serde(deserialize_with = "bounded_list")]
        answers: Vec<(RequestId, Answer)>,
    },
    /// Links of the chain of epochs, in epoch order: the answer to a
    /// [`ClientMessage::ChainQuery`], and what a replica tells every
    /// connected client when an epoch starts.
    Chain(#[serde(deserialize_with = "bounded_list")] Vec<Handover>),
    /// The answer to [`ClientMessage::Status`].
    Status(StatusReport),
}

/// What a replica says of itself to an operator's tool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The replica answering.
    pub replica: ReplicaId,
    /// Its membership role.
    pub role: MemberRole,
    /// The epoch of its current core.
    pub epoch: u64,
    /// Its view in that epoch.
    pub view: palisade_core::ViewNo,
    /// The primary of that view.
    pub primary: ReplicaId,
    /// Whether it is in normal operation (not changing view).
    pub normal: bool,
    /// The last sequence number it delivered.
    pub delivered: u64,
    /// Its last stable checkpoint.
    pub stable: u64,
    /// The members of its epoch.
    pub members: Vec<ReplicaId>,
    /// The faults its epoch tolerates.
    pub f: u64,
    /// Peers it has a live connection to.
    pub peers_connected: u64,
    /// Distinct clients connected to it.
    pub clients_connected: u64,
    /// Its bounded queues: how full each is.
    pub queues: Vec<QueueDepth>,
}

/// How full one of a replica's queues is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDepth {
    /// Its name (docs/operations.md, *Queues*).
    pub name: String,
    /// Items waiting.
    pub depth: u64,
    /// Its bound.
    pub capacity: u64,
}

/// Where a replica stands in the membership.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberRole {
    /// It orders requests in its epoch.
    #[default]
    Member,
    /// It waits to be admitted (started with `--join`).
    Joining,
    /// A later epoch removed it: it serves laggards until its grace
    /// period ends.
    Removed,
}

/// The replica that sends the full result of `request` when replies use
/// digests: spread over the members by client and request id.
pub fn designated_replier(
    membership: &palisade_core::Membership,
    client: palisade_core::ClientId,
    request: RequestId,
) -> ReplicaId {
    let m = membership.members();
    m[((client.0 ^ request.0) % m.len() as u64) as usize]
}

/// Who opens a connection, as claimed in its first message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A replica of the cluster.
    Replica(ReplicaId),
    /// A client, known by its public key.
    Client,
    /// The cluster's administrator.
    ViewManager,
}

/// The messages of the authentication handshake (see [`crate::handshake`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandshakeMessage {
    /// Initiator: who it claims to be, its ephemeral key and a nonce.
    Hello {
        /// Claimed role.
        role: Role,
        /// Its ed25519 identity key.
        identity: [u8; 32],
        /// Its ephemeral X25519 public key.
        ephemeral: [u8; 32],
        /// Fresh randomness.
        nonce: [u8; 32],
    },
    /// Responder: who it is, its ephemeral key and nonce, and its signature
    /// over the transcript.
    HelloReply {
        /// The responding replica.
        replica: ReplicaId,
        /// Its ephemeral X25519 public key.
        ephemeral: [u8; 32],
        /// Fresh randomness.
        nonce: [u8; 32],
        /// Ed25519 signature over the transcript (64 bytes).
        signature: Bytes,
    },
    /// Initiator: its signature over the transcript.
    Finish {
        /// Ed25519 signature over the transcript (64 bytes).
        signature: Bytes,
    },
}

/// Encodes `message` into a frame body for `cluster`.
pub fn encode<T: Serialize>(cluster: u64, message: &T) -> Bytes {
    let mut out = BytesMut::with_capacity(128);
    encode_into(cluster, message, &mut out);
    out.freeze()
}

/// Encodes `message` into a frame body appended to `out`.
pub fn encode_into<T: Serialize>(cluster: u64, message: &T, out: &mut BytesMut) {
    out.put_u8(VERSION);
    out.put_u64_le(cluster);
    let writer = BytesMutWriter(out);
    // Encoding these closed types cannot fail.
    postcard::to_io(message, writer).expect("protocol types always encode");
}

struct BytesMutWriter<'a>(&'a mut BytesMut);

impl std::io::Write for BytesMutWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Decodes a frame body sent on a channel carrying `T`, for `cluster`.
pub fn decode<T: DeserializeOwned>(cluster: u64, body: &[u8]) -> Result<T, WireError> {
    if body.len() < HEADER_BYTES {
        return Err(WireError::Truncated { needed: HEADER_BYTES, got: body.len() });
    }
    if body[0] != VERSION {
        return Err(WireError::UnknownVersion(body[0]));
    }
    let got = u64::from_le_bytes(body[1..9].try_into().expect("8 bytes"));
    if got != cluster {
        return Err(WireError::WrongCluster { expected: cluster, got });
    }
    let (value, rest) = postcard::take_from_bytes::<T>(&body[HEADER_BYTES..]).map_err(WireError::from_postcard)?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Encodes a replica-to-replica body: the epoch of the sending core, then
/// the message.
pub fn encode_peer(cluster: u64, epoch: u64, message: &PeerMessage) -> Bytes {
    encode(cluster, &(epoch, message))
}

/// Decodes a replica-to-replica body: the epoch of the core that sent it,
/// and the message.
pub fn decode_peer(cluster: u64, body: &[u8]) -> Result<(u64, PeerMessage), WireError> {
    decode(cluster, body)
}

/// Decodes a client-to-replica body.
pub fn decode_client(cluster: u64, body: &[u8]) -> Result<ClientMessage, WireError> {
    decode(cluster, body)
}

/// Decodes a replica-to-client body.
pub fn decode_replica(cluster: u64, body: &[u8]) -> Result<ReplicaMessage, WireError> {
    decode(cluster, body)
}

/// Decodes a handshake body.
pub fn decode_handshake(cluster: u64, body: &[u8]) -> Result<HandshakeMessage, WireError> {
    decode(cluster, body)
}
