//! Byzantine strategies. A Byzantine replica runs the honest core, and its
//! strategy rewrites, drops, delays or adds to what it sends: to its peers
//! (`peers`) or to clients (`replies`). Strategies
//! hold only their own replica's key, so anything they sign is signed as
//! themselves; statements of others can only be replayed or tampered with,
//! which verification must catch.

mod peers;
mod replies;

use crate::crypto::SimCrypto;
use crate::rng::Rng;
use palisade_core::{Digest, Membership, PeerMessage, ReplicaId, Request};
use palisade_host::ClientMail;

/// What a strategy may use: its own key, randomness, and public facts.
pub struct ByzCtx<'a> {
    /// The Byzantine replica.
    pub me: ReplicaId,
    /// Its own signing handle (and nobody else's).
    pub crypto: &'a SimCrypto,
    /// Randomness from the run's seed.
    pub rng: &'a mut Rng,
    /// The cluster.
    pub membership: &'a Membership,
    /// The cluster's request timeout, for attacks timed just below it.
    pub request_timeout_ms: u64,
    /// The log window, for fabricating entries that pass shape checks.
    pub log_window: u64,
}

/// One message as actually sent.
pub struct Outgoing {
    /// Recipient.
    pub to: ReplicaId,
    /// Message.
    pub msg: PeerMessage,
    /// Extra delay the strategy adds.
    pub delay_ms: u64,
}

impl Outgoing {
    pub(crate) fn now(to: ReplicaId, msg: PeerMessage) -> Outgoing {
        Outgoing { to, msg, delay_ms: 0 }
    }
}

/// Which replica a strategy is most interesting on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The primary of view 0.
    InitialPrimary,
    /// The primary of view 1 (the first new primary after a view change).
    FirstNewPrimary,
    /// Anywhere.
    Any,
}

/// A way to misbehave.
pub trait Strategy {
    /// Name, as `--byzantine` takes it.
    fn name(&self) -> &'static str;
    /// Rewrites one outgoing peer message (broadcasts arrive one recipient at a time).
    fn outgoing(&mut self, ctx: &mut ByzCtx<'_>, to: ReplicaId, msg: PeerMessage) -> Vec<Outgoing>;
    /// Rewrites or drops an answer (or refusal) to a client.
    fn reply(&mut self, _ctx: &mut ByzCtx<'_>, mail: ClientMail) -> Option<ClientMail> {
        Some(mail)
    }
    /// Sees a message its replica received (before the replica does).
    fn observe(&mut self, _ctx: &mut ByzCtx<'_>, _from: ReplicaId, _msg: &PeerMessage) {}
    /// Whether its replica's core is handed `request`, from its client or
    /// forwarded by a peer.
    fn admits(&mut self, _request: &Request) -> bool {
        true
    }
    /// Extra messages to send on each of its replica's ticks.
    fn on_tick(&mut self, _ctx: &mut ByzCtx<'_>) -> Vec<Outgoing> {
        Vec::new()
    }
}

/// How many of [`STRATEGIES`], from the first, a random run draws from the
/// run's main random stream. Later strategies are drawn from a side stream
/// (see [`draw`]), so adding one leaves every earlier seed's run, and the
/// seeds of failures pinned in tests, exactly as they were.
pub const MAIN_STREAM_STRATEGIES: usize = 20;
const _: () = assert!(MAIN_STREAM_STRATEGIES <= STRATEGIES.len());

/// A strategy drawn uniformly from all of [`STRATEGIES`]: one draw from
/// `main` among the first [`MAIN_STREAM_STRATEGIES`] as ever, and one from
/// `side` that replaces it with a later strategy in the right proportion.
pub fn draw(main: &mut Rng, side: &mut Rng) -> &'static str {
    let i = main.below(MAIN_STREAM_STRATEGIES as u64) as usize;
    let j = side.below(STRATEGIES.len() as u64) as usize;
    STRATEGIES[if j >= MAIN_STREAM_STRATEGIES { j } else { i }].0
}

/// Every strategy: name, placement, and what it does.
pub const STRATEGIES: &[(&str, Placement, &str)] = &[
    (
        "equivocate",
        Placement::InitialPrimary,
        "as primary, sends different batches for the same sequence number to different backups",
    ),
    ("silent", Placement::InitialPrimary, "sends nothing at all, replies included"),
    ("slow-primary", Placement::InitialPrimary, "delays its pre-prepares to just below the request timeout"),
    ("wrong-digest", Placement::Any, "votes, decisions and batch replies carry wrong digests"),
    ("replay", Placement::Any, "replays its old messages, some moved to other views and sequence numbers"),
    ("lying-view-change", Placement::Any, "view-changes claim invented prepared batches and ask for far-future views"),
    (
        "new-view-tamper",
        Placement::FirstNewPrimary,
        "as new primary, omits, replaces or invents re-proposals and tampers with others' view-changes",
    ),
    ("bogus-checkpoint", Placement::Any, "signs checkpoints with wrong state digests"),
    ("poisoned-state", Placement::Any, "answers state and batch requests with corrupted contents"),
    ("forged-replies", Placement::Any, "sends clients wrong results (the same lie from every Byzantine replica), in full"),
    (
        "forged-requests",
        Placement::InitialPrimary,
        "as primary, adds requests with forged client signatures to its batches",
    ),
    (
        "tampered-requests",
        Placement::InitialPrimary,
        "as primary, alters a client's request in each batch, or replays it under another client's id, keeping its authenticator",
    ),
    (
        "plausible-view-change",
        Placement::Any,
        "view-changes omit its own prepared entries and claim, in the latest view, batches it really saw pre-prepared",
    ),
    (
        "two-new-views",
        Placement::FirstNewPrimary,
        "as new primary, sends different valid NEW-VIEWs (built from different quorums of VIEW-CHANGEs) to different backups",
    ),
    ("partial-pre-prepare", Placement::InitialPrimary, "as primary, sends each PRE-PREPARE to only some backups"),
    (
        "withhold-batches",
        Placement::InitialPrimary,
        "as primary, gives each batch to one backup only, claims it prepared it, and never answers batch requests",
    ),
    (
        "status-flood",
        Placement::Any,
        "lies in STATUS (old view, nothing delivered) and floods peers with batch, state and rejoin questions",
    ),
    ("wrong-digest-replies", Placement::Any, "answers clients with digests of results nobody computed"),
    (
        "withheld-replies",
        Placement::Any,
        "never sends a result in full, even when designated to or asked again: only its digest",
    ),
    ("misdirected-replies", Placement::Any, "answers with another request's id, or to another client"),
    (
        "lying-chain",
        Placement::Any,
        "tampers with the chain links it relays and sends joiners and members forged links of a newer epoch",
    ),
];

/// The strategy called `name`.
pub fn make(name: &str) -> Option<Box<dyn Strategy>> {
    Some(match name {
        "equivocate" => Box::new(peers::Equivocate),
        "silent" => Box::new(peers::Silent),
        "slow-primary" => Box::new(peers::SlowPrimary),
        "wrong-digest" => Box::new(peers::WrongDigest),
        "replay" => Box::new(peers::Replay::default()),
        "lying-view-change" => Box::new(peers::LyingViewChange),
        "new-view-tamper" => Box::new(peers::NewViewTamper),
        "bogus-checkpoint" => Box::new(peers::BogusCheckpoint),
        "poisoned-state" => Box::new(peers::PoisonedState),
        "forged-replies" => Box::new(replies::ForgedReplies),
        "wrong-digest-replies" => Box::new(replies::WrongDigestReplies),
        "withheld-replies" => Box::new(replies::WithheldReplies),
        "misdirected-replies" => Box::new(replies::MisdirectedReplies),
        "forged-requests" => Box::new(peers::ForgedRequests),
        "tampered-requests" => Box::new(peers::TamperedRequests),
        "plausible-view-change" => Box::new(peers::PlausibleViewChange),
        "two-new-views" => Box::new(peers::TwoNewViews::default()),
        "partial-pre-prepare" => Box::new(peers::PartialPrePrepare),
        "withhold-batches" => Box::new(peers::WithholdBatches::default()),
        "status-flood" => Box::new(peers::StatusFlood::default()),
        "lying-chain" => Box::new(peers::LyingChain::default()),
        "censor" => Box::new(peers::Censor::default()),
        _ => return None,
    })
}

/// Strategies run only when named (`--byzantine NAME`), never drawn:
/// adding to [`STRATEGIES`] changes which strategy a few seeds draw.
pub const NAMED_ONLY: &[(&str, Placement, &str)] = &[(
    "censor",
    Placement::InitialPrimary,
    "never orders, times or forwards one client's requests (the first whose request reaches it), and orders the rest",
)];

/// Where `name` prefers to be placed.
pub fn placement(name: &str) -> Placement {
    STRATEGIES.iter().chain(NAMED_ONLY).find(|(n, _, _)| *n == name).map(|(_, p, _)| *p).unwrap_or(Placement::Any)
}

pub(crate) fn random_digest(rng: &mut Rng) -> Digest {
    let mut d = [0u8; 32];
    for chunk in d.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    Digest(d)
}
