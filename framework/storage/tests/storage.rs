//! The log and snapshot files against a disk that tears, rots and fills.

use bytes::Bytes;
use palisade_core::message::CheckpointCert;
use palisade_core::state::{state_digest, Part};
use palisade_core::{Batch, Digest, Record, SeqNo, ViewNo};
use palisade_storage::dir::Dir;
use palisade_storage::snapshot::{Location, Manifest, Snapshots};
use palisade_storage::wal::{encode_entry, encode_header, Wal};
use palisade_storage::{CrashKind, CutKind, Entry, Journal, MemDir, WalOptions};
use std::sync::Arc;

fn small() -> WalOptions {
    WalOptions { segment_bytes: 4096 }
}

fn payload(i: u64) -> Vec<u8> {
    format!("entry {i}").into_bytes()
}

fn segments(d: &MemDir) -> Vec<String> {
    d.list().unwrap().into_iter().filter(|n| n.starts_with("wal-")).collect()
}

#[test]
fn entries_come_back_in_order_and_each_group_costs_one_sync() {
    let d = MemDir::new();
    let (mut wal, replay) = Wal::open(Arc::new(d.clone()), small()).unwrap();
    assert!(replay.entries.is_empty() && replay.cut.is_none());
    let before = d.syncs();
    for g in 0..100u64 {
        wal.append(&[payload(3 * g), payload(3 * g + 1), payload(3 * g + 2)]).unwrap();
    }
    // One sync per group; rotations add a sync for each new segment header.
    let rotations = segments(&d).len() as u64 - 1;
    assert_eq!(d.syncs() - before, 100 + rotations);
    assert!(rotations > 0, "small segments rotate");
    drop(wal);
    d.crash(CrashKind::LoseUnsynced);
    let (_, replay) = Wal::open(Arc::new(d.clone()), small()).unwrap();
    assert_eq!(replay.cut, None);
    let got: Vec<Vec<u8>> = replay.entries.into_iter().map(|(_, p)| p).collect();
    assert_eq!(got, (0..300).map(payload).collect::<Vec<_>>());
}

#[test]
fn a_torn_tail_is_cut_and_reported_and_the_log_goes_on() {
    let d = MemDir::new();
    let (mut wal, _) = Wal::open(Arc::new(d.clone()), small()).unwrap();
    wal.append(&[payload(1), payload(2)]).unwrap();
    let seg = segments(&d).pop().unwrap();
    // A group that was being written when the power went: half of it.
    // (Entry 3 is the first group's trailer.)
    let end = palisade_storage::wal::entries_end(&d.contents(&seg).unwrap()) as u64;
    let mut torn = Vec::new();
    encode_entry(&mut torn, 4, &payload(3));
    encode_entry(&mut torn, 5, &payload(4));
    torn.truncate(torn.len() / 2 + 3);
    d.write_at(&seg, end, &torn).unwrap();
    d.crash(CrashKind::Torn { seed: 7 });
    drop(wal);
    let (mut wal, replay) = Wal::open(Arc::new(d.clone()), small()).unwrap();
    assert_eq!(replay.entries.len(), 2);
    let cut = replay.cut.expect("the tear is reported");
    assert_eq!((cut.kind, cut.offset), (CutKind::TornTail, end));
    wal.append(&[payload(3)]).unwrap();
    drop(wal);
    let (_, replay) = Wal::open(Arc::new(d.clone()), small()).unwrap();
    assert_eq!(replay.cut, None, "the cut tail was zeroed: no damage found twice");
    let got: Vec<Vec<u8>> = replay.entries.into_iter().map(|(_, p)| p).collect();
    assert_eq!(got, vec![payload(1), payload(2), payload(3)]);
}

#[test]
fn a_rotten_last_entry_of_a_synced_group_is_damage_not_a_torn_write() {
    // Taking it for a torn write would silently drop a record the replica
    // acted on (a vote it sent): its group's trailer shows it was written.
    let d = MemDir::new();
    let (mut wal, _) = Wal::open(Arc::new(d.clone()), small()).unwrap();
    wal.append(&[payload(1)]).unwrap();
    wal.append(&[payload(2), payload(3)]).unwrap();
    let seg = segments(&d).pop().unwrap();
    let end = palisade_storage::wal::entries_end(&d.contents(&seg).unwrap()) as u64;
    let last_entry = end - 17 - (16 + payload(3).len()) as u64;
    d.corrupt(&seg, last_entry + 17);
    drop(wal);
    let (_, replay) = Wal::open(Arc::new(d.clone()), small()).unwrap();
    assert_eq!(replay.entries.len(), 2);
    assert_eq!(replay.cut.map(|c| (c.kind, c.offset)), Some((CutKind::Corrupt, last_entry)));
    // A rotten trailer alone loses nothing and is no damage to a vote.
    let d = MemDir::new();
    let (mut wal, _) = Wal::open(Arc::new(d.clone()), small()).unwrap();
    wal.append(&[payload(1)]).unwrap();
    let seg = segments(&d).pop().unwrap();
    let end = palisade_storage::wal::entries_end(&d.contents(&seg).unwrap()) as u64;
    d.corrupt(&seg, end - 1);
    drop(wal);
    let (_, replay) = Wal::open(Arc::new(d.clone()), small()).unwrap();
    assert_eq!(replay.entries.len(), 1);
    assert_eq!(replay.cut.map(|c| c.kind), Some(CutKind::TornTail));
}

#[test]
fn a_flipped_bit_in_durable_entries_is_found_and_nothing_after_it_is_trusted() {
    let d = MemDir::new();
    let (mut wal, _) = Wal::open(Arc::new(d.clone()), small()).unwrap();
    for i in 1..=5 {
        wal.append(&[payload(i)]).unwrap();
    }
    let seg = segments(&d).pop().unwrap();
    // Each group of one entry ends with a 17-byte trailer.
    let second = 32 + (16 + payload(1).len()) as u64 + 17;
    d.corrupt(&seg, second + 18);
    drop(wal);
    let (_, replay) = Wal::open(Arc::new(d.clone()), small()).unwrap();
    assert_eq!(replay.entries.len(), 1);
    let cut = replay.cut.expect("reported");
    assert_eq!((cut.kind, cut.offset), (CutKind::Corrupt, second), "valid entries follow: not a torn write");
}

#[test]
fn a_log_damaged_at_its_first_entry_starts_again_and_keeps_working() {
    let d = MemDir::new();
    let (mut wal, _) = Wal::open(Arc::new(d.clone()), small()).unwrap();
    for i in 1..=5 {
        wal.append(&[payload(i)]).unwrap();
    }
    d.corrupt(&segments(&d)[0], 40);
    drop(wal);
    let (mut wal, replay) = Wal::open(Arc::new(d.clone()), small()).unwrap();
    assert!(replay.entries.is_empty());
    assert_eq!(replay.cut.map(|c| c.kind), Some(CutKind::Corrupt));
    // Writing on and trimming never touches a file twice under one name.
    for i in 1..=300 {
        wal.append(&[payload(i)]).unwrap();
        wal.trim(i).unwrap();
    }
    drop(wal);
    let (_, replay) = Wal::open(Arc::new(d.clone()), small()).unwrap();
    assert_eq!(replay.cut, None);
    assert_eq!(replay.entries.last().map(|(_, p)| p.clone()), Some(payload(300)));
}

#[test]
fn a_damaged_older_segment_is_corruption_and_later_segments_are_dropped() {
    let d = MemDir::new();
    let (mut wal, _) = Wal::open(Arc::new(d.clone()), small()).unwrap();
    for i in 1..=400 {
        wal.append(&[payload(i)]).unwrap();
    }
    let segs = segments(&d);
    assert!(segs.len() >= 3);
    d.corrupt(&segs[0], 100);
    drop(wal);
    let (_, replay) = Wal::open(Arc::new(d.clone()), small()).unwrap();
    let cut = replay.cut.expect("reported");
    assert_eq!(cut.kind, CutKind::Corrupt);
    assert_eq!(cut.later_segments, segs.len() - 1);
    assert!(replay.entries.len() < 100);
}

#[test]
fn a_full_or_read_only_disk_is_an_error_not_a_silent_loss() {
    let d = MemDir::new();
    let (mut wal, _) = Wal::open(Arc::new(d.clone()), small()).unwrap();
    wal.append(&[payload(1)]).unwrap();
    d.set_full(true);
    let e = wal.append(&[payload(2)]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc_enospc()));
    d.set_full(false);
    d.set_read_only(true);
    assert!(wal.append(&[payload(2)]).is_err());
}

fn libc_enospc() -> i32 {
    28
}

#[test]
fn the_on_disk_format_is_stable() {
    // A segment starting at entry 1 with 4096 bytes reserved.
    assert_eq!(hex::encode(encode_header(1, 4096)), "504c534457414c0a0300000001000000000000000010000000000000982a0919");
    // Entry 5 holding "ok".
    let mut e = Vec::new();
    encode_entry(&mut e, 5, b"ok");
    assert_eq!(hex::encode(&e), "020000003ff6bb3305000000000000006f6b");
    // A null batch decided at sequence number 9 in view 2 of epoch 3.
    let entry = Entry::Decided { epoch: 3, seq: SeqNo(9), view: ViewNo(2), batch: Arc::new(Batch::null()) };
    assert_eq!(hex::encode(entry.encode()), "02030902000000");
    // A stable checkpoint record.
    let cert = CheckpointCert { seq: SeqNo(4), state: Digest([7; 32]), proof: vec![] };
    assert_eq!(
        hex::encode(Entry::Record(Record::Stable(cert)).encode()),
        "010404070707070707070707070707070707070707070707070707070707070707070700"
    );
    assert_eq!(
        hex::encode(palisade_storage::snapshot::encode_header(SeqNo(128), Digest([1; 32]), 2)),
        "504c5344534e41500300000002000000800000000000000001010101010101010101010101010101010101010101010101010101010101013086fa5a"
    );
    assert_eq!(
        hex::encode(palisade_storage::snapshot::encode_pack_header(128)),
        "504c53445041434b0300000000000000800000000000000000000000e03198ac"
    );
    // A manifest of one part, 4 bytes at offset 32 of pack 128.
    let m = Manifest {
        seq: SeqNo(128),
        root: Digest([1; 32]),
        parts: vec![Location { pack: 128, offset: 32, len: 4, digest: Digest([2; 32]) }],
    };
    assert_eq!(
        hex::encode(m.encode()),
        "504c5344534e415003000000010000008000000000000000010101010101010101010101010101010101010101010101010101010101010171ea09fa\
         8000000000000000200000000000000004000000000000000202020202020202020202020202020202020202020202020202020202020202566488b4"
    );
}

fn pp(view: u64, seq: u64, batch: bool) -> Record {
    let b = batch.then(|| Arc::new(Batch { timestamp_ms: seq, proposed_in: ViewNo(0), requests: vec![] }));
    Record::PrePrepared { view: ViewNo(view), seq: SeqNo(seq), digest: Digest([seq as u8; 32]), batch: b }
}

fn stable(seq: u64) -> Record {
    Record::Stable(CheckpointCert { seq: SeqNo(seq), state: Digest([seq as u8; 32]), proof: vec![] })
}

fn decided(seq: u64) -> Entry {
    Entry::Decided {
        epoch: 0,
        seq: SeqNo(seq),
        view: ViewNo(0),
        batch: Arc::new(Batch { timestamp_ms: seq, proposed_in: ViewNo(0), requests: vec![] }),
    }
}

#[test]
fn the_journal_keeps_what_is_needed_and_frees_old_segments() {
    let d = MemDir::new();
    let (mut j, _) = Journal::open(Arc::new(d.clone()), small()).unwrap();
    j.write(vec![Entry::Record(Record::ViewChange { view: ViewNo(1) })]).unwrap();
    for seq in 1..=400u64 {
        let mut group = vec![Entry::Record(pp(1, seq, true)), decided(seq)];
        if seq % 16 == 0 && seq > 32 {
            group.push(Entry::Record(stable(seq - 32)));
        }
        j.write(group).unwrap();
        if seq % 16 == 0 && seq > 16 {
            j.snapshot_durable(SeqNo(seq - 16)).unwrap();
        }
    }
    // Bounded: only the last window or so of segments remain.
    assert!(j.segments() <= 6, "{} segments", j.segments());
    let expect = j.records().to_vec();
    drop(j);
    d.crash(CrashKind::LoseUnsynced);
    let (_, rec) = Journal::open(Arc::new(d.clone()), small()).unwrap();
    // The same records; the long-lived ones may come back after the
    // pre-prepares they preceded, which recovers to the same replica.
    let sorted = |rs: &[Record]| {
        let mut v: Vec<String> = rs.iter().map(|r| format!("{r:?}")).collect();
        v.sort();
        v
    };
    assert_eq!(sorted(&rec.records), sorted(&expect), "the view record survived its segment being freed");
    assert!(rec.records.contains(&Record::ViewChange { view: ViewNo(1) }));
    assert!(rec.decided.keys().all(|s| s.0 > 300), "old decided batches are gone");
    assert_eq!(rec.decided.keys().last(), Some(&SeqNo(400)));
    let after_snapshot: Vec<u64> = rec.decided.keys().map(|s| s.0).filter(|s| *s > 384).collect();
    assert_eq!(after_snapshot, (385..=400).collect::<Vec<_>>(), "every batch after the snapshot is there");
}

#[test]
fn a_decided_batch_the_log_holds_in_a_pre_prepare_is_written_once_and_replays() {
    let d = MemDir::new();
    let (mut j, _) = Journal::open(Arc::new(d.clone()), small()).unwrap();
    let big = Arc::new(Batch {
        timestamp_ms: 1,
        proposed_in: palisade_core::ViewNo(0),
        requests: vec![palisade_core::Request {
            client: palisade_core::ClientId(1),
            id: palisade_core::RequestId(1),
            read_only: false,
            operation: Bytes::from(vec![7u8; 2000]),
            auth: Bytes::new(),
        }],
    });
    let pp = Record::PrePrepared { view: ViewNo(0), seq: SeqNo(1), digest: big.digest(), batch: Some(big.clone()) };
    j.write(vec![Entry::Record(pp)]).unwrap();
    let before = palisade_storage::wal::entries_end(&d.contents(&segments(&d)[0]).unwrap());
    j.write(vec![Entry::Decided { epoch: 0, seq: SeqNo(1), view: ViewNo(0), batch: big.clone() }]).unwrap();
    let after = palisade_storage::wal::entries_end(&d.contents(&segments(&d)[0]).unwrap());
    assert!(after - before < 100, "the batch was written again: {} bytes", after - before);
    // A different batch under the same number is written in full.
    let other = Arc::new(Batch { timestamp_ms: 2, proposed_in: ViewNo(0), requests: vec![] });
    j.write(vec![Entry::Decided { epoch: 0, seq: SeqNo(2), view: ViewNo(0), batch: other.clone() }]).unwrap();
    drop(j);
    let (_, rec) = Journal::open(Arc::new(d.clone()), small()).unwrap();
    assert_eq!(rec.decided.get(&SeqNo(1)).map(|(_, b)| b.clone()), Some(big));
    assert_eq!(rec.decided.get(&SeqNo(2)).map(|(_, b)| b.clone()), Some(other));
    // Its encoding: kind 3, epoch, seq, view, digest.
    let r = Entry::DecidedRef { epoch: 3, seq: SeqNo(9), view: ViewNo(2), digest: Digest([5; 32]) };
    assert_eq!(hex::encode(r.encode()), format!("03030902{}", "05".repeat(32)));
}

#[test]
fn a_crash_at_any_point_recovers_exactly_the_groups_written() {
    for seed in 0..40u64 {
        let d = MemDir::new();
        let (mut j, _) = Journal::open(Arc::new(d.clone()), small()).unwrap();
        let groups = 5 + seed % 30;
        for seq in 1..=groups {
            j.write(vec![Entry::Record(pp(0, seq, true)), decided(seq)]).unwrap();
        }
        // A last group whose write is torn.
        let seg = segments(&d).pop().unwrap();
        let len = d.contents(&seg).unwrap().len();
        let garbage: Vec<u8> = (0..40).map(|i| (i * 7 + seed) as u8 | 1).collect();
        let tail = end_of_entries(&d.contents(&seg).unwrap());
        if tail + garbage.len() < len {
            d.write_at(&seg, tail as u64, &garbage).unwrap();
        }
        d.crash(CrashKind::Torn { seed });
        drop(j);
        let (_, rec) = Journal::open(Arc::new(d.clone()), small()).unwrap();
        assert_eq!(rec.decided.len() as u64, groups, "seed {seed}");
        assert!(rec.cut.as_ref().is_none_or(|c| c.kind == CutKind::TornTail), "seed {seed}: {:?}", rec.cut);
    }
}

/// Where the entries of a segment end (its zero fill starts).
fn end_of_entries(seg: &[u8]) -> usize {
    let mut at = 32;
    loop {
        let len = u32::from_le_bytes(seg[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            return at;
        }
        at += 16 + len;
    }
}

fn state(records_per_part: &[&[&str]]) -> (Digest, Vec<Part>) {
    let parts: Vec<Part> = records_per_part
        .iter()
        .map(|rs| Part::from_records(rs.iter().map(|r| Bytes::copy_from_slice(r.as_bytes())).collect()))
        .collect();
    let digests: Vec<Digest> = parts.iter().map(|p| p.digest()).collect();
    (state_digest(&digests), parts)
}

/// Loads the newest snapshot that checks, collecting its parts' records.
/// What loading found: the checkpoint and root, every part's records, and
/// the snapshots refused.
type Found = (Option<(SeqNo, Digest)>, Vec<Vec<Bytes>>, Vec<palisade_storage::snapshot::Rejected>);

fn load(d: &MemDir, parts: usize) -> Found {
    let (mut snaps, mut rejected) = Snapshots::open(Arc::new(d.clone()), 2).unwrap();
    let mut got: Vec<Vec<Bytes>> = Vec::new();
    let (loaded, more) = snaps
        .load(parts, 1 << 20, |i, records| {
            let i = i as usize;
            if got.len() <= i {
                got.resize(i + 1, Vec::new());
            }
            got[i] = records;
            Ok(())
        })
        .unwrap();
    rejected.extend(more);
    (loaded.map(|l| (l.seq, l.root)), got, rejected)
}

fn write(d: &MemDir, seq: u64, root: Digest, parts: &[Part]) -> palisade_storage::snapshot::Written {
    let digests: Vec<Digest> = parts.iter().map(|p| p.digest()).collect();
    let (mut snaps, _) = Snapshots::open(Arc::new(d.clone()), 2).unwrap();
    snaps.write(SeqNo(seq), root, parts, &digests).unwrap()
}

#[test]
fn snapshots_load_checked_keep_one_fallback_and_a_damaged_one_is_refused() {
    let d = MemDir::new();
    let (r1, p1) = state(&[&["client table"], &["a=1", "b=2"], &[]]);
    let long = format!("c={}", "4".repeat(200));
    let (r2, p2) = state(&[&["client table 2"], &["a=1", "b=3"], &[&long]]);
    let (r3, p3) = state(&[&["client table 3"], &["a=9"], &[&long]]);
    write(&d, 128, r1, &p1);
    let w = write(&d, 256, r2, &p2);
    assert_eq!((w.parts_written, w.parts_reused), (3, 0), "every part changed");
    let w = write(&d, 384, r3, &p3);
    assert_eq!((w.parts_written, w.parts_reused), (2, 1), "part 2 is where the snapshot at 256 put it");
    let names: Vec<String> = d.list().unwrap();
    assert_eq!(
        names,
        vec![
            "pack-00000000000000000256.pack",
            "pack-00000000000000000384.pack",
            "snap-00000000000000000256.snap",
            "snap-00000000000000000384.snap"
        ]
    );
    let (loaded, parts, rejected) = load(&d, 3);
    assert!(rejected.is_empty());
    assert_eq!(loaded, Some((SeqNo(384), r3)));
    assert_eq!(parts[1], vec![Bytes::from("a=9")]);
    assert_eq!(parts[2], vec![Bytes::from(long.clone())], "read from the older pack");
    // A bit flips in the newest pack: refused and deleted, the fallback
    // loads (and installs every part again).
    d.corrupt("pack-00000000000000000384.pack", 40);
    let (loaded, parts, rejected) = load(&d, 3);
    assert_eq!(loaded, Some((SeqNo(256), r2)));
    assert_eq!(parts[1], vec![Bytes::from("a=1"), Bytes::from("b=3")]);
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0].reason.contains("does not check"), "{:?}", rejected[0]);
    assert_eq!(d.list().unwrap(), vec!["pack-00000000000000000256.pack", "snap-00000000000000000256.snap"]);
    // An unfinished write (a crash before the rename) is never loaded, and
    // its pack goes with it.
    d.create("pack-00000000000000000512.pack", 0).unwrap();
    d.create("snap-00000000000000000512.snap.tmp", 0).unwrap();
    d.write_at("snap-00000000000000000512.snap.tmp", 0, b"partial").unwrap();
    let (loaded, _, _) = load(&d, 3);
    assert_eq!(loaded.map(|l| l.0), Some(SeqNo(256)));
    assert_eq!(d.list().unwrap(), vec!["pack-00000000000000000256.pack", "snap-00000000000000000256.snap"]);
    // A rotten manifest is refused as soon as the snapshots are opened.
    d.corrupt("snap-00000000000000000256.snap", 100);
    let (loaded, _, rejected) = load(&d, 3);
    assert_eq!(loaded, None);
    assert!(rejected[0].reason.contains("table of parts does not check"), "{:?}", rejected[0]);
    assert!(d.list().unwrap().is_empty(), "nothing left that could be trusted");
}

#[test]
fn a_snapshot_writes_only_what_changed_and_disk_use_stays_bounded() {
    // 64 parts of 4 records of 1 KiB; each round changes 4 parts.
    let record =
        |round: u64, i: usize, j: usize| Bytes::from(format!("{round}/{i}/{j}:").repeat(512)[..1024].to_string());
    let mut rounds = vec![0u64; 64];
    let d = MemDir::new();
    let (mut snaps, _) = Snapshots::open(Arc::new(d.clone()), 2).unwrap();
    let mut rng = 7u64;
    let mut total_written = 0u64;
    for round in 1..=200u64 {
        for _ in 0..4 {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            rounds[(rng >> 33) as usize % 64] = round;
        }
        let parts: Vec<Part> =
            (0..64).map(|i| Part::from_records((0..4).map(|j| record(rounds[i], i, j)).collect())).collect();
        let digests: Vec<Digest> = parts.iter().map(|p| p.digest()).collect();
        let root = state_digest(&digests);
        let w = snaps.write(SeqNo(round * 128), root, &parts, &digests).unwrap();
        assert_eq!(w.parts_written + w.parts_reused, 64);
        if round == 1 {
            assert_eq!(w.parts_written, 64);
        } else {
            assert!(w.parts_written >= 1, "round {round}: {w:?}");
            total_written += w.parts_written as u64;
        }
        // The packs kept hold at most about twice the state per kept
        // snapshot, however many rounds have gone by.
        let state_bytes = 64 * (4 + 4 * (8 + 1024));
        assert!(snaps.pack_bytes() <= 4 * state_bytes, "round {round}: {} bytes of packs", snaps.pack_bytes());
        let last = (SeqNo(round * 128), root);
        if round % 50 == 0 {
            let (loaded, got, rejected) = load(&d, 64);
            assert!(rejected.is_empty(), "{rejected:?}");
            assert_eq!(loaded, Some(last));
            for (i, p) in parts.iter().enumerate() {
                assert_eq!(got[i], p.records());
            }
        }
    }
    // At most 4 parts changed per round; moving live parts out of mostly
    // dead packs at most doubles that.
    assert!(total_written <= 2 * 4 * 199, "{total_written} parts written for at most {} changed", 4 * 199);
    eprintln!("{total_written} parts written in 199 rounds of 4 changes");
}

#[test]
fn a_rotten_part_shared_by_both_snapshots_refuses_both() {
    let d = MemDir::new();
    let (r1, p1) = state(&[&["shared"], &["x=1"]]);
    let (r2, p2) = state(&[&["shared"], &["x=2"]]);
    write(&d, 128, r1, &p1);
    write(&d, 256, r2, &p2);
    // Part 0 lives in the first pack, right after its header.
    d.corrupt("pack-00000000000000000128.pack", 44);
    let (loaded, _, rejected) = load(&d, 2);
    assert_eq!(loaded, None, "the state must come from peers");
    assert_eq!(rejected.len(), 2, "{rejected:?}");
}

#[test]
fn a_snapshot_of_another_shape_or_a_manifest_longer_than_its_header_says_is_refused() {
    let d = MemDir::new();
    let (r, p) = state(&[&["a"], &["b"]]);
    write(&d, 128, r, &p);
    let (loaded, _, rejected) = load(&d, 3);
    assert_eq!(loaded, None);
    assert!(rejected[0].reason.contains("2 parts where the service has 3"), "{rejected:?}");
    // A manifest padded with garbage is refused from its header alone.
    write(&d, 256, r, &p);
    let name = "snap-00000000000000000256.snap";
    let len = d.len(name).unwrap();
    d.write_at(name, len, &[0u8; 4096]).unwrap();
    let (loaded, _, rejected) = load(&d, 2);
    assert_eq!(loaded, None);
    assert!(rejected[0].reason.contains("where its header says"), "{rejected:?}");
}
