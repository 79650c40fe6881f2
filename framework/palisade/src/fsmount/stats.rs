//! What a mount asks of the cluster, counted by kind of call: the profile
//! of a workload in round trips, which is what replication costs it.

use std::sync::atomic::AtomicU64;

/// The kinds of call a mount makes on the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A name in a directory.
    Lookup,
    /// Attributes.
    Getattr,
    /// Mode, owner, size or times.
    Setattr,
    /// A symbolic link's target.
    Readlink,
    /// A new file.
    Create,
    /// A new directory.
    Mkdir,
    /// A name removed.
    Unlink,
    /// A directory removed.
    Rmdir,
    /// A new symbolic link.
    Symlink,
    /// A name moved.
    Rename,
    /// A new hard link.
    Link,
    /// File data.
    Read,
    /// File data written.
    Write,
    /// A file made durable.
    Fsync,
    /// A directory's names.
    Readdir,
    /// The file system's totals.
    Statfs,
}

impl Op {
    /// Every kind, in the order [`MountStats`] counts them.
    pub const ALL: [Op; 16] = [
        Op::Lookup,
        Op::Getattr,
        Op::Setattr,
        Op::Readlink,
        Op::Create,
        Op::Mkdir,
        Op::Unlink,
        Op::Rmdir,
        Op::Symlink,
        Op::Rename,
        Op::Link,
        Op::Read,
        Op::Write,
        Op::Fsync,
        Op::Readdir,
        Op::Statfs,
    ];

    /// Its name, as NFS calls it.
    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Readlink => "readlink",
            Op::Create => "create",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Symlink => "symlink",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Read => "read",
            Op::Write => "write",
            Op::Fsync => "fsync",
            Op::Readdir => "readdir",
            Op::Statfs => "statfs",
        }
    }

    /// Whether it takes the read-only path (everything else is ordered).
    pub fn is_read(self) -> bool {
        matches!(self, Op::Lookup | Op::Getattr | Op::Readlink | Op::Read | Op::Readdir | Op::Statfs)
    }
}

/// Calls made and the time spent waiting on them, by [`Op`].
#[derive(Default)]
pub(super) struct Counters {
    pub(super) calls: [AtomicU64; Op::ALL.len()],
    pub(super) ns: [AtomicU64; Op::ALL.len()],
}

/// What a mount has asked of the cluster so far: the profile of a
/// workload in round trips, which is what replication costs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MountStats {
    /// Calls by [`Op`], in the order of [`Op::ALL`].
    pub calls: [u64; Op::ALL.len()],
    /// Nanoseconds spent waiting on them, summed, in the same order.
    pub ns: [u64; Op::ALL.len()],
}

impl MountStats {
    /// The calls made between `earlier` and `self`.
    pub fn since(&self, earlier: &MountStats) -> MountStats {
        let mut d = MountStats::default();
        for i in 0..Op::ALL.len() {
            d.calls[i] = self.calls[i] - earlier.calls[i];
            d.ns[i] = self.ns[i] - earlier.ns[i];
        }
        d
    }

    /// Calls and nanoseconds summed over the kinds `pick` selects.
    pub fn sum(&self, pick: impl Fn(Op) -> bool) -> (u64, u64) {
        Op::ALL
            .iter()
            .enumerate()
            .filter(|(_, op)| pick(**op))
            .fold((0, 0), |(c, n), (i, _)| (c + self.calls[i], n + self.ns[i]))
    }
}
