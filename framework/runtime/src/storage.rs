//! Where the core's durable records go.
//!
//! The core emits `Action::Persist` before any message that depends on the
//! record, and the consensus stage hands each record here before sending
//! anything that follows it. A write-ahead log implements this trait to make
//! replicas survive crashes; [`MemoryStorage`] keeps records in memory only,
//! so a restarted replica comes back empty and catches up by state transfer.

use palisade_core::{Record, SeqNo};

/// A sink for durable records.
pub trait Storage: Send {
    /// Makes `record` durable (returning only once it is).
    fn persist(&mut self, record: Record);
    /// `seq` became the stable checkpoint: records about earlier sequence
    /// numbers may go.
    fn compact(&mut self, seq: SeqNo);
    /// Everything kept, in order, for `Replica::recover`.
    fn records(&self) -> Vec<Record>;
}

/// Records in memory, bounded by compaction at every stable checkpoint.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    records: Vec<Record>,
}

impl Storage for MemoryStorage {
    fn persist(&mut self, record: Record) {
        if matches!(record, Record::View { .. }) {
            self.records.retain(|r| !matches!(r, Record::View { .. }));
        }
        self.records.push(record);
    }

    fn compact(&mut self, seq: SeqNo) {
        self.records.retain(|r| match r {
            Record::PrePrepared { seq: s, .. } | Record::Prepared { seq: s, .. } => *s > seq,
            Record::Stable(c) => c.seq >= seq,
            Record::View { .. } => true,
        });
    }

    fn records(&self) -> Vec<Record> {
        self.records.clone()
    }
}
