//! What a replica keeps on disk, so that it survives crashes, even all
//! replicas crashing at once: a write-ahead [`journal`] of its protocol
//! records and decided batches, and [`snapshot`] files of its state, both
//! checksummed and both behind the [`dir::Dir`] trait, so that the
//! simulator runs this code against a disk that tears and rots.

#![deny(missing_docs)]

pub mod dir;
pub mod journal;
pub mod snapshot;
pub mod wal;

pub use dir::{CrashKind, Dir, FsDir, MemDir};
pub use journal::{Entry, Journal, Recovered};
pub use wal::{Cut, CutKind, WalOptions};
