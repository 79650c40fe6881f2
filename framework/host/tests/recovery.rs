//! Recovery from a disk: a replica restarted past its stable checkpoint
//! can still serve that checkpoint's state, and a snapshot that rots after
//! a restart still has its fallback and the log behind it.

use bytes::Bytes;
use palisade_core::message::{CheckpointCert, StateAnswer, StateQuery};
use palisade_core::{Batch, ClientId, Digest, ExecContext, Executor, Membership, Mode, PeerMessage, Record};
use palisade_core::{ReplicaId, Request, RequestId, SeqNo, Service, ViewNo};
use palisade_host::durable::{recover, Durability, SNAPSHOTS_KEPT};
use palisade_host::{ClientMail, ExecCommand, ExecutionConfig, ExecutionHost, ExecutionIo};
use palisade_storage::snapshot::Snapshots;
use palisade_storage::{Dir, Entry, Journal, MemDir, WalOptions};
use parking_lot::RwLock;
use std::sync::Arc;

/// A sum of the first byte of every operation.
#[derive(Default)]
struct Sum(u64);

impl Service for Sum {
    fn execute(&mut self, _: &ExecContext, op: &[u8]) -> Bytes {
        self.0 += u64::from(op.first().copied().unwrap_or(0));
        Bytes::copy_from_slice(&self.0.to_le_bytes())
    }
    fn execute_unordered(&self, _: &[u8]) -> Bytes {
        Bytes::copy_from_slice(&self.0.to_le_bytes())
    }
    fn snapshot(&self) -> Bytes {
        Bytes::copy_from_slice(&self.0.to_le_bytes())
    }
    fn install(&mut self, s: &[u8]) -> Result<(), String> {
        self.0 = u64::from_le_bytes(s.try_into().map_err(|_| "8 bytes".to_string())?);
        Ok(())
    }
}

#[derive(Default)]
struct Quiet {
    checkpoints: Vec<(SeqNo, Digest)>,
}

impl ExecutionIo for Quiet {
    fn replies(&mut self, _: Vec<ClientMail>) {}
    fn checkpoint(&mut self, seq: SeqNo, state: Digest, _: Digest) {
        self.checkpoints.push((seq, state));
    }
    fn state_fetched(&mut self, _: SeqNo, _: Digest) {}
    fn send(&mut self, _: ReplicaId, _: u64, _: PeerMessage) {}
}

/// Segments of about one entry: trimming the log frees them one by one.
const WAL: WalOptions = WalOptions { segment_bytes: 256 };
const INTERVAL: u64 = 4;

fn config() -> ExecutionConfig {
    let membership = Membership::with_size(4, Mode::Bft).unwrap();
    ExecutionConfig { checkpoint_interval: INTERVAL, ..ExecutionConfig::new(ReplicaId(0), membership) }
}

fn batch(seq: u64) -> Arc<Batch> {
    let op = Bytes::from(vec![seq as u8]);
    let request =
        Request { client: ClientId(1), id: RequestId(seq), read_only: false, operation: op, auth: Bytes::new() };
    Arc::new(Batch { timestamp_ms: seq, proposed_in: ViewNo(0), requests: vec![request] })
}

fn stable(seq: u64, state: Digest) -> Entry {
    Entry::Record(Record::Stable(CheckpointCert { seq: SeqNo(seq), state, proof: vec![] }))
}

/// Recovers from `dir`: the host, the checkpoint its state is at, the
/// snapshot loaded, and the journal.
fn restart(dir: &MemDir) -> (ExecutionHost<Sum>, SeqNo, Option<SeqNo>, Journal<MemDir>) {
    let exec = Arc::new(RwLock::new(Executor::new(Sum::default(), 16)));
    let rec = recover(Arc::new(dir.clone()), Durability::Full, WAL, exec, config(), 1).unwrap();
    let snapshot = rec.report.snapshot.map(|(s, _)| s);
    (rec.execution, rec.report.executed, snapshot, rec.journal)
}

/// Executes and logs `seqs`.
fn run(
    host: &mut ExecutionHost<Sum>,
    journal: &mut Journal<MemDir>,
    io: &mut Quiet,
    seqs: std::ops::RangeInclusive<u64>,
) {
    for seq in seqs {
        let b = batch(seq);
        journal.write(vec![Entry::Decided { epoch: 0, seq: SeqNo(seq), view: ViewNo(0), batch: b.clone() }]).unwrap();
        let cmd = ExecCommand::Deliver { epoch: 0, seq: SeqNo(seq), view: ViewNo(0), batch: b };
        host.handle(cmd, io).unwrap();
    }
}

#[test]
fn a_restart_past_the_stable_checkpoint_serves_it_and_survives_its_snapshot_rotting() {
    let dir = MemDir::new();
    let (mut journal, _) = Journal::open(Arc::new(dir.clone()), WAL).unwrap();
    let (mut snapshots, _) = Snapshots::open(Arc::new(dir.clone()), SNAPSHOTS_KEPT).unwrap();
    let exec = Arc::new(RwLock::new(Executor::new(Sum::default(), 16)));
    let mut host = ExecutionHost::new(exec, config(), None).unwrap();
    let mut io = Quiet::default();
    // Executes 1..=16 and logs each batch; checkpoints 4 and 8 become
    // stable and are snapshotted as the runtime does (the log keeps what
    // follows the fallback); 12 and 16 never become stable (a peer lags).
    for seq in 1..=16 {
        run(&mut host, &mut journal, &mut io, seq..=seq);
        if seq == 4 || seq == 8 {
            let state = io.checkpoints.last().unwrap().1;
            journal.write(vec![stable(seq, state)]).unwrap();
            host.handle(ExecCommand::Stable { seq: SeqNo(seq), keep_from: SeqNo(seq - INTERVAL) }, &mut io).unwrap();
            let (at, kept) = host.store().newest_stable().unwrap();
            assert_eq!(at, SeqNo(seq), "the newest stable state is what goes to disk");
            snapshots.write(at, kept.root, &kept.parts, &kept.digests).unwrap();
            journal.snapshot_durable(SeqNo(seq - INTERVAL)).unwrap();
        }
    }
    assert_eq!(host.store().newest_stable().map(|(s, _)| s), Some(SeqNo(8)), "12 and 16 are not stable");
    let digest_at = |seq: u64| io.checkpoints.iter().find(|(s, _)| *s == SeqNo(seq)).unwrap().1;
    let (at8, at16) = (digest_at(8), digest_at(16));
    drop((journal, snapshots, host));

    // Every replica crashes. Back from the snapshot at 8 and the log, the
    // replica is at 16 and still serves the stable checkpoint's state.
    let (mut host, executed, loaded, mut journal) = restart(&dir);
    assert_eq!((executed, loaded), (SeqNo(16), Some(SeqNo(8))));
    assert_eq!(host.store().get(SeqNo(8)).map(|k| k.root), Some(at8));
    assert_eq!(host.store().get(SeqNo(16)).map(|k| k.root), Some(at16));
    let answer = host.store().answer(SeqNo(8), &StateQuery::Manifest { from: 0 }, 4096);
    assert!(matches!(answer, StateAnswer::Manifest { .. }), "a peer fetching the stable state gets it: {answer:?}");
    // It goes on to 24 (the log rotates and trims as it grows), and the
    // snapshot at 8 rots before the next is written: the one at 4 and the
    // log still reach 24.
    let mut io = Quiet::default();
    run(&mut host, &mut journal, &mut io, 17..=24);
    let at24 = io.checkpoints.last().unwrap().1;
    drop((host, journal));
    let names = dir.list().unwrap();
    let snap8 = names.iter().find(|n| n.starts_with("snap-") && n.contains("8.snap")).expect("the snapshot at 8");
    dir.corrupt(snap8, 20);
    let (host, executed, loaded, _) = restart(&dir);
    assert_eq!(loaded, Some(SeqNo(4)), "the fallback");
    assert_eq!(executed, SeqNo(24), "the log kept the batches after the fallback across the restart");
    assert_eq!(host.store().get(SeqNo(24)).map(|k| k.root), Some(at24));
}
