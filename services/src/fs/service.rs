//! The file system's replicated state and how each operation changes it.
//!
//! The state is records in a parted [`KvStore`], under keys that sort by
//! kind and then by inode, so that an inode's blocks and a directory's
//! listing are contiguous ranges:
//!
//! | key | value |
//! |---|---|
//! | `0` | the superblock: next inode and generation numbers, totals |
//! | `1 ino` | an inode: its attributes, parent, listing counter, link target |
//! | `2 ino block` | up to [`BLOCK_BYTES`] of a file's data (absent: zeros) |
//! | `3 dir name` | a directory entry: the inode, its listing cookie, its kind |
//! | `4 dir cookie` | the listing: the entry's name, by cookie |
//!
//! Numbers are big-endian, so key order is numeric order. Cookies are
//! handed out by the directory in creation order and never reused, so a
//! listing resumed from a cookie neither repeats nor skips an entry that
//! stayed put.

use super::{
    errno::*, Attr, DirEntry, FsLimits, FsOp, FsResult, Ino, Kind, SetAttr, SetTime, StatFs, BLOCK_BYTES, ROOT,
};
use crate::kv::KvStore;
use bytes::{Bytes, BytesMut};
use palisade_core::state::PartedState;
use palisade_core::{ExecContext, Service};
use serde::{Deserialize, Serialize};

/// Parts the file system's records are spread over.
pub const PARTS: u32 = 1 << 14;

/// Entries one listing answer holds, at most.
const LISTING_MAX: usize = 4096;

const SUPER: u8 = 0;
const INODE: u8 = 1;
const BLOCK: u8 = 2;
const ENTRY: u8 = 3;
const LISTING: u8 = 4;

fn key(tag: u8, a: u64, rest: &[u8]) -> Bytes {
    let mut k = Vec::with_capacity(9 + rest.len());
    k.push(tag);
    k.extend_from_slice(&a.to_be_bytes());
    k.extend_from_slice(rest);
    Bytes::from(k)
}

fn k_super() -> Bytes {
    Bytes::from_static(&[SUPER])
}
fn k_inode(ino: Ino) -> Bytes {
    key(INODE, ino, &[])
}
fn k_block(ino: Ino, idx: u64) -> Bytes {
    key(BLOCK, ino, &idx.to_be_bytes())
}
fn k_entry(dir: Ino, name: &[u8]) -> Bytes {
    key(ENTRY, dir, name)
}
fn k_listing(dir: Ino, cookie: u64) -> Bytes {
    key(LISTING, dir, &cookie.to_be_bytes())
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct Super {
    next_ino: u64,
    next_generation: u64,
    inodes: u64,
    /// Bytes of blocks held (whole blocks).
    used_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Inode {
    attr: Attr,
    /// A directory's parent (the root is its own).
    parent: Ino,
    /// A directory's next listing cookie.
    next_cookie: u64,
    /// A directory's entry count.
    entries: u64,
    /// A link's target.
    target: Bytes,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Entry {
    ino: Ino,
    cookie: u64,
    kind: Kind,
}

fn encode<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(postcard::to_allocvec(v).expect("fs records encode"))
}

/// Records are only ever written by this module, or installed after being
/// checked against a certified digest of records it wrote; one that does
/// not decode is answered with EIO, never a panic.
fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, i32> {
    postcard::from_bytes(b).map_err(|_| EIO)
}

type Outcome = Result<FsResult, i32>;

/// The replicated file system (see the [module](super) documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsService {
    store: KvStore,
    limits: FsLimits,
}

/// An inode's new change time: `now`, or a nanosecond past the last one if
/// that is not earlier. Batches share a millisecond timestamp, and a
/// client that caches data (the mount) tells a file's versions apart by
/// their change time, so every change must move it.
fn changed(ctime_ns: u64, now: u64) -> u64 {
    now.max(ctime_ns.saturating_add(1))
}

impl Default for FsService {
    fn default() -> Self {
        FsService::new(FsLimits::default())
    }
}

impl FsService {
    /// An empty file system (a root directory, mode 0755, owned by root)
    /// with these limits.
    pub fn new(limits: FsLimits) -> FsService {
        FsService::with_parts(limits, PARTS)
    }

    /// The same, over `parts` parts (tests use few).
    pub fn with_parts(limits: FsLimits, parts: u32) -> FsService {
        let mut fs = FsService { store: KvStore::with_parts(parts), limits };
        let root = Attr {
            ino: ROOT,
            generation: 1,
            kind: Kind::Dir,
            mode: 0o755,
            nlink: 2,
            uid: 0,
            gid: 0,
            size: 0,
            atime_ns: 0,
            mtime_ns: 0,
            ctime_ns: 0,
        };
        fs.put_inode(&Inode { attr: root, parent: ROOT, next_cookie: 1, entries: 0, target: Bytes::new() });
        fs.put_super(Super { next_ino: ROOT + 1, next_generation: 2, inodes: 1, used_bytes: 0 });
        fs
    }

    fn sup(&self) -> Super {
        self.store.get(&k_super()).and_then(|b| decode(&b).ok()).unwrap_or_default()
    }
    fn put_super(&mut self, s: Super) {
        self.store.put(k_super(), encode(&s));
    }
    fn inode(&self, ino: Ino) -> Result<Inode, i32> {
        decode(&self.store.get(&k_inode(ino)).ok_or(ESTALE)?)
    }
    fn put_inode(&mut self, i: &Inode) {
        self.store.put(k_inode(i.attr.ino), encode(i));
    }
    fn dir(&self, ino: Ino) -> Result<Inode, i32> {
        let d = self.inode(ino)?;
        if d.attr.kind != Kind::Dir {
            return Err(ENOTDIR);
        }
        Ok(d)
    }
    fn entry(&self, dir: Ino, name: &[u8]) -> Option<Entry> {
        self.store.get(&k_entry(dir, name)).and_then(|b| decode(&b).ok())
    }

    /// A name a mutation may create or remove: not empty, not `.` or `..`,
    /// no `/` or NUL, not too long.
    fn check_name(&self, name: &[u8]) -> Result<(), i32> {
        if name.is_empty() {
            return Err(ENOENT);
        }
        if name.len() > self.limits.max_name as usize {
            return Err(ENAMETOOLONG);
        }
        if name == b"." || name == b".." || name.iter().any(|&c| c == b'/' || c == 0) {
            return Err(EINVAL);
        }
        Ok(())
    }

    fn add_entry(&mut self, dir: Ino, name: &[u8], ino: Ino, kind: Kind, now: u64) -> Result<(), i32> {
        let mut d = self.dir(dir)?;
        if d.entries >= self.limits.max_dir_entries {
            return Err(ENOSPC);
        }
        let cookie = d.next_cookie;
        d.next_cookie += 1;
        d.entries += 1;
        d.attr.mtime_ns = now;
        d.attr.ctime_ns = changed(d.attr.ctime_ns, now);
        self.put_inode(&d);
        self.store.put(k_entry(dir, name), encode(&Entry { ino, cookie, kind }));
        self.store.put(k_listing(dir, cookie), Bytes::copy_from_slice(name));
        Ok(())
    }

    fn remove_entry(&mut self, dir: Ino, name: &[u8], now: u64) -> Result<Entry, i32> {
        let e = self.entry(dir, name).ok_or(ENOENT)?;
        let mut d = self.dir(dir)?;
        d.entries -= 1;
        d.attr.mtime_ns = now;
        d.attr.ctime_ns = changed(d.attr.ctime_ns, now);
        self.put_inode(&d);
        self.store.remove(&k_entry(dir, name));
        self.store.remove(&k_listing(dir, e.cookie));
        Ok(e)
    }

    fn alloc(&mut self, kind: Kind, mode: u32, uid: u32, gid: u32, now: u64) -> Result<Inode, i32> {
        let mut s = self.sup();
        if s.inodes >= self.limits.max_inodes {
            return Err(ENOSPC);
        }
        let attr = Attr {
            ino: s.next_ino,
            generation: s.next_generation,
            kind,
            mode: mode & 0o7777,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            uid,
            gid,
            size: 0,
            atime_ns: now,
            mtime_ns: now,
            ctime_ns: now,
        };
        s.next_ino += 1;
        s.next_generation += 1;
        s.inodes += 1;
        self.put_super(s);
        Ok(Inode { attr, parent: 0, next_cookie: 1, entries: 0, target: Bytes::new() })
    }

    /// The block indexes a file holds from `first` on.
    fn blocks_from(&self, ino: Ino, first: u64) -> Vec<u64> {
        let prefix = key(BLOCK, ino, &[]);
        self.store
            .keys_from(&k_block(ino, first))
            .take_while(|k| k.starts_with(&prefix))
            .map(|k| u64::from_be_bytes(k[9..17].try_into().expect("block keys hold an index")))
            .collect()
    }

    fn drop_blocks_from(&mut self, ino: Ino, first: u64) {
        let gone = self.blocks_from(ino, first);
        for idx in &gone {
            self.store.remove(&k_block(ino, *idx));
        }
        let mut s = self.sup();
        s.used_bytes = s.used_bytes.saturating_sub(gone.len() as u64 * BLOCK_BYTES);
        self.put_super(s);
    }

    fn free(&mut self, ino: Ino) {
        self.drop_blocks_from(ino, 0);
        self.store.remove(&k_inode(ino));
        let mut s = self.sup();
        s.inodes -= 1;
        self.put_super(s);
    }

    /// One link fewer to a non-directory; freed at none.
    fn unlink_inode(&mut self, ino: Ino, now: u64) -> Result<(), i32> {
        let mut i = self.inode(ino)?;
        i.attr.nlink = i.attr.nlink.saturating_sub(1);
        if i.attr.nlink == 0 {
            self.free(ino);
        } else {
            i.attr.ctime_ns = changed(i.attr.ctime_ns, now);
            self.put_inode(&i);
        }
        Ok(())
    }

    fn apply(&mut self, ctx: &ExecContext, op: FsOp) -> Outcome {
        let now = ctx.timestamp_ms.saturating_mul(1_000_000);
        match op {
            FsOp::SetAttr { ino, set } => self.setattr(ino, set, now),
            FsOp::Create { dir, name, mode, uid, gid, exclusive } => {
                self.dir(dir)?;
                self.check_name(&name)?;
                if let Some(e) = self.entry(dir, &name) {
                    if exclusive || e.kind != Kind::File {
                        return Err(EEXIST);
                    }
                    return Ok(FsResult::Attr(self.inode(e.ino)?.attr));
                }
                let i = self.alloc(Kind::File, mode, uid, gid, now)?;
                self.add_entry(dir, &name, i.attr.ino, Kind::File, now).inspect_err(|_| self.free_unplaced())?;
                self.put_inode(&i);
                Ok(FsResult::Attr(i.attr))
            }
            FsOp::Mkdir { dir, name, mode, uid, gid } => {
                let parent = self.dir(dir)?;
                self.check_name(&name)?;
                if self.entry(dir, &name).is_some() {
                    return Err(EEXIST);
                }
                if parent.attr.nlink >= self.limits.max_links {
                    return Err(EMLINK);
                }
                let mut i = self.alloc(Kind::Dir, mode, uid, gid, now)?;
                i.parent = dir;
                self.add_entry(dir, &name, i.attr.ino, Kind::Dir, now).inspect_err(|_| self.free_unplaced())?;
                self.put_inode(&i);
                let mut p = self.dir(dir)?;
                p.attr.nlink += 1;
                self.put_inode(&p);
                Ok(FsResult::Attr(i.attr))
            }
            FsOp::Symlink { dir, name, target, uid, gid } => {
                self.dir(dir)?;
                self.check_name(&name)?;
                if target.is_empty() {
                    return Err(ENOENT);
                }
                if target.len() > self.limits.max_target as usize {
                    return Err(ENAMETOOLONG);
                }
                if self.entry(dir, &name).is_some() {
                    return Err(EEXIST);
                }
                let mut i = self.alloc(Kind::Symlink, 0o777, uid, gid, now)?;
                i.attr.size = target.len() as u64;
                i.target = target;
                self.add_entry(dir, &name, i.attr.ino, Kind::Symlink, now).inspect_err(|_| self.free_unplaced())?;
                self.put_inode(&i);
                Ok(FsResult::Attr(i.attr))
            }
            FsOp::Link { ino, dir, name } => {
                let mut i = self.inode(ino)?;
                self.dir(dir)?;
                self.check_name(&name)?;
                if i.attr.kind == Kind::Dir {
                    return Err(EPERM);
                }
                if i.attr.nlink >= self.limits.max_links {
                    return Err(EMLINK);
                }
                if self.entry(dir, &name).is_some() {
                    return Err(EEXIST);
                }
                self.add_entry(dir, &name, ino, i.attr.kind, now)?;
                i.attr.nlink += 1;
                i.attr.ctime_ns = changed(i.attr.ctime_ns, now);
                self.put_inode(&i);
                Ok(FsResult::Attr(i.attr))
            }
            FsOp::Unlink { dir, name } => {
                self.dir(dir)?;
                self.check_name(&name)?;
                let e = self.entry(dir, &name).ok_or(ENOENT)?;
                if e.kind == Kind::Dir {
                    return Err(EISDIR);
                }
                self.remove_entry(dir, &name, now)?;
                self.unlink_inode(e.ino, now)?;
                Ok(FsResult::Done)
            }
            FsOp::Rmdir { dir, name } => {
                self.dir(dir)?;
                if name.as_ref() == b"." {
                    return Err(EINVAL);
                }
                if name.as_ref() == b".." {
                    return Err(ENOTEMPTY);
                }
                self.check_name(&name)?;
                let e = self.entry(dir, &name).ok_or(ENOENT)?;
                if e.kind != Kind::Dir {
                    return Err(ENOTDIR);
                }
                if self.dir(e.ino)?.entries > 0 {
                    return Err(ENOTEMPTY);
                }
                self.remove_entry(dir, &name, now)?;
                self.free(e.ino);
                let mut p = self.dir(dir)?;
                p.attr.nlink -= 1;
                self.put_inode(&p);
                Ok(FsResult::Done)
            }
            FsOp::Rename { from_dir, from_name, to_dir, to_name, no_replace } => {
                self.rename(from_dir, &from_name, to_dir, &to_name, no_replace, now)
            }
            FsOp::Write { ino, offset, data } => self.write(ino, offset, &data, now),
            FsOp::Fsync { ino } => self.inode(ino).map(|_| FsResult::Done),
            read => self.read_only(&read),
        }
    }

    /// Undoes an [`FsService::alloc`] whose inode never got a name.
    fn free_unplaced(&mut self) {
        let mut s = self.sup();
        s.inodes -= 1;
        self.put_super(s);
    }

    fn setattr(&mut self, ino: Ino, set: SetAttr, now: u64) -> Outcome {
        let mut i = self.inode(ino)?;
        if let Some(size) = set.size {
            match i.attr.kind {
                Kind::Dir => return Err(EISDIR),
                Kind::Symlink => return Err(EINVAL),
                Kind::File => {}
            }
            if size > self.limits.max_file_bytes {
                return Err(EFBIG);
            }
            if size < i.attr.size {
                self.drop_blocks_from(ino, size.div_ceil(BLOCK_BYTES));
                let last = size / BLOCK_BYTES;
                let keep = (size - last * BLOCK_BYTES) as usize;
                if let Some(b) = self.store.get(&k_block(ino, last)) {
                    if b.len() > keep {
                        self.store.put(k_block(ino, last), b.slice(..keep));
                    }
                }
            }
            if size != i.attr.size {
                i.attr.size = size;
                i.attr.mtime_ns = now;
            }
        }
        if let Some(m) = set.mode {
            i.attr.mode = m & 0o7777;
        }
        if let Some(u) = set.uid {
            i.attr.uid = u;
        }
        if let Some(g) = set.gid {
            i.attr.gid = g;
        }
        let at = |t: SetTime| match t {
            SetTime::Now => now,
            SetTime::At(ns) => ns,
        };
        if let Some(t) = set.atime {
            i.attr.atime_ns = at(t);
        }
        if let Some(t) = set.mtime {
            i.attr.mtime_ns = at(t);
        }
        i.attr.ctime_ns = changed(i.attr.ctime_ns, now);
        self.put_inode(&i);
        Ok(FsResult::Attr(i.attr))
    }

    fn rename(&mut self, from_dir: Ino, from: &[u8], to_dir: Ino, to: &[u8], no_replace: bool, now: u64) -> Outcome {
        self.dir(from_dir)?;
        self.dir(to_dir)?;
        self.check_name(from)?;
        self.check_name(to)?;
        let src = self.entry(from_dir, from).ok_or(ENOENT)?;
        if src.kind == Kind::Dir {
            // Not into its own subtree: walk up from the target directory.
            let mut p = to_dir;
            let mut steps = 0u64;
            loop {
                if p == src.ino {
                    return Err(EINVAL);
                }
                if p == ROOT || steps > self.sup().inodes {
                    break;
                }
                p = self.dir(p)?.parent;
                steps += 1;
            }
        }
        let dst = self.entry(to_dir, to);
        if let Some(d) = dst {
            if d.ino == src.ino {
                return Ok(FsResult::Done);
            }
            if no_replace {
                return Err(EEXIST);
            }
            match (src.kind == Kind::Dir, d.kind == Kind::Dir) {
                (true, false) => return Err(ENOTDIR),
                (false, true) => return Err(EISDIR),
                (true, true) if self.dir(d.ino)?.entries > 0 => return Err(ENOTEMPTY),
                _ => {}
            }
        } else if self.dir(to_dir)?.entries >= self.limits.max_dir_entries {
            return Err(ENOSPC);
        }
        let moves_dir = src.kind == Kind::Dir && from_dir != to_dir;
        if moves_dir && dst.is_none() && self.dir(to_dir)?.attr.nlink >= self.limits.max_links {
            return Err(EMLINK);
        }
        // Checks done: from here on nothing fails.
        if let Some(d) = dst {
            self.remove_entry(to_dir, to, now)?;
            if d.kind == Kind::Dir {
                self.free(d.ino);
                let mut t = self.dir(to_dir)?;
                t.attr.nlink -= 1;
                self.put_inode(&t);
            } else {
                self.unlink_inode(d.ino, now)?;
            }
        }
        self.remove_entry(from_dir, from, now)?;
        self.add_entry(to_dir, to, src.ino, src.kind, now)?;
        let mut i = self.inode(src.ino)?;
        i.attr.ctime_ns = changed(i.attr.ctime_ns, now);
        if moves_dir {
            i.parent = to_dir;
            let mut f = self.dir(from_dir)?;
            f.attr.nlink -= 1;
            self.put_inode(&f);
            let mut t = self.dir(to_dir)?;
            t.attr.nlink += 1;
            self.put_inode(&t);
        }
        self.put_inode(&i);
        Ok(FsResult::Done)
    }

    fn write(&mut self, ino: Ino, offset: u64, data: &[u8], now: u64) -> Outcome {
        let mut i = self.inode(ino)?;
        match i.attr.kind {
            Kind::Dir => return Err(EISDIR),
            Kind::Symlink => return Err(EINVAL),
            Kind::File => {}
        }
        let end = offset.checked_add(data.len() as u64).ok_or(EFBIG)?;
        if end > self.limits.max_file_bytes {
            return Err(EFBIG);
        }
        if data.is_empty() {
            return Ok(FsResult::Written(0));
        }
        let (first, last) = (offset / BLOCK_BYTES, (end - 1) / BLOCK_BYTES);
        let new_blocks = (first..=last).filter(|b| self.store.get(&k_block(ino, *b)).is_none()).count() as u64;
        let mut s = self.sup();
        if s.used_bytes + new_blocks * BLOCK_BYTES > self.limits.max_total_bytes {
            return Err(ENOSPC);
        }
        s.used_bytes += new_blocks * BLOCK_BYTES;
        self.put_super(s);
        for b in first..=last {
            let start = b * BLOCK_BYTES;
            let (lo, hi) = (offset.max(start), end.min(start + BLOCK_BYTES));
            let old = self.store.get(&k_block(ino, b)).unwrap_or_default();
            let len = old.len().max((hi - start) as usize);
            let mut block = BytesMut::zeroed(len);
            block[..old.len()].copy_from_slice(&old);
            block[(lo - start) as usize..(hi - start) as usize]
                .copy_from_slice(&data[(lo - offset) as usize..(hi - offset) as usize]);
            self.store.put(k_block(ino, b), block.freeze());
        }
        i.attr.size = i.attr.size.max(end);
        i.attr.mtime_ns = now;
        i.attr.ctime_ns = changed(i.attr.ctime_ns, now);
        self.put_inode(&i);
        Ok(FsResult::Written(data.len() as u32))
    }

    fn read_only(&self, op: &FsOp) -> Outcome {
        match op {
            FsOp::Lookup { dir, name } => {
                let d = self.dir(*dir)?;
                match name.as_ref() {
                    b"." => return Ok(FsResult::Attr(d.attr)),
                    b".." => return Ok(FsResult::Attr(self.inode(d.parent)?.attr)),
                    _ => {}
                }
                self.check_name(name)?;
                let e = self.entry(*dir, name).ok_or(ENOENT)?;
                Ok(FsResult::Attr(self.inode(e.ino)?.attr))
            }
            FsOp::GetAttr { ino } => Ok(FsResult::Attr(self.inode(*ino)?.attr)),
            FsOp::Readlink { ino } => {
                let i = self.inode(*ino)?;
                if i.attr.kind != Kind::Symlink {
                    return Err(EINVAL);
                }
                Ok(FsResult::Data(i.target))
            }
            FsOp::Read { ino, offset, len } => self.read(*ino, *offset, *len),
            FsOp::ReadDir { dir, cookie, max_bytes } => self.readdir(*dir, *cookie, *max_bytes),
            FsOp::StatFs => {
                let s = self.sup();
                let l = &self.limits;
                Ok(FsResult::StatFs(StatFs {
                    total_bytes: l.max_total_bytes,
                    free_bytes: l.max_total_bytes.saturating_sub(s.used_bytes),
                    total_inodes: l.max_inodes,
                    free_inodes: l.max_inodes.saturating_sub(s.inodes),
                    max_name: l.max_name,
                }))
            }
            FsOp::Digest => {
                let parts: Vec<_> = (0..self.store.part_count()).map(|p| self.store.part_digest(p)).collect();
                Ok(FsResult::Digest(palisade_core::state::state_digest(&parts).0))
            }
            _ => Ok(FsResult::BadOperation),
        }
    }

    fn read(&self, ino: Ino, offset: u64, len: u32) -> Outcome {
        let i = self.inode(ino)?;
        match i.attr.kind {
            Kind::Dir => return Err(EISDIR),
            Kind::Symlink => return Err(EINVAL),
            Kind::File => {}
        }
        if offset >= i.attr.size || len == 0 {
            return Ok(FsResult::Data(Bytes::new()));
        }
        let end = i.attr.size.min(offset.saturating_add(len.min(self.limits.max_read) as u64));
        let mut out = BytesMut::zeroed((end - offset) as usize);
        for b in offset / BLOCK_BYTES..=(end - 1) / BLOCK_BYTES {
            let Some(block) = self.store.get(&k_block(ino, b)) else { continue };
            let start = b * BLOCK_BYTES;
            let lo = offset.max(start);
            let hi = end.min(start + block.len() as u64);
            if hi > lo {
                out[(lo - offset) as usize..(hi - offset) as usize]
                    .copy_from_slice(&block[(lo - start) as usize..(hi - start) as usize]);
            }
        }
        Ok(FsResult::Data(out.freeze()))
    }

    fn readdir(&self, dir: Ino, cookie: u64, max_bytes: u32) -> Outcome {
        self.dir(dir)?;
        let prefix = key(LISTING, dir, &[]);
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        for k in self.store.keys_from(&k_listing(dir, cookie.saturating_add(1))) {
            if !k.starts_with(&prefix) {
                break;
            }
            if entries.len() >= LISTING_MAX || (!entries.is_empty() && bytes > max_bytes as usize) {
                more = true;
                break;
            }
            let Some(name) = self.store.get(k) else { continue };
            let Some(e) = self.entry(dir, &name) else { continue };
            bytes += name.len() + 24;
            entries.push(DirEntry { cookie: e.cookie, ino: e.ino, kind: e.kind, name });
        }
        Ok(FsResult::Entries { entries, more })
    }

    fn answer(outcome: Outcome) -> Bytes {
        match outcome {
            Ok(r) => r.encode(),
            Err(e) => FsResult::Error(e).encode(),
        }
    }
}

impl Service for FsService {
    fn execute(&mut self, ctx: &ExecContext, operation: &[u8]) -> Bytes {
        match FsOp::decode(operation) {
            Ok(op) => Self::answer(self.apply(ctx, op)),
            Err(_) => FsResult::BadOperation.encode(),
        }
    }

    fn execute_unordered(&self, operation: &[u8]) -> Bytes {
        match FsOp::decode(operation) {
            Ok(op) if op.is_read_only() => Self::answer(self.read_only(&op)),
            _ => FsResult::BadOperation.encode(),
        }
    }

    fn snapshot(&self) -> Bytes {
        self.store.snapshot()
    }

    fn install(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.store.install(snapshot)
    }

    fn parted(&self) -> Option<&dyn PartedState> {
        Some(&self.store)
    }

    fn parted_mut(&mut self) -> Option<&mut dyn PartedState> {
        Some(&mut self.store)
    }
}

#[cfg(test)]
mod tests;
