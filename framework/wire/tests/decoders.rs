//! Every decoder against random and mutated input: a typed error or a
//! value, never a panic, and never an allocation beyond the frame limit.
//! (Coverage-guided fuzzing of the same decoders lives in framework/wire/fuzz.)

use bytes::{Bytes, BytesMut};
use palisade_core::message::{Batch, PrePrepare, Reply, Status, Vote};
use palisade_core::{ClientId, Digest, PeerMessage, ReplicaId, Request, RequestId, SeqNo, ViewNo};
use palisade_wire::channel::Opener;
use palisade_wire::envelope::{self, Answer, ClientMessage, HandshakeMessage, ReplicaMessage, Role};
use palisade_wire::frame::{FrameDecoder, DEFAULT_MAX_FRAME_BYTES};
use palisade_wire::handshake::{Keyring, Responder};
use palisade_wire::WireError;
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

/// Counts this thread's live heap bytes and their peak.
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|l| {
            let now = l.get() + layout.size();
            l.set(now);
            let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
        });
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(layout.size())));
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak extra heap bytes while `f` runs on this thread.
fn peak_during(f: impl FnOnce()) -> usize {
    let base = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(base));
    f();
    PEAK.with(|p| p.get()) - base
}

const CLUSTER: u64 = 11;

fn samples() -> Vec<Bytes> {
    let req = Request {
        client: ClientId(3),
        id: RequestId(4),
        read_only: false,
        operation: Bytes::from(vec![1u8; 40]),
        auth: Bytes::from(vec![2u8; 96]),
    };
    vec![
        envelope::encode_peer(
            CLUSTER,
            0,
            &PeerMessage::PrePrepare(PrePrepare {
                view: ViewNo(1),
                seq: SeqNo(2),
                batch: Arc::new(Batch { timestamp_ms: 5, proposed_in: ViewNo(0), requests: vec![req.clone(); 8] }),
            }),
        ),
        envelope::encode_peer(
            CLUSTER,
            3,
            &PeerMessage::Commit(Vote { view: ViewNo(1), seq: SeqNo(9), digest: Digest([4; 32]) }),
        ),
        envelope::encode_peer(
            CLUSTER,
            0,
            &PeerMessage::Status(Status { view: ViewNo(2), normal: false, delivered: SeqNo(3), stable: SeqNo(0) }),
        ),
        envelope::encode(CLUSTER, &ClientMessage::Request(req)),
        envelope::encode(
            CLUSTER,
            &ReplicaMessage::Reply(Reply {
                view: ViewNo(0),
                replica: ReplicaId(1),
                client: ClientId(3),
                request: RequestId(4),
                result: Bytes::from_static(b"result"),
            }),
        ),
        envelope::encode(
            CLUSTER,
            &HandshakeMessage::Hello { role: Role::Client, identity: [1; 32], ephemeral: [2; 32], nonce: [3; 32] },
        ),
    ]
}

fn all_decoders(body: &[u8]) {
    let _ = envelope::decode_peer(CLUSTER, body);
    let _ = envelope::decode_client(CLUSTER, body);
    let _ = envelope::decode_replica(CLUSTER, body);
    let _ = envelope::decode_handshake(CLUSTER, body);
    let mut opener = Opener::new(&[1; 32]);
    let _ = opener.open(Bytes::copy_from_slice(body));
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let keyring = Keyring {
        cluster: CLUSTER,
        replicas: [(ReplicaId(0), key.verifying_key())].into_iter().collect(),
        view_manager: key.verifying_key(),
        accept_clients: true,
    };
    let _ = Responder::on_hello(ReplicaId(0), &key, &keyring, body, &mut rand_core::OsRng);
}

fn mutate(sample: &[u8], ops: &[(u8, u16, u8)]) -> Vec<u8> {
    let mut v = sample.to_vec();
    for &(op, at, byte) in ops {
        let i = if v.is_empty() { 0 } else { at as usize % v.len() };
        match op % 4 {
            0 if !v.is_empty() => v[i] = byte,
            1 => v.insert(i.min(v.len()), byte),
            2 if !v.is_empty() => {
                v.remove(i);
            }
            _ => v.truncate(i),
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_or_allocate_beyond_the_frame_limit(body in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let peak = peak_during(|| all_decoders(&body));
        prop_assert!(peak <= DEFAULT_MAX_FRAME_BYTES, "decoding {} bytes allocated {peak}", body.len());
    }

    #[test]
    fn mutated_valid_messages_never_panic_or_allocate_beyond_the_frame_limit(
        which in 0usize..6,
        ops in proptest::collection::vec((any::<u8>(), any::<u16>(), any::<u8>()), 1..8)
    ) {
        let body = mutate(&samples()[which], &ops);
        let peak = peak_during(|| all_decoders(&body));
        prop_assert!(peak <= DEFAULT_MAX_FRAME_BYTES, "decoding {} bytes allocated {peak}", body.len());
    }

    #[test]
    fn random_streams_split_into_frames_or_fail_cleanly(
        stream in proptest::collection::vec(any::<u8>(), 0..2048),
        max in 0usize..512
    ) {
        let d = FrameDecoder::new(max);
        let mut buf = BytesMut::from(&stream[..]);
        let mut consumed = 0usize;
        loop {
            match d.decode(&mut buf) {
                Ok(Some(frame)) => {
                    prop_assert!(frame.len() <= max);
                    consumed += 4 + frame.len();
                }
                Ok(None) => break,
                Err(_) => break,
            }
            prop_assert!(consumed <= stream.len());
        }
    }
}

#[test]
fn a_huge_length_claim_inside_a_message_does_not_allocate_it() {
    // A PRE-PREPARE (epoch 0) whose batch claims 2^32 requests in a 20-byte body.
    let mut body = envelope::encode(CLUSTER, &PeerMessage::StateRequest { seq: SeqNo(1) }).to_vec();
    body.truncate(envelope::HEADER_BYTES);
    body.extend_from_slice(&[0, 0, 1, 1, 5, 0xff, 0xff, 0xff, 0xff, 0x0f]);
    let peak = peak_during(|| {
        assert!(envelope::decode_peer(CLUSTER, &body).is_err());
    });
    assert!(peak <= 2 << 20, "allocated {peak} bytes for a 20-byte message");
}

#[test]
fn a_list_longer_than_the_limit_is_refused_before_it_is_built() {
    let req = Request {
        client: ClientId(3),
        id: RequestId(1),
        read_only: false,
        operation: Bytes::new(),
        auth: Bytes::new(),
    };
    let at_limit = envelope::encode(CLUSTER, &ClientMessage::Requests(vec![req.clone(); envelope::MAX_LIST]));
    assert!(envelope::decode_client(CLUSTER, &at_limit).is_ok());
    let over = envelope::encode(CLUSTER, &ClientMessage::Requests(vec![req; envelope::MAX_LIST + 1]));
    let peak = peak_during(|| {
        assert!(matches!(envelope::decode_client(CLUSTER, &over), Err(WireError::Malformed(_))));
    });
    assert!(peak < 64 << 10, "refusing the list allocated {peak} bytes");
    let answers = vec![(RequestId(1), Answer::Digest(Digest([0; 32]))); envelope::MAX_LIST + 1];
    let over = envelope::encode(
        CLUSTER,
        &ReplicaMessage::Replies { view: ViewNo(0), replica: ReplicaId(1), client: ClientId(3), answers },
    );
    assert!(matches!(envelope::decode_replica(CLUSTER, &over), Err(WireError::Malformed(_))));
}

#[test]
fn every_truncation_and_extension_of_a_message_is_an_error_on_its_channel() {
    type Decoder = fn(&[u8]) -> bool;
    let peer: Decoder = |b| envelope::decode_peer(CLUSTER, b).is_ok();
    let client: Decoder = |b| envelope::decode_client(CLUSTER, b).is_ok();
    let replica: Decoder = |b| envelope::decode_replica(CLUSTER, b).is_ok();
    let handshake: Decoder = |b| envelope::decode_handshake(CLUSTER, b).is_ok();
    let channels = [peer, peer, peer, client, replica, handshake];
    for (s, decodes) in samples().iter().zip(channels) {
        assert!(decodes(s), "the sample itself decodes");
        for cut in 0..s.len() {
            assert!(!decodes(&s[..cut]), "a message cut to {cut} of {} bytes decoded", s.len());
        }
        let mut longer = s.to_vec();
        longer.push(0);
        assert!(!decodes(&longer), "a trailing byte must be refused");
    }
}

#[test]
fn the_allocation_counter_sees_allocations() {
    let peak = peak_during(|| {
        let v = std::hint::black_box(vec![0u8; 100_000]);
        drop(v);
    });
    assert!(peak >= 100_000, "counter saw {peak} bytes");
}
