//! The CPU stages. Each is an actor: it owns its state, takes from bounded
//! queues without blocking, in batches, and never waits on a full output
//! queue (it takes less input instead, or holds output that must not be
//! dropped and takes nothing new). Which thread runs a stage is the
//! runner's business ([`crate::runner`]); where its output goes, the
//! egress's ([`crate::egress`]); so each can be tested alone.
//!
//! | stage | takes | gives |
//! |---|---|---|
//! | [`Verifier`], [`PrePrepareVerifier`] | requests, each client in turn within its quota ([`FairIntake`]); PRE-PREPAREs (when clients sign) | verified requests; checked PRE-PREPAREs; closes clients whose requests keep failing |
//! | [`RequestFilter`] | requests | new ones to consensus; cached replies and stale refusals to reply sending |
//! | [`Consensus`] | peer messages, requests, ticks, checkpoint digests, membership news | messages to peers; decisions to delivery; the peers to connect to |
//! | [`Delivery`] | decisions | replies; checkpoint digests back to consensus; snapshots to peers |
//! | [`Replier`] | replies | frames to clients |
//! | [`Ticker`] | (its clock) | ticks to consensus |

mod consensus;
mod delivery;
mod fair;
mod filter;
mod reply;
mod ticker;
mod verify;

pub use consensus::{Consensus, Control, JournalLink, Membership as ConsensusMembership};
pub use delivery::{Delivery, DeliveryDisk};
pub use fair::FairIntake;
pub use filter::RequestFilter;
pub use reply::{Linger, Replier};
pub use ticker::{clocks, wall_clock_ms, Ticker};
pub use verify::{PrePrepareVerifier, Verifier};

use crate::metrics::RuntimeMetrics;
use crate::queue::{Ended, Tx};
use crossbeam_channel::TrySendError;
use palisade_core::Request;
use palisade_host::ClientMail;
use palisade_wire::envelope::RejectReason;

/// Replies travel to the reply stage in batches: one per delivered batch
/// (or a single push-back notice), so that queue is bounded in batches.
pub type ReplyBatch = Vec<ClientMail>;

/// Sends a push-back notice or a cached reply; when the reply queue is full
/// it is dropped and counted (the client retransmits).
fn notify(tx: &Tx<ReplyBatch>, mail: ClientMail, metrics: &RuntimeMetrics) {
    if tx.try_send(vec![mail]).is_err() {
        RuntimeMetrics::add(&metrics.counters.replies_dropped, 1);
    }
}

/// Passes a request to the next stage; if it has no room after all (another
/// producer took it), the client is pushed back.
fn pass_on(tx: &Tx<Request>, r: Request, tx_reply: &Tx<ReplyBatch>, metrics: &RuntimeMetrics) -> Result<bool, Ended> {
    let (client, request) = (r.client, r.id);
    match tx.try_send(r) {
        Ok(()) => Ok(true),
        Err(TrySendError::Full(_)) => {
            RuntimeMetrics::add(&metrics.counters.requests_busy, 1);
            notify(tx_reply, ClientMail::Refusal { client, request, reason: RejectReason::Busy }, metrics);
            Ok(false)
        }
        Err(TrySendError::Disconnected(_)) => Err(Ended),
    }
}
