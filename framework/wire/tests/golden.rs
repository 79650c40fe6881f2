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
        "03080706050403020100010102abababababababababababababababababababababababababababababababab",
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
        "030807060504030201000003ac0280d095ffbc31030107ac0200026f7003736967",
    );
    check_peer(
        "checkpoint",
        &PeerMessage::Checkpoint(Signed {
            body: CheckpointBody { seq: SeqNo(128), state: Digest([1; 32]), config: Digest([3; 32]), replica: ReplicaId(2) },
            signature: Signature(Bytes::from_static(b"s")),
        }),
        "0308070605040302010003800101010101010101010101010101010101010101010101010101010101010101010303030303030303030303030303030303030303030303030303030303030303020173",
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
        "03080706050403020100040501000202020202020202020202020202020202020202020202020202020202020202000101040303030303030303030303030303030303030303030303030303030303030303000176",
    );
    check_peer(
        "status",
        &PeerMessage::Status(Status { view: ViewNo(9), normal: true, delivered: SeqNo(1000), stable: SeqNo(896) }),
        "03080706050403020100070901e8078007",
    );
    check_peer("state-request", &PeerMessage::StateRequest { seq: SeqNo(128) }, "030807060504030201000b8001");
    check_peer("rejoin-query", &PeerMessage::RejoinQuery { nonce: 0x1234 }, "030807060504030201000db424");
    check_peer(
        "rejoin-reply",
        &PeerMessage::RejoinReply {
            nonce: 0x1234,
            delivered: SeqNo(300),
            checkpoint: palisade_core::checkpoint::genesis(Digest([2; 32])),
        },
        "030807060504030201000eb424ac0200020202020202020202020202020202020202020202020202020202020202020200",
    );
    check_peer(
        "state-fetch",
        &PeerMessage::StateFetch {
            seq: SeqNo(128),
            query: StateQuery::Parts { parts: vec![1, 300], digests_from: 2, record: 3, offset: 4 },
        },
        "030807060504030201000f8001010201ac02020304",
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
        "030807060504030201001080010102000100010105050505050505050505050505050505050505050505050505050505050505050101000002026869",
    );
    check_peer(
        "state-manifest",
        &PeerMessage::StateData {
            seq: SeqNo(8),
            answer: StateAnswer::Manifest { from: 0, total: 1, digests: vec![Digest([6; 32])] },
        },
        "030807060504030201001008000001010606060606060606060606060606060606060606060606060606060606060606",
    );
}

#[test]
fn client_and_replica_messages() {
    check("request", &ClientMessage::Request(request()), "0308070605040302010007ac0200026f7003736967");
    check(
        "reply",
        &ReplicaMessage::Reply(Reply {
            view: ViewNo(1),
            replica: ReplicaId(3),
            client: ClientId(7),
            request: RequestId(300),
            result: Bytes::from_static(b"ok"),
        }),
        "03080706050403020100010307ac02026f6b",
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
        "03080706050403020102010307ac020909090909090909090909090909090909090909090909090909090909090909",
    );
    check(
        "requests",
        &ClientMessage::Requests(vec![request(), request()]),
        "030807060504030201010207ac0200026f700373696707ac0200026f7003736967",
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
        "0308070605040302010301030702ac0200026f6bad02010909090909090909090909090909090909090909090909090909090909090909",
    );
    check(
        "replies-too-large",
        &ReplicaMessage::Replies {
            view: ViewNo(1),
            replica: ReplicaId(3),
            client: ClientId(7),
            answers: vec![(RequestId(301), Answer::TooLarge { len: 5_000_000, digest: Digest([9; 32]) })],
        },
        "0308070605040302010301030701ad0202c096b1020909090909090909090909090909090909090909090909090909090909090909",
    );
    check(
        "rejected",
        &ReplicaMessage::Rejected { replica: ReplicaId(0), request: RequestId(1), reason: RejectReason::Busy },
        "03080706050403020101000100",
    );
    check(
        "rejected-too-large",
        &ReplicaMessage::Rejected { replica: ReplicaId(0), request: RequestId(1), reason: RejectReason::TooLarge },
        "03080706050403020101000103",
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
        "030807060504030201000002040404040404040404040404040404040404040404040404040404040404040405050505050505050505050505050505050505050505050505050505050505050606060606060606060606060606060606060606060606060606060606060606",
    );
    check("finish", &HandshakeMessage::Finish { signature: Bytes::from(vec![7u8; 64]) }, "030807060504030201024007070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707070707");
}

#[test]
fn a_sealed_frame() {
    let mut sealer = Sealer::new(&[9; 32]);
    let mut out = BytesMut::new();
    sealer.seal(b"body", &mut out);
    sealer.seal(b"body", &mut out);
    assert_eq!(hex::encode(&out), "24000000626f6479f52087b8dda9acb25654e4d961743ac0d4c9e88812e20fed2bacdb17aa8047c424000000626f6479f35cf8a1b515d043274312511d629ab94aca1a27ad8b957890d0be4d33e8d040", "sealed frames changed");
}

/// A request's authenticator: the client's key and signature, then one
/// (replica, MAC) entry per replica. The signature is deterministic
/// (ed25519), and the MACs are HMAC-SHA256 truncated to 16 bytes.
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
        "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c2ffa5d9a40102d91c81670eeb101a5c8d79014079bb05ce37bc62cb17943b927b6a1a2b7449e66a30ea7f957579a9980e3fb41f6393b86a4f7cc9a5442f1430d\
         02000000008bed6522e699c620de7868d1b831c14e0300000066308a016cb93396bd8d3ddbe74c380b",
        "authenticator changed; got\n{got}"
    );
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
    check("chain query", &ClientMessage::ChainQuery { after: 3 }, "0308070605040302010203");
    check("status query", &ClientMessage::Status, "03080706050403020103");
    check("no links", &ReplicaMessage::Chain(vec![]), "0308070605040302010400");
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
    };
    check("status", &ReplicaMessage::Status(report), "03080706050403020105020203010101ac02800202010301");
}
