//! Known protocol bugs that tests switch on to prove the simulator's
//! checkers catch them. Compiled only with the `planted-bugs` feature.

/// Which bugs to plant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    /// Quorums of 2f (BFT) or a majority minus one (CFT).
    pub weak_quorum: bool,
    /// Backups accept NEW-VIEW without recomputing its decisions from the proof.
    pub skip_new_view_check: bool,
    /// Entering a NEW-VIEW writes the view first and each re-proposal as a
    /// record of its own after it, and the primary sends its NEW-VIEW
    /// before writing anything (the review's first agreement hole).
    pub torn_new_view: bool,
    /// A replica restarted without its votes votes at once, as if it had
    /// never voted (the review's second agreement hole).
    pub amnesiac_votes: bool,
    /// Q sets keep four digests per sequence number, evicting the oldest,
    /// and replicas accept any fresh digest (the review's liveness hole).
    pub evicting_q: bool,
    /// The request timeout never doubles (the review's fixed timer).
    pub fixed_request_timeout: bool,
    /// Backups accept any request inside a PRE-PREPARE: the primary is
    /// trusted to have authenticated it (the unsigned mode's hole).
    pub trust_proposed_requests: bool,
    /// The primary proposes requests without checking their signatures,
    /// and backups blame it for any request it does not order (the split
    /// a faulty client can cause without the primary's check).
    pub unchecked_proposals: bool,
    /// The execution side executes every batch a core delivers, including
    /// those an epoch's core delivered past that epoch's end, which the
    /// next epoch orders again (reconfiguration's void rule, reverted).
    pub execute_void_batches: bool,
}

/// The planted eviction: keeps `cap` digests at a slot's Q set, dropping
/// the oldest claims (never `keep`).
pub(crate) fn evict_q(
    preprepared: &mut std::collections::BTreeMap<crate::Digest, crate::ViewNo>,
    keep: crate::Digest,
    cap: usize,
) {
    while preprepared.len() > cap {
        let (&old, _) = preprepared
            .iter()
            .filter(|(d, _)| **d != keep)
            .min_by_key(|(d, v)| (**v, **d))
            .expect("more than one entry");
        preprepared.remove(&old);
    }
}
