//! Mutual authentication with fresh per-connection keys.
//!
//! ```text
//! I -> R  Hello      { role, identity_I, ephemeral_I, nonce_I }
//! R -> I  HelloReply { replica_R, ephemeral_R, nonce_R, sig_R }
//! I -> R  Finish     { sig_I }
//!
//! transcript = SHA-256("palisade/handshake/v1" || cluster_id || hello_body
//!                      || replica_R || ephemeral_R || nonce_R)
//! sig_R      = Ed25519(identity_R, "palisade/handshake/v1/responder" || transcript)
//! sig_I      = Ed25519(identity_I, "palisade/handshake/v1/initiator" || transcript)
//! shared     = X25519(ephemeral secrets)
//! keys       = HKDF-SHA256(salt = transcript, ikm = shared,
//!                          info = "palisade/v1/initiator-to-responder" | "palisade/v1/responder-to-initiator")
//! ```
//!
//! Both identities are checked against the cluster configuration (a client
//! may be anyone; its id is derived from its key). The signatures cover
//! both ephemeral keys and the cluster id, so a connection's keys are bound
//! to the two identities and to this cluster, and are new for every
//! connection. The responder does nothing on the initiator's behalf before
//! `Finish` proves the initiator holds its identity key.
//!
//! These are state machines over frame bodies: the runtime moves the bytes.

use crate::channel::{Opener, Sealer};
use crate::envelope::{self, HandshakeMessage, Role};
use crate::keys::client_id;
use crate::WireError;
use bytes::Bytes;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use hkdf::Hkdf;
use palisade_core::{ClientId, Digest, ReplicaId};
use rand_core::{CryptoRng, RngCore};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::fmt;
use x25519_dalek::{EphemeralSecret, PublicKey as XPublic};

/// Who is at the other end of an authenticated connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A replica of this cluster.
    Replica(ReplicaId),
    /// A client, with the key its id derives from.
    Client(ClientId, [u8; 32]),
    /// The view manager.
    ViewManager,
}

/// Why a handshake failed. The connection is closed and counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// The bytes were not a handshake message for this cluster.
    Wire(WireError),
    /// A message arrived out of turn.
    Unexpected(&'static str),
    /// The claimed identity is not the configured one.
    UnknownIdentity(String),
    /// A signature does not verify.
    BadSignature,
    /// An ephemeral key that gives no shared secret (a low-order point).
    WeakEphemeral,
    /// This kind of peer may not connect.
    NotAllowed(&'static str),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Wire(e) => write!(f, "handshake: {e}"),
            HandshakeError::Unexpected(what) => write!(f, "handshake: unexpected {what}"),
            HandshakeError::UnknownIdentity(who) => {
                write!(f, "handshake: {who} is not the configured identity")
            }
            HandshakeError::BadSignature => write!(f, "handshake: bad signature"),
            HandshakeError::WeakEphemeral => write!(f, "handshake: weak ephemeral key"),
            HandshakeError::NotAllowed(what) => write!(f, "handshake: {what} may not connect"),
        }
    }
}

impl std::error::Error for HandshakeError {}

impl From<WireError> for HandshakeError {
    fn from(e: WireError) -> Self {
        HandshakeError::Wire(e)
    }
}

/// The public identities a node checks peers against.
#[derive(Clone, Debug)]
pub struct Keyring {
    /// Cluster id.
    pub cluster: u64,
    /// Every replica's key.
    pub replicas: BTreeMap<ReplicaId, VerifyingKey>,
    /// The view manager's key.
    pub view_manager: VerifyingKey,
    /// Whether clients may connect (replicas: yes; a client's keyring: irrelevant).
    pub accept_clients: bool,
}

impl Keyring {
    /// The keyring of a cluster configuration.
    pub fn from_config(c: &crate::ClusterConfig) -> Keyring {
        Keyring {
            cluster: c.cluster_id,
            replicas: c.replicas.iter().map(|(id, r)| (*id, r.public_key)).collect(),
            view_manager: c.view_manager,
            accept_clients: true,
        }
    }
}

/// An authenticated connection's two halves and who is at the other end.
pub struct Session {
    /// The peer.
    pub peer: Peer,
    /// For frames we send.
    pub sealer: Sealer,
    /// For frames we receive.
    pub opener: Opener,
    /// The key for request MACs between a client and a replica (both ends
    /// derive it; a replica-to-replica session has one too, unused): the
    /// replica's entry in a request's authenticator is computed with it.
    pub request_key: [u8; 32],
}

/// Largest frame accepted before a connection is authenticated. Handshake
/// messages are under 200 bytes; a stranger gets no more buffer than this.
pub const HANDSHAKE_MAX_FRAME_BYTES: usize = 1024;

const TRANSCRIPT: &[u8] = b"palisade/handshake/v1";
const AS_RESPONDER: &[u8] = b"palisade/handshake/v1/responder";
const AS_INITIATOR: &[u8] = b"palisade/handshake/v1/initiator";

fn transcript(cluster: u64, hello_body: &[u8], replica: ReplicaId, ephemeral: &[u8; 32], nonce: &[u8; 32]) -> Digest {
    Digest::of_parts(&[TRANSCRIPT, &cluster.to_le_bytes(), hello_body, &replica.0.to_le_bytes(), ephemeral, nonce])
}

fn signed_bytes(role: &[u8], t: &Digest) -> Vec<u8> {
    let mut v = role.to_vec();
    v.extend_from_slice(&t.0);
    v
}

fn derive(t: &Digest, shared: &[u8; 32]) -> ([u8; 32], [u8; 32], [u8; 32]) {
    let hk = Hkdf::<Sha256>::new(Some(&t.0), shared);
    let mut i2r = [0u8; 32];
    let mut r2i = [0u8; 32];
    let mut request = [0u8; 32];
    hk.expand(b"palisade/v1/initiator-to-responder", &mut i2r).expect("32 bytes is a valid length");
    hk.expand(b"palisade/v1/responder-to-initiator", &mut r2i).expect("32 bytes is a valid length");
    hk.expand(b"palisade/v1/request-mac", &mut request).expect("32 bytes is a valid length");
    (i2r, r2i, request)
}

fn signature(bytes: &Bytes) -> Result<Signature, HandshakeError> {
    let arr: [u8; 64] = bytes.as_ref().try_into().map_err(|_| HandshakeError::BadSignature)?;
    Ok(Signature::from_bytes(&arr))
}

fn random32<R: RngCore + CryptoRng>(rng: &mut R) -> [u8; 32] {
    let mut n = [0u8; 32];
    rng.fill_bytes(&mut n);
    n
}

/// The side that opens the connection (a client, or a replica dialling a peer).
pub struct Initiator {
    cluster: u64,
    key: SigningKey,
    expected: ReplicaId,
    ephemeral: EphemeralSecret,
    hello_body: Bytes,
}

impl Initiator {
    /// Starts a handshake with replica `expected`; returns the Hello body to send.
    pub fn start<R: RngCore + CryptoRng>(
        cluster: u64,
        role: Role,
        key: &SigningKey,
        expected: ReplicaId,
        rng: &mut R,
    ) -> (Initiator, Bytes) {
        let ephemeral = EphemeralSecret::random_from_rng(&mut *rng);
        let hello = HandshakeMessage::Hello {
            role,
            identity: key.verifying_key().to_bytes(),
            ephemeral: XPublic::from(&ephemeral).to_bytes(),
            nonce: random32(rng),
        };
        let hello_body = envelope::encode(cluster, &hello);
        (Initiator { cluster, key: key.clone(), expected, ephemeral, hello_body: hello_body.clone() }, hello_body)
    }

    /// Checks the responder's reply; returns the session and the Finish body to send.
    pub fn on_reply(self, keyring: &Keyring, body: &[u8]) -> Result<(Session, Bytes), HandshakeError> {
        let HandshakeMessage::HelloReply { replica, ephemeral, nonce, signature: sig } =
            envelope::decode_handshake(self.cluster, body)?
        else {
            return Err(HandshakeError::Unexpected("message instead of HelloReply"));
        };
        if replica != self.expected {
            return Err(HandshakeError::UnknownIdentity(format!("replica {replica} (expected {})", self.expected)));
        }
        let their_key = keyring
            .replicas
            .get(&replica)
            .ok_or_else(|| HandshakeError::UnknownIdentity(format!("replica {replica}")))?;
        let t = transcript(self.cluster, &self.hello_body, replica, &ephemeral, &nonce);
        their_key
            .verify(&signed_bytes(AS_RESPONDER, &t), &signature(&sig)?)
            .map_err(|_| HandshakeError::BadSignature)?;
        let shared = self.ephemeral.diffie_hellman(&XPublic::from(ephemeral));
        if !shared.was_contributory() {
            return Err(HandshakeError::WeakEphemeral);
        }
        let (i2r, r2i, request_key) = derive(&t, shared.as_bytes());
        let mine = self.key.sign(&signed_bytes(AS_INITIATOR, &t));
        let finish = envelope::encode(
            self.cluster,
            &HandshakeMessage::Finish { signature: Bytes::copy_from_slice(&mine.to_bytes()) },
        );
        let session =
            Session { peer: Peer::Replica(replica), sealer: Sealer::new(&i2r), opener: Opener::new(&r2i), request_key };
        Ok((session, finish))
    }
}

/// The side that accepts the connection (always a replica).
pub struct Responder {
    peer: Peer,
    identity: VerifyingKey,
    transcript: Digest,
    keys: ([u8; 32], [u8; 32], [u8; 32]),
    cluster: u64,
}

impl Responder {
    /// Checks a Hello; returns the pending responder and the HelloReply body.
    pub fn on_hello<R: RngCore + CryptoRng>(
        me: ReplicaId,
        key: &SigningKey,
        keyring: &Keyring,
        body: &[u8],
        rng: &mut R,
    ) -> Result<(Responder, Bytes), HandshakeError> {
        let cluster = keyring.cluster;
        let HandshakeMessage::Hello { role, identity, ephemeral: their_ephemeral, nonce: _ } =
            envelope::decode_handshake(cluster, body)?
        else {
            return Err(HandshakeError::Unexpected("message instead of Hello"));
        };
        let claimed = VerifyingKey::from_bytes(&identity)
            .map_err(|_| HandshakeError::UnknownIdentity("an invalid public key".into()))?;
        let peer = match role {
            Role::Replica(id) => {
                if id == me || keyring.replicas.get(&id) != Some(&claimed) {
                    return Err(HandshakeError::UnknownIdentity(format!("replica {id}")));
                }
                Peer::Replica(id)
            }
            Role::ViewManager => {
                if claimed != keyring.view_manager {
                    return Err(HandshakeError::UnknownIdentity("view manager".into()));
                }
                Peer::ViewManager
            }
            Role::Client => {
                if !keyring.accept_clients {
                    return Err(HandshakeError::NotAllowed("clients"));
                }
                if claimed.is_weak() {
                    return Err(HandshakeError::UnknownIdentity("a client with a weak key".into()));
                }
                Peer::Client(client_id(&identity), identity)
            }
        };
        let ephemeral = EphemeralSecret::random_from_rng(&mut *rng);
        let my_ephemeral = XPublic::from(&ephemeral).to_bytes();
        let nonce = random32(rng);
        let t = transcript(cluster, body, me, &my_ephemeral, &nonce);
        let shared = ephemeral.diffie_hellman(&XPublic::from(their_ephemeral));
        if !shared.was_contributory() {
            return Err(HandshakeError::WeakEphemeral);
        }
        let keys = derive(&t, shared.as_bytes());
        let sig = key.sign(&signed_bytes(AS_RESPONDER, &t));
        let reply = envelope::encode(
            cluster,
            &HandshakeMessage::HelloReply {
                replica: me,
                ephemeral: my_ephemeral,
                nonce,
                signature: Bytes::copy_from_slice(&sig.to_bytes()),
            },
        );
        Ok((Responder { peer, identity: claimed, transcript: t, keys, cluster }, reply))
    }

    /// Checks the initiator's Finish; returns the session.
    pub fn on_finish(self, body: &[u8]) -> Result<Session, HandshakeError> {
        let HandshakeMessage::Finish { signature: sig } = envelope::decode_handshake(self.cluster, body)? else {
            return Err(HandshakeError::Unexpected("message instead of Finish"));
        };
        self.identity
            .verify(&signed_bytes(AS_INITIATOR, &self.transcript), &signature(&sig)?)
            .map_err(|_| HandshakeError::BadSignature)?;
        let (i2r, r2i, request_key) = self.keys;
        Ok(Session { peer: self.peer, sealer: Sealer::new(&r2i), opener: Opener::new(&i2r), request_key })
    }
}
