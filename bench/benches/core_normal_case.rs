//! The protocol core's normal case: 4 in-memory replicas, no network, no
//! cryptography. Reports committed requests per second at every replica.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use palisade_bench::MemCluster;
use palisade_core::Mode;

fn normal_case(c: &mut Criterion) {
    let mut group = c.benchmark_group("core_normal_case");
    const REQUESTS: usize = 2_000;
    group.throughput(Throughput::Elements(REQUESTS as u64));
    for (mode, name) in [(Mode::Bft, "bft"), (Mode::Cft, "cft")] {
        for batch in [1usize, 64, 512] {
            let payload = Bytes::from(vec![7u8; 100]);
            group.bench_with_input(BenchmarkId::new(format!("{name}_n4_100B"), batch), &batch, |b, &batch| {
                let mut cluster = MemCluster::new(4, mode, batch);
                b.iter(|| cluster.order(REQUESTS, &payload));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, normal_case);
criterion_main!(benches);
