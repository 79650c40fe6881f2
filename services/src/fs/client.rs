//! Typed calls on a replicated [`super::FsService`].

use super::{Attr, DirEntry, FsOp, FsResult, Ino, SetAttr, StatFs};
use bytes::Bytes;
use palisade_client::{Client, InvokeError};

/// Why a file system call failed.
#[derive(Debug)]
pub enum FsError {
    /// The file system refused it with this errno.
    Errno(i32),
    /// The cluster did not answer or refused.
    Invoke(InvokeError),
    /// The cluster's answer did not decode as expected.
    Unexpected(String),
}

impl FsError {
    /// The errno a program should see: the service's own, or EIO when the
    /// cluster could not be reached or answered nonsense.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Errno(e) => *e,
            FsError::Invoke(_) | FsError::Unexpected(_) => super::errno::EIO,
        }
    }
}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsError::Errno(e) => write!(f, "errno {e}"),
            FsError::Invoke(e) => e.fmt(f),
            FsError::Unexpected(what) => write!(f, "unexpected answer from the cluster: {what}"),
        }
    }
}

impl std::error::Error for FsError {}

/// Typed calls on a replicated file system. Reads take the read-only path
/// (falling back to ordering when replicas disagree); everything else is
/// ordered.
#[derive(Clone)]
pub struct FsClient {
    client: Client,
    max_write: usize,
}

/// The most one write call carries unless told otherwise: a replica
/// refuses operations over a quarter of its frame limit (4 MiB by default),
/// and a write carries a few dozen bytes besides its data.
pub const DEFAULT_MAX_WRITE: usize = 512 << 10;

macro_rules! expect {
    ($result:expr, $pat:pat => $out:expr) => {
        match $result {
            $pat => Ok($out),
            FsResult::Error(e) => Err(FsError::Errno(e)),
            other => Err(FsError::Unexpected(format!("{other:?}"))),
        }
    };
}

impl FsClient {
    /// Wraps a client.
    pub fn new(client: Client) -> FsClient {
        FsClient { client, max_write: DEFAULT_MAX_WRITE }
    }

    /// The most one write call carries; [`FsClient::write`] splits larger
    /// ones. Set it from the cluster's frame limit when that is not the
    /// default (a quarter of it, less a kilobyte, is safe).
    pub fn with_max_write(mut self, bytes: usize) -> FsClient {
        self.max_write = bytes.max(1);
        self
    }

    /// The client underneath.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs any operation; an error result comes back as `Ok(FsResult::Error)`.
    pub async fn call(&self, op: FsOp) -> Result<FsResult, FsError> {
        let bytes = if op.is_read_only() {
            self.client.invoke_unordered(op.encode()).await
        } else {
            self.client.invoke_ordered(op.encode()).await
        }
        .map_err(FsError::Invoke)?;
        FsResult::decode(&bytes).map_err(|e| FsError::Unexpected(e.to_string()))
    }

    async fn attr(&self, op: FsOp) -> Result<Attr, FsError> {
        expect!(self.call(op).await?, FsResult::Attr(a) => a)
    }

    async fn done(&self, op: FsOp) -> Result<(), FsError> {
        expect!(self.call(op).await?, FsResult::Done => ())
    }

    /// The inode called `name` in `dir`.
    pub async fn lookup(&self, dir: Ino, name: &[u8]) -> Result<Attr, FsError> {
        self.attr(FsOp::Lookup { dir, name: Bytes::copy_from_slice(name) }).await
    }

    /// An inode's attributes.
    pub async fn getattr(&self, ino: Ino) -> Result<Attr, FsError> {
        self.attr(FsOp::GetAttr { ino }).await
    }

    /// Changes attributes; returns them as they now are.
    pub async fn setattr(&self, ino: Ino, set: SetAttr) -> Result<Attr, FsError> {
        self.attr(FsOp::SetAttr { ino, set }).await
    }

    /// Creates a regular file (see [`FsOp::Create`]).
    pub async fn create(
        &self,
        dir: Ino,
        name: &[u8],
        mode: u32,
        (uid, gid): (u32, u32),
        exclusive: bool,
    ) -> Result<Attr, FsError> {
        self.attr(FsOp::Create { dir, name: Bytes::copy_from_slice(name), mode, uid, gid, exclusive }).await
    }

    /// Creates a directory.
    pub async fn mkdir(&self, dir: Ino, name: &[u8], mode: u32, (uid, gid): (u32, u32)) -> Result<Attr, FsError> {
        self.attr(FsOp::Mkdir { dir, name: Bytes::copy_from_slice(name), mode, uid, gid }).await
    }

    /// Creates a symbolic link.
    pub async fn symlink(&self, dir: Ino, name: &[u8], target: &[u8], (uid, gid): (u32, u32)) -> Result<Attr, FsError> {
        let (name, target) = (Bytes::copy_from_slice(name), Bytes::copy_from_slice(target));
        self.attr(FsOp::Symlink { dir, name, target, uid, gid }).await
    }

    /// A new name for a file.
    pub async fn link(&self, ino: Ino, dir: Ino, name: &[u8]) -> Result<Attr, FsError> {
        self.attr(FsOp::Link { ino, dir, name: Bytes::copy_from_slice(name) }).await
    }

    /// Removes a non-directory name.
    pub async fn unlink(&self, dir: Ino, name: &[u8]) -> Result<(), FsError> {
        self.done(FsOp::Unlink { dir, name: Bytes::copy_from_slice(name) }).await
    }

    /// Removes an empty directory.
    pub async fn rmdir(&self, dir: Ino, name: &[u8]) -> Result<(), FsError> {
        self.done(FsOp::Rmdir { dir, name: Bytes::copy_from_slice(name) }).await
    }

    /// Moves a name (see [`FsOp::Rename`]).
    pub async fn rename(
        &self,
        (from_dir, from_name): (Ino, &[u8]),
        (to_dir, to_name): (Ino, &[u8]),
        no_replace: bool,
    ) -> Result<(), FsError> {
        let (from_name, to_name) = (Bytes::copy_from_slice(from_name), Bytes::copy_from_slice(to_name));
        self.done(FsOp::Rename { from_dir, from_name, to_dir, to_name, no_replace }).await
    }

    /// A link's target.
    pub async fn readlink(&self, ino: Ino) -> Result<Bytes, FsError> {
        expect!(self.call(FsOp::Readlink { ino }).await?, FsResult::Data(d) => d)
    }

    /// Up to `len` bytes of a file from `offset`.
    pub async fn read(&self, ino: Ino, offset: u64, len: u32) -> Result<Bytes, FsError> {
        expect!(self.call(FsOp::Read { ino, offset, len }).await?, FsResult::Data(d) => d)
    }

    /// Writes `data` at `offset`; returns the bytes written. Data larger
    /// than one call may carry goes in several, in order; as with
    /// `write(2)`, an error after some of them succeeded returns what was
    /// written, and only an error on the first is an error.
    pub async fn write(&self, ino: Ino, offset: u64, data: Bytes) -> Result<u32, FsError> {
        if data.len() <= self.max_write {
            return expect!(self.call(FsOp::Write { ino, offset, data }).await?, FsResult::Written(n) => n);
        }
        let mut written: u32 = 0;
        for start in (0..data.len()).step_by(self.max_write) {
            let piece = data.slice(start..(start + self.max_write).min(data.len()));
            let len = piece.len();
            let at = offset.saturating_add(start as u64);
            let done = match self.call(FsOp::Write { ino, offset: at, data: piece }).await {
                Ok(r) => expect!(r, FsResult::Written(n) => n),
                Err(e) => Err(e),
            };
            match done {
                Ok(n) => {
                    written = written.saturating_add(n);
                    if n as usize != len {
                        break;
                    }
                }
                Err(e) if written == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(written)
    }

    /// A page of a directory's entries after `cookie`, and whether more follow.
    pub async fn readdir(&self, dir: Ino, cookie: u64, max_bytes: u32) -> Result<(Vec<DirEntry>, bool), FsError> {
        expect!(self.call(FsOp::ReadDir { dir, cookie, max_bytes }).await?, FsResult::Entries { entries, more } => (entries, more))
    }

    /// Totals and limits.
    pub async fn statfs(&self) -> Result<StatFs, FsError> {
        expect!(self.call(FsOp::StatFs).await?, FsResult::StatFs(s) => s)
    }

    /// Checks that a file exists; its acknowledged writes are already durable.
    pub async fn fsync(&self, ino: Ino) -> Result<(), FsError> {
        self.done(FsOp::Fsync { ino }).await
    }

    /// The state digest the replicas agree on.
    pub async fn digest(&self) -> Result<[u8; 32], FsError> {
        expect!(self.call(FsOp::Digest).await?, FsResult::Digest(d) => d)
    }
}
