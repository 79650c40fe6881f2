//! Golden bytes: the wire format, frozen. If one of these fails, the format
//! changed: that breaks every deployed client and replica, so it must be a
//! new version (see docs/wire.md), never an edit of these constants.

use bytes::{Bytes, BytesMut};
use palisade_core::message::{
    Batch, CheckpointBody, PrePrepare, PreparedEntry, Reply, Signature, Signed, StateAnswer, StateItem, StateQuery,
    Status, ViewChangeBody, Vote,
};
use palisade_core::{ClientId, Digest, PeerMessage, ReplicaId, Request, RequestId, SeqNo, ViewNo};
use palisade_wire::channel::Sealer;
use palisade_wire::envelope::{self, Answer, ClientMessage, HandshakeMessage, RejectReason, ReplicaMessage, Role};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::sync::Arc;

const CLUSTER: u64 = 0x0102_0304_0506_0708;

fn request() -> Request {
    Request {
        client: ClientId(7),
        id: RequestId(300),
        read_only: false,
        operation: Bytes::from_static(b"op"),
        auth: Bytes::from_static(b"sig"),
    }
}

fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(name: &str, value: &T, expected_hex: &str) {
    let bytes = envelope::encode(CLUSTER, value);
    let got = hex::encode(&bytes);
    assert_eq!(got, expected_hex, "{name}: encoding changed; got\n{got}");
    let back: T = envelope::decode(CLUSTER, &bytes).unwrap();
    assert_eq!(&back, value, "{name}: does not round-trip");
}

/// A peer frame: the sending core's epoch (here 0), then the message.
fn check_peer(name: &str, value: &PeerMessage, expected_hex: &str) {
    let bytes = envelope::encode_peer(CLUSTER, 0, value);
    let got = hex::encode(&bytes);
    assert_eq!(got, expected_hex, "{name}: encoding changed; got\n{got}");
    let (epoch, back) = envelope::decode_peer(CLUSTER, &bytes).unwrap();
    assert_eq!((epoch, &back), (0, value), "{name}: does not round-trip");
}

#[test]
fn peer_messages() {
    check_peer(
        "prepare",
        &PeerMessage::Prepare(Vote { view: ViewNo(1), seq: SeqNo(2), digest: Digest([0xab; 32]) }),
        "04080706050403020100010102abababababababababababababababababababababababababababababababab",
    );
    check_peer(
        "pre-prepare",
        &PeerMessage::PrePrepare(PrePrepare {
            view: ViewNo(3),
            seq: SeqNo(300),
            batch: Arc::new(Batch {
                timestamp_ms: 1_700_000_000_000,
                proposed_in: ViewNo(3),
                requests: vec![request()],
            }),
        }),
        "040807060504030201000003ac0280d095ffbc31030107ac0200026f7003736967",
    );
    check_peer(
        "checkpoint",
        &PeerMessage::Checkpoint(Signed {
            body: CheckpointBody { seq: SeqNo(128), state: Digest([1; 32]), config: Digest([3; 32]), replica: ReplicaId(2) },
            signature: Signature(Bytes::from_static(b"s")),
        }),
        "0408070605040302010003800101010101010101010101010101010101010101010101010101010101010101010303030303030303030303030303030303030303030303030303030303030303020173",
    );
    check_peer(
        "view-change",
        &PeerMessage::ViewChange(Signed {
            body: ViewChangeBody {
                new_view: ViewNo(5),
                replica: ReplicaId(1),
                checkpoint: palisade_core::checkpoint::genesis(Digest([2; 32])),
                prepared: vec![PreparedEntry { seq: SeqNo(1), view: ViewNo(4), digest: Digest([3; 32]) }],
                preprepared: vec![],
            },
            signature: Signature(Bytes::from_static(b"v")),
        }),
        "04080706050403020100040501000202020202020202020202020202020202020202020202020202020202020202000101040303030303030303030303030303030303030303030303030303030303030303000176",
    );
    check_peer(
        "status",
        &PeerMessage::Status(Status { view: ViewNo(9), normal: true, delivered: SeqNo(1000), stable: SeqNo(896) }),
        "04080706050403020100070901e8078007",
    );
    check_peer("state-request", &PeerMessage::StateRequest { seq: SeqNo(128) }, "040807060504030201000b8001");
    check_peer("rejoin-query", &PeerMessage::RejoinQuery { nonce: 0x1234 }, "040807060504030201000db424");
    check_peer(
        "rejoin-reply",
        &PeerMessage::RejoinReply {
            nonce: 0x1234,
            delivered: SeqNo(300),
            checkpoint: palisade_core::checkpoint::genesis(Digest([2; 32])),
        },
        "040807060504030201000eb424ac0200020202020202020202020202020202020202020202020202020202020202020200",
    );
    check_peer(
        "state-fetch",
        &PeerMessage::StateFetch {
            seq: SeqNo(128),
            query: StateQuery::Parts { parts: vec![1, 300], digests_from: 2, record: 3, offset: 4 },
        },
        "040807060504030201000f8001010201ac02020304",
    );
    check_peer(
        "state-data",
        &PeerMessage::StateData {
            seq: SeqNo(128),
            answer: StateAnswer::Parts(vec![
                StateItem::Digests { part: 1, from: 0, total: 1, digests: vec![Digest([5; 32])] },
                StateItem::Bytes { part: 1, record: 0, offset: 0, len: 2, bytes: Bytes::from_static(b"hi") },
            ]),
        },
        "040807060504030201001080010102000100010105050505050505050505050505050505050505050505050505050505050505050101000002026869",
    );
    check_peer(
        "state-manifest",
        &PeerMessage::StateData {
            seq: SeqNo(8),
            answer: StateAnswer::Manifest { from: 0, total: 1, digests: vec![Digest([6; 32])] },
        },
        "040807060504030201001008000001010606060606060606060606060606060606060606060606060606060606060606",
    );
}

#[test]
fn client_and_replica_messages() {
    check("request", &ClientMessage::Request(request()), "0408070605040302010007ac0200026f7003736967");
    check(
        "reply",
        &ReplicaMessage::Reply(Reply {
            view: ViewNo(1),
            replica: ReplicaId(3),
            client: ClientId(7),
            request: RequestId(300),
            result: Bytes::from_static(b"ok"),
        }),
        "04080706050403020100010307ac02026f6b",
    );
    check(
        "reply-digest",
        &ReplicaMessage::ReplyDigest {
            view: ViewNo(1),
            replica: ReplicaId(3),
            client: ClientId(7),
            request: RequestId(300),
            digest: Digest([9; 32]),
        },
        "04080706050403020102010307ac020909090909090909090909090909090909090909090909090909090909090909",
    );
    check(
        "requests",
        &ClientMessage::Requests(vec![request(), request()]),
        "040807060504030201010207ac0200026f700373696707ac0200026f7003736967",
    );
    check(
        "replies",
        &ReplicaMessage::Replies {
            view: ViewNo(1),
            replica: ReplicaId(3),
            client: ClientId(7),
            answers: vec![
                (RequestId(300), Answer::Full(Bytes::from_static(b"ok"))),
                (RequestId(301), Answer::Digest(Digest([9; 32]))),
            ],
        },
        "0408070605040302010301030702ac0200026f6bad02010909090909090909090909090909090909090909090909090909090909090909",
    );
    check(
        "replies-tentative",
        &ReplicaMessage::Replies {
            view: ViewNo(1),
            replica: ReplicaId(3),
            client: ClientId(7),
            answers: vec![
                (RequestId(300), Answer::TentativeFull(Bytes::from_static(b"ok"))),
                (RequestId(301), Answer::TentativeDigest(Digest([9; 32]))),
            ],
        },
        "0408070605040302010301030702ac0203026f6bad02040909090909090909090909090909090909090909090909090909090909090909",
    );
    check(
        "replies-too-large",
        &ReplicaMessage::Replies {
            view: ViewNo(1),
            replica: ReplicaId(3),
            client: ClientId(7),
            answers: vec![(RequestId(301), Answer::TooLarge { len: 5_000_000, digest: Digest([9; 32]) })],
        },
        "0408070605040302010301030701ad0202c096b1020909090909090909090909090909090909090909090909090909090909090909",
    );
    check(
        "rejected",
        &ReplicaMessage::Rejected { replica: ReplicaId(0), request: RequestId(1), reason: RejectReason::Busy },
        "04080706050403020101000100",
    );
    check(
        "rejected-too-large",
        &ReplicaMessage::Rejected { replica: ReplicaId(0), request: RequestId(1), reason: RejectReason::TooLarge },
        "04080706050403020101000103",
    );
}

#[test]
fn handshake_messages() {
    check(
        "hello",
        &HandshakeMessage::Hello {
            role: Role::Replica(ReplicaId(2)),
            identity: [4; 32],
            ephemeral: [5; 32],
            nonce: [6; 32],
        },
        "040807060504030201000002040404040404040404040404040404040404040404040404040404040404040405050505050505050505050505050505050505050505050505050505050505050606060606060606060606060606060606060606060606060606060606060606",
    );
    check("finish", &HandshakeMessage::Finish { signature: Bytes::from(vec![7u8; 64]) }, "040807060504030201024007070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707");
}

#[test]
fn a_sealed_frame() {
    let mut sealer = Sealer::new(&[9; 32]);
    let mut out = BytesMut::new();
    sealer.seal(b"body", &mut out);
    sealer.seal(b"body", &mut out);
    assert_eq!(hex::encode(&out), "24000000626f6479f52087b8dda9acb25654e4d961743ac0d4c9e88812e20fed2bacdb17aa8047c424000000626f6479f35cf8a1b515d043274312511d629ab94aca1a27ad8b957890d0be4d33e8d040", "sealed frames changed");
}

/// A request's authenticator: the client's key and its group signature,
/// an empty proof (a group of one), then one (replica, MAC) entry per
/// replica. The signature is deterministic (ed25519), and the MACs are
/// HMAC-SHA256 over the domain and the request's leaf hash, truncated to
/// 16 bytes (checked outside Rust: the leaf is `leaf0` of
/// `request_group_signature`, the same request).
#[test]
fn request_authenticator() {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let mut r = Request {
        client: ClientId(0),
        id: RequestId(300),
        read_only: false,
        operation: Bytes::from_static(b"op"),
        auth: Bytes::new(),
    };
    palisade_wire::verify::authenticate_request(&key, &[(ReplicaId(0), [1; 32]), (ReplicaId(3), [2; 32])], &mut r);
    let got = hex::encode(&r.auth);
    assert_eq!(
        got,
        "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c4cf6610cdcfd9d7e8355393f09967497e1fd183d1efbb4231191e11021cb6092a5a0bf46f0c801742d8809d952ce4f1276d4589758f7f4cbb55f6e2a8776950c\
         0000\
         02000000004e19375ac260c9606ce51b47cadd88f903000000c6b0201ff5ef2c9344928faa2b5304b1",
        "authenticator changed; got\n{got}"
    );
}

/// Three requests signed as one group: the same key and signature on
/// each, then depth, sides and the siblings on the path to the root (the
/// third request's leaf is carried up alone, so its proof is one hash).
#[test]
fn request_group_signature() {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let mut group: Vec<Request> = (0..3u64)
        .map(|i| Request {
            client: ClientId(0),
            id: RequestId(300 + i),
            read_only: false,
            operation: Bytes::from_static(b"op"),
            auth: Bytes::new(),
        })
        .collect();
    palisade_wire::verify::sign_group(&key, &mut group);
    let got: Vec<String> = group.iter().map(|r| hex::encode(&r.auth)).collect();
    // Checked outside Rust: the leaves are SHA-256(0x00 || signed bytes),
    // the root SHA-256(0x01 || SHA-256(0x01 || leaf0 || leaf1) || leaf2), and
    // the signature verifies over "palisade/request-group/v1" || root.
    let (key, signature) = ("ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c", "41173342cfa575e60754b6a63d04c8b1e1f0cfbd46f3b4603ffc904fdf90475c4196c04c33981da91ed763167f036cca9e740f055a10792eeb3e63337d6e0800");
    let (leaf0, leaf1, leaf2, node01) = (
        "b949accc8f0224559222e9ab7b0c2549383c5f3cd1d49e1e14d899261539f457",
        "bb6778ae36193693fc34edc54b4ae62ecf34e1bd14ab16ea7bef3511c2808852",
        "8e3d699d8add37abe74bd54f1fc1eaf8834040b06b8b22c6ae985253e845e058",
        "276eefb2d17b06a2562eb31ee464ccd7772f3f1d50e715761e7ed29fa74617a7",
    );
    let expected = [
        format!("{key}{signature}0200{leaf1}{leaf2}"),
        format!("{key}{signature}0201{leaf0}{leaf2}"),
        format!("{key}{signature}0101{node01}"),
    ];
    assert_eq!(got, expected, "group signature changed");
    for r in &group {
        assert_eq!(palisade_wire::verify::verify_request(r), Ok(()));
    }
}

/// A reconfiguration request (the operation bytes of a request from the
/// view manager) and its answer.
#[test]
fn admin_request_and_outcome() {
    use palisade_core::reconfig::{AdminBody, AdminOp, AdminOutcome, AdminRequest, Configuration, Member, Rejection};
    use palisade_core::Mode;
    let body = AdminBody {
        cluster: CLUSTER,
        epoch: 3,
        nonce: 9,
        ops: vec![
            AdminOp::Add { id: ReplicaId(4), address: "h:1".into(), public_key: [5; 32] },
            AdminOp::Remove { id: ReplicaId(0) },
            AdminOp::SetF { f: 1 },
        ],
    };
    let signed = palisade_wire::verify::sign_admin(&ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]), body);
    raw("admin request", &signed.encode(), "888e98a8c0e0808101030903000403683a3105050505050505050505050505050505050505050505050505050505050505050100020140bba85c337099dad00174746a5f20eaf53ec4adfa356f11052d79180579ffefa70c9a2d69936e7435389d0a769c38d69993f43cb8f4cb974fead17ed31c264802");
    assert_eq!(postcard::from_bytes::<AdminRequest>(&signed.encode()).unwrap(), signed);
    let next = Configuration::new(
        4,
        CLUSTER,
        (1..5).map(|i| Member { id: ReplicaId(i), address: format!("h:{i}"), public_key: [i as u8; 32] }).collect(),
        1,
        Mode::Bft,
        [9; 32],
    )
    .unwrap();
    for (name, outcome, hex) in [
        ("admin accepted", AdminOutcome::Accepted { next, boundary: SeqNo(128) }, "0004888e98a8c0e0808101040103683a3101010101010101010101010101010101010101010101010101010101010101010203683a3202020202020202020202020202020202020202020202020202020202020202020303683a3303030303030303030303030303030303030303030303030303030303030303030403683a34040404040404040404040404040404040404040404040404040404040404040401000909090909090909090909090909090909090909090909090909090909090909018001"),
        ("admin rejected", AdminOutcome::Rejected(Rejection::WrongEpoch { current: 4 }), "010404"),
    ] {
        raw(name, &outcome.encode(), hex);
        assert_eq!(AdminOutcome::decode(&outcome.encode()), Some(outcome));
    }
}

/// Bytes carried inside a request or a reply, without an envelope.
fn raw(name: &str, bytes: &[u8], expected_hex: &str) {
    let got = hex::encode(bytes);
    assert_eq!(got, expected_hex, "{name}: encoding changed; got\n{got}");
}

#[test]
fn chain_and_status() {
    use palisade_wire::envelope::{MemberRole, StatusReport};
    check("chain query", &ClientMessage::ChainQuery { after: 3 }, "0408070605040302010203");
    check("status query", &ClientMessage::Status, "04080706050403020103");
    check("no links", &ReplicaMessage::Chain(vec![]), "0408070605040302010400");
    let report = StatusReport {
        replica: ReplicaId(2),
        role: MemberRole::Removed,
        epoch: 3,
        view: ViewNo(1),
        primary: ReplicaId(1),
        normal: true,
        delivered: 300,
        stable: 256,
        members: vec![ReplicaId(1), ReplicaId(3)],
        f: 1,
        peers_connected: 2,
        clients_connected: 5,
        queues: vec![palisade_wire::envelope::QueueDepth { name: "peer_queue".into(), depth: 3, capacity: 4096 }],
    };
    check(
        "status",
        &ReplicaMessage::Status(report),
        "04080706050403020105020203010101ac028002020103010205010a706565725f7175657565038020",
    );
}
