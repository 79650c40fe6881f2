//! Authenticated channels end to end: handshakes between the configured
//! identities succeed and give working, per-connection keys; every attempt
//! to impersonate, tamper, replay or cross connections fails.

use bytes::{Bytes, BytesMut};
use ed25519_dalek::SigningKey;
use palisade_core::{ClientId, ReplicaId, Request, RequestId};
use palisade_wire::envelope::{self, ClientMessage, HandshakeMessage, Role};
use palisade_wire::frame::FrameDecoder;
use palisade_wire::handshake::{HandshakeError, Initiator, Keyring, Peer, Responder, Session};
use palisade_wire::keys::{client_id, generate};
use palisade_wire::WireError;
use rand_core::OsRng;

const CLUSTER: u64 = 42;

struct Cluster {
    keys: Vec<SigningKey>,
    view_manager: SigningKey,
    keyring: Keyring,
}

fn cluster() -> Cluster {
    let keys: Vec<SigningKey> = (0..4).map(|_| generate(&mut OsRng)).collect();
    let view_manager = generate(&mut OsRng);
    let keyring = Keyring {
        cluster: CLUSTER,
        replicas: keys.iter().enumerate().map(|(i, k)| (ReplicaId(i as u32), k.verifying_key())).collect(),
        view_manager: view_manager.verifying_key(),
        accept_clients: true,
    };
    Cluster { keys, view_manager, keyring }
}

fn connect(c: &Cluster, role: Role, key: &SigningKey, to: u32) -> Result<(Session, Session), HandshakeError> {
    let (init, hello) = Initiator::start(CLUSTER, role, key, ReplicaId(to), &mut OsRng);
    let (resp, reply) = Responder::on_hello(ReplicaId(to), &c.keys[to as usize], &c.keyring, &hello, &mut OsRng)?;
    let (client_side, finish) = init.on_reply(&c.keyring, &reply)?;
    let server_side = resp.on_finish(&finish)?;
    Ok((client_side, server_side))
}

fn send(from: &mut Session, body: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    from.sealer.seal(body, &mut out);
    FrameDecoder::new(1 << 20).decode_exact(&out).unwrap()
}

#[test]
fn a_client_and_a_replica_authenticate_and_talk_both_ways() {
    let c = cluster();
    let client_key = generate(&mut OsRng);
    let (mut client, mut replica) = connect(&c, Role::Client, &client_key, 2).unwrap();
    assert_eq!(client.peer, Peer::Replica(ReplicaId(2)));
    let public = client_key.verifying_key().to_bytes();
    assert_eq!(replica.peer, Peer::Client(client_id(&public), public));
    for i in 0..3u8 {
        let f = send(&mut client, &[i; 10]);
        assert_eq!(replica.opener.open(f).unwrap(), Bytes::from(vec![i; 10]));
        let g = send(&mut replica, &[i; 3]);
        assert_eq!(client.opener.open(g).unwrap(), Bytes::from(vec![i; 3]));
    }
}

#[test]
fn replicas_and_the_view_manager_authenticate_with_their_configured_keys() {
    let c = cluster();
    let (a, b) = connect(&c, Role::Replica(ReplicaId(1)), &c.keys[1], 3).unwrap();
    assert_eq!((a.peer, b.peer), (Peer::Replica(ReplicaId(3)), Peer::Replica(ReplicaId(1))));
    let (_, b) = connect(&c, Role::ViewManager, &c.view_manager, 0).unwrap();
    assert_eq!(b.peer, Peer::ViewManager);
}

#[test]
fn nobody_can_claim_a_replica_or_the_view_manager_without_its_key() {
    let c = cluster();
    let mallory = generate(&mut OsRng);
    assert!(matches!(connect(&c, Role::Replica(ReplicaId(1)), &mallory, 0), Err(HandshakeError::UnknownIdentity(_))));
    assert!(matches!(connect(&c, Role::ViewManager, &mallory, 0), Err(HandshakeError::UnknownIdentity(_))));
    // A replica cannot connect to itself under its own name either.
    assert!(matches!(connect(&c, Role::Replica(ReplicaId(0)), &c.keys[0], 0), Err(HandshakeError::UnknownIdentity(_))));
}

#[test]
fn a_hello_with_someone_elses_key_fails_at_finish() {
    // Mallory copies replica 1's public key into her Hello but cannot sign Finish.
    let c = cluster();
    let mallory = generate(&mut OsRng);
    let (_, honest_hello) =
        Initiator::start(CLUSTER, Role::Replica(ReplicaId(1)), &c.keys[1], ReplicaId(0), &mut OsRng);
    let (resp, _reply) = Responder::on_hello(ReplicaId(0), &c.keys[0], &c.keyring, &honest_hello, &mut OsRng).unwrap();
    // She answers with a Finish signed by her own key.
    use ed25519_dalek::Signer;
    let forged = mallory.sign(b"anything");
    let finish =
        envelope::encode(CLUSTER, &HandshakeMessage::Finish { signature: Bytes::copy_from_slice(&forged.to_bytes()) });
    assert!(matches!(resp.on_finish(&finish), Err(HandshakeError::BadSignature)));
}

#[test]
fn a_client_detects_an_impostor_replica() {
    let c = cluster();
    let client_key = generate(&mut OsRng);
    let (init, hello) = Initiator::start(CLUSTER, Role::Client, &client_key, ReplicaId(2), &mut OsRng);
    // Replica 3 (or anyone with another key) answers a connection meant for replica 2.
    let (_, reply) = Responder::on_hello(ReplicaId(3), &c.keys[3], &c.keyring, &hello, &mut OsRng).unwrap();
    assert!(matches!(init.on_reply(&c.keyring, &reply), Err(HandshakeError::UnknownIdentity(_))));
    // An impostor claiming to be replica 2 with the wrong key cannot sign as it.
    let (init, hello) = Initiator::start(CLUSTER, Role::Client, &client_key, ReplicaId(2), &mut OsRng);
    let impostor = generate(&mut OsRng);
    let (_, reply) = Responder::on_hello(ReplicaId(2), &impostor, &c.keyring, &hello, &mut OsRng).unwrap();
    assert!(matches!(init.on_reply(&c.keyring, &reply), Err(HandshakeError::BadSignature)));
}

#[test]
fn a_tampered_reply_or_a_message_for_another_cluster_fails() {
    let c = cluster();
    let client_key = generate(&mut OsRng);
    let (init, hello) = Initiator::start(CLUSTER, Role::Client, &client_key, ReplicaId(0), &mut OsRng);
    let (_, reply) = Responder::on_hello(ReplicaId(0), &c.keys[0], &c.keyring, &hello, &mut OsRng).unwrap();
    let HandshakeMessage::HelloReply { replica, mut ephemeral, nonce, signature } =
        envelope::decode_handshake(CLUSTER, &reply).unwrap()
    else {
        panic!("not a reply")
    };
    ephemeral[0] ^= 1; // a man in the middle swaps the ephemeral key
    let tampered = envelope::encode(CLUSTER, &HandshakeMessage::HelloReply { replica, ephemeral, nonce, signature });
    assert!(matches!(init.on_reply(&c.keyring, &tampered), Err(HandshakeError::BadSignature)));

    let (_, hello) = Initiator::start(CLUSTER + 1, Role::Client, &client_key, ReplicaId(0), &mut OsRng);
    assert!(matches!(
        Responder::on_hello(ReplicaId(0), &c.keys[0], &c.keyring, &hello, &mut OsRng),
        Err(HandshakeError::Wire(WireError::WrongCluster { expected: CLUSTER, got: 43 }))
    ));
}

#[test]
fn messages_out_of_turn_are_refused() {
    let c = cluster();
    let client_key = generate(&mut OsRng);
    let (_, hello) = Initiator::start(CLUSTER, Role::Client, &client_key, ReplicaId(0), &mut OsRng);
    let (resp, reply) = Responder::on_hello(ReplicaId(0), &c.keys[0], &c.keyring, &hello, &mut OsRng).unwrap();
    assert!(matches!(
        Responder::on_hello(ReplicaId(0), &c.keys[0], &c.keyring, &reply, &mut OsRng),
        Err(HandshakeError::Unexpected(_))
    ));
    assert!(matches!(resp.on_finish(&hello), Err(HandshakeError::Unexpected(_))));
}

#[test]
fn each_connection_has_its_own_keys_so_frames_cannot_cross_or_be_replayed() {
    let c = cluster();
    let client_key = generate(&mut OsRng);
    let (mut a_client, mut a_replica) = connect(&c, Role::Client, &client_key, 1).unwrap();
    let (mut b_client, mut b_replica) = connect(&c, Role::Client, &client_key, 1).unwrap();
    let fa = send(&mut a_client, b"pay 10");
    let fb = send(&mut b_client, b"pay 10");
    assert_ne!(fa, fb, "same identity, same body, different connection: different MACs");
    assert_eq!(b_replica.opener.open(fa.clone()), Err(WireError::BadMac));
    a_replica.opener.open(fa.clone()).unwrap();
    assert_eq!(a_replica.opener.open(fa), Err(WireError::BadMac), "replay");
    // The replica's sending direction uses another key than the client's.
    let reflected = send(&mut a_client, b"echo");
    assert_eq!(a_client.opener.open(reflected), Err(WireError::BadMac), "reflection");
}

#[test]
fn replicas_can_refuse_clients() {
    let mut c = cluster();
    c.keyring.accept_clients = false;
    let client_key = generate(&mut OsRng);
    assert!(matches!(connect(&c, Role::Client, &client_key, 0), Err(HandshakeError::NotAllowed(_))));
}

#[test]
fn a_sealed_client_request_arrives_intact() {
    let c = cluster();
    let client_key = generate(&mut OsRng);
    let (mut client, mut replica) = connect(&c, Role::Client, &client_key, 0).unwrap();
    let msg = ClientMessage::Request(Request {
        client: ClientId(5),
        id: RequestId(6),
        read_only: true,
        operation: Bytes::from_static(b"get k"),
        auth: Bytes::new(),
    });
    let mut out = BytesMut::new();
    client.sealer.seal_message(CLUSTER, &msg, &mut out);
    let payload = FrameDecoder::new(1024).decode_exact(&out).unwrap();
    let body = replica.opener.open(payload).unwrap();
    assert_eq!(envelope::decode_client(CLUSTER, &body).unwrap(), msg);
}

#[test]
fn handshake_messages_fit_the_pre_authentication_frame_limit() {
    use palisade_wire::handshake::HANDSHAKE_MAX_FRAME_BYTES;
    let c = cluster();
    let client_key = generate(&mut OsRng);
    let (init, hello) = Initiator::start(CLUSTER, Role::Client, &client_key, ReplicaId(0), &mut OsRng);
    let (_, reply) = Responder::on_hello(ReplicaId(0), &c.keys[0], &c.keyring, &hello, &mut OsRng).unwrap();
    let (_, finish) = init.on_reply(&c.keyring, &reply).unwrap();
    for m in [hello, reply, finish] {
        assert!(m.len() <= HANDSHAKE_MAX_FRAME_BYTES / 4, "{} bytes", m.len());
    }
}
