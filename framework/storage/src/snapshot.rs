//! Snapshot files: the state at a checkpoint, written incrementally.
//!
//! A snapshot is a *manifest* saying, for every part of the state, where
//! its bytes lie, and the *pack* files that hold them. Each snapshot writes
//! one new pack with only the parts that changed since the previous one,
//! then its manifest. A gigabyte state whose clients touched a few
//! megabytes since the last snapshot costs a few megabytes to snapshot.
//! So that dead bytes do not pile up, the live parts of a pack that has
//! become mostly dead are written again into the new pack, and a pack no
//! kept manifest names is deleted.
//!
//! Every record is checksummed, every part is checked against the digest
//! its manifest gives, and the manifest's digests against the checkpoint's
//! digest (their root), so a snapshot that loads is exactly the certified
//! state.
//!
//! Format version 2 (little-endian; see docs/storage.md):
//!
//! ```text
//! manifest = header(60) entry* crc32c(entries):u32
//! header   = "PLSDSNAP" version:u32 parts:u32 seq:u64 root[32] crc32c(previous 56 bytes):u32
//! entry    = pack:u64 offset:u64 len:u64 digest[32]      (len 0: an empty part, in no pack)
//! pack     = pack-header(32) part*
//! pack-header = "PLSDPACK" version:u32 zero:u32 seq:u64 zero:u32 crc32c(previous 28 bytes):u32
//! part     = records:u32 record*
//! record   = len:u32 crc32c(bytes):u32 bytes[len]
//! ```
//!
//! Manifests are named `snap-<seq, 20 digits>.snap` and written as `.tmp`,
//! synced, then renamed (the directory synced), after their pack
//! (`pack-<seq>.pack`) is synced: a manifest with its final name is whole
//! and so is everything it names.

use crate::dir::Dir;
use bytes::Bytes;
use palisade_core::state::{part_digest, state_digest, Part};
use palisade_core::{Digest, SeqNo};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::sync::Arc;

/// The snapshot format's version.
pub const SNAPSHOT_VERSION: u32 = 3;
const MAGIC: &[u8; 8] = b"PLSDSNAP";
const PACK_MAGIC: &[u8; 8] = b"PLSDPACK";
/// Bytes of a manifest's header.
pub const SNAPSHOT_HEADER_BYTES: usize = 60;
/// Bytes of a pack's header.
pub const PACK_HEADER_BYTES: usize = 32;
const ENTRY_BYTES: usize = 56;
const CHUNK: usize = 1 << 20;
/// A pack whose live bytes fall below this share of its bytes has its
/// live parts written again by the next snapshot, and is then deleted:
/// the packs one manifest names hold at most about twice the state.
const COMPACT_PERCENT: u64 = 50;

fn snap_name(seq: SeqNo) -> String {
    format!("snap-{:020}.snap", seq.0)
}

fn pack_name(seq: u64) -> String {
    format!("pack-{seq:020}.pack")
}

fn parse_snap(name: &str) -> Option<SeqNo> {
    name.strip_prefix("snap-")?.strip_suffix(".snap")?.parse().ok().map(SeqNo)
}

fn parse_pack(name: &str) -> Option<u64> {
    name.strip_prefix("pack-")?.strip_suffix(".pack")?.parse().ok()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A manifest's header.
pub fn encode_header(seq: SeqNo, root: Digest, parts: u32) -> [u8; SNAPSHOT_HEADER_BYTES] {
    let mut h = [0u8; SNAPSHOT_HEADER_BYTES];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&parts.to_le_bytes());
    h[16..24].copy_from_slice(&seq.0.to_le_bytes());
    h[24..56].copy_from_slice(&root.0);
    let crc = crc32c::crc32c(&h[0..56]);
    h[56..60].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A pack's header.
pub fn encode_pack_header(seq: u64) -> [u8; PACK_HEADER_BYTES] {
    let mut h = [0u8; PACK_HEADER_BYTES];
    h[0..8].copy_from_slice(PACK_MAGIC);
    h[8..12].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Where one part's bytes lie, and the digest they must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The pack (named by the checkpoint that wrote it).
    pub pack: u64,
    /// Where the part starts in the pack.
    pub offset: u64,
    /// Its encoded length; 0 for an empty part, which is in no pack.
    pub len: u64,
    /// The part's digest.
    pub digest: Digest,
}

/// A snapshot's table of parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The checkpoint it is the state of.
    pub seq: SeqNo,
    /// The checkpoint's digest: the root of the parts' digests.
    pub root: Digest,
    /// Every part, in order.
    pub parts: Vec<Location>,
}

impl Manifest {
    /// Its file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + self.parts.len() * ENTRY_BYTES + 4);
        out.extend_from_slice(&encode_header(self.seq, self.root, self.parts.len() as u32));
        for l in &self.parts {
            out.extend_from_slice(&l.pack.to_le_bytes());
            out.extend_from_slice(&l.offset.to_le_bytes());
            out.extend_from_slice(&l.len.to_le_bytes());
            out.extend_from_slice(&l.digest.0);
        }
        let crc = crc32c::crc32c(&out[SNAPSHOT_HEADER_BYTES..]);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads a manifest file's bytes, checking its checksums, that it is
    /// the state at `seq`, and that its digests hash to its root.
    pub fn decode(b: &[u8], seq: SeqNo) -> Result<Manifest, String> {
        if b.len() < SNAPSHOT_HEADER_BYTES + 4 || &b[0..8] != MAGIC {
            return Err("not a snapshot file".into());
        }
        if u32_at(b, 56) != crc32c::crc32c(&b[0..56]) {
            return Err("its header does not check".into());
        }
        let version = u32_at(b, 8);
        if version != SNAPSHOT_VERSION {
            return Err(format!("format version {version}, this build reads {SNAPSHOT_VERSION}"));
        }
        let count = u32_at(b, 12) as usize;
        let at = SeqNo(u64_at(b, 16));
        if at != seq {
            return Err(format!("it holds checkpoint {at}, not {seq}"));
        }
        if b.len() != SNAPSHOT_HEADER_BYTES + count * ENTRY_BYTES + 4 {
            return Err(format!("{} bytes for {count} parts", b.len()));
        }
        let body = &b[SNAPSHOT_HEADER_BYTES..b.len() - 4];
        if u32_at(b, b.len() - 4) != crc32c::crc32c(body) {
            return Err("its table of parts does not check".into());
        }
        let root = Digest(b[24..56].try_into().expect("32 bytes"));
        let empty = part_digest(&[]);
        let mut parts = Vec::with_capacity(count);
        for (i, e) in body.chunks_exact(ENTRY_BYTES).enumerate() {
            let l = Location {
                pack: u64_at(e, 0),
                offset: u64_at(e, 8),
                len: u64_at(e, 16),
                digest: Digest(e[24..56].try_into().expect("32 bytes")),
            };
            if l.len == 0 && l.digest != empty {
                return Err(format!("part {i} is empty but has a digest"));
            }
            if l.len > 0 && l.pack > seq.0 {
                return Err(format!("part {i} is in a pack newer than the snapshot"));
            }
            parts.push(l);
        }
        if state_digest(&parts.iter().map(|l| l.digest).collect::<Vec<_>>()) != root {
            return Err("its parts do not hash to its digest".into());
        }
        Ok(Manifest { seq, root, parts })
    }

    fn packs(&self) -> BTreeSet<u64> {
        self.parts.iter().filter(|l| l.len > 0).map(|l| l.pack).collect()
    }
}

/// Writes what it is given in chunks of about a megabyte.
struct Chunked<'d, D: Dir> {
    dir: &'d D,
    name: String,
    at: u64,
    buf: Vec<u8>,
}

impl<D: Dir> Chunked<'_, D> {
    fn pos(&self) -> u64 {
        self.at + self.buf.len() as u64
    }

    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.dir.write_at(&self.name, self.at, &self.buf)?;
        self.at += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

/// What writing one snapshot cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Bytes written: the new pack and the manifest.
    pub bytes: u64,
    /// Parts written into the new pack (changed, or moved out of a mostly
    /// dead pack).
    pub parts_written: usize,
    /// Parts the manifest names where an older pack holds them.
    pub parts_reused: usize,
}

/// A snapshot read back and checked.
#[derive(Debug)]
pub struct Loaded {
    /// The checkpoint it is the state of.
    pub seq: SeqNo,
    /// Its digest (checked: the parts hash to it).
    pub root: Digest,
    /// Every part's digest.
    pub digests: Vec<Digest>,
    /// Bytes read: the manifest and every non-empty part.
    pub bytes: u64,
}

/// A snapshot that did not load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Its manifest.
    pub name: String,
    /// What was wrong.
    pub reason: String,
}

/// The snapshots of one data directory: the kept manifests, and the packs
/// they name. Owned by one writer (the runtime's snapshot thread).
pub struct Snapshots<D: Dir> {
    dir: Arc<D>,
    keep: usize,
    /// Oldest first; every one decoded and checked against its root.
    kept: VecDeque<Manifest>,
    /// Bytes of parts in each pack (its length less its header).
    packs: BTreeMap<u64, u64>,
}

impl<D: Dir> Snapshots<D> {
    /// Opens the snapshots in `dir`, keeping the `keep` newest whose
    /// manifests check (a manifest that does not is deleted and reported),
    /// and deletes unfinished writes and packs no kept manifest names.
    /// Parts are read only by [`Snapshots::load`].
    pub fn open(dir: Arc<D>, keep: usize) -> io::Result<(Snapshots<D>, Vec<Rejected>)> {
        let keep = keep.max(1);
        let names = dir.list()?;
        let mut snaps: Vec<(SeqNo, String)> =
            names.iter().filter_map(|n| parse_snap(n).map(|s| (s, n.clone()))).collect();
        snaps.sort();
        let mut kept = VecDeque::new();
        let mut rejected = Vec::new();
        while let Some((seq, name)) = snaps.pop() {
            if kept.len() == keep {
                dir.remove(&name)?;
                continue;
            }
            let decoded = read_manifest(&*dir, &name, seq)?;
            match decoded {
                Ok(m) => kept.push_front(m),
                Err(reason) => {
                    dir.remove(&name)?;
                    rejected.push(Rejected { name, reason });
                }
            }
        }
        let mut packs = BTreeMap::new();
        for n in &names {
            if let Some(p) = parse_pack(n) {
                packs.insert(p, dir.len(n)?.saturating_sub(PACK_HEADER_BYTES as u64));
            }
        }
        let mut s = Snapshots { dir, keep, kept, packs };
        s.prune()?;
        Ok((s, rejected))
    }

    /// The newest kept snapshot's checkpoint.
    pub fn newest(&self) -> Option<SeqNo> {
        self.kept.back().map(|m| m.seq)
    }

    /// The newest kept snapshot's checkpoint before `seq`: the fallback
    /// of the snapshot at `seq`.
    pub fn before(&self, seq: SeqNo) -> Option<SeqNo> {
        self.kept.iter().rev().map(|m| m.seq).find(|s| *s < seq)
    }

    /// Bytes of parts in the packs on disk.
    pub fn pack_bytes(&self) -> u64 {
        self.packs.values().sum()
    }

    /// Deletes unfinished writes, manifests no longer kept, and packs no
    /// kept manifest names.
    fn prune(&mut self) -> io::Result<()> {
        let kept_seqs: BTreeSet<SeqNo> = self.kept.iter().map(|m| m.seq).collect();
        let named: BTreeSet<u64> = self.kept.iter().flat_map(|m| m.packs()).collect();
        for n in self.dir.list()? {
            let stale = n.ends_with(".tmp")
                || parse_snap(&n).is_some_and(|s| !kept_seqs.contains(&s))
                || parse_pack(&n).is_some_and(|p| !named.contains(&p));
            if stale {
                self.dir.remove(&n)?;
            }
        }
        self.packs.retain(|p, _| named.contains(p));
        Ok(())
    }

    /// Reads the newest snapshot that checks into the service, part by
    /// part: `install(i, records)` gets each part once its records match
    /// the digest its manifest gives (so no more than one part is held
    /// besides the service's own copy). A snapshot that fails part way is
    /// deleted and reported, and the next older one installs every part
    /// again; when none loads, parts may have been installed and the
    /// caller must put its state back. A snapshot with another number of
    /// parts than the service's `parts` is refused too. Errors are the
    /// disk's or `install`'s.
    pub fn load(
        &mut self,
        parts: usize,
        max_record_bytes: usize,
        install: impl FnMut(u32, Vec<Bytes>) -> Result<(), String>,
    ) -> io::Result<(Option<Loaded>, Vec<Rejected>)> {
        self.load_not_after(None, parts, max_record_bytes, install)
    }

    /// [`Self::load`], preferring the newest snapshot at or before
    /// `not_after` when one is kept (a restart that must serve its stable
    /// checkpoint starts from before it and replays the log through it);
    /// newer ones stay on disk.
    pub fn load_not_after(
        &mut self,
        not_after: Option<SeqNo>,
        parts: usize,
        max_record_bytes: usize,
        mut install: impl FnMut(u32, Vec<Bytes>) -> Result<(), String>,
    ) -> io::Result<(Option<Loaded>, Vec<Rejected>)> {
        let mut rejected = Vec::new();
        if let Some(limit) = not_after {
            let older: Vec<Manifest> = self.kept.iter().rev().filter(|m| m.seq <= limit).cloned().collect();
            for m in older {
                if m.parts.len() != parts {
                    continue;
                }
                if let Ok(bytes) = self.load_one(&m, max_record_bytes, &mut install)? {
                    let digests = m.parts.iter().map(|l| l.digest).collect();
                    return Ok((Some(Loaded { seq: m.seq, root: m.root, digests, bytes }), rejected));
                }
            }
        }
        while let Some(m) = self.kept.back().cloned() {
            let loaded = if m.parts.len() == parts {
                self.load_one(&m, max_record_bytes, &mut install)?
            } else {
                Err(format!("it has {} parts where the service has {parts}", m.parts.len()))
            };
            match loaded {
                Ok(bytes) => {
                    let digests = m.parts.iter().map(|l| l.digest).collect();
                    return Ok((Some(Loaded { seq: m.seq, root: m.root, digests, bytes }), rejected));
                }
                Err(reason) => {
                    self.kept.pop_back();
                    let name = snap_name(m.seq);
                    self.dir.remove(&name)?;
                    rejected.push(Rejected { name, reason });
                    self.prune()?;
                }
            }
        }
        Ok((None, rejected))
    }

    /// Loads `m`: the outer error is `install`'s, the inner one what is
    /// wrong with the files.
    fn load_one(
        &self,
        m: &Manifest,
        max_record_bytes: usize,
        install: &mut impl FnMut(u32, Vec<Bytes>) -> Result<(), String>,
    ) -> io::Result<Result<u64, String>> {
        let mut bytes = (SNAPSHOT_HEADER_BYTES + m.parts.len() * ENTRY_BYTES + 4) as u64;
        let mut checked: BTreeMap<u64, u64> = BTreeMap::new();
        for (i, l) in m.parts.iter().enumerate() {
            let records = if l.len == 0 {
                Vec::new()
            } else {
                let len = match checked.get(&l.pack) {
                    Some(&len) => len,
                    None => match self.check_pack(l.pack) {
                        Ok(len) => {
                            checked.insert(l.pack, len);
                            len
                        }
                        Err(reason) => return Ok(Err(reason)),
                    },
                };
                if l.offset < PACK_HEADER_BYTES as u64 || l.offset.saturating_add(l.len) > len {
                    return Ok(Err(format!("part {i} lies outside {}", pack_name(l.pack))));
                }
                let mut buf = vec![0u8; l.len as usize];
                match self.dir.read_at(&pack_name(l.pack), l.offset, &mut buf) {
                    Ok(n) if n == buf.len() => {}
                    Ok(_) => return Ok(Err(format!("{} ends early", pack_name(l.pack)))),
                    Err(e) => return Ok(Err(format!("{}: {e}", pack_name(l.pack)))),
                }
                bytes += l.len;
                match decode_part(Bytes::from(buf), max_record_bytes) {
                    Ok(records) => records,
                    Err(reason) => return Ok(Err(format!("part {i} in {}: {reason}", pack_name(l.pack)))),
                }
            };
            let digests: Vec<Digest> = records.iter().map(|r| Digest::of(r)).collect();
            if part_digest(&digests) != l.digest {
                return Ok(Err(format!("part {i} does not have its digest")));
            }
            install(i as u32, records).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("the snapshot at {} does not install: {e}", m.seq))
            })?;
        }
        Ok(Ok(bytes))
    }

    /// Checks a pack's header; returns its length.
    fn check_pack(&self, pack: u64) -> Result<u64, String> {
        let name = pack_name(pack);
        let len = self.dir.len(&name).map_err(|e| format!("{name}: {e}"))?;
        let mut h = [0u8; PACK_HEADER_BYTES];
        match self.dir.read_at(&name, 0, &mut h) {
            Ok(PACK_HEADER_BYTES) => {}
            Ok(_) => return Err(format!("{name} ends early")),
            Err(e) => return Err(format!("{name}: {e}")),
        }
        if &h[0..8] != PACK_MAGIC || u32_at(&h, 28) != crc32c::crc32c(&h[0..28]) {
            return Err(format!("{name}'s header does not check"));
        }
        if u32_at(&h, 8) != SNAPSHOT_VERSION || u64_at(&h, 16) != pack {
            return Err(format!("{name} is not the pack its name says"));
        }
        Ok(len)
    }

    /// Writes the state at `seq` (digest `root`; `parts` and their
    /// `digests`) durably: the parts whose digests differ from the newest
    /// snapshot's, and those in mostly dead packs, go into a new pack; then
    /// the manifest; then manifests beyond the kept ones, and packs none of
    /// them names, are deleted. Meant for a background thread: parts
    /// produce their records from a frozen copy.
    pub fn write(&mut self, seq: SeqNo, root: Digest, parts: &[Part], digests: &[Digest]) -> io::Result<Written> {
        if parts.len() != digests.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "one digest per part"));
        }
        if self.newest().is_some_and(|s| s >= seq) {
            return Ok(Written::default());
        }
        let empty = part_digest(&[]);
        let prev = self.kept.back().filter(|m| m.parts.len() == parts.len());
        let mut locs: Vec<Option<Location>> = digests
            .iter()
            .enumerate()
            .map(|(i, d)| {
                if *d == empty {
                    return Some(Location { pack: 0, offset: 0, len: 0, digest: empty });
                }
                prev.map(|m| m.parts[i]).filter(|l| l.digest == *d && l.len > 0)
            })
            .collect();
        // Move the live parts out of packs that have become mostly dead.
        let mut live: BTreeMap<u64, u64> = BTreeMap::new();
        for l in locs.iter().flatten().filter(|l| l.len > 0) {
            *live.entry(l.pack).or_default() += l.len;
        }
        let sparse: BTreeSet<u64> = live
            .iter()
            .filter(|(p, bytes)| **bytes * 100 < self.packs.get(p).copied().unwrap_or(0) * COMPACT_PERCENT)
            .map(|(p, _)| *p)
            .collect();
        for l in locs.iter_mut() {
            if l.is_some_and(|l| l.len > 0 && sparse.contains(&l.pack)) {
                *l = None;
            }
        }
        let mut written = Written::default();
        let dir = &*self.dir;
        if locs.iter().any(Option::is_none) {
            let name = pack_name(seq.0);
            dir.create(&name, 0)?;
            let mut w = Chunked { dir, name: name.clone(), at: 0, buf: Vec::with_capacity(CHUNK + 4096) };
            w.put(&encode_pack_header(seq.0))?;
            for (i, loc) in locs.iter_mut().enumerate() {
                if loc.is_some() {
                    written.parts_reused += 1;
                    continue;
                }
                let part = &parts[i];
                let offset = w.pos();
                w.put(&(part.len() as u32).to_le_bytes())?;
                for j in 0..part.len() {
                    let r = part.record(j);
                    w.put(&(r.len() as u32).to_le_bytes())?;
                    w.put(&crc32c::crc32c(&r).to_le_bytes())?;
                    w.put(&r)?;
                }
                *loc = Some(Location { pack: seq.0, offset, len: w.pos() - offset, digest: digests[i] });
                written.parts_written += 1;
            }
            w.flush()?;
            dir.sync(&name)?;
            written.bytes += w.at;
            self.packs.insert(seq.0, w.at - PACK_HEADER_BYTES as u64);
        } else {
            written.parts_reused = locs.len();
        }
        let manifest = Manifest { seq, root, parts: locs.into_iter().map(|l| l.expect("every part placed")).collect() };
        let bytes = manifest.encode();
        let name = snap_name(seq);
        let tmp = format!("{name}.tmp");
        dir.create(&tmp, 0)?;
        dir.write_at(&tmp, 0, &bytes)?;
        dir.sync(&tmp)?;
        dir.rename(&tmp, &name)?;
        written.bytes += bytes.len() as u64;
        self.kept.push_back(manifest);
        while self.kept.len() > self.keep {
            self.kept.pop_front();
        }
        self.prune()?;
        Ok(written)
    }
}

/// Reads and checks manifest `name`: its header first, so that a damaged
/// file costs no more memory than the parts its checked header announces.
fn read_manifest<D: Dir>(dir: &D, name: &str, seq: SeqNo) -> io::Result<Result<Manifest, String>> {
    let len = dir.len(name)?;
    let mut h = [0u8; SNAPSHOT_HEADER_BYTES];
    if dir.read_at(name, 0, &mut h)? < SNAPSHOT_HEADER_BYTES || &h[0..8] != MAGIC {
        return Ok(Err("not a snapshot file".into()));
    }
    if u32_at(&h, 56) != crc32c::crc32c(&h[0..56]) {
        return Ok(Err("its header does not check".into()));
    }
    let want = SNAPSHOT_HEADER_BYTES as u64 + u64::from(u32_at(&h, 12)) * ENTRY_BYTES as u64 + 4;
    if len != want {
        return Ok(Err(format!("{len} bytes where its header says {want}")));
    }
    let mut b = vec![0u8; len as usize];
    let got = dir.read_at(name, 0, &mut b)?;
    b.truncate(got);
    Ok(Manifest::decode(&b, seq))
}

/// A part's records from its encoding, each checked against its checksum.
fn decode_part(b: Bytes, max_record_bytes: usize) -> Result<Vec<Bytes>, String> {
    if b.len() < 4 {
        return Err("it is cut short".into());
    }
    let n = u32_at(&b, 0) as usize;
    let mut at = 4;
    let mut records = Vec::with_capacity(n.min(b.len() / 8));
    for j in 0..n {
        if at + 8 > b.len() {
            return Err(format!("record {j} is cut short"));
        }
        let len = u32_at(&b, at) as usize;
        let crc = u32_at(&b, at + 4);
        if len > max_record_bytes || at + 8 + len > b.len() {
            return Err(format!("record {j} claims {len} bytes"));
        }
        let r = b.slice(at + 8..at + 8 + len);
        if crc32c::crc32c(&r) != crc {
            return Err(format!("record {j} does not check"));
        }
        records.push(r);
        at += 8 + len;
    }
    if at != b.len() {
        return Err("it has bytes after its last record".into());
    }
    Ok(records)
}
