//! Fetching a certified checkpoint's state from several peers at once.
//!
//! First the manifest (every part's digest), from one peer, checked
//! against the certified state digest. Then only the parts whose digests
//! differ from the local state's, in ranges spread over the peers, a few
//! at a time: each part's record digests are checked against the part's
//! digest in the manifest, and each record against its digest as soon as
//! its last byte is in. A peer whose piece fails a check is counted and
//! passed over; the piece is asked of another. A question unanswered
//! between two nudges (the core's transfer timeouts) is asked of another
//! peer too. At most `window` ranges are in flight, and a range holds at
//! most one part's records, so memory stays bounded however large the
//! state.
//!
//! Pure: it says what to ask and what to install; the host does it.

use bytes::Bytes;
use palisade_core::message::{StateAnswer, StateItem, StateQuery};
use palisade_core::state::{part_digest, state_digest};
use palisade_core::{Digest, ReplicaId, SeqNo};
use std::collections::{BTreeSet, VecDeque};

/// Parts asked for in one range, at most: fewer when there are few, so
/// that every peer in the window gets some.
const RANGE_PARTS: usize = 64;
/// Most parts a state may have, and most records a part may have: bounds
/// what a lying peer can make a fetcher hold.
pub const MAX_PARTS: u32 = 1 << 24;
/// See [`MAX_PARTS`].
pub const MAX_RECORDS: u32 = 1 << 24;

/// What the host should do for the fetcher.
#[derive(Debug, PartialEq, Eq)]
pub enum FetchStep {
    /// Send `query` to `to`.
    Ask(ReplicaId, StateQuery),
    /// Replace part `part` with these records, each checked.
    Install(u32, Vec<Bytes>),
    /// `peer` sent something that failed a check.
    Bad(ReplicaId),
    /// Every part is in: the local state is the checkpoint's.
    Done,
    /// Every peer said it does not keep this checkpoint (any more).
    Stuck,
}

/// One range of parts being fetched from one peer.
#[derive(Debug)]
struct Range {
    /// Parts still to come; the first is the one in progress.
    parts: VecDeque<u32>,
    peer: ReplicaId,
    /// The nudge round of the last question.
    asked: u64,
    /// Record digests of the part in progress, so far.
    digests: Vec<Digest>,
    /// How many records it has, once a peer said.
    total: Option<u32>,
    /// Whether its digests are complete and checked.
    checked: bool,
    /// Its records so far, each checked.
    records: Vec<Bytes>,
    /// The record in progress.
    partial: Vec<u8>,
}

impl Range {
    fn new(parts: VecDeque<u32>, peer: ReplicaId, asked: u64) -> Range {
        Range {
            parts,
            peer,
            asked,
            digests: Vec::new(),
            total: None,
            checked: false,
            records: Vec::new(),
            partial: Vec::new(),
        }
    }

    fn reset_part(&mut self) {
        self.digests.clear();
        self.total = None;
        self.checked = false;
        self.records.clear();
        self.partial.clear();
    }

    fn query(&self) -> StateQuery {
        StateQuery::Parts {
            parts: self.parts.iter().copied().collect(),
            digests_from: self.digests.len() as u32,
            record: self.records.len() as u32,
            offset: self.partial.len() as u64,
        }
    }
}

#[derive(Debug)]
enum Phase {
    Manifest { peer: ReplicaId, asked: u64, digests: Vec<Digest>, total: Option<u32>, from: BTreeSet<ReplicaId> },
    Parts { manifest: Vec<Digest>, todo: VecDeque<VecDeque<u32>>, active: Vec<Range> },
    Done,
}

/// A fetch of the state at one checkpoint.
#[derive(Debug)]
pub struct Fetcher {
    seq: SeqNo,
    root: Digest,
    peers: Vec<ReplicaId>,
    /// How many of `peers`, from the first, are known to hold the state:
    /// the others are asked only once none of these can answer.
    holders: usize,
    turn: usize,
    /// Peers that sent something false, passed over while others remain.
    bad: BTreeSet<ReplicaId>,
    /// Peers that do not keep this checkpoint.
    lacking: BTreeSet<ReplicaId>,
    window: usize,
    max_record_bytes: u64,
    round: u64,
    phase: Phase,
}

impl Fetcher {
    /// Starts fetching the state at `seq`, whose digest is `root`, from
    /// `peers`, of which the first `holders` are known to hold it; `turn`
    /// spreads the first questions of different fetchers.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        seq: SeqNo,
        root: Digest,
        peers: Vec<ReplicaId>,
        holders: usize,
        turn: usize,
        window: usize,
        max_record_bytes: u64,
        out: &mut Vec<FetchStep>,
    ) -> Fetcher {
        let mut f = Fetcher {
            seq,
            root,
            holders: holders.min(peers.len()),
            peers,
            turn,
            bad: BTreeSet::new(),
            lacking: BTreeSet::new(),
            window: window.max(1),
            max_record_bytes,
            round: 0,
            phase: Phase::Done,
        };
        f.ask_manifest(out);
        f
    }

    /// The checkpoint being fetched.
    pub fn target(&self) -> (SeqNo, Digest) {
        (self.seq, self.root)
    }

    fn next_peer(&mut self) -> ReplicaId {
        if self.peers.iter().all(|p| self.bad.contains(p) || self.lacking.contains(p)) {
            // Everyone failed once: perhaps they lacked the checkpoint
            // only for a moment. Start over rather than stall.
            self.bad.clear();
            self.lacking.clear();
        }
        let (bad, lacking) = (&self.bad, &self.lacking);
        let usable = |p: &ReplicaId| !bad.contains(p) && !lacking.contains(p);
        let among = match self.peers[..self.holders].iter().any(usable) {
            true => self.holders,
            false => self.peers.len(),
        };
        let mut t = self.turn;
        let p = loop {
            let p = self.peers[t % among];
            t += 1;
            if usable(&p) {
                break p;
            }
        };
        self.turn = t;
        p
    }

    fn ask_manifest(&mut self, out: &mut Vec<FetchStep>) {
        let peer = self.next_peer();
        let from = BTreeSet::new();
        self.phase = Phase::Manifest { peer, asked: self.round, digests: Vec::new(), total: None, from };
        out.push(FetchStep::Ask(peer, StateQuery::Manifest { from: 0 }));
    }

    /// A transfer timeout passed: whatever was asked before the previous
    /// one and is still unanswered is asked of another peer as well (an
    /// answer is taken from whoever gives it first, so a slow network
    /// costs duplicates, never progress).
    ///
    /// A peer that left a question unanswered that long counts as lacking
    /// the checkpoint: when every peer lacks it or is silent (a faulty peer
    /// may never answer), the fetch is stuck and a newer target can take
    /// over.
    pub fn nudge(&mut self, out: &mut Vec<FetchStep>) {
        self.round += 1;
        let stale = self.round.saturating_sub(1);
        let silent: Vec<ReplicaId> = match &self.phase {
            Phase::Manifest { asked, peer, .. } if *asked < stale => vec![*peer],
            Phase::Parts { active, .. } => active.iter().filter(|r| r.asked < stale).map(|r| r.peer).collect(),
            _ => Vec::new(),
        };
        self.lacking.extend(silent);
        if !self.peers.is_empty() && self.peers.iter().all(|p| self.lacking.contains(p) || self.bad.contains(p)) {
            out.push(FetchStep::Stuck);
        }
        let manifest_stale = match &self.phase {
            Phase::Manifest { asked, digests, .. } if *asked < stale => Some(digests.len() as u32),
            _ => None,
        };
        if let Some(from) = manifest_stale {
            let peer = self.next_peer();
            let round = self.round;
            if let Phase::Manifest { peer: p, asked, .. } = &mut self.phase {
                *p = peer;
                *asked = round;
            }
            out.push(FetchStep::Ask(peer, StateQuery::Manifest { from }));
            return;
        }
        let stale_ranges: Vec<usize> = match &self.phase {
            Phase::Parts { active, .. } => (0..active.len()).filter(|i| active[*i].asked < stale).collect(),
            _ => Vec::new(),
        };
        for i in stale_ranges {
            self.reassign(i, out);
        }
    }

    /// A peer's answer. `local(i)` is part `i`'s digest in the local state.
    pub fn on_answer(
        &mut self,
        from: ReplicaId,
        answer: StateAnswer,
        local: impl Fn(u32) -> Digest,
        out: &mut Vec<FetchStep>,
    ) {
        match answer {
            StateAnswer::Unavailable => self.on_unavailable(from, out),
            StateAnswer::Manifest { from: first, total, digests } => {
                self.on_manifest(from, first, total, digests, local, out)
            }
            StateAnswer::Parts(items) => self.on_parts(from, items, out),
        }
    }

    fn on_unavailable(&mut self, from: ReplicaId, out: &mut Vec<FetchStep>) {
        self.lacking.insert(from);
        if self.peers.iter().all(|p| self.lacking.contains(p)) {
            out.push(FetchStep::Stuck);
        }
        match &self.phase {
            Phase::Manifest { peer, .. } if *peer == from => self.ask_manifest(out),
            Phase::Parts { active, .. } => {
                let mine: Vec<usize> = (0..active.len()).filter(|i| active[*i].peer == from).collect();
                for i in mine {
                    self.reassign(i, out);
                }
            }
            _ => {}
        }
    }

    fn on_manifest(
        &mut self,
        from: ReplicaId,
        first: u32,
        total: u32,
        more: Vec<Digest>,
        local: impl Fn(u32) -> Digest,
        out: &mut Vec<FetchStep>,
    ) {
        let round = self.round;
        let Phase::Manifest { peer, asked, digests, total: known, from: sources } = &mut self.phase else { return };
        if first as usize != digests.len() {
            // A late duplicate of a piece already in.
            return;
        }
        let fits = total <= MAX_PARTS
            && known.is_none_or(|t| t == total)
            && !more.is_empty() | (total == 0)
            && digests.len() + more.len() <= total as usize;
        if !fits {
            self.bad.insert(from);
            out.push(FetchStep::Bad(from));
            self.ask_manifest(out);
            return;
        }
        *known = Some(total);
        sources.insert(from);
        digests.extend(more);
        if digests.len() < total as usize {
            let q = StateQuery::Manifest { from: digests.len() as u32 };
            (*peer, *asked) = (from, round);
            out.push(FetchStep::Ask(from, q));
            return;
        }
        if state_digest(digests) != self.root {
            // One of the peers it came from lied.
            for p in std::mem::take(sources) {
                self.bad.insert(p);
                out.push(FetchStep::Bad(p));
            }
            self.ask_manifest(out);
            return;
        }
        let manifest = std::mem::take(digests);
        let needed: Vec<u32> = (0..total).filter(|i| manifest[*i as usize] != local(*i)).collect();
        let size = (needed.len() / (2 * self.window)).clamp(1, RANGE_PARTS);
        let todo: VecDeque<VecDeque<u32>> =
            needed.chunks(size).map(|c| c.iter().copied().collect::<VecDeque<u32>>()).collect();
        self.phase = Phase::Parts { manifest, todo, active: Vec::new() };
        self.fill_window(out);
    }

    fn fill_window(&mut self, out: &mut Vec<FetchStep>) {
        loop {
            let (room, more) = match &self.phase {
                Phase::Parts { todo, active, .. } => (active.len() < self.window, !todo.is_empty()),
                _ => return,
            };
            if !room || !more {
                break;
            }
            let peer = self.next_peer();
            let round = self.round;
            if let Phase::Parts { todo, active, .. } = &mut self.phase {
                let parts = todo.pop_front().expect("checked");
                let r = Range::new(parts, peer, round);
                out.push(FetchStep::Ask(peer, r.query()));
                active.push(r);
            }
        }
        if let Phase::Parts { todo, active, .. } = &self.phase {
            if todo.is_empty() && active.is_empty() {
                self.phase = Phase::Done;
                out.push(FetchStep::Done);
            }
        }
    }

    fn reassign(&mut self, i: usize, out: &mut Vec<FetchStep>) {
        let peer = self.next_peer();
        let round = self.round;
        if let Phase::Parts { active, .. } = &mut self.phase {
            let r = &mut active[i];
            r.peer = peer;
            r.asked = round;
            out.push(FetchStep::Ask(peer, r.query()));
        }
    }

    fn on_parts(&mut self, from: ReplicaId, items: Vec<StateItem>, out: &mut Vec<FetchStep>) {
        let Phase::Parts { manifest, active, .. } = &mut self.phase else { return };
        // The range this answers: the one whose next piece is the first
        // item, whoever was asked (a slow peer's answer to a question also
        // asked of another still counts; a late duplicate matches nothing).
        let at = |r: &Range| match items.first() {
            Some(StateItem::Digests { part, from, .. }) => {
                r.parts.front() == Some(part) && !r.checked && *from as usize == r.digests.len()
            }
            Some(StateItem::Bytes { part, record, offset, .. }) => {
                r.parts.front() == Some(part)
                    && r.checked
                    && *record as usize == r.records.len()
                    && *offset == r.partial.len() as u64
            }
            None => false,
        };
        let Some(i) = active.iter().position(at) else {
            if items.is_empty() && active.iter().any(|r| r.peer == from) {
                // An empty answer from a peer asked something: it is wrong.
                self.bad.insert(from);
                out.push(FetchStep::Bad(from));
                let mine: Vec<usize> = match &self.phase {
                    Phase::Parts { active, .. } => (0..active.len()).filter(|i| active[*i].peer == from).collect(),
                    _ => Vec::new(),
                };
                for i in mine {
                    self.reassign(i, out);
                }
            }
            return;
        };
        let range = &mut active[i];
        let mut ok = true;
        for item in items {
            if !apply(range, manifest, item, self.max_record_bytes, out) {
                ok = false;
                break;
            }
        }
        if !ok {
            self.bad.insert(from);
            out.push(FetchStep::Bad(from));
            self.reassign(i, out);
            return;
        }
        if range.parts.is_empty() {
            active.swap_remove(i);
            self.fill_window(out);
        } else {
            (range.peer, range.asked) = (from, self.round);
            out.push(FetchStep::Ask(from, range.query()));
        }
    }
}

/// Applies one item to the range's part in progress; false if it is not
/// what was asked for or fails a check (the part's unchecked progress is
/// then dropped).
fn apply(range: &mut Range, manifest: &[Digest], item: StateItem, max_record: u64, out: &mut Vec<FetchStep>) -> bool {
    let Some(&part) = range.parts.front() else { return false };
    let good = match item {
        StateItem::Digests { part: p, from, total, digests } => {
            let fits = p == part
                && !range.checked
                && from as usize == range.digests.len()
                && total <= MAX_RECORDS
                && range.total.is_none_or(|t| t == total)
                && range.digests.len() + digests.len() <= total as usize
                && (!digests.is_empty() || total == 0);
            if fits {
                range.total = Some(total);
                range.digests.extend(digests);
                if range.digests.len() == total as usize {
                    range.checked = part_digest(&range.digests) == manifest[part as usize];
                    if !range.checked {
                        range.reset_part();
                        return false;
                    }
                }
            }
            fits
        }
        StateItem::Bytes { part: p, record, offset, len, bytes } => {
            let fits = p == part
                && range.checked
                && record as usize == range.records.len()
                && (record as usize) < range.digests.len()
                && offset == range.partial.len() as u64
                && len <= max_record
                && offset + bytes.len() as u64 <= len;
            if fits {
                range.partial.extend_from_slice(&bytes);
                if range.partial.len() as u64 == len {
                    let whole = Bytes::from(std::mem::take(&mut range.partial));
                    if Digest::of(&whole) != range.digests[record as usize] {
                        return false;
                    }
                    range.records.push(whole);
                }
            }
            fits
        }
    };
    if good && range.checked && range.records.len() == range.digests.len() {
        let records = std::mem::take(&mut range.records);
        out.push(FetchStep::Install(part, records));
        range.parts.pop_front();
        range.reset_part();
    }
    good
}
