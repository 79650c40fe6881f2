//! Known protocol bugs that tests switch on to prove the simulator's
//! checkers catch them. Compiled only with the `planted-bugs` feature.

/// Which bugs to plant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    /// Quorums of 2f (BFT) or a majority minus one (CFT).
    pub weak_quorum: bool,
    /// Backups accept NEW-VIEW without recomputing its decisions from the proof.
    pub skip_new_view_check: bool,
}
