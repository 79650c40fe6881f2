//! Values one stage publishes for others, kept apart from the metrics so
//! that counters never double as a control channel.

use palisade_core::ViewNo;
use std::sync::atomic::{AtomicU64, Ordering};

/// The current view, set by the consensus stage after each wake-up and read
/// by the stages that answer clients without the core (cached replies
/// carry it, so clients learn who is primary).
#[derive(Debug, Default)]
pub struct CurrentView(AtomicU64);

impl CurrentView {
    /// The view as last published.
    pub fn get(&self) -> ViewNo {
        ViewNo(self.0.load(Ordering::Relaxed))
    }

    /// Publishes `view`.
    pub fn set(&self, view: ViewNo) {
        self.0.store(view.0, Ordering::Relaxed);
    }
}
