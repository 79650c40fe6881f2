//! A replica's journal: its durable protocol records and its decided
//! batches, in one write-ahead log, kept no longer than they are needed.
//!
//! Entry payloads (format version 1): one kind byte, then the postcard
//! encoding of the body.
//!
//! | kind | body |
//! |---|---|
//! | 1 | a protocol record (`palisade_core::Record`) |
//! | 2 | a decided batch: `(seq: u64, view: u64, batch: Batch)` |
//! | 3 | a decided batch this log already holds in a pre-prepare record: `(seq: u64, view: u64, digest: [u8; 32])` |
//!
//! What may be dropped: a protocol record once the compacted record log
//! no longer holds it, a decided batch once a snapshot at or above its
//! sequence number is durable. Records that stay live for long (the view,
//! the stable checkpoint, a rejoin mark) are written again at the start of
//! every new segment, so that old segments become free as the log moves on.

use crate::dir::Dir;
use crate::wal::{Cut, Lsn, Wal, WalOptions};
use palisade_core::replica::RecordLog;
use palisade_core::{Batch, Digest, Record, SeqNo, ViewNo};
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

const KIND_RECORD: u8 = 1;
const KIND_DECIDED: u8 = 2;
const KIND_DECIDED_REF: u8 = 3;

/// One journal entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A protocol record (made durable before what depends on it is sent).
    Record(Record),
    /// A batch decided at `seq` in `view` whose bytes an earlier
    /// pre-prepare record of this log holds (`full` mode writes a batch
    /// once): what [`Journal::write`] makes of a `Decided` it can.
    DecidedRef {
        /// Its sequence number.
        seq: SeqNo,
        /// The view it was decided in.
        view: ViewNo,
        /// The batch's digest.
        digest: Digest,
    },
    /// A batch decided at `seq` in `view`, for replay after a restart.
    Decided {
        /// Its sequence number.
        seq: SeqNo,
        /// The view it was decided in.
        view: ViewNo,
        /// The batch.
        batch: Arc<Batch>,
    },
}

impl Entry {
    /// The entry's payload in the log.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, body) = match self {
            Entry::Record(r) => (KIND_RECORD, postcard::to_allocvec(r)),
            Entry::Decided { seq, view, batch } => (KIND_DECIDED, postcard::to_allocvec(&(seq, view, &**batch))),
            Entry::DecidedRef { seq, view, digest } => (KIND_DECIDED_REF, postcard::to_allocvec(&(seq, view, digest))),
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
            KIND_DECIDED => postcard::from_bytes::<(SeqNo, ViewNo, Batch)>(body)
                .map(|(seq, view, batch)| Entry::Decided { seq, view, batch: Arc::new(batch) })
                .map_err(|e| format!("a decided batch: {e}")),
            KIND_DECIDED_REF => postcard::from_bytes::<(SeqNo, ViewNo, Digest)>(body)
                .map(|(seq, view, digest)| Entry::DecidedRef { seq, view, digest })
                .map_err(|e| format!("a decided batch reference: {e}")),
            k => Err(format!("an entry of unknown kind {k}")),
        }
    }
}

/// What a journal held when it was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The protocol records still needed, in order (for `Replica::recover`).
    pub records: Vec<Record>,
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
}

impl<D: Dir> Journal<D> {
    /// Opens the journal in `dir` and reads back what it holds.
    pub fn open(dir: Arc<D>, opts: WalOptions) -> io::Result<(Journal<D>, Recovered)> {
        let mut decided = BTreeMap::new();
        let (j, mut rec) = Self::open_with(dir, opts, |seq, view, batch| {
            decided.entry(seq).or_insert((view, batch));
            Ok(())
        })?;
        rec.decided = decided;
        Ok((j, rec))
    }

    /// [`Journal::open`], handing each decided batch to `on_decided` as it
    /// is read (in log order, a sequence number possibly more than once)
    /// instead of collecting them, so that a replica replays a long log
    /// without holding it; [`Recovered::decided`] stays empty.
    pub fn open_with(
        dir: Arc<D>,
        opts: WalOptions,
        mut on_decided: impl FnMut(SeqNo, ViewNo, Arc<Batch>) -> io::Result<()>,
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
                Entry::Decided { seq, view, batch } => on_decided(*seq, *view, batch.clone())?,
                Entry::DecidedRef { seq, view, digest } => {
                    if let Some(b) = batches.remove(&(*seq, *digest)) {
                        on_decided(*seq, *view, b)?;
                    }
                }
                Entry::Record(_) => {}
            }
            j.track(lsn, entry);
            Ok(())
        })?;
        j.refreshed_at = first.unwrap_or(wal.next_lsn());
        rec.entries = replay.read;
        rec.cut = replay.cut;
        rec.records = j.log.records().to_vec();
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
            if let Entry::Decided { seq, view, batch } = e {
                // The same batch the record holds (the core shares one copy).
                if let Some((_, digest, _)) = self.held.batch_records.get(seq).filter(|(_, _, b)| Arc::ptr_eq(b, batch))
                {
                    *e = Entry::DecidedRef { seq: *seq, view: *view, digest: *digest };
                }
            }
        }
        let mut payloads: Vec<Vec<u8>> = entries.iter().map(Entry::encode).collect();
        let bytes = Wal::<D>::group_bytes(&payloads);
        if !self.wal.fits(bytes) {
            // A new segment starts with the long-lived records again.
            let refresh: Vec<Vec<u8>> = self
                .held
                .log
                .records()
                .iter()
                .filter(|r| !matches!(r, Record::PrePrepared { batch: Some(_), .. }))
                .map(|r| Entry::Record(r.clone()).encode())
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
