//! The protocol core's normal case: 4 in-memory replicas on the host
//! drivers, no network, no cryptography, a service that does nothing.
//! Reports committed requests per second at every replica.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use palisade_core::{Config, Membership, Mode};
use palisade_testkit::cluster::{MemCluster, Noop};
use palisade_testkit::crypto::NoCrypto;

fn normal_case(c: &mut Criterion) {
    let mut group = c.benchmark_group("core_normal_case");
    const REQUESTS: usize = 2_000;
    group.throughput(Throughput::Elements(REQUESTS as u64));
    for (mode, name) in [(Mode::Bft, "bft"), (Mode::Cft, "cft")] {
        for batch in [1usize, 64, 512] {
            let payload = Bytes::from(vec![7u8; 100]);
            group.bench_with_input(BenchmarkId::new(format!("{name}_n4_100B"), batch), &batch, |b, &batch| {
                let mut cfg = Config::new(Membership::with_size(4, mode).unwrap());
                cfg.batch_max_requests = batch;
                cfg.max_in_flight = 8;
                let mut cluster = MemCluster::new(&cfg, |_| NoCrypto, || Noop);
                b.iter(|| cluster.order(REQUESTS, &payload));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, normal_case);
criterion_main!(benches);
