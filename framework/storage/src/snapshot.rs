//! Snapshot files: the state at a checkpoint, part by part, record by
//! record, each record checksummed, and the whole checked on load against
//! the checkpoint's digest (the root of the part digests).
//!
//! Format version 1 (little-endian; see docs/storage.md):
//!
//! ```text
//! file    = header(60) part*
//! header  = "PLSDSNAP" version:u32 parts:u32 seq:u64 root[32] crc32c(previous 56 bytes):u32
//! part    = records:u32 record*
//! record  = len:u32 crc32c(bytes):u32 bytes[len]
//! ```
//!
//! Named `snap-<seq, 20 digits>.snap`; written as `.tmp`, synced, renamed,
//! and the directory synced, so that a file with the final name is whole.

use crate::dir::Dir;
use bytes::Bytes;
use palisade_core::state::{state_digest, Part};
use palisade_core::{Digest, SeqNo};
use std::io;

/// The snapshot format's version.
pub const SNAPSHOT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"PLSDSNAP";
/// Bytes of a snapshot header.
pub const SNAPSHOT_HEADER_BYTES: usize = 60;
const CHUNK: usize = 1 << 20;

fn name_of(seq: SeqNo) -> String {
    format!("snap-{:020}.snap", seq.0)
}

fn parse_name(name: &str) -> Option<SeqNo> {
    name.strip_prefix("snap-")?.strip_suffix(".snap")?.parse().ok().map(SeqNo)
}

/// A snapshot's header.
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

/// Writes what it is given in chunks of about a megabyte.
struct Chunked<'d, D: Dir> {
    dir: &'d D,
    name: String,
    at: u64,
    buf: Vec<u8>,
}

impl<D: Dir> Chunked<'_, D> {
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

/// Writes the state at `seq` (digest `root`, parts `parts`) durably, and
/// then deletes all but the `keep` newest snapshots. Returns the bytes
/// written. Meant for a background thread: parts produce their records
/// from a frozen copy.
pub fn write_snapshot<D: Dir>(dir: &D, seq: SeqNo, root: Digest, parts: &[Part], keep: usize) -> io::Result<u64> {
    let name = name_of(seq);
    let tmp = format!("{name}.tmp");
    dir.create(&tmp, 0)?;
    let mut w = Chunked { dir, name: tmp.clone(), at: 0, buf: Vec::with_capacity(CHUNK + 4096) };
    w.put(&encode_header(seq, root, parts.len() as u32))?;
    for part in parts {
        w.put(&(part.len() as u32).to_le_bytes())?;
        for j in 0..part.len() {
            let r = part.record(j);
            w.put(&(r.len() as u32).to_le_bytes())?;
            w.put(&crc32c::crc32c(&r).to_le_bytes())?;
            w.put(&r)?;
        }
    }
    w.flush()?;
    let bytes = w.at;
    dir.sync(&tmp)?;
    dir.rename(&tmp, &name)?;
    prune(dir, keep)?;
    Ok(bytes)
}

/// Deletes all but the `keep` newest snapshots, and any unfinished one.
pub fn prune<D: Dir>(dir: &D, keep: usize) -> io::Result<()> {
    let names = dir.list()?;
    for n in names.iter().filter(|n| n.starts_with("snap-") && n.ends_with(".tmp")) {
        dir.remove(n)?;
    }
    let mut snaps: Vec<(SeqNo, String)> = names.into_iter().filter_map(|n| parse_name(&n).map(|s| (s, n))).collect();
    snaps.sort();
    let drop = snaps.len().saturating_sub(keep);
    for (_, n) in snaps.into_iter().take(drop) {
        dir.remove(&n)?;
    }
    Ok(())
}

/// A snapshot read back and checked.
#[derive(Debug)]
pub struct Loaded {
    /// The checkpoint it is the state of.
    pub seq: SeqNo,
    /// Its digest (checked: the parts hash to it).
    pub root: Digest,
    /// Every part (its digest checked into the root).
    pub parts: Vec<Part>,
    /// Every part's digest.
    pub digests: Vec<Digest>,
    /// The file's length.
    pub bytes: u64,
}

/// A snapshot file that did not load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The file.
    pub name: String,
    /// What was wrong.
    pub reason: String,
}

/// Reads sequentially in chunks.
struct Reader<'d, D: Dir> {
    dir: &'d D,
    name: &'d str,
    at: u64,
    len: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl<D: Dir> Reader<'_, D> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.pos + n > self.buf.len() {
            let mut rest = self.buf.split_off(self.pos);
            let want = n.max(CHUNK).saturating_sub(rest.len());
            let want = want.min((self.len - self.at) as usize);
            let start = rest.len();
            rest.resize(start + want, 0);
            let got = self.dir.read_at(self.name, self.at, &mut rest[start..]).map_err(|e| e.to_string())?;
            rest.truncate(start + got);
            self.at += got as u64;
            self.buf = rest;
            self.pos = 0;
            if n > self.buf.len() {
                return Err("the file ends early".into());
            }
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
}

fn load_one<D: Dir>(dir: &D, name: &str, seq: SeqNo, max_record_bytes: usize) -> Result<Loaded, String> {
    let len = dir.len(name).map_err(|e| e.to_string())?;
    let mut r = Reader { dir, name, at: 0, len, buf: Vec::new(), pos: 0 };
    let h = r.take(SNAPSHOT_HEADER_BYTES)?.to_vec();
    if &h[0..8] != MAGIC {
        return Err("not a snapshot file".into());
    }
    if u32::from_le_bytes(h[56..60].try_into().expect("4 bytes")) != crc32c::crc32c(&h[0..56]) {
        return Err("its header does not check".into());
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if version != SNAPSHOT_VERSION {
        return Err(format!("format version {version}, this build reads {SNAPSHOT_VERSION}"));
    }
    let count = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"));
    let at = SeqNo(u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")));
    if at != seq {
        return Err(format!("it holds checkpoint {at}, not {seq}"));
    }
    let root = Digest(h[24..56].try_into().expect("32 bytes"));
    let mut parts = Vec::with_capacity(count.min(1 << 20) as usize);
    let mut digests = Vec::with_capacity(parts.capacity());
    for i in 0..count {
        let n = r.u32()?;
        let mut records = Vec::with_capacity(n.min(1 << 16) as usize);
        for j in 0..n {
            let rlen = r.u32()? as usize;
            let crc = r.u32()?;
            if rlen > max_record_bytes {
                return Err(format!("part {i} record {j} claims {rlen} bytes"));
            }
            let bytes = r.take(rlen)?;
            if crc32c::crc32c(bytes) != crc {
                return Err(format!("part {i} record {j} does not check"));
            }
            records.push(Bytes::copy_from_slice(bytes));
        }
        let part = Part::from_records(records);
        digests.push(part.digest());
        parts.push(part);
    }
    if state_digest(&digests) != root {
        return Err("its parts do not hash to its digest".into());
    }
    Ok(Loaded { seq, root, parts, digests, bytes: len })
}

/// The newest snapshot that loads and checks, and every newer one that did
/// not (each is deleted: it can never be trusted again, and the replica
/// fetches that state from its peers instead).
pub fn load_newest<D: Dir>(dir: &D, max_record_bytes: usize) -> io::Result<(Option<Loaded>, Vec<Rejected>)> {
    let mut snaps: Vec<(SeqNo, String)> =
        dir.list()?.into_iter().filter_map(|n| parse_name(&n).map(|s| (s, n))).collect();
    snaps.sort();
    let mut rejected = Vec::new();
    while let Some((seq, name)) = snaps.pop() {
        match load_one(dir, &name, seq, max_record_bytes) {
            Ok(l) => return Ok((Some(l), rejected)),
            Err(reason) => {
                dir.remove(&name)?;
                rejected.push(Rejected { name, reason });
            }
        }
    }
    Ok((None, rejected))
}
