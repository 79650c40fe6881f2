//! The replicated state across checkpoints: what a replica keeps of it
//! ([`PartStore`]) and how a lagging replica fetches it from several peers
//! ([`Fetcher`]). Parts and records are explained in
//! `palisade_core::state`.

mod fetch;
mod store;

pub use fetch::{FetchStep, Fetcher, MAX_PARTS, MAX_RECORDS};
pub use store::{Kept, PartStore};
