//! Every service passes the same conformance check: deterministic across
//! replicas, snapshots that round-trip, reads that change nothing, and no
//! panic on a corrupt snapshot (`palisade_testkit::conformance`).

use bytes::Bytes;
use palisade_services::counter::{Counter, CounterOp};
use palisade_services::echo::{self, Echo};
use palisade_services::fs::{FsLimits, FsOp, FsService, SetAttr, ROOT};
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

#[test]
fn the_file_system_conforms() {
    let name = |i: u64| Bytes::from(format!("n{}", i % 5));
    let ordered: Vec<Bytes> = (0..40u64)
        .map(|i| match i % 8 {
            0 => FsOp::Mkdir { dir: ROOT, name: name(i), mode: 0o755, uid: 1, gid: 1 },
            1 => FsOp::Create { dir: ROOT, name: name(i), mode: 0o644, uid: 1, gid: 1, exclusive: false },
            2 => FsOp::Write { ino: 2 + i % 6, offset: i * 5000, data: Bytes::from(vec![i as u8; 20_000]) },
            3 => FsOp::SetAttr { ino: 2 + i % 6, set: SetAttr { size: Some(i * 300), ..SetAttr::default() } },
            4 => FsOp::Rename {
                from_dir: ROOT,
                from_name: name(i),
                to_dir: 2 + i % 4,
                to_name: name(i + 1),
                no_replace: false,
            },
            5 => FsOp::Unlink { dir: ROOT, name: name(i) },
            6 => FsOp::Symlink { dir: ROOT, name: name(i), target: name(i + 2), uid: 0, gid: 0 },
            _ => FsOp::Rmdir { dir: ROOT, name: name(i) },
        })
        .map(|op| op.encode())
        .collect();
    let reads = vec![
        FsOp::ReadDir { dir: ROOT, cookie: 0, max_bytes: 100 }.encode(),
        FsOp::Read { ino: 3, offset: 0, len: 100_000 }.encode(),
        FsOp::StatFs.encode(),
        FsOp::Unlink { dir: ROOT, name: name(1) }.encode(),
    ];
    assert_eq!(check(|| FsService::with_parts(FsLimits::default(), 32), &with_garbage(ordered), &reads), Ok(()));
}
