//! A replicated file system with NFS-like operations: PBFT's BFS, written
//! against [`palisade_core::Service`].
//!
//! Files, directories and symbolic links live in inodes numbered from the
//! replicated state; timestamps come from the primary-chosen
//! [`palisade_core::ExecContext::timestamp_ms`], so every replica computes
//! the same state without reading a clock. Reads (lookup, getattr, read,
//! readdir, readlink, statfs) go through the read-only path and fall back
//! to ordering when replicas disagree. The state is kept as records in a
//! parted store (see [`crate::kv`]), file data in fixed blocks, so a
//! checkpoint re-hashes only what changed and a laggard fetches only that.
//!
//! Errors are Linux errno values ([`errno`]), whatever the client's
//! platform, so that every replica answers with the same bytes.

mod client;
mod service;

pub use client::{FsClient, FsError, DEFAULT_MAX_WRITE};
pub use service::FsService;

use crate::DecodeError;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// An inode number. Numbers are never reused.
pub type Ino = u64;

/// The root directory's inode.
pub const ROOT: Ino = 1;

/// Bytes of file data per block record: a write re-hashes at most the
/// blocks it touches.
pub const BLOCK_BYTES: u64 = 16 << 10;

/// Linux errno values the service answers with.
pub mod errno {
    /// Operation not permitted.
    pub const EPERM: i32 = 1;
    /// No such file or directory.
    pub const ENOENT: i32 = 2;
    /// Input/output error (an answer that did not decode).
    pub const EIO: i32 = 5;
    /// File exists.
    pub const EEXIST: i32 = 17;
    /// Not a directory.
    pub const ENOTDIR: i32 = 20;
    /// Is a directory.
    pub const EISDIR: i32 = 21;
    /// Invalid argument.
    pub const EINVAL: i32 = 22;
    /// File too large.
    pub const EFBIG: i32 = 27;
    /// No space left on device.
    pub const ENOSPC: i32 = 28;
    /// Too many links.
    pub const EMLINK: i32 = 31;
    /// File name too long.
    pub const ENAMETOOLONG: i32 = 36;
    /// Directory not empty.
    pub const ENOTEMPTY: i32 = 39;
    /// Stale file handle: the inode no longer exists.
    pub const ESTALE: i32 = 116;
}

/// What an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
}

/// An inode's attributes. Times are nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// Generation: distinguishes inodes across the file system's life.
    pub generation: u64,
    /// File, directory or link.
    pub kind: Kind,
    /// Permission bits (including set-id and sticky bits).
    pub mode: u32,
    /// Hard links (for a directory, 2 plus its subdirectories).
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (a link: its target's length).
    pub size: u64,
    /// Last access (set only by setattr: reads do not write).
    pub atime_ns: u64,
    /// Last change of the contents.
    pub mtime_ns: u64,
    /// Last change of the inode.
    pub ctime_ns: u64,
}

/// A time a setattr sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    /// The operation's (primary-chosen) time.
    Now,
    /// This time, in nanoseconds since the Unix epoch.
    At(u64),
}

/// Attributes a setattr changes; `None` leaves one alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size: truncates or extends with zeros.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
}

/// A file system operation.
///
/// Variants are only ever appended, so that encoded operations keep their meaning.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsOp {
    /// The inode called `name` in `dir` (read-only).
    Lookup {
        /// The directory.
        dir: Ino,
        /// The name.
        name: Bytes,
    },
    /// An inode's attributes (read-only).
    GetAttr {
        /// The inode.
        ino: Ino,
    },
    /// Changes attributes; a size truncates or extends.
    SetAttr {
        /// The inode.
        ino: Ino,
        /// What changes.
        set: SetAttr,
    },
    /// Creates a regular file.
    Create {
        /// The directory.
        dir: Ino,
        /// The name.
        name: Bytes,
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
        /// Fail with EEXIST when the name exists; otherwise an existing
        /// regular file is the answer (`open(O_CREAT)` without `O_EXCL`).
        exclusive: bool,
    },
    /// Creates a directory.
    Mkdir {
        /// The parent.
        dir: Ino,
        /// The name.
        name: Bytes,
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// Removes a name that is not a directory.
    Unlink {
        /// The directory.
        dir: Ino,
        /// The name.
        name: Bytes,
    },
    /// Removes an empty directory.
    Rmdir {
        /// The parent.
        dir: Ino,
        /// The name.
        name: Bytes,
    },
    /// Moves a name, replacing what the new name held (POSIX `rename`).
    Rename {
        /// The directory the name is in.
        from_dir: Ino,
        /// The name.
        from_name: Bytes,
        /// The directory it moves to.
        to_dir: Ino,
        /// Its new name.
        to_name: Bytes,
        /// Fail with EEXIST rather than replace (`RENAME_NOREPLACE`).
        no_replace: bool,
    },
    /// A new name for an existing file.
    Link {
        /// The file.
        ino: Ino,
        /// The directory of the new name.
        dir: Ino,
        /// The new name.
        name: Bytes,
    },
    /// Creates a symbolic link.
    Symlink {
        /// The directory.
        dir: Ino,
        /// The link's name.
        name: Bytes,
        /// What it points to.
        target: Bytes,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// A link's target (read-only).
    Readlink {
        /// The link.
        ino: Ino,
    },
    /// Bytes of a file (read-only); fewer at its end.
    Read {
        /// The file.
        ino: Ino,
        /// Where to start.
        offset: u64,
        /// How many bytes, at most (capped by the service's limit).
        len: u32,
    },
    /// Writes bytes at an offset, extending the file as needed.
    Write {
        /// The file.
        ino: Ino,
        /// Where.
        offset: u64,
        /// What.
        data: Bytes,
    },
    /// A directory's entries after `cookie` (0: from the start), in a
    /// stable order, about `max_bytes` of them (read-only).
    ReadDir {
        /// The directory.
        dir: Ino,
        /// The last entry's cookie seen.
        cookie: u64,
        /// Bytes of names, about; at least one entry is given.
        max_bytes: u32,
    },
    /// Totals and limits (read-only).
    StatFs,
    /// Makes a file's writes durable. Every acknowledged write already is
    /// (it was ordered and, with durability on, logged), so this only
    /// checks that the inode exists.
    Fsync {
        /// The file.
        ino: Ino,
    },
    /// The state's digest, as a checkpoint would certify it (read-only;
    /// for tests and operators comparing replicas).
    Digest,
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// Where a listing resumes after this entry.
    pub cookie: u64,
    /// Its inode.
    pub ino: Ino,
    /// What it is.
    pub kind: Kind,
    /// Its name.
    pub name: Bytes,
}

/// Totals and limits of the file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFs {
    /// Bytes the state may hold.
    pub total_bytes: u64,
    /// Bytes it may still take.
    pub free_bytes: u64,
    /// Inodes it may hold.
    pub total_inodes: u64,
    /// Inodes it may still create.
    pub free_inodes: u64,
    /// The longest name.
    pub max_name: u32,
}

/// A file system result.
///
/// Variants are only ever appended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsResult {
    /// Attributes (lookup, getattr, setattr, create, mkdir, link, symlink).
    Attr(Attr),
    /// File bytes, or a link's target.
    Data(Bytes),
    /// Directory entries, and whether more follow.
    Entries {
        /// The entries.
        entries: Vec<DirEntry>,
        /// Whether entries follow the last one.
        more: bool,
    },
    /// Bytes written.
    Written(u32),
    /// Totals.
    StatFs(StatFs),
    /// Done, nothing to return.
    Done,
    /// Failed with this errno.
    Error(i32),
    /// The operation did not decode, or is not read-only on the read-only path.
    BadOperation,
    /// A state digest.
    Digest([u8; 32]),
}

impl FsOp {
    /// Encodes the operation.
    pub fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_allocvec(self).expect("fs operations encode"))
    }

    /// Decodes an operation.
    pub fn decode(bytes: &[u8]) -> Result<FsOp, DecodeError> {
        postcard::from_bytes(bytes).map_err(|_| DecodeError("not a file system operation"))
    }

    /// Whether it leaves state unchanged.
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            FsOp::Lookup { .. }
                | FsOp::GetAttr { .. }
                | FsOp::Readlink { .. }
                | FsOp::Read { .. }
                | FsOp::ReadDir { .. }
                | FsOp::StatFs
                | FsOp::Digest
        )
    }
}

impl FsResult {
    pub(crate) fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_allocvec(self).expect("fs results encode"))
    }

    /// Decodes a result.
    pub fn decode(bytes: &[u8]) -> Result<FsResult, DecodeError> {
        postcard::from_bytes(bytes).map_err(|_| DecodeError("not a file system result"))
    }
}

/// What the file system refuses to grow beyond. Every replica of a cluster
/// must use the same limits: they decide which operations fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsLimits {
    /// The longest name, in bytes.
    pub max_name: u32,
    /// The longest symbolic link target, in bytes.
    pub max_target: u32,
    /// The largest file, in bytes.
    pub max_file_bytes: u64,
    /// Entries in one directory, at most.
    pub max_dir_entries: u64,
    /// Bytes of file data in the whole file system (blocks written).
    pub max_total_bytes: u64,
    /// Inodes, at most.
    pub max_inodes: u64,
    /// Bytes one read returns, at most: a result must fit a frame.
    pub max_read: u32,
    /// Hard links to one file, at most.
    pub max_links: u32,
}

impl Default for FsLimits {
    fn default() -> Self {
        FsLimits {
            max_name: 255,
            max_target: 4095,
            max_file_bytes: 4 << 30,
            max_dir_entries: 1 << 20,
            max_total_bytes: 64 << 30,
            max_inodes: 1 << 24,
            max_read: 1 << 20,
            max_links: 1 << 16,
        }
    }
}
