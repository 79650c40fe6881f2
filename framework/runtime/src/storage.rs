//! Where the core's durable records go.
//!
//! The core emits `Action::Persist` before any message that depends on the
//! record, and the consensus stage hands each record here before sending
//! anything that follows it. A write-ahead log implements this trait to make
//! replicas survive crashes; [`MemoryStorage`] keeps records in memory only,
//! so a restarted replica comes back empty and catches up by state transfer.

use palisade_core::replica::RecordLog;
use palisade_core::Record;

/// A sink for durable records.
pub trait Storage: Send {
    /// Makes `record` durable (returning only once it is). A
    /// `Record::Stable` makes earlier records obsolete (see `RecordLog`).
    fn persist(&mut self, record: Record);
    /// Everything kept, in order, for `Replica::recover`.
    fn records(&self) -> Vec<Record>;
}

/// Records in memory, compacted at every stable checkpoint.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    log: RecordLog,
}

impl Storage for MemoryStorage {
    fn persist(&mut self, record: Record) {
        self.log.append(record);
    }

    fn records(&self) -> Vec<Record> {
        self.log.records().to_vec()
    }
}
