//! The storage stage and the snapshot writer.
//!
//! The storage stage owns the journal. It takes everything queued for it,
//! writes it as one group (one write, one `fdatasync`), and only then sends
//! the peer frames that were queued behind those entries: in `full` mode
//! no message leaves before the record it depends on is durable, while the
//! consensus stage goes on working (PBFT's rule, pipelined). It always runs
//! on a thread of its own, since it blocks in `fdatasync`.
//!
//! The snapshot writer is another thread: it writes the state of a
//! checkpoint in the background from the frozen parts the execution host
//! kept, one snapshot at a time; a checkpoint that comes while it is busy
//! is simply not written (the next one will be), so a large state never
//! holds up execution.

use crate::egress::{send_to_peer, Egress};
use crate::metrics::RuntimeMetrics;
use crate::queue::{Bell, Ended, Rx};
use crate::runner::Stage;
use bytes::Bytes;
use palisade_core::{ReplicaId, SeqNo};
use palisade_host::state::Kept;
use palisade_storage::snapshot::Snapshots;
use palisade_storage::{Dir, Entry, Journal};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// What the storage stage is asked to do.
pub enum StorageCmd {
    /// Entries to make durable, with whatever else is queued.
    Entries(Vec<Entry>),
    /// Frames for peers that depend on the entries queued before them:
    /// sent once those are durable.
    Release(Vec<(ReplicaId, Vec<Bytes>)>),
}

/// How far storage has got, shared with the stages that wait on it.
#[derive(Debug, Default)]
pub struct DurableMarks {
    /// The highest decided batch that is durable (with every one below it
    /// that was logged).
    pub decided: AtomicU64,
    /// [`StorageCmd::Entries`] commands done.
    pub groups_done: AtomicU64,
    /// The fallback snapshot (the one before the newest) that is durable:
    /// the log needs no decided batch at or below it.
    pub snapshot: AtomicU64,
    /// Whether the snapshot writer is busy.
    pub snapshot_busy: AtomicBool,
    /// The disk error that stopped the replica, if one did.
    pub failure: Mutex<Option<String>>,
}

impl DurableMarks {
    /// Records a disk failure and stops the replica: it must not run on
    /// without the durability it was configured for.
    pub fn fail(&self, what: String, stop: &AtomicBool) {
        eprintln!("palisade: {what}; stopping: a replica never runs on without the durability it was configured for");
        self.failure.lock().get_or_insert(what);
        stop.store(true, Ordering::Relaxed);
    }
}

/// The storage stage.
pub struct StorageStage<D: Dir> {
    /// The journal.
    pub journal: Journal<D>,
    /// Work in.
    pub rx: Rx<StorageCmd>,
    /// Where released frames go.
    pub egress: Arc<dyn Egress>,
    /// Progress, for consensus, delivery and the snapshot writer.
    pub marks: Arc<DurableMarks>,
    /// Counters.
    pub metrics: Arc<RuntimeMetrics>,
    /// Delivery's bell (replies waiting for durability).
    pub wake: Bell,
    /// The replica's stop flag.
    pub stop: Arc<AtomicBool>,
    /// Commands per group at most.
    pub drain_max: usize,
    /// The snapshot mark last applied to the journal.
    pub snapshot_applied: u64,
}

impl<D: Dir> Stage for StorageStage<D> {
    fn name(&self) -> &'static str {
        "storage"
    }

    fn poll(&mut self) -> Result<bool, Ended> {
        let snap = self.marks.snapshot.load(Ordering::Acquire);
        if snap > self.snapshot_applied {
            self.snapshot_applied = snap;
            if let Err(e) = self.journal.snapshot_durable(SeqNo(snap)) {
                self.marks.fail(format!("cannot trim the log: {e}"), &self.stop);
                return Err(Ended);
            }
        }
        let cmds = self.rx.take_up_to(self.drain_max);
        if cmds.is_empty() {
            return Ok(false);
        }
        let mut entries = Vec::new();
        let mut releases = Vec::new();
        let mut groups = 0;
        for c in cmds {
            match c {
                StorageCmd::Entries(e) => {
                    entries.extend(e);
                    groups += 1;
                }
                StorageCmd::Release(frames) => releases.push(frames),
            }
        }
        let decided = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Decided { seq, .. } | Entry::DecidedRef { seq, .. } => Some(seq.0),
                Entry::Record(_) | Entry::Epoch(_) => None,
            })
            .max();
        if !entries.is_empty() {
            let n = entries.len() as u64;
            if let Err(e) = self.journal.write(entries) {
                self.marks.fail(format!("cannot write the log: {e}"), &self.stop);
                return Err(Ended);
            }
            let c = &self.metrics.counters;
            RuntimeMetrics::add(&c.log_groups, 1);
            RuntimeMetrics::add(&c.log_entries, n);
        }
        if let Some(d) = decided {
            self.marks.decided.fetch_max(d, Ordering::AcqRel);
        }
        self.marks.groups_done.fetch_add(groups, Ordering::AcqRel);
        self.wake.ring();
        for frames in releases {
            for (to, bodies) in frames {
                send_to_peer(&*self.egress, &self.metrics, to, bodies);
            }
        }
        Ok(true)
    }
}

/// Which snapshots are written and kept.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotPolicy {
    /// Sequence numbers between snapshots at least.
    pub interval: u64,
    /// The newest snapshot on disk now.
    pub last: SeqNo,
    /// Share of the time the writer may spend writing, in percent: after
    /// a snapshot that took t, it rests t * (100 - p) / p, so that a large
    /// state's snapshots never take the disk from the log.
    pub duty_percent: u32,
}

/// Hands checkpoints to the snapshot writer thread.
pub struct SnapshotWriter {
    tx: crossbeam_channel::Sender<(SeqNo, Kept)>,
    marks: Arc<DurableMarks>,
    /// Sequence numbers between snapshots at least.
    pub interval: u64,
    last: SeqNo,
}

impl SnapshotWriter {
    /// Starts the writer thread, which owns `snapshots`; `wake` rings when
    /// a snapshot is written.
    pub fn spawn<D: Dir>(
        mut snapshots: Snapshots<D>,
        policy: SnapshotPolicy,
        marks: Arc<DurableMarks>,
        metrics: Arc<RuntimeMetrics>,
        stop: Arc<AtomicBool>,
        wake: Bell,
    ) -> (SnapshotWriter, std::thread::JoinHandle<()>) {
        let SnapshotPolicy { interval, last, duty_percent } = policy;
        let duty = duty_percent.clamp(1, 100);
        let (tx, rx) = crossbeam_channel::bounded::<(SeqNo, Kept)>(1);
        let m = marks.clone();
        let thread = std::thread::Builder::new()
            .name("snapshots".into())
            .spawn(move || {
                let mut fallback = last;
                while !stop.load(Ordering::Relaxed) {
                    let (seq, kept) = match rx.recv_timeout(std::time::Duration::from_millis(50)) {
                        Ok(job) => job,
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                    };
                    let started = std::time::Instant::now();
                    match snapshots.write(seq, kept.root, &kept.parts, &kept.digests) {
                        Ok(w) => {
                            let c = &metrics.counters;
                            RuntimeMetrics::add(&c.snapshots_written, 1);
                            RuntimeMetrics::add(&c.snapshot_bytes, w.bytes);
                            RuntimeMetrics::add(&c.snapshot_parts_written, w.parts_written as u64);
                            RuntimeMetrics::add(&c.snapshot_parts_reused, w.parts_reused as u64);
                            // The log keeps the batches after the fallback,
                            // so that it replays to here if this one rots.
                            m.snapshot.fetch_max(fallback.0, Ordering::AcqRel);
                            fallback = seq;
                        }
                        Err(e) => m.fail(format!("cannot write the snapshot at {seq}: {e}"), &stop),
                    }
                    drop(kept);
                    let rest = started.elapsed() * (100 - duty) / duty;
                    let until = std::time::Instant::now() + rest;
                    while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(std::time::Duration::from_millis(20).min(rest));
                    }
                    m.snapshot_busy.store(false, Ordering::Release);
                    wake.ring();
                }
            })
            .expect("the snapshot thread starts");
        (SnapshotWriter { tx, marks, interval, last }, thread)
    }

    /// Offers the state at `seq`; written if the writer is idle and the
    /// last snapshot is old enough, or `force` (a fetched state: the log
    /// cannot replay up to it). Returns whether it was taken (or written
    /// before).
    pub fn offer(&mut self, seq: SeqNo, kept: &Kept, force: bool) -> bool {
        if seq <= self.last {
            return true;
        }
        if !force && seq.0 < self.last.0 + self.interval {
            return false;
        }
        if self.marks.snapshot_busy.swap(true, Ordering::AcqRel) {
            return false;
        }
        if self.tx.try_send((seq, kept.clone())).is_err() {
            self.marks.snapshot_busy.store(false, Ordering::Release);
            return false;
        }
        self.last = seq;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::tests::Collect;
    use crate::queue::queue;
    use palisade_core::{Batch, Record, ViewNo};
    use palisade_storage::{MemDir, WalOptions};

    fn stage(dir: &MemDir) -> (StorageStage<MemDir>, crate::queue::Tx<StorageCmd>, Arc<Collect>) {
        let (journal, _) = Journal::open(Arc::new(dir.clone()), WalOptions { segment_bytes: 1 << 16 }).unwrap();
        let bell = Bell::default();
        let (tx, rx) = queue(16, &bell, None);
        let egress = Arc::new(Collect::default());
        let stage = StorageStage {
            journal,
            rx,
            egress: egress.clone(),
            marks: Arc::new(DurableMarks::default()),
            metrics: Arc::new(RuntimeMetrics::default()),
            wake: Bell::default(),
            stop: Arc::new(AtomicBool::new(false)),
            drain_max: 64,
            snapshot_applied: 0,
        };
        (stage, tx, egress)
    }

    fn decided(seq: u64) -> Entry {
        Entry::Decided { epoch: 0, seq: SeqNo(seq), view: ViewNo(0), batch: Arc::new(Batch::null()) }
    }

    #[test]
    fn frames_leave_only_after_the_entries_queued_before_them_are_synced_in_one_group() {
        let dir = MemDir::new();
        let (mut stage, tx, egress) = stage(&dir);
        let syncs = dir.syncs();
        tx.try_send(StorageCmd::Entries(vec![Entry::Record(Record::ViewChange { view: ViewNo(1) }), decided(1)]))
            .ok()
            .unwrap();
        tx.try_send(StorageCmd::Release(vec![(ReplicaId(2), vec![bytes::Bytes::from_static(b"vc")])])).ok().unwrap();
        tx.try_send(StorageCmd::Entries(vec![decided(2)])).ok().unwrap();
        assert_eq!(egress.peer_bodies(ReplicaId(2)), 0);
        assert!(stage.poll().unwrap());
        assert_eq!(dir.syncs() - syncs, 1, "three commands, one group, one sync");
        assert_eq!(egress.peer_bodies(ReplicaId(2)), 1, "sent after the sync");
        assert_eq!(stage.marks.decided.load(Ordering::Acquire), 2);
        assert_eq!(stage.marks.groups_done.load(Ordering::Acquire), 2);
    }

    #[test]
    fn a_full_disk_stops_the_replica_with_the_reason_and_sends_nothing_that_depended_on_it() {
        let dir = MemDir::new();
        let (mut stage, tx, egress) = stage(&dir);
        dir.set_full(true);
        tx.try_send(StorageCmd::Entries(vec![Entry::Record(Record::ViewChange { view: ViewNo(1) })])).ok().unwrap();
        tx.try_send(StorageCmd::Release(vec![(ReplicaId(2), vec![bytes::Bytes::from_static(b"vc")])])).ok().unwrap();
        assert!(stage.poll().is_err(), "the stage ends");
        assert!(stage.stop.load(Ordering::Relaxed), "the replica stops");
        let why = stage.marks.failure.lock().clone().unwrap();
        assert!(why.contains("cannot write the log"), "{why}");
        assert_eq!(egress.peer_bodies(ReplicaId(2)), 0, "the VIEW-CHANGE never left");
    }
}
