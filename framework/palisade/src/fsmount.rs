//! `palisade fs mount`: the replicated file system as a FUSE mount, so
//! that ordinary programs (`cp`, `find`, `make`, `git`) can use it.
//!
//! Each kernel request becomes one call on the cluster through
//! [`FsClient`]: reads on the read-only path, everything else ordered.
//! What the kernel may cache is set here, and is what docs/fs.md calls the
//! consistency model:
//!
//! - at every open the file's attributes are fetched: if it changed since
//!   this mount last opened it, the kernel drops its cached pages and
//!   attributes, otherwise it keeps them. A program that opens a file after
//!   another client closed it reads what was written (close-to-open, as
//!   NFS); between opens, attributes may be [`MountOptions::attr_ttl`] old
//!   (1 s by default, NFS's minimum is 3 s; 0 asks at every use);
//! - names are cached for [`MountOptions::entry_ttl`], as NFS clients cache
//!   them; a name another client removed may resolve for that long, and
//!   then answers ESTALE, which the kernel takes as a cue to look it up again;
//! - a file's contiguous writes are held back and sent as one call when
//!   it is closed or synced, or before anything reads or changes it
//!   ([`MountOptions::write_behind`]); an error the cluster returns for
//!   them is reported by the next close or fsync, as NFS reports it.
//!
//! Permissions are checked by the kernel from the replicated attributes
//! (`default_permissions`), with the caller's uid and gid as the kernel
//! gives them: the mounting host is trusted with its users' identities,
//! as an NFS server trusts its clients' AUTH_SYS credentials.

mod stats;

use stats::Counters;
pub use stats::{MountStats, Op};

use bytes::Bytes;
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, Request, SessionACL, TimeOrNow, WriteFlags,
};
use palisade_services::fs::{Attr, FsClient, FsError, Kind, SetAttr, SetTime};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How a mount caches and how many requests it serves at once.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// How long the kernel may use attributes between opens without asking
    /// again (an open always asks). 0 makes every `stat` see other
    /// clients' changes at once, at a round trip per use.
    pub attr_ttl: Duration,
    /// How long the kernel may resolve a name without asking again.
    pub entry_ttl: Duration,
    /// Kernel requests served at once (each waits on the cluster).
    pub threads: usize,
    /// Let users other than the mounting one use it (root only).
    pub allow_other: bool,
    /// Largest write the kernel sends in one request, and the most a
    /// file's held-back writes gather before they are sent.
    pub max_write: u32,
    /// Hold back a file's contiguous writes and send them as one, at the
    /// latest when the file is closed, synced or looked at (NFS's
    /// write-behind). Off, every `write(2)` waits for the cluster.
    pub write_behind: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            attr_ttl: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(1),
            threads: 4,
            allow_other: false,
            max_write: 1 << 20,
            write_behind: true,
        }
    }
}

impl MountOptions {
    /// The defaults, with writes as large as `cluster` accepts in one
    /// operation: a replica refuses operations over a quarter of its frame
    /// limit, and a write carries a few dozen bytes besides its data.
    pub fn for_cluster(cluster: &palisade_wire::ClusterConfig) -> MountOptions {
        let room = (cluster.max_frame_bytes / 4).saturating_sub(1024).max(4096) as u32;
        MountOptions { max_write: 1 << (31 - room.leading_zeros()).min(20), ..MountOptions::default() }
    }
}

/// Bytes of names asked for per listing call.
const LISTING_BYTES: u32 = 16 << 10;

struct Fuse {
    fs: FsClient,
    rt: tokio::runtime::Handle,
    opts: MountOptions,
    stats: Arc<Counters>,
    /// The version of each file at its last open by this mount: what the
    /// kernel's cached pages of it can be (see [`Fuse::open`]).
    opened: Mutex<HashMap<u64, Version>>,
    /// Tells the kernel to drop what it caches of an inode.
    notifier: Arc<OnceLock<fuser::Notifier>>,
    /// Writes held back, by file (see [`MountOptions::write_behind`]).
    /// Every call about a file holds its run while it sends, so a file's
    /// writes reach the cluster in order and before anything that reads it.
    runs: Mutex<HashMap<u64, Arc<Mutex<Run>>>>,
    /// Sends of held-back writes so far, of any file: a lookup that raced
    /// one asks for the attributes again.
    sends: AtomicU64,
    /// Bytes held back across all files, bounded by [`HELD_MAX`].
    held: AtomicU64,
}

/// Bytes a mount holds back across all its files; past this, writes are
/// sent as they come.
const HELD_MAX: u64 = 64 << 20;

/// A file's held-back writes: one contiguous range, and the first error
/// sending one met, for the next close or fsync to report (as NFS does).
#[derive(Default)]
struct Run {
    offset: u64,
    data: Vec<u8>,
    error: Option<Errno>,
    /// The run began at the end of the file on the cluster (an append), so
    /// its end is the file's end.
    at_end: bool,
}

/// What tells a file's versions apart: the service moves the change time
/// at every change, even within one millisecond.
type Version = (u64, u64, u64);

fn version(a: &Attr) -> Version {
    (a.ctime_ns, a.mtime_ns, a.size)
}

/// Files whose version at open a mount remembers; past this it forgets
/// them all, which only costs each a re-read at its next open.
const OPENED_MAX: usize = 1 << 20;

fn time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

fn kind(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: time(a.atime_ns),
        mtime: time(a.mtime_ns),
        ctime: time(a.ctime_ns),
        crtime: time(a.ctime_ns),
        kind: kind(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn errno(e: &FsError) -> Errno {
    if !matches!(e, FsError::Errno(_)) {
        tracing::warn!(error = %e, "a file system call failed");
    }
    Errno::from_i32(e.errno())
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)),
    }
}

impl Fuse {
    /// One call on the cluster, counted.
    fn call<T>(&self, op: Op, call: impl std::future::Future<Output = Result<T, FsError>>) -> Result<T, Errno> {
        let started = Instant::now();
        let r = self.rt.block_on(call).map_err(|e| errno(&e));
        let i = op as usize;
        self.stats.calls[i].fetch_add(1, Ordering::Relaxed);
        self.stats.ns[i].fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }

    fn run_of(&self, ino: u64) -> Arc<Mutex<Run>> {
        self.runs.lock().entry(ino).or_default().clone()
    }

    /// Sends what `run` holds of `ino`. A file removed meanwhile takes its
    /// data with it, as a local file system would; any other refusal is
    /// kept for the next close or fsync.
    fn send(&self, ino: u64, run: &mut Run) {
        if run.data.is_empty() {
            return;
        }
        let data = Bytes::from(std::mem::take(&mut run.data));
        let len = data.len();
        self.held.fetch_sub(len as u64, Ordering::Relaxed);
        let failed = match self.call(Op::Write, self.fs.write(ino, run.offset, data)) {
            Ok(n) if n as usize == len => None,
            Ok(_) => Some(Errno::from_i32(libc::EIO)),
            Err(e) if [libc::ENOENT, libc::ESTALE].contains(&e.code()) => None,
            Err(e) => Some(e),
        };
        self.sends.fetch_add(1, Ordering::Release);
        if let Some(e) = failed {
            run.error.get_or_insert(e);
            // The kernel's pages hold data the cluster refused: the next
            // open must drop them, though the file's version did not move.
            self.opened.lock().remove(&ino);
        }
    }

    /// Sends `ino`'s held-back writes, if any, before a call that reads or
    /// changes it; returns the first error any of them met.
    fn settle(&self, ino: u64) -> Result<(), Errno> {
        let Some(run) = self.runs.lock().get(&ino).cloned() else { return Ok(()) };
        let mut run = run.lock();
        self.send(ino, &mut run);
        run.error.take().map_or(Ok(()), Err)
    }

    /// [`Fuse::settle`] where nobody can be told of an error: it stays for
    /// the next close or fsync.
    fn settle_quietly(&self, ino: u64) {
        let Some(run) = self.runs.lock().get(&ino).cloned() else { return };
        self.send(ino, &mut run.lock());
    }

    fn entry(&self, reply: ReplyEntry, r: Result<Attr, Errno>) {
        match r {
            Ok(a) => reply.entry(&self.opts.entry_ttl, &file_attr(&a), Generation(a.generation)),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for Fuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let mut w = self.opts.max_write;
        while config.set_max_write(w).is_err() && w > 4096 {
            w /= 2;
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let sends = self.sends.load(Ordering::Acquire);
        let mut found = self.call(Op::Lookup, self.fs.lookup(parent.0, name.as_bytes()));
        // A file this mount writes to: if writes of it are held back, or a
        // send raced the lookup, its attributes are asked for after them.
        if let Ok(a) = &found {
            let run = self.runs.lock().get(&a.ino).cloned();
            if let Some(run) = run {
                let held = !run.lock().data.is_empty();
                if held || self.sends.load(Ordering::Acquire) != sends {
                    self.settle_quietly(a.ino);
                    found = self.call(Op::Getattr, self.fs.getattr(a.ino));
                }
            }
        }
        self.entry(reply, found);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.settle_quietly(ino.0);
        match self.call(Op::Getattr, self.fs.getattr(ino.0)) {
            Ok(a) => reply.attr(&self.opts.attr_ttl, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr { mode, uid, gid, size, atime: atime.map(set_time), mtime: mtime.map(set_time) };
        self.settle_quietly(ino.0);
        match self.call(Op::Setattr, self.fs.setattr(ino.0, set)) {
            Ok(a) => reply.attr(&self.opts.attr_ttl, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.call(Op::Readlink, self.fs.readlink(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Regular files only: devices, fifos and sockets have no meaning
        // on other hosts.
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::from_i32(libc::EPERM));
        }
        let call = self.fs.create(parent.0, name.as_bytes(), mode & !umask, (req.uid(), req.gid()), true);
        self.entry(reply, self.call(Op::Create, call));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        self.entry(
            reply,
            self.call(Op::Mkdir, self.fs.mkdir(parent.0, name.as_bytes(), mode & !umask, (req.uid(), req.gid()))),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.call(Op::Unlink, self.fs.unlink(parent.0, name.as_bytes())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.call(Op::Rmdir, self.fs.rmdir(parent.0, name.as_bytes())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let call =
            self.fs.symlink(parent.0, link_name.as_bytes(), target.as_os_str().as_bytes(), (req.uid(), req.gid()));
        self.entry(reply, self.call(Op::Symlink, call));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(!RenameFlags::RENAME_NOREPLACE) {
            return reply.error(Errno::from_i32(libc::EINVAL));
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match self.call(
            Op::Rename,
            self.fs.rename((parent.0, name.as_bytes()), (newparent.0, newname.as_bytes()), no_replace),
        ) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        self.settle_quietly(ino.0);
        self.entry(reply, self.call(Op::Link, self.fs.link(ino.0, newparent.0, newname.as_bytes())));
    }

    /// Close-to-open as NFS does it: the attributes are fetched at every
    /// open. If the file is the version it was at this mount's last open
    /// of it, the kernel keeps its cached pages; otherwise its pages and
    /// attributes are dropped here, before the new version is recorded,
    /// so that a concurrent open that finds it recorded finds the pages
    /// gone as well. (Dropping pages waits for reads of them in flight,
    /// which other threads of the mount answer.) A file opened to append
    /// bypasses the page cache: its writes go where the cluster says the
    /// file ends, not where the kernel thinks it does.
    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.settle_quietly(ino.0);
        let a = match self.call(Op::Getattr, self.fs.getattr(ino.0)) {
            Ok(a) => a,
            Err(e) => return reply.error(e),
        };
        let append = flags.0 & libc::O_APPEND != 0;
        let unchanged = self.opened.lock().get(&ino.0) == Some(&version(&a));
        if !unchanged {
            if let Some(n) = self.notifier.get() {
                if let Err(e) = n.inval_inode(ino, 0, 0) {
                    tracing::debug!(ino = ino.0, error = %e, "the kernel refused an invalidation");
                }
            }
            let mut opened = self.opened.lock();
            if opened.len() >= OPENED_MAX {
                opened.clear();
            }
            opened.insert(ino.0, version(&a));
        }
        let reply_flags = match (append, unchanged) {
            (true, _) => FopenFlags::FOPEN_DIRECT_IO,
            (false, true) => FopenFlags::FOPEN_KEEP_CACHE,
            (false, false) => FopenFlags::empty(),
        };
        reply.opened(FileHandle(0), reply_flags);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        // The kernel dropped the inode, and its pages with it. Nothing is
        // held back for it (its last close sent it), but make sure. A
        // forget can arrive after a new lookup of the same inode: its run
        // goes only if nobody is using it and it has nothing to report.
        self.opened.lock().remove(&ino.0);
        self.settle_quietly(ino.0);
        let mut runs = self.runs.lock();
        let idle =
            runs.get(&ino.0).is_some_and(|r| r.try_lock().is_some_and(|r| r.data.is_empty() && r.error.is_none()));
        if idle {
            runs.remove(&ino.0);
        }
    }

    fn destroy(&mut self) {
        let inos: Vec<u64> = self.runs.lock().keys().copied().collect();
        for ino in inos {
            self.settle_quietly(ino);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        self.settle_quietly(ino.0);
        match self.call(Op::Read, self.fs.read(ino.0, offset, size)) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        // O_APPEND: the kernel places the write at the size it caches,
        // which another client may have moved since; the end of the file on
        // the cluster is where it goes (as an NFS client appends: not
        // atomically against another client appending at the same moment).
        let append = flags.0 & libc::O_APPEND != 0;
        let end_of = |ino: u64| self.call(Op::Getattr, self.fs.getattr(ino)).map(|a| a.size);
        if !self.opts.write_behind {
            let offset = if append {
                match end_of(ino.0) {
                    Ok(size) => size,
                    Err(e) => return reply.error(e),
                }
            } else {
                offset
            };
            return match self.call(Op::Write, self.fs.write(ino.0, offset, Bytes::copy_from_slice(data))) {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e),
            };
        }
        let max = self.opts.max_write as usize;
        let run = self.run_of(ino.0);
        let mut run = run.lock();
        let run_end = run.offset.checked_add(run.data.len() as u64);
        let offset = match (append, run.at_end && !run.data.is_empty()) {
            (false, _) => offset,
            (true, true) => run_end.unwrap_or(offset),
            (true, false) => {
                self.send(ino.0, &mut run);
                match end_of(ino.0) {
                    Ok(size) => size,
                    Err(e) => return reply.error(e),
                }
            }
        };
        if !run.data.is_empty() && (run_end != Some(offset) || run.data.len() + data.len() > max) {
            self.send(ino.0, &mut run);
        }
        if run.data.is_empty() {
            run.offset = offset;
            run.at_end = append;
        }
        run.data.extend_from_slice(data);
        let held = self.held.fetch_add(data.len() as u64, Ordering::Relaxed) + data.len() as u64;
        if run.data.len() >= max || held > HELD_MAX {
            self.send(ino.0, &mut run);
        }
        reply.written(data.len() as u32);
    }

    /// A close: what was held back is sent, and its first error reported.
    fn flush(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _lock_owner: fuser::LockOwner, reply: ReplyEmpty) {
        match self.settle(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.settle_quietly(ino.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        if let Err(e) = self.settle(ino.0) {
            return reply.error(e);
        }
        match self.call(Op::Fsync, self.fs.fsync(ino.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        // Offsets 1 and 2 are `.` and `..`; an entry's offset is its cookie plus 2.
        if offset < 1 && reply.add(ino, 1, FileType::Directory, ".") {
            return reply.ok();
        }
        if offset < 2 {
            let parent = match self.call(Op::Lookup, self.fs.lookup(ino.0, b"..")) {
                Ok(a) => a.ino,
                Err(e) => return reply.error(e),
            };
            if reply.add(INodeNo(parent), 2, FileType::Directory, "..") {
                return reply.ok();
            }
        }
        let mut cookie = offset.saturating_sub(2);
        loop {
            let (entries, more) = match self.call(Op::Readdir, self.fs.readdir(ino.0, cookie, LISTING_BYTES)) {
                Ok(page) => page,
                Err(e) => return reply.error(e),
            };
            for e in entries {
                if reply.add(INodeNo(e.ino), e.cookie + 2, kind(e.kind), OsStr::from_bytes(&e.name)) {
                    return reply.ok();
                }
                cookie = e.cookie;
            }
            if !more {
                return reply.ok();
            }
        }
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.call(Op::Statfs, self.fs.statfs()) {
            Ok(s) => {
                let (blocks, free) = (s.total_bytes / 4096, s.free_bytes / 4096);
                reply.statfs(blocks, free, free, s.total_inodes, s.free_inodes, 4096, s.max_name, 4096)
            }
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let exclusive = flags & libc::O_EXCL != 0;
        let call = self.fs.create(parent.0, name.as_bytes(), mode & !umask, (req.uid(), req.gid()), exclusive);
        match self.call(Op::Create, call) {
            Ok(a) => reply.created(
                &self.opts.entry_ttl,
                &file_attr(&a),
                Generation(a.generation),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }
}

/// A mounted file system; dropping it unmounts.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
    stats: Arc<Counters>,
}

impl Mounted {
    /// The calls this mount has made on the cluster so far.
    pub fn stats(&self) -> MountStats {
        let mut m = MountStats::default();
        for i in 0..Op::ALL.len() {
            m.calls[i] = self.stats.calls[i].load(Ordering::Relaxed);
            m.ns[i] = self.stats.ns[i].load(Ordering::Relaxed);
        }
        m
    }

    /// Unmounts (lazily, see [`unmount`]) and waits for the session to end.
    pub fn unmount(mut self) -> std::io::Result<()> {
        let result = unmount(&self.mountpoint);
        let joined = self.session.take().map_or(Ok(()), |s| s.join());
        result.and(joined)
    }

    /// Waits until the file system is unmounted from outside
    /// (`palisade fs umount`, `umount`).
    pub fn wait(mut self) -> std::io::Result<()> {
        self.session.take().map_or(Ok(()), |s| s.join())
    }

    /// Whether the session has ended (the mount is gone).
    pub fn ended(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = unmount(&self.mountpoint);
            let _ = s.join();
        }
    }
}

/// Mounts the file system `fs` at `mountpoint`, serving kernel requests on
/// background threads that call the cluster through `rt`.
pub fn mount(
    fs: FsClient,
    rt: tokio::runtime::Handle,
    mountpoint: &Path,
    opts: MountOptions,
) -> std::io::Result<Mounted> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("palisade".into()),
        MountOption::Subtype("palisade".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if opts.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(opts.threads.max(1));
    let mountpoint = mountpoint.canonicalize()?;
    let stats = Arc::new(Counters::default());
    let notifier = Arc::new(OnceLock::new());
    let fuse = Fuse {
        fs,
        rt,
        opts,
        stats: stats.clone(),
        opened: Mutex::default(),
        notifier: notifier.clone(),
        runs: Mutex::default(),
        sends: AtomicU64::new(0),
        held: AtomicU64::new(0),
    };
    let session = fuser::Session::new(fuse, &mountpoint, &config)?;
    let _ = notifier.set(session.notifier());
    let session = session.spawn()?;
    Ok(Mounted { session: Some(session), mountpoint, stats })
}

/// Unmounts whatever is mounted at `mountpoint` (lazily: programs still
/// inside it keep working until they leave).
pub fn unmount(mountpoint: &Path) -> std::io::Result<()> {
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    // SAFETY: a valid NUL-terminated path, and flags umount2 defines.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
