//! The wire's costs: framing and encoding, the per-frame MAC, and client
//! signature verification (single, one batch, rayon-parallel batches).

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use palisade_core::message::{Batch, PrePrepare, Vote};
use palisade_core::{ClientId, Digest, PeerMessage, Request, RequestId, SeqNo, ViewNo};
use palisade_wire::channel::{Opener, Sealer};
use palisade_wire::envelope;
use palisade_wire::frame::{FrameDecoder, DEFAULT_MAX_FRAME_BYTES};
use palisade_wire::verify::{self, VerifyLimits};
use std::hint::black_box;
use std::sync::Arc;

const CLUSTER: u64 = 1;

fn request(i: u64, size: usize) -> Request {
    Request {
        client: ClientId(i % 50),
        id: RequestId(i),
        read_only: false,
        operation: Bytes::from(vec![i as u8; size]),
        auth: Bytes::new(),
    }
}

fn messages() -> Vec<(&'static str, PeerMessage)> {
    vec![
        ("commit", PeerMessage::Commit(Vote { view: ViewNo(1), seq: SeqNo(1_000), digest: Digest([7; 32]) })),
        (
            "pre_prepare_64x100B",
            PeerMessage::PrePrepare(PrePrepare {
                view: ViewNo(1),
                seq: SeqNo(1_000),
                batch: Arc::new(Batch {
                    timestamp_ms: 1,
                    proposed_in: ViewNo(0),
                    requests: (0..64).map(|i| request(i, 100)).collect(),
                }),
            }),
        ),
    ]
}

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(1));
    for (name, msg) in messages() {
        g.bench_function(BenchmarkId::new("encode_seal", name), |b| {
            let mut sealer = Sealer::new(&[1; 32]);
            let mut out = BytesMut::with_capacity(1 << 16);
            b.iter(|| {
                out.clear();
                sealer.seal_message(CLUSTER, black_box(&(0u64, &msg)), &mut out);
            });
        });
        let mut sealer = Sealer::new(&[1; 32]);
        let mut stream = BytesMut::new();
        const N: usize = 1_000;
        for _ in 0..N {
            sealer.seal_message(CLUSTER, &(0u64, &msg), &mut stream);
        }
        let stream = stream.freeze();
        g.throughput(Throughput::Elements(N as u64));
        g.bench_function(BenchmarkId::new("unframe_open_decode", name), |b| {
            let d = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
            b.iter(|| {
                let mut opener = Opener::new(&[1; 32]);
                let mut buf = BytesMut::from(&stream[..]);
                while let Some(payload) = d.decode(&mut buf).unwrap() {
                    let body = opener.open(payload).unwrap();
                    black_box(envelope::decode_peer(CLUSTER, &body).unwrap());
                }
            });
        });
        g.throughput(Throughput::Elements(1));
    }
    g.finish();
}

fn hmac(c: &mut Criterion) {
    let mut g = c.benchmark_group("hmac_per_frame");
    for size in [100usize, 1024, 4096] {
        let body = vec![3u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("seal_and_open", size), &body, |b, body| {
            let mut sealer = Sealer::new(&[2; 32]);
            let mut opener = Opener::new(&[2; 32]);
            let mut out = BytesMut::with_capacity(size + 64);
            b.iter(|| {
                out.clear();
                sealer.seal(body, &mut out);
                let payload = out.split().freeze().slice(4..);
                black_box(opener.open(payload).unwrap());
            });
        });
    }
    g.finish();
}

fn signatures(c: &mut Criterion) {
    let keys: Vec<_> = (0..16).map(|_| palisade_wire::keys::generate(&mut rand_core::OsRng)).collect();
    let signed: Vec<Request> = (0..1024u64)
        .map(|i| {
            let mut r = request(i, 100);
            verify::sign_request(&keys[i as usize % keys.len()], &mut r);
            r
        })
        .collect();
    let mut g = c.benchmark_group("client_signatures");
    g.throughput(Throughput::Elements(1));
    g.bench_function("single_cofactored", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % signed.len();
            verify::forget_verified_signatures();
            black_box(verify::verify_request(black_box(&signed[i]))).unwrap();
        })
    });
    g.throughput(Throughput::Elements(signed.len() as u64));
    for threads in [1usize, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        for chunk in [64usize, 1024] {
            let limits = VerifyLimits { chunk, ..VerifyLimits::default() };
            let label = format!("batch{chunk}_threads{threads}");
            g.bench_function(BenchmarkId::new("verify_batch_1024", label), |b| {
                b.iter(|| {
                    verify::forget_verified_signatures();
                    let out = verify::verify_batch(signed.clone(), limits, |_, _| true, &pool);
                    assert_eq!(out.signatures_checked, signed.len());
                    assert!(out.verdicts.iter().all(|r| r.is_ok()));
                    black_box(out);
                })
            });
        }
    }
    g.finish();
    groups(c, &keys);
}

/// What signing in groups saves: the client's cost per request, alone and
/// in a group of 32, and a replica's check of 1,024 requests signed in
/// groups of 32 (32 signatures).
fn groups(c: &mut Criterion, keys: &[ed25519_dalek::SigningKey]) {
    let mut g = c.benchmark_group("request_groups");
    let unsigned: Vec<Request> = (0..32u64).map(|i| request(i, 100)).collect();
    g.throughput(Throughput::Elements(32));
    g.bench_function("sign_32_alone", |b| {
        b.iter(|| {
            let mut rs = unsigned.clone();
            for r in &mut rs {
                verify::sign_request(&keys[0], r);
            }
            black_box(rs);
        })
    });
    g.bench_function("sign_32_as_a_group", |b| {
        b.iter(|| {
            let mut rs = unsigned.clone();
            verify::sign_group(&keys[0], &mut rs);
            black_box(rs);
        })
    });
    let mut grouped: Vec<Request> = (0..1024u64).map(|i| request(i, 100)).collect();
    for (i, group) in grouped.chunks_mut(32).enumerate() {
        verify::sign_group(&keys[i % keys.len()], group);
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    g.throughput(Throughput::Elements(grouped.len() as u64));
    g.bench_function("verify_batch_1024_in_groups_of_32", |b| {
        b.iter(|| {
            verify::forget_verified_signatures();
            let out = verify::verify_batch(grouped.clone(), VerifyLimits::default(), |_, _| true, &pool);
            assert_eq!(out.signatures_checked, 32);
            black_box(out);
        })
    });
    g.finish();
}

criterion_group!(benches, frames, hmac, signatures);
criterion_main!(benches);
