//! What must survive a crash, and how the records are kept compact.

use crate::message::{Batch, CheckpointCert, NewViewBody, Signed};
use crate::types::{Digest, SeqNo, ViewNo};
use std::sync::Arc;

/// What must survive a crash. Replaying a replica's records in order
/// through [`super::Replica::recover`] rebuilds everything safety depends on.
/// Records about sequence numbers at or below a [`Record::Stable`] may be
/// discarded once it is durable.
///
/// Each record is durable on its own, and any prefix of a step's records
/// is a state the replica may safely recover to: a step that changes
/// several things at once (entering a view together with its re-proposals)
/// writes them as one record.
///
/// Variants are only ever appended: a write-ahead log keeps them encoded.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Record {
    /// The replica started changing to `view` (and sent its VIEW-CHANGE).
    ViewChange {
        /// The view being changed to.
        view: ViewNo,
    },
    /// The replica entered the NEW-VIEW's view in normal operation, with
    /// every re-proposal it carries pre-prepared in that view: one record,
    /// so that no crash can leave the view entered without them.
    NewView(Arc<Signed<NewViewBody>>),
    /// Pre-prepared `digest` at `seq` in `view` (batch content, when known).
    PrePrepared {
        /// View.
        view: ViewNo,
        /// Sequence number.
        seq: SeqNo,
        /// Digest.
        digest: Digest,
        /// The batch, when known.
        batch: Option<Arc<Batch>>,
    },
    /// Prepared `digest` at `seq` in `view`.
    Prepared {
        /// View.
        view: ViewNo,
        /// Sequence number.
        seq: SeqNo,
        /// Digest.
        digest: Digest,
    },
    /// A new stable checkpoint.
    Stable(CheckpointCert),
    /// The replica restarted without its votes: it casts none until its
    /// stable checkpoint reaches `until`, past anything it may have voted on
    /// before (unknown until enough peers have answered).
    Rejoin {
        /// The rejoin mark, once known.
        until: Option<SeqNo>,
    },
}

/// The durable records a replica still needs, in order: what a write-ahead
/// log keeps. Appending a stable checkpoint drops every record it makes
/// obsolete, and only the newest view record is kept, so the log never
/// holds more than one log window of sequence numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordLog {
    records: Vec<Record>,
    stable: SeqNo,
}

impl RecordLog {
    /// Appends `record`, dropping what it supersedes. A NEW-VIEW that a
    /// later view supersedes leaves behind what it pre-prepared, as plain
    /// PrePrepared records: the Q set still needs them.
    pub fn append(&mut self, record: Record) {
        match &record {
            Record::Stable(cert) => {
                let stable = cert.seq;
                self.stable = self.stable.max(stable);
                self.records.retain(|r| match r {
                    Record::PrePrepared { seq, .. } | Record::Prepared { seq, .. } => *seq > stable,
                    Record::Stable(_) => false,
                    Record::ViewChange { .. } | Record::NewView(_) | Record::Rejoin { .. } => true,
                });
            }
            Record::ViewChange { .. } | Record::NewView(_) => {
                let stable = self.stable;
                let old = std::mem::take(&mut self.records);
                for r in old {
                    match r {
                        Record::ViewChange { .. } => {}
                        Record::NewView(nv) => {
                            let view = nv.body.view;
                            self.records.extend(
                                nv.body
                                    .chosen
                                    .iter()
                                    .filter(|(seq, _)| *seq > stable)
                                    .map(|&(seq, digest)| Record::PrePrepared { view, seq, digest, batch: None }),
                            );
                        }
                        other => self.records.push(other),
                    }
                }
            }
            Record::Rejoin { .. } => self.records.retain(|r| !matches!(r, Record::Rejoin { .. })),
            Record::PrePrepared { .. } | Record::Prepared { .. } => {}
        }
        self.records.push(record);
    }

    /// The records, in order, for [`super::Replica::recover`].
    pub fn records(&self) -> &[Record] {
        &self.records
    }
}

/// How a replica comes back after a crash.
#[derive(Clone, Debug, Default)]
pub struct Restart {
    /// Its durable records, in order (what a [`RecordLog`] kept).
    pub records: Vec<Record>,
    /// The records of its votes were lost (in-memory storage, a log that
    /// keeps only decisions, a wiped disk): it rejoins without voting until
    /// its stable checkpoint passes anything it may have voted on.
    pub votes_lost: bool,
    /// The newest snapshot its executor restored.
    pub executed: SeqNo,
    /// That snapshot's digest.
    pub executed_state: Digest,
    /// Fresh entropy from the host, so that this incarnation's questions
    /// are never answered by replies meant for an earlier one.
    pub nonce: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::null_digest;
    use crate::types::ReplicaId;
    use bytes::Bytes;

    fn pp(seq: u64) -> Record {
        Record::PrePrepared { view: ViewNo(0), seq: SeqNo(seq), digest: Digest([1; 32]), batch: None }
    }

    #[test]
    fn a_stable_checkpoint_drops_what_it_makes_obsolete_and_only_the_newest_view_stays() {
        let mut log = RecordLog::default();
        log.append(Record::ViewChange { view: ViewNo(0) });
        for s in 1..=6 {
            log.append(pp(s));
        }
        log.append(Record::Prepared { view: ViewNo(0), seq: SeqNo(3), digest: Digest([1; 32]) });
        log.append(Record::ViewChange { view: ViewNo(1) });
        let cert = CheckpointCert { seq: SeqNo(4), state: Digest([2; 32]), proof: vec![] };
        log.append(Record::Stable(cert.clone()));
        assert_eq!(log.records(), &[pp(5), pp(6), Record::ViewChange { view: ViewNo(1) }, Record::Stable(cert)]);
        let newer = CheckpointCert { seq: SeqNo(8), state: Digest([3; 32]), proof: vec![] };
        log.append(Record::Stable(newer.clone()));
        assert_eq!(log.records(), &[Record::ViewChange { view: ViewNo(1) }, Record::Stable(newer)]);
    }

    #[test]
    fn a_superseded_new_view_leaves_its_re_proposals_behind_as_pre_prepares() {
        let nv = |view: u64, chosen: Vec<(SeqNo, Digest)>| {
            Record::NewView(Arc::new(Signed {
                body: NewViewBody { view: ViewNo(view), replica: ReplicaId(1), view_changes: vec![], chosen },
                signature: crate::message::Signature(Bytes::new()),
            }))
        };
        let mut log = RecordLog::default();
        log.append(Record::Stable(CheckpointCert { seq: SeqNo(4), state: Digest([2; 32]), proof: vec![] }));
        let first = nv(1, vec![(SeqNo(5), Digest([1; 32])), (SeqNo(6), null_digest())]);
        log.append(first.clone());
        assert_eq!(log.records().last(), Some(&first));
        log.append(Record::ViewChange { view: ViewNo(2) });
        let pp_at =
            |seq: u64, digest: Digest| Record::PrePrepared { view: ViewNo(1), seq: SeqNo(seq), digest, batch: None };
        assert_eq!(
            &log.records()[1..],
            &[pp_at(5, Digest([1; 32])), pp_at(6, null_digest()), Record::ViewChange { view: ViewNo(2) }]
        );
    }
}
