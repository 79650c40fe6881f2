//! The write-ahead log: numbered entries in preallocated segment files,
//! each entry checksummed, written in groups of one write and one
//! `fdatasync`.
//!
//! Format version 2 (little-endian; see docs/storage.md; version 2 changed
//! the journal's entries, not this framing):
//!
//! ```text
//! segment  = header(32) entry* zero-fill
//! header   = "PLSDWAL\n" version:u32 first_lsn:u64 capacity:u64 crc32c(previous 28 bytes):u32
//! entry    = len:u32 crc32c(lsn ++ len ++ payload):u32 lsn:u64 payload[len]
//! ```
//!
//! A segment is named `wal-<first lsn, 20 digits>.seg`. Entries are
//! numbered from 1 without gaps across segments. A zero length ends a
//! segment's entries. Every group ends with a trailer: an entry whose
//! payload is the single byte 0 (reserved; never returned on replay).
//!
//! On recovery the first entry that does not check ends the log. If
//! nothing valid follows it in its segment and it is in the last segment,
//! it was a write torn by a crash (never acknowledged, since the sync did
//! not return) and is cut off. Otherwise durable data behind it was
//! damaged, and the recovery says so. The trailer is what tells the two
//! apart for the last group: a rotten entry in a synced group still has
//! its group's valid trailer behind it.

use crate::dir::Dir;
use std::io;
use std::sync::Arc;

/// The log's format version.
pub const WAL_VERSION: u32 = 3;
const MAGIC: &[u8; 8] = b"PLSDWAL\n";
/// Bytes of a segment header.
pub const HEADER_BYTES: usize = 32;
/// Bytes of an entry's header.
pub const ENTRY_HEADER_BYTES: usize = 16;
/// Largest entry payload: a decided batch is at most a frame.
pub const MAX_ENTRY_BYTES: usize = 1 << 30;
/// The payload of a group's trailer.
const TRAILER: &[u8] = &[0];

/// An entry's number.
pub type Lsn = u64;

/// How the log is sized.
#[derive(Clone, Copy, Debug)]
pub struct WalOptions {
    /// Bytes preallocated per segment (a group that does not fit gets a
    /// segment of its own size).
    pub segment_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions { segment_bytes: 64 << 20 }
    }
}

/// Why the log ended where it did on recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    /// The segment.
    pub segment: String,
    /// Offset of the first entry that did not check.
    pub offset: u64,
    /// Torn tail (an unacknowledged write) or damage to durable entries.
    pub kind: CutKind,
    /// Entries in later segments that were dropped with it.
    pub later_segments: usize,
}

/// What [`Cut`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutKind {
    /// The last write was torn by a crash: nothing acknowledged is lost.
    TornTail,
    /// A durable entry does not check (a bad sector, a flipped bit): what
    /// followed it is not trusted.
    Corrupt,
}

/// The log as recovered.
#[derive(Debug, Default)]
pub struct Replay {
    /// Every valid entry, in order ([`Wal::open`] only).
    pub entries: Vec<(Lsn, Vec<u8>)>,
    /// Valid entries read.
    pub read: usize,
    /// Where and why the log was cut, if it was.
    pub cut: Option<Cut>,
}

struct Segment {
    name: String,
    first: Lsn,
    capacity: u64,
}

/// An open write-ahead log.
pub struct Wal<D: Dir> {
    dir: Arc<D>,
    opts: WalOptions,
    /// Segments in order; the last is written to.
    segments: Vec<Segment>,
    /// Where the next entry goes in the last segment.
    tail: u64,
    next: Lsn,
}

fn segment_name(first: Lsn) -> String {
    format!("wal-{first:020}.seg")
}

fn parse_segment_name(name: &str) -> Option<Lsn> {
    name.strip_prefix("wal-")?.strip_suffix(".seg")?.parse().ok()
}

/// The header of a segment starting at `first`.
pub fn encode_header(first: Lsn, capacity: u64) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&WAL_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&first.to_le_bytes());
    h[20..28].copy_from_slice(&capacity.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

fn decode_header(h: &[u8]) -> Option<(Lsn, u64)> {
    if h.len() < HEADER_BYTES || &h[0..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(h[28..32].try_into().ok()?);
    if crc != crc32c::crc32c(&h[0..28]) || u32::from_le_bytes(h[8..12].try_into().ok()?) != WAL_VERSION {
        return None;
    }
    Some((u64::from_le_bytes(h[12..20].try_into().ok()?), u64::from_le_bytes(h[20..28].try_into().ok()?)))
}

fn entry_crc(lsn: Lsn, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&lsn.to_le_bytes());
    let crc = crc32c::crc32c_append(crc, &(payload.len() as u32).to_le_bytes());
    crc32c::crc32c_append(crc, payload)
}

/// Appends entry `lsn` with `payload` to `out`.
pub fn encode_entry(out: &mut Vec<u8>, lsn: Lsn, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&entry_crc(lsn, payload).to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The entry at `at` in `buf` if it checks and is numbered `lsn`: its
/// payload and the offset after it.
fn decode_entry(buf: &[u8], at: usize, lsn: Lsn) -> Option<(&[u8], usize)> {
    let h = buf.get(at..at + ENTRY_HEADER_BYTES)?;
    let len = u32::from_le_bytes(h[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(h[4..8].try_into().ok()?);
    let got = u64::from_le_bytes(h[8..16].try_into().ok()?);
    if len == 0 || len > MAX_ENTRY_BYTES || got != lsn {
        return None;
    }
    let payload = buf.get(at + ENTRY_HEADER_BYTES..at + ENTRY_HEADER_BYTES + len)?;
    (entry_crc(lsn, payload) == crc).then_some((payload, at + ENTRY_HEADER_BYTES + len))
}

/// Whether any entry numbered above `after` checks somewhere in `buf`
/// from `from` on: then the bytes at `from` were durable once.
fn valid_entry_after(buf: &[u8], from: usize, after: Lsn) -> bool {
    let mut at = from;
    while at + ENTRY_HEADER_BYTES <= buf.len() {
        let lsn = u64::from_le_bytes(buf[at + 8..at + 16].try_into().expect("8 bytes"));
        // Only a plausible number is worth a checksum.
        if lsn > after && lsn < after.saturating_add(1 << 32) && decode_entry(buf, at, lsn).is_some() {
            return true;
        }
        at += 1;
    }
    false
}

/// Where the entries of segment bytes `buf` end: the offset the next
/// write would go to (for tests and the simulator, which tear it).
pub fn entries_end(buf: &[u8]) -> usize {
    let Some((mut next, _)) = decode_header(buf) else { return 0 };
    let mut at = HEADER_BYTES;
    while let Some((_, after)) = decode_entry(buf, at, next) {
        next += 1;
        at = after;
    }
    at
}

fn read_all<D: Dir>(dir: &D, name: &str) -> io::Result<Vec<u8>> {
    let len = dir.len(name)? as usize;
    let mut buf = vec![0; len];
    let n = dir.read_at(name, 0, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

impl<D: Dir> Wal<D> {
    /// Opens the log in `dir`, reads back every entry, cuts a torn or
    /// damaged tail (reported in [`Replay::cut`]), and starts a new segment
    /// for what comes next.
    pub fn open(dir: Arc<D>, opts: WalOptions) -> io::Result<(Wal<D>, Replay)> {
        let mut entries = Vec::new();
        let (wal, mut replay) = Self::open_with(dir, opts, |lsn, payload| {
            entries.push((lsn, payload.to_vec()));
            Ok(())
        })?;
        replay.entries = entries;
        Ok((wal, replay))
    }

    /// [`Wal::open`], handing each valid entry to `on_entry` as it is read
    /// instead of collecting them (so a large log is never held twice);
    /// [`Replay::entries`] stays empty.
    pub fn open_with(
        dir: Arc<D>,
        opts: WalOptions,
        mut on_entry: impl FnMut(Lsn, &[u8]) -> io::Result<()>,
    ) -> io::Result<(Wal<D>, Replay)> {
        let mut names: Vec<(Lsn, String)> =
            dir.list()?.into_iter().filter_map(|n| parse_segment_name(&n).map(|l| (l, n))).collect();
        names.sort();
        let mut replay = Replay::default();
        let mut segments = Vec::new();
        let mut next: Lsn = names.first().map_or(1, |(l, _)| *l);
        let mut stop = false;
        for (i, (first, name)) in names.iter().enumerate() {
            if stop {
                dir.remove(name)?;
                continue;
            }
            let buf = read_all(&*dir, name)?;
            let last = i + 1 == names.len();
            let header = decode_header(&buf);
            let cut = |offset: u64, kind: CutKind| Cut {
                segment: name.clone(),
                offset,
                kind,
                later_segments: names.len() - i - 1,
            };
            let Some((hfirst, capacity)) = header.filter(|(f, _)| *f == *first && *f == next) else {
                // A header never written completely belongs to a segment
                // created just before a crash; anything else is damage.
                let torn = last && buf.iter().all(|b| *b == 0);
                replay.cut = Some(cut(0, if torn { CutKind::TornTail } else { CutKind::Corrupt }));
                dir.remove(name)?;
                stop = true;
                continue;
            };
            let mut at = HEADER_BYTES;
            while let Some((payload, after)) = decode_entry(&buf, at, next) {
                if payload != TRAILER {
                    on_entry(next, payload)?;
                    replay.read += 1;
                }
                next += 1;
                at = after;
            }
            let rest = &buf[at.min(buf.len())..];
            if !rest.iter().all(|b| *b == 0) {
                let kind = if last && !valid_entry_after(&buf, at + 1, next.saturating_sub(1)) {
                    CutKind::TornTail
                } else {
                    CutKind::Corrupt
                };
                replay.cut = Some(cut(at as u64, kind));
                // Zero what follows, so that the next recovery does not
                // find the same damage in a segment that is no longer last.
                dir.truncate(name, at as u64, capacity.max(buf.len() as u64))?;
                stop = true;
            }
            segments.push(Segment { name: name.clone(), first: hfirst, capacity });
        }
        // A last segment without entries is started afresh under its name.
        if segments.last().is_some_and(|s| s.first == next) {
            segments.pop();
        }
        let mut wal = Wal { dir, opts, segments, tail: 0, next };
        wal.start_segment(opts.segment_bytes)?;
        Ok((wal, replay))
    }

    fn start_segment(&mut self, capacity: u64) -> io::Result<()> {
        let name = segment_name(self.next);
        self.dir.create(&name, capacity)?;
        self.dir.write_at(&name, 0, &encode_header(self.next, capacity))?;
        self.dir.sync(&name)?;
        self.segments.push(Segment { name, first: self.next, capacity });
        self.tail = HEADER_BYTES as u64;
        Ok(())
    }

    /// The number the next entry gets.
    pub fn next_lsn(&self) -> Lsn {
        self.next
    }

    /// Whether `bytes` more (encoded entries) fit the current segment.
    pub fn fits(&self, bytes: usize) -> bool {
        let cap = self.segments.last().map_or(0, |s| s.capacity);
        self.tail + bytes as u64 <= cap
    }

    /// Closes the current segment and starts another with room for at
    /// least `bytes`.
    pub fn rotate(&mut self, bytes: usize) -> io::Result<()> {
        let capacity = self.opts.segment_bytes.max((bytes + HEADER_BYTES) as u64);
        self.start_segment(capacity)
    }

    /// Bytes a group of `payloads` takes in a segment, trailer included.
    pub fn group_bytes(payloads: &[Vec<u8>]) -> usize {
        payloads.iter().map(|p| p.len() + ENTRY_HEADER_BYTES).sum::<usize>() + ENTRY_HEADER_BYTES + TRAILER.len()
    }

    /// Writes `payloads` as consecutive entries, and the group's trailer,
    /// with one write and one sync; returns the number of the first entry.
    /// The caller checks [`Wal::fits`] first when it wants a rotation to
    /// carry something of its own.
    pub fn append(&mut self, payloads: &[Vec<u8>]) -> io::Result<Lsn> {
        if payloads.is_empty() {
            return Ok(self.next);
        }
        let mut buf = Vec::with_capacity(Self::group_bytes(payloads));
        for (i, p) in payloads.iter().enumerate() {
            if p.is_empty() || p.len() > MAX_ENTRY_BYTES || p.as_slice() == TRAILER {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "an entry must be 1 byte to 1 GiB, and not the trailer",
                ));
            }
            encode_entry(&mut buf, self.next + i as u64, p);
        }
        encode_entry(&mut buf, self.next + payloads.len() as u64, TRAILER);
        if !self.fits(buf.len()) {
            self.rotate(buf.len())?;
        }
        let name = &self.segments.last().expect("a segment is always open").name;
        self.dir.write_at(name, self.tail, &buf)?;
        self.dir.sync(name)?;
        self.tail += buf.len() as u64;
        let first = self.next;
        self.next += payloads.len() as u64 + 1;
        Ok(first)
    }

    /// Deletes every segment all of whose entries are numbered below
    /// `keep_from`; never the current one. Returns how many went.
    pub fn trim(&mut self, keep_from: Lsn) -> io::Result<usize> {
        let mut gone = 0;
        while self.segments.len() > 1 && self.segments[1].first <= keep_from {
            let s = self.segments.remove(0);
            self.dir.remove(&s.name)?;
            gone += 1;
        }
        Ok(gone)
    }

    /// Segment files present.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}
