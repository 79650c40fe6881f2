//! A replica's journal: its durable protocol records and its decided
//! batches, in one write-ahead log, kept no longer than they are needed.
//!
//! Entry payloads (log format version 2): one kind byte, then the
//! postcard encoding of the body.
//!
//! | kind | body |
//! |---|---|
//! | 1 | a protocol record (`palisade_core::Record`) |
//! | 2 | a decided batch: `(epoch: u64, seq: u64, view: u64, batch: Batch)` |
//! | 3 | a decided batch this log already holds in a pre-prepare record: `(epoch: u64, seq: u64, view: u64, digest: [u8; 32])` |
//! | 4 | the start of a membership epoch's core: its link of the chain (`Handover`); the records after it are that core's |
//!
//! A decided batch carries the epoch whose core decided it: replay, like
//! execution, runs a batch only in its own epoch (one an epoch's core
//! delivered past that epoch's end is void). Records belong to the core of
//! the epoch last started in the log, so the epoch's link is written again
//! before the long-lived records at the start of every segment.
//!
//! What may be dropped: a protocol record once the compacted record log
//! no longer holds it, a decided batch once a snapshot at or above its
//! sequence number is durable. Records that stay live for long (the view,
//! the stable checkpoint, a rejoin mark) are written again at the start of
//! every new segment, so that old segments become free as the log moves on.

use crate::dir::Dir;
use crate::wal::{Cut, Lsn, Wal, WalOptions};
use palisade_core::reconfig::Handover;
use palisade_core::replica::RecordLog;
use palisade_core::{Batch, Digest, Record, SeqNo, ViewNo};
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

const KIND_RECORD: u8 = 1;
const KIND_DECIDED: u8 = 2;
const KIND_DECIDED_REF: u8 = 3;
const KIND_EPOCH: u8 = 4;

/// One journal entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A protocol record (made durable before what depends on it is sent).
    Record(Record),
    /// A batch decided at `seq` in `view` whose bytes an earlier
    /// pre-prepare record of this log holds (`full` mode writes a batch
    /// once): what [`Journal::write`] makes of a `Decided` it can.
    DecidedRef {
        /// The epoch whose core decided it.
        epoch: u64,
        /// Its sequence number.
        seq: SeqNo,
        /// The view it was decided in.
        view: ViewNo,
        /// The batch's digest.
        digest: Digest,
    },
    /// A batch decided at `seq` in `view`, for replay after a restart.
    Decided {
        /// The epoch whose core decided it.
        epoch: u64,
        /// Its sequence number.
        seq: SeqNo,
        /// The view it was decided in.
        view: ViewNo,
        /// The batch.
        batch: Arc<Batch>,
    },
    /// The core of a later epoch starts, at the handover this link
    /// certifies: the records after it are that core's.
    Epoch(Handover),
}

impl Entry {
    /// The entry's payload in the log.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, body) = match self {
            Entry::Record(r) => (KIND_RECORD, postcard::to_allocvec(r)),
            Entry::Decided { epoch, seq, view, batch } => {
                (KIND_DECIDED, postcard::to_allocvec(&(epoch, seq, view, &**batch)))
            }
            Entry::DecidedRef { epoch, seq, view, digest } => {
                (KIND_DECIDED_REF, postcard::to_allocvec(&(epoch, seq, view, digest)))
            }
            Entry::Epoch(link) => (KIND_EPOCH, postcard::to_allocvec(link)),
        };
        let body = body.expect("records and batches always encode");
        let mut out = Vec::with_capacity(body.len() + 1);
        out.push(kind);
        out.extend_from_slice(&body);
        out
    }

    /// Reads a payload back. An error means the log was written by another
    /// format (its checksum held, so it is not damage).
    pub fn decode(payload: &[u8]) -> Result<Entry, String> {
        let (kind, body) = payload.split_first().ok_or("an empty entry")?;
        match *kind {
            KIND_RECORD => postcard::from_bytes(body).map(Entry::Record).map_err(|e| format!("a record: {e}")),
            KIND_DECIDED => postcard::from_bytes::<(u64, SeqNo, ViewNo, Batch)>(body)
                .map(|(epoch, seq, view, batch)| Entry::Decided { epoch, seq, view, batch: Arc::new(batch) })
                .map_err(|e| format!("a decided batch: {e}")),
            KIND_DECIDED_REF => postcard::from_bytes::<(u64, SeqNo, ViewNo, Digest)>(body)
                .map(|(epoch, seq, view, digest)| Entry::DecidedRef { epoch, seq, view, digest })
                .map_err(|e| format!("a decided batch reference: {e}")),
            KIND_EPOCH => postcard::from_bytes(body).map(Entry::Epoch).map_err(|e| format!("an epoch's start: {e}")),
            k => Err(format!("an entry of unknown kind {k}")),
        }
    }
}

/// What a journal held when it was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The protocol records still needed, in order (for `Replica::recover`).
    pub records: Vec<Record>,
    /// The link of the epoch whose core wrote `records`; none for epoch 0.
    pub epoch: Option<Handover>,
    /// Decided batches by sequence number.
    pub decided: BTreeMap<SeqNo, (ViewNo, Arc<Batch>)>,
    /// Entries read.
    pub entries: usize,
    /// Where the log was cut, if it was.
    pub cut: Option<Cut>,
}

/// The journal, open for writing.
pub struct Journal<D: Dir> {
    wal: Wal<D>,
    held: Held,
}

/// What the journal holds, and where each needed entry is.
#[derive(Default)]
struct Held {
    log: RecordLog,
    stable: SeqNo,
    /// Entry of each pre-prepare that carries its batch, above the stable
    /// checkpoint (the only records not rewritten at a segment start), the
    /// batch's digest, and the batch (to know it again without hashing it).
    batch_records: BTreeMap<SeqNo, (Lsn, Digest, Arc<Batch>)>,
    /// Entry of each decided batch above the durable snapshot.
    decided: BTreeMap<SeqNo, Lsn>,
    /// Where the last rewrite of the long-lived records starts.
    refreshed_at: Lsn,
    snapshot: SeqNo,
    /// The link of the epoch the records belong to (none: epoch 0).
    epoch: Option<Handover>,
}

impl<D: Dir> Journal<D> {
    /// Opens the journal in `dir` and reads back what it holds.
    pub fn open(dir: Arc<D>, opts: WalOptions) -> io::Result<(Journal<D>, Recovered)> {
        let mut decided = BTreeMap::new();
        let (j, mut rec) = Self::open_with(dir, opts, |_, seq, view, batch| {
            decided.entry(seq).or_insert((view, batch));
            Ok(())
        })?;
        rec.decided = decided;
        Ok((j, rec))
    }

    /// [`Journal::open`], handing each decided batch to `on_decided` with
    /// the epoch that decided it as it is read (in log order, a sequence
    /// number possibly more than once) instead of collecting them, so that
    /// a replica replays a long log without holding it;
    /// [`Recovered::decided`] stays empty (and holds the batches
    /// [`Journal::open`] collects of any epoch, the first at each number).
    pub fn open_with(
        dir: Arc<D>,
        opts: WalOptions,
        mut on_decided: impl FnMut(u64, SeqNo, ViewNo, Arc<Batch>) -> io::Result<()>,
    ) -> io::Result<(Journal<D>, Recovered)> {
        let mut j = Held::default();
        let mut rec = Recovered::default();
        let mut first = None;
        // Batches of pre-prepare records, for the decided entries that
        // refer to them, each dropped once referred to (a later reference
        // to the same batch repeats a decision already handed on).
        let mut batches: BTreeMap<(SeqNo, Digest), Arc<Batch>> = BTreeMap::new();
        let (wal, replay) = Wal::open_with(dir, opts, |lsn, payload| {
            first.get_or_insert(lsn);
            let entry = Entry::decode(payload).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("log entry {lsn} is not readable as {e}"))
            })?;
            match &entry {
                Entry::Record(Record::PrePrepared { seq, digest, batch: Some(b), .. }) => {
                    batches.insert((*seq, *digest), b.clone());
                }
                Entry::Decided { epoch, seq, view, batch } => on_decided(*epoch, *seq, *view, batch.clone())?,
                Entry::DecidedRef { epoch, seq, view, digest } => {
                    if let Some(b) = batches.remove(&(*seq, *digest)) {
                        on_decided(*epoch, *seq, *view, b)?;
                    }
                }
                Entry::Record(_) | Entry::Epoch(_) => {}
            }
            j.track(lsn, entry);
            Ok(())
        })?;
        j.refreshed_at = first.unwrap_or(wal.next_lsn());
        rec.entries = replay.read;
        rec.cut = replay.cut;
        rec.records = j.log.records().to_vec();
        rec.epoch = j.epoch.clone();
        Ok((Journal { wal, held: j }, rec))
    }

    /// Makes `entries` durable: one write and one sync (group commit). A
    /// decided batch this log already holds in a pre-prepare record is
    /// written as a reference to it, so a batch is written once.
    pub fn write(&mut self, mut entries: Vec<Entry>) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        for e in &mut entries {
            if let Entry::Decided { epoch, seq, view, batch } = e {
                // The same batch the record holds (the core shares one copy).
                if let Some((_, digest, _)) = self.held.batch_records.get(seq).filter(|(_, _, b)| Arc::ptr_eq(b, batch))
                {
                    *e = Entry::DecidedRef { epoch: *epoch, seq: *seq, view: *view, digest: *digest };
                }
            }
        }
        let mut payloads: Vec<Vec<u8>> = entries.iter().map(Entry::encode).collect();
        let bytes = Wal::<D>::group_bytes(&payloads);
        if !self.wal.fits(bytes) {
            // A new segment starts with the long-lived records again, after
            // the link of the epoch they belong to.
            let records =
                self.held.log.records().iter().filter(|r| !matches!(r, Record::PrePrepared { batch: Some(_), .. }));
            let refresh: Vec<Vec<u8>> = self
                .held
                .epoch
                .iter()
                .map(|l| Entry::Epoch(l.clone()).encode())
                .chain(records.map(|r| Entry::Record(r.clone()).encode()))
                .collect();
            let refresh_bytes = Wal::<D>::group_bytes(&refresh);
            self.wal.rotate(bytes + refresh_bytes)?;
            self.held.refreshed_at = self.wal.next_lsn();
            let n = refresh.len();
            payloads.splice(0..0, refresh);
            let first = self.wal.append(&payloads)?;
            for (i, e) in entries.into_iter().enumerate() {
                self.held.track(first + (n + i) as u64, e);
            }
            self.trim()?;
            return Ok(());
        }
        let first = self.wal.append(&payloads)?;
        for (i, e) in entries.into_iter().enumerate() {
            self.held.track(first + i as u64, e);
        }
        Ok(())
    }

    /// A snapshot of the state at `seq` is durable: decided batches up to
    /// it are no longer needed, and segments nothing needs are deleted.
    pub fn snapshot_durable(&mut self, seq: SeqNo) -> io::Result<()> {
        if seq > self.held.snapshot {
            self.held.snapshot = seq;
            self.held.decided = self.held.decided.split_off(&seq.next());
        }
        self.trim()
    }

    fn trim(&mut self) -> io::Result<()> {
        let keep_from = [
            Some(self.held.refreshed_at),
            self.held.batch_records.values().map(|(l, _, _)| *l).min(),
            self.held.decided.values().min().copied(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.wal.next_lsn());
        self.wal.trim(keep_from)?;
        Ok(())
    }

    /// Segment files the journal holds now.
    pub fn segments(&self) -> usize {
        self.wal.segment_count()
    }

    /// The records still needed, in order.
    pub fn records(&self) -> &[Record] {
        self.held.log.records()
    }

    /// The link of the epoch the records belong to (none: epoch 0).
    pub fn epoch(&self) -> Option<&Handover> {
        self.held.epoch.as_ref()
    }
}

impl Held {
    fn track(&mut self, lsn: Lsn, entry: Entry) {
        match entry {
            Entry::Record(r) => {
                match &r {
                    Record::PrePrepared { seq, digest, batch: Some(b), .. } if *seq > self.stable => {
                        self.batch_records.insert(*seq, (lsn, *digest, b.clone()));
                    }
                    Record::Stable(cert) if cert.seq > self.stable => {
                        self.stable = cert.seq;
                        self.batch_records = self.batch_records.split_off(&cert.seq.next());
                    }
                    _ => {}
                }
                self.log.append(r);
            }
            Entry::Epoch(link) => {
                // The new core starts with no records; the old core's are
                // of no use to it, nor its proposals' batches.
                if self.epoch.as_ref().is_none_or(|l| l.config.epoch < link.config.epoch) {
                    self.epoch = Some(link);
                    self.log = RecordLog::default();
                    self.batch_records.clear();
                }
            }
            Entry::Decided { seq, .. } => {
                if seq > self.snapshot {
                    self.decided.entry(seq).or_insert(lsn);
                }
            }
            Entry::DecidedRef { seq, digest, .. } => {
                // The entry that must stay is the record holding the batch.
                let held = self.batch_records.get(&seq).filter(|(_, d, _)| *d == digest).map(|(l, _, _)| *l);
                if seq > self.snapshot {
                    self.decided.entry(seq).or_insert(held.unwrap_or(lsn));
                }
            }
        }
    }
}
