//! Every service passes the same conformance check: deterministic across
//! replicas, snapshots that round-trip, reads that change nothing, and no
//! panic on a corrupt snapshot (`palisade_testkit::conformance`).

use bytes::Bytes;
use palisade_services::counter::{Counter, CounterOp};
use palisade_services::echo::{self, Echo};
use palisade_services::kv::{KvOp, KvStore};
use palisade_services::register::{Register, RegisterOp};
use palisade_testkit::conformance::check;

/// Operations of every kind, and some that do not decode.
fn with_garbage(mut ops: Vec<Bytes>) -> Vec<Bytes> {
    ops.push(Bytes::from_static(b"\xff\xfe garbage"));
    ops.push(Bytes::new());
    ops
}

#[test]
fn the_key_value_store_conforms() {
    let key = |i: u64| Bytes::from(format!("key-{}", i % 7));
    let ordered: Vec<Bytes> = (0..30)
        .map(|i| match i % 3 {
            0 | 1 => KvOp::Put(key(i), Bytes::from(vec![i as u8; (i % 5) as usize])).encode(),
            _ => KvOp::Remove(key(i + 1)).encode(),
        })
        .collect();
    let reads =
        vec![KvOp::Get(key(1)).encode(), KvOp::Size.encode(), KvOp::Keys.encode(), KvOp::Put(key(1), key(2)).encode()];
    assert_eq!(check(KvStore::default, &with_garbage(ordered), &reads), Ok(()));
}

#[test]
fn the_counter_conforms() {
    let ordered: Vec<Bytes> = (1..=20).map(|i| CounterOp::Add(i).encode()).collect();
    let reads = vec![CounterOp::Get.encode(), CounterOp::Add(5).encode()];
    assert_eq!(check(Counter::default, &with_garbage(ordered), &reads), Ok(()));
}

#[test]
fn the_register_conforms() {
    let ordered: Vec<Bytes> = (1..=20).map(|i| RegisterOp::Write(i * 3).encode()).collect();
    let reads = vec![RegisterOp::Read.encode(), RegisterOp::Write(1).encode()];
    assert_eq!(check(Register::default, &with_garbage(ordered), &reads), Ok(()));
}

#[test]
fn the_echo_service_conforms() {
    let ordered: Vec<Bytes> = (0..12).map(|i| echo::request(i * 10, (i * 7) as u32)).collect();
    assert_eq!(check(|| Echo, &with_garbage(ordered), &[echo::request(4, 4)]), Ok(()));
}
