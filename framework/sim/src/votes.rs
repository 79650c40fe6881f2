//! The equivocation checker: a correct replica never says two different
//! things where the protocol lets it say one, across crashes and restarts
//! included. Per view and sequence number it sends at most one
//! PRE-PREPARE digest (a NEW-VIEW's choices count as its primary's
//! PRE-PREPAREs), one PREPARE digest and one COMMIT digest, and per view at
//! most one NEW-VIEW; views are counted per membership epoch, since each
//! epoch starts again at view 0. Agreement failures need several such slips to line
//! up; this checker sees the first one.

use palisade_core::message::canonical_bytes;
use palisade_core::{Digest, PeerMessage, ReplicaId, SeqNo, ViewNo};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Said {
    PrePrepare(ViewNo, SeqNo),
    Prepare(ViewNo, SeqNo),
    Commit(ViewNo, SeqNo),
    NewView(ViewNo),
}

/// Everything each correct replica has said that it must not contradict.
#[derive(Default)]
pub struct Votes {
    said: BTreeMap<(ReplicaId, u64, Said), Digest>,
    /// Every contradiction found, in words.
    pub violations: Vec<String>,
}

impl Votes {
    /// Replica `from` (correct) sends `msg` from its core of `epoch`.
    pub fn on_send(&mut self, from: ReplicaId, epoch: u64, msg: &PeerMessage) {
        let mut note = |what, digest| self.note((from, epoch, what), digest);
        match msg {
            PeerMessage::PrePrepare(pp) => note(Said::PrePrepare(pp.view, pp.seq), pp.batch.digest()),
            PeerMessage::Prepare(v) => note(Said::Prepare(v.view, v.seq), v.digest),
            PeerMessage::Commit(v) => note(Said::Commit(v.view, v.seq), v.digest),
            PeerMessage::NewView(nv) if nv.body.replica == from => {
                let view = nv.body.view;
                note(Said::NewView(view), Digest::of(&canonical_bytes(&nv.body)));
                for &(seq, d) in &nv.body.chosen {
                    note(Said::PrePrepare(view, seq), d);
                }
            }
            _ => {}
        }
    }

    fn note(&mut self, key: (ReplicaId, u64, Said), digest: Digest) {
        match self.said.get(&key) {
            None => {
                self.said.insert(key, digest);
            }
            Some(d) if *d != digest => {
                let (from, epoch, what) = key;
                self.violations.push(format!(
                    "equivocation: replica {from} said {what:?} in epoch {epoch} with {d} and with {digest}"
                ))
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_core::message::Vote;

    #[test]
    fn two_different_prepares_for_one_view_and_sequence_number_are_caught() {
        let mut v = Votes::default();
        let vote = |d: u8| PeerMessage::Prepare(Vote { view: ViewNo(1), seq: SeqNo(2), digest: Digest([d; 32]) });
        v.on_send(ReplicaId(0), 0, &vote(1));
        v.on_send(ReplicaId(0), 0, &vote(1));
        v.on_send(ReplicaId(1), 0, &vote(2));
        v.on_send(ReplicaId(0), 1, &vote(2));
        assert!(v.violations.is_empty(), "retransmissions, other replicas and other epochs are fine");
        v.on_send(ReplicaId(0), 0, &vote(2));
        assert_eq!(v.violations.len(), 1);
    }
}
