//! Byzantine replica modes for real processes, to measure what a faulty
//! replica costs a cluster and how its defences answer. Only builds with
//! the `byzantine` feature, which releases for users leave out.
//!
//! A misbehaving replica runs the honest core; [`Misbehaving`] wraps its
//! way out ([`Egress`]) and rewrites, delays or drops what it sends, or
//! adds junk. Two modes also change what the core is given: `tiny-batches`
//! shrinks its batches, and `starve:CLIENT` never hands it that client's
//! requests.

use crate::egress::{Egress, PeerAddress};
use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver, Sender};
use palisade_core::message::{PrePrepare, Vote};
use palisade_core::{ClientId, Digest, PeerMessage, ReplicaId, SeqNo, ViewNo};
use palisade_wire::envelope::{self, Answer, ReplicaMessage};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// A way for a replica process to misbehave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehaviour {
    /// As primary, holds each PRE-PREPARE back for 90% of the configured
    /// request timeout (Aardvark's slow primary).
    SlowPrimary,
    /// As primary, proposes one request per batch (and, as a backup,
    /// accepts no larger batch, so it votes for nothing). From the start:
    /// a trigger does not delay it.
    TinyBatches,
    /// Never orders, times or forwards this client's requests.
    Starve(ClientId),
    /// Starves the first client whose request reaches it once it
    /// misbehaves (for a harness that cannot know client ids in advance).
    StarveFirst,
    /// Sends nothing to anyone.
    Mute,
    /// As primary, gives its odd-numbered backups a different batch for
    /// each sequence number (half of them when the primary is even).
    Equivocate,
    /// Answers clients with results nobody computed.
    WrongReplies,
    /// Never answers a client in full: only with the result's digest.
    WithholdFull,
    /// Floods its peers with authenticated junk votes.
    Flood,
}

impl Misbehaviour {
    /// Every mode's name, as `--byzantine` takes it.
    pub const NAMES: &'static [&'static str] = &[
        "slow-primary",
        "tiny-batches",
        "starve:CLIENT",
        "starve:first",
        "mute",
        "equivocate",
        "wrong-replies",
        "withhold-full",
        "flood",
    ];

    /// The mode called `name` (`starve:7` starves client 7).
    pub fn parse(name: &str) -> Result<Misbehaviour, String> {
        Ok(match name {
            "slow-primary" => Misbehaviour::SlowPrimary,
            "tiny-batches" => Misbehaviour::TinyBatches,
            "mute" => Misbehaviour::Mute,
            "equivocate" => Misbehaviour::Equivocate,
            "wrong-replies" => Misbehaviour::WrongReplies,
            "withhold-full" => Misbehaviour::WithholdFull,
            "flood" => Misbehaviour::Flood,
            "starve:first" => Misbehaviour::StarveFirst,
            other => match other.strip_prefix("starve:").map(str::parse::<u64>) {
                Some(Ok(c)) => Misbehaviour::Starve(ClientId(c)),
                _ => {
                    return Err(format!("unknown Byzantine mode {other:?}; one of: {}", Misbehaviour::NAMES.join(", ")))
                }
            },
        })
    }

    /// Adjusts the core's parameters for the modes that need it.
    pub fn tune(self, protocol: &mut palisade_core::Config) {
        if self == Misbehaviour::TinyBatches {
            protocol.batch_max_requests = 1;
            protocol.pipeline_min_batch = 1;
        }
    }

    /// Whether this replica's core should see `client`'s requests
    /// (`StarveFirst` decides with its first request: see the consensus
    /// stage).
    pub fn admits(self, client: ClientId) -> bool {
        self != Misbehaviour::Starve(client)
    }
}

/// A held-back PRE-PREPARE: when to send it, to whom.
type Held = (Instant, ReplicaId, Vec<Bytes>);

/// The misbehaving way out: wraps the honest one.
pub struct Misbehaving {
    inner: Arc<dyn Egress>,
    mode: Misbehaviour,
    /// Honest until then: misbehaviour starts once this is set.
    active: Arc<AtomicBool>,
    cluster: u64,
    /// Held PRE-PREPAREs, sent in order by a thread (a constant delay keeps
    /// them in deadline order).
    hold: Option<(Sender<Held>, Duration)>,
    /// The view and sequence number of its newest vote, for plausible junk.
    latest: Arc<(AtomicU64, AtomicU64)>,
    epoch: Arc<AtomicU64>,
    peers: Arc<Mutex<Vec<ReplicaId>>>,
}

impl Misbehaving {
    /// Wraps `inner` for `mode`; `request_timeout_ms` is the cluster's
    /// configured one. With `trigger`, it behaves until that file exists
    /// (a harness creates it to start the attack mid-run).
    pub fn new(
        inner: Arc<dyn Egress>,
        mode: Misbehaviour,
        cluster: u64,
        request_timeout_ms: u64,
        trigger: Option<std::path::PathBuf>,
    ) -> Arc<Misbehaving> {
        let active = Arc::new(AtomicBool::new(trigger.is_none()));
        if let Some(path) = trigger {
            let flag = active.clone();
            let alive = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("byzantine-trigger".into())
                .spawn(move || {
                    while !path.exists() {
                        if alive.strong_count() == 0 {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    tracing::warn!(mode = ?mode, "misbehaving from now on");
                    flag.store(true, Ordering::Relaxed);
                })
                .expect("a thread");
        }
        let hold = (mode == Misbehaviour::SlowPrimary).then(|| {
            let (tx, rx) = bounded::<Held>(4_096);
            let weak = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("byzantine-hold".into())
                .spawn(move || release_held(rx, weak))
                .expect("a thread");
            (tx, Duration::from_millis(request_timeout_ms * 9 / 10))
        });
        let me = Arc::new(Misbehaving {
            inner,
            mode,
            active: active.clone(),
            cluster,
            hold,
            latest: Arc::new((AtomicU64::new(0), AtomicU64::new(1))),
            epoch: Arc::new(AtomicU64::new(0)),
            peers: Arc::new(Mutex::new(Vec::new())),
        });
        if mode == Misbehaviour::Flood {
            let (weak, latest, epoch, peers) =
                (Arc::downgrade(&me.inner), me.latest.clone(), me.epoch.clone(), me.peers.clone());
            std::thread::Builder::new()
                .name("byzantine-flood".into())
                .spawn(move || flood(weak, active, latest, epoch, peers))
                .expect("a thread");
        }
        me
    }

    /// Whether the misbehaviour has started.
    pub fn active(&self) -> Arc<AtomicBool> {
        self.active.clone()
    }

    fn decode_peer(&self, body: &[u8]) -> Option<(u64, PeerMessage)> {
        envelope::decode_peer(self.cluster, body).ok()
    }

    /// A PRE-PREPARE as the odd-numbered backups of an equivocating primary
    /// see it: the same requests a millisecond later, so another digest.
    fn equivocated(&self, body: Bytes) -> Bytes {
        match self.decode_peer(&body) {
            Some((epoch, PeerMessage::PrePrepare(pp))) if !pp.batch.is_null() => {
                let mut batch = (*pp.batch).clone();
                batch.timestamp_ms += 1;
                let other = PrePrepare { batch: Arc::new(batch), ..pp };
                envelope::encode_peer(self.cluster, epoch, &PeerMessage::PrePrepare(other))
            }
            _ => body,
        }
    }

    fn remember_vote(&self, body: &[u8]) {
        if let Some((_, PeerMessage::Prepare(v) | PeerMessage::Commit(v))) = self.decode_peer(body) {
            self.latest.0.store(v.view.0, Ordering::Relaxed);
            self.latest.1.store(v.seq.0, Ordering::Relaxed);
        }
    }

    fn forge(&self, body: Bytes) -> Bytes {
        let Ok(mut msg) = envelope::decode::<ReplicaMessage>(self.cluster, &body) else { return body };
        let lie = Bytes::from_static(b"forged by a Byzantine replica");
        let forge_answer = |a: &mut Answer| match a {
            Answer::Full(b) | Answer::TentativeFull(b) => *b = lie.clone(),
            Answer::Digest(d) | Answer::TentativeDigest(d) => *d = Digest::of(&lie),
            Answer::TooLarge { .. } => {}
        };
        match &mut msg {
            ReplicaMessage::Reply(r) => r.result = lie.clone(),
            ReplicaMessage::ReplyDigest { digest, .. } => *digest = Digest::of(&lie),
            ReplicaMessage::Replies { answers, .. } => answers.iter_mut().for_each(|(_, a)| forge_answer(a)),
            _ => return body,
        }
        envelope::encode(self.cluster, &msg)
    }

    fn withhold(&self, body: Bytes) -> Bytes {
        let Ok(msg) = envelope::decode::<ReplicaMessage>(self.cluster, &body) else { return body };
        let msg = match msg {
            ReplicaMessage::Reply(r) => ReplicaMessage::ReplyDigest {
                view: r.view,
                replica: r.replica,
                client: r.client,
                request: r.request,
                digest: Digest::of(&r.result),
            },
            ReplicaMessage::Replies { view, replica, client, mut answers } => {
                for (_, a) in answers.iter_mut() {
                    match a {
                        Answer::Full(b) => *a = Answer::Digest(Digest::of(b)),
                        Answer::TentativeFull(b) => *a = Answer::TentativeDigest(Digest::of(b)),
                        _ => {}
                    }
                }
                ReplicaMessage::Replies { view, replica, client, answers }
            }
            _ => return body,
        };
        envelope::encode(self.cluster, &msg)
    }
}

/// Sends each held PRE-PREPARE at its time.
fn release_held(rx: Receiver<Held>, egress: Weak<dyn Egress>) {
    while let Ok((at, to, bodies)) = rx.recv() {
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let Some(e) = egress.upgrade() else { return };
        e.to_peer(to, bodies);
    }
}

/// Every millisecond, 64 junk votes to each peer: well-formed,
/// authenticated by the connection, in its latest view and near its
/// latest sequence numbers, for batches that do not exist.
fn flood(
    egress: Weak<dyn Egress>,
    active: Arc<AtomicBool>,
    latest: Arc<(AtomicU64, AtomicU64)>,
    epoch: Arc<AtomicU64>,
    peers: Arc<Mutex<Vec<ReplicaId>>>,
) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    loop {
        std::thread::sleep(Duration::from_millis(1));
        let Some(e) = egress.upgrade() else { return };
        if !active.load(Ordering::Relaxed) {
            continue;
        }
        let (view, seq) = (latest.0.load(Ordering::Relaxed), latest.1.load(Ordering::Relaxed));
        let epoch = epoch.load(Ordering::Relaxed);
        for to in peers.lock().clone() {
            let bodies = (0..64)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let mut d = [0u8; 32];
                    d[..8].copy_from_slice(&x.to_le_bytes());
                    let vote = Vote { view: ViewNo(view), seq: SeqNo(seq + x % 64), digest: Digest(d) };
                    let msg = if i % 2 == 0 { PeerMessage::Prepare(vote) } else { PeerMessage::Commit(vote) };
                    e.peer_body(epoch, &msg)
                })
                .collect();
            e.to_peer(to, bodies);
        }
    }
}

impl Egress for Misbehaving {
    fn me(&self) -> ReplicaId {
        self.inner.me()
    }

    fn max_frame_bytes(&self) -> usize {
        self.inner.max_frame_bytes()
    }

    fn peer_body(&self, epoch: u64, msg: &PeerMessage) -> Bytes {
        self.epoch.store(epoch, Ordering::Relaxed);
        self.inner.peer_body(epoch, msg)
    }

    fn client_body(&self, msg: &ReplicaMessage) -> Bytes {
        self.inner.client_body(msg)
    }

    fn to_peer(&self, to: ReplicaId, bodies: Vec<Bytes>) -> bool {
        if !self.active.load(Ordering::Relaxed) {
            return self.inner.to_peer(to, bodies);
        }
        match self.mode {
            Misbehaviour::Mute => true,
            Misbehaviour::SlowPrimary => {
                let (tx, delay) = self.hold.as_ref().expect("a slow primary holds");
                let (held, now): (Vec<Bytes>, Vec<Bytes>) = bodies
                    .into_iter()
                    .partition(|b| matches!(self.decode_peer(b), Some((_, PeerMessage::PrePrepare(_)))));
                if !held.is_empty() {
                    let _ = tx.try_send((Instant::now() + *delay, to, held));
                }
                now.is_empty() || self.inner.to_peer(to, now)
            }
            Misbehaviour::Equivocate if to.0 % 2 == 1 => {
                let bodies = bodies.into_iter().map(|b| self.equivocated(b)).collect();
                self.inner.to_peer(to, bodies)
            }
            Misbehaviour::Flood => {
                bodies.iter().for_each(|b| self.remember_vote(b));
                self.inner.to_peer(to, bodies)
            }
            _ => self.inner.to_peer(to, bodies),
        }
    }

    fn to_client(&self, client: ClientId, bodies: Vec<Bytes>) -> bool {
        if !self.active.load(Ordering::Relaxed) {
            return self.inner.to_client(client, bodies);
        }
        match self.mode {
            Misbehaviour::Mute => true,
            Misbehaviour::WrongReplies => {
                self.inner.to_client(client, bodies.into_iter().map(|b| self.forge(b)).collect())
            }
            Misbehaviour::WithholdFull => {
                self.inner.to_client(client, bodies.into_iter().map(|b| self.withhold(b)).collect())
            }
            _ => self.inner.to_client(client, bodies),
        }
    }

    fn to_all_clients(&self, body: Bytes) -> usize {
        match self.mode {
            Misbehaviour::Mute if self.active.load(Ordering::Relaxed) => 0,
            _ => self.inner.to_all_clients(body),
        }
    }

    fn close_client(&self, client: ClientId) {
        self.inner.close_client(client);
    }

    fn set_peers(&self, peers: Vec<PeerAddress>) {
        *self.peers.lock() = peers.iter().map(|p| p.id).filter(|id| *id != self.inner.me()).collect();
        self.inner.set_peers(peers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_parses_by_its_name_and_a_wrong_name_lists_them() {
        for name in Misbehaviour::NAMES {
            let name = name.replace("CLIENT", "7");
            assert!(Misbehaviour::parse(&name).is_ok(), "{name}");
        }
        assert_eq!(Misbehaviour::parse("starve:7"), Ok(Misbehaviour::Starve(ClientId(7))));
        assert!(!Misbehaviour::Starve(ClientId(7)).admits(ClientId(7)));
        assert!(Misbehaviour::Starve(ClientId(7)).admits(ClientId(8)));
        let err = Misbehaviour::parse("starve:x").unwrap_err();
        assert!(err.contains("slow-primary"), "{err}");
    }
}
