//! Strategies that rewrite what a Byzantine replica sends its peers.

use super::{random_digest, ByzCtx, Outgoing, Strategy};
use bytes::Bytes;
use palisade_core::crypto::{self, Domain};
use palisade_core::message::{
    null_digest, Batch, CheckpointBody, CheckpointCert, NewViewBody, PrePrepare, PrePreparedEntry, PreparedEntry,
    Request, Signed, StateAnswer, StateItem, StateQuery, ViewChangeBody,
};
use palisade_core::reconfig::{Handover, Member};
use palisade_core::{ClientId, Digest, PeerMessage, ReplicaId, RequestId, SeqNo, ViewNo};
use std::collections::VecDeque;
use std::sync::Arc;

pub(super) struct Equivocate;

impl Strategy for Equivocate {
    fn name(&self) -> &'static str {
        "equivocate"
    }
    fn outgoing(&mut self, ctx: &mut ByzCtx<'_>, to: ReplicaId, msg: PeerMessage) -> Vec<Outgoing> {
        let odd = ctx.membership.index_of(to).unwrap_or(0) % 2 == 1;
        match msg {
            PeerMessage::PrePrepare(pp) if odd => {
                let mut b: Batch = (*pp.batch).clone();
                if b.requests.len() > 1 {
                    b.requests.reverse();
                } else {
                    b.timestamp_ms += 1;
                }
                vec![Outgoing::now(to, PeerMessage::PrePrepare(PrePrepare { batch: Arc::new(b), ..pp }))]
            }
            other => vec![Outgoing::now(to, other)],
        }
    }
}

pub(super) struct Silent;

impl Strategy for Silent {
    fn name(&self) -> &'static str {
        "silent"
    }
    fn outgoing(&mut self, _: &mut ByzCtx<'_>, _: ReplicaId, _: PeerMessage) -> Vec<Outgoing> {
        Vec::new()
    }
    fn reply(&mut self, _: &mut ByzCtx<'_>, _: palisade_host::ClientMail) -> Option<palisade_host::ClientMail> {
        None
    }
}

pub(super) struct SlowPrimary;

impl Strategy for SlowPrimary {
    fn name(&self) -> &'static str {
        "slow-primary"
    }
    fn outgoing(&mut self, ctx: &mut ByzCtx<'_>, to: ReplicaId, msg: PeerMessage) -> Vec<Outgoing> {
        let delay_ms = match msg {
            PeerMessage::PrePrepare(_) => ctx.request_timeout_ms * 8 / 10,
            _ => 0,
        };
        vec![Outgoing { to, msg, delay_ms }]
    }
}

pub(super) struct WrongDigest;

impl Strategy for WrongDigest {
    fn name(&self) -> &'static str {
        "wrong-digest"
    }
    fn outgoing(&mut self, ctx: &mut ByzCtx<'_>, to: ReplicaId, msg: PeerMessage) -> Vec<Outgoing> {
        let msg = match msg {
            PeerMessage::Prepare(mut v) => {
                v.digest = random_digest(ctx.rng);
                PeerMessage::Prepare(v)
            }
            PeerMessage::Commit(mut v) => {
                v.digest = random_digest(ctx.rng);
                PeerMessage::Commit(v)
            }
            PeerMessage::Decided { seq, .. } => PeerMessage::Decided { seq, digest: random_digest(ctx.rng) },
            PeerMessage::BatchReply { seq, batch } => {
                let mut b = (*batch).clone();
                b.timestamp_ms ^= 1;
                PeerMessage::BatchReply { seq, batch: Arc::new(b) }
            }
            other => other,
        };
        vec![Outgoing::now(to, msg)]
    }
}

#[derive(Default)]
pub(super) struct Replay {
    history: VecDeque<PeerMessage>,
}

impl Strategy for Replay {
    fn name(&self) -> &'static str {
        "replay"
    }
    fn outgoing(&mut self, ctx: &mut ByzCtx<'_>, to: ReplicaId, msg: PeerMessage) -> Vec<Outgoing> {
        let mut out = vec![Outgoing::now(to, msg.clone())];
        if !matches!(msg, PeerMessage::Status(_)) {
            self.history.push_back(msg);
            if self.history.len() > 128 {
                self.history.pop_front();
            }
        }
        if !self.history.is_empty() && ctx.rng.chance(0.5) {
            let old = self.history[ctx.rng.below(self.history.len() as u64) as usize].clone();
            let shift = ctx.rng.range(1, 4);
            let moved = match old {
                PeerMessage::PrePrepare(pp) if ctx.rng.chance(0.5) => {
                    PeerMessage::PrePrepare(PrePrepare { seq: SeqNo(pp.seq.0 + shift), ..pp })
                }
                PeerMessage::Prepare(mut v) if ctx.rng.chance(0.5) => {
                    v.seq = SeqNo(v.seq.0 + shift);
                    PeerMessage::Prepare(v)
                }
                PeerMessage::Commit(mut v) if ctx.rng.chance(0.5) => {
                    if ctx.rng.chance(0.5) {
                        v.seq = SeqNo(v.seq.0.saturating_sub(shift));
                    } else {
                        v.view = ViewNo(v.view.0 + shift);
                    }
                    PeerMessage::Commit(v)
                }
                other => other,
            };
            out.push(Outgoing { to, msg: moved, delay_ms: ctx.rng.below(200) });
        }
        out
    }
}

pub(super) struct LyingViewChange;

impl Strategy for LyingViewChange {
    fn name(&self) -> &'static str {
        "lying-view-change"
    }
    fn outgoing(&mut self, ctx: &mut ByzCtx<'_>, to: ReplicaId, msg: PeerMessage) -> Vec<Outgoing> {
        let PeerMessage::ViewChange(vc) = msg else {
            return vec![Outgoing::now(to, msg)];
        };
        let mut body: ViewChangeBody = vc.body.clone();
        let low = body.checkpoint.seq.0;
        let claim_view = ViewNo(body.new_view.0.saturating_sub(1));
        body.prepared.clear();
        body.preprepared.clear();
        let count = ctx.rng.range(1, 6).min(ctx.log_window);
        for s in low + 1..=low + count {
            let digest = if ctx.rng.chance(0.3) { null_digest() } else { random_digest(ctx.rng) };
            body.prepared.push(PreparedEntry { seq: SeqNo(s), view: claim_view, digest });
            body.preprepared.push(PrePreparedEntry { seq: SeqNo(s), digest, view: claim_view });
        }
        let mut out = vec![Outgoing::now(
            to,
            PeerMessage::ViewChange(crypto::sign(ctx.crypto, Domain::ViewChange, body.clone())),
        )];
        if ctx.rng.chance(0.3) {
            // Ask for a far-future view: alone, this must not move anyone.
            let mut far = body;
            far.new_view = ViewNo(far.new_view.0 + ctx.rng.range(2, 50));
            out.push(Outgoing::now(to, PeerMessage::ViewChange(crypto::sign(ctx.crypto, Domain::ViewChange, far))));
        }
        out
    }
}

pub(super) struct NewViewTamper;

impl Strategy for NewViewTamper {
    fn name(&self) -> &'static str {
        "new-view-tamper"
    }
    fn outgoing(&mut self, ctx: &mut ByzCtx<'_>, to: ReplicaId, msg: PeerMessage) -> Vec<Outgoing> {
        let PeerMessage::NewView(nv) = msg else {
            return vec![Outgoing::now(to, msg)];
        };
        if nv.body.replica != ctx.me {
            return vec![Outgoing::now(to, PeerMessage::NewView(nv))];
        }
        let mut body: NewViewBody = nv.body.clone();
        match ctx.rng.below(4) {
            0 if !body.chosen.is_empty() => {
                // Omit a batch: replace a re-proposal with null (or null with garbage).
                let i = ctx.rng.below(body.chosen.len() as u64) as usize;
                let d = body.chosen[i].1;
                body.chosen[i].1 = if d == null_digest() { random_digest(ctx.rng) } else { null_digest() };
            }
            1 => {
                // Invent a batch above everything proven.
                let next =
                    body.chosen.last().map(|(s, _)| s.0).unwrap_or_else(|| {
                        body.view_changes.iter().map(|vc| vc.body.checkpoint.seq.0).max().unwrap_or(0)
                    }) + 1;
                body.chosen.push((SeqNo(next), random_digest(ctx.rng)));
            }
            2 => {
                // Tamper with another replica's view-change without its key.
                if let Some(vc) = body.view_changes.iter_mut().find(|vc| vc.body.replica != ctx.me) {
                    let low = vc.body.checkpoint.seq.0;
                    vc.body.prepared = vec![PreparedEntry {
                        seq: SeqNo(low + 1),
                        view: ViewNo(body.view.0.saturating_sub(1)),
                        digest: random_digest(ctx.rng),
                    }];
                }
            }
            _ => {
                // Drop proof until it is below a quorum.
                let keep = ctx.membership.quorum().saturating_sub(1);
                body.view_changes.truncate(keep);
            }
        }
        let signed: Signed<NewViewBody> = crypto::sign(ctx.crypto, Domain::NewView, body);
        vec![Outgoing::now(to, PeerMessage::NewView(Arc::new(signed)))]
    }
}

pub(super) struct BogusCheckpoint;

impl Strategy for BogusCheckpoint {
    fn name(&self) -> &'static str {
        "bogus-checkpoint"
    }
    fn outgoing(&mut self, ctx: &mut ByzCtx<'_>, to: ReplicaId, msg: PeerMessage) -> Vec<Outgoing> {
        match msg {
            PeerMessage::Checkpoint(c) if c.body.replica == ctx.me => {
                let body = CheckpointBody { state: random_digest(ctx.rng), ..c.body };
                vec![Outgoing::now(to, PeerMessage::Checkpoint(crypto::sign(ctx.crypto, Domain::Checkpoint, body)))]
            }
            other => vec![Outgoing::now(to, other)],
        }
    }
}

pub(super) struct PoisonedState;

impl Strategy for PoisonedState {
    fn name(&self) -> &'static str {
        "poisoned-state"
    }
    fn outgoing(&mut self, ctx: &mut ByzCtx<'_>, to: ReplicaId, msg: PeerMessage) -> Vec<Outgoing> {
        let msg = match msg {
            PeerMessage::StateData { seq, answer } => PeerMessage::StateData { seq, answer: poison(ctx, answer) },
            PeerMessage::BatchReply { seq, batch } => {
                let mut b = (*batch).clone();
                b.requests.pop();
                PeerMessage::BatchReply { seq, batch: Arc::new(b) }
            }
            other => other,
        };
        let mut out = vec![Outgoing::now(to, msg)];
        // Volunteer poisoned state now and then, unasked.
        if ctx.rng.chance(0.05) {
            let seq = SeqNo(ctx.rng.below(64));
            let answer = StateAnswer::Manifest { from: 0, total: 2, digests: vec![Digest([7; 32]); 2] };
            out.push(Outgoing::now(to, PeerMessage::StateData { seq, answer }));
        }
        out
    }
}

/// Corrupts an answer about the state: wrong digests, flipped or extended
/// record bytes, lies about lengths and counts, or nothing at all.
fn poison(ctx: &mut ByzCtx<'_>, answer: StateAnswer) -> StateAnswer {
    match answer {
        StateAnswer::Manifest { from, total, mut digests } => {
            match ctx.rng.below(3) {
                0 if !digests.is_empty() => digests[0].0[0] ^= 1,
                1 => return StateAnswer::Manifest { from, total: total + 1, digests },
                _ => digests.push(Digest([9; 32])),
            }
            StateAnswer::Manifest { from, total, digests }
        }
        StateAnswer::Parts(items) => {
            if ctx.rng.chance(0.2) {
                return StateAnswer::Parts(Vec::new());
            }
            let items = items
                .into_iter()
                .map(|item| match item {
                    StateItem::Bytes { part, record, offset, len, bytes } => {
                        let mut b = bytes.to_vec();
                        match (b.is_empty(), ctx.rng.below(3)) {
                            (false, 0) => {
                                let i = ctx.rng.below(b.len() as u64) as usize;
                                b[i] ^= 0x5a;
                            }
                            (_, 1) => return StateItem::Bytes { part, record, offset, len: len + (1 << 40), bytes },
                            _ => b.extend_from_slice(&ctx.rng.next_u64().to_le_bytes()),
                        }
                        StateItem::Bytes { part, record, offset, len, bytes: Bytes::from(b) }
                    }
                    StateItem::Digests { part, from, total, mut digests } => {
                        if let Some(d) = digests.first_mut() {
                            d.0[1] ^= 1;
                        }
                        StateItem::Digests { part, from, total, digests }
                    }
                })
                .collect();
            StateAnswer::Parts(items)
        }
        StateAnswer::Unavailable => StateAnswer::Unavailable,
    }
}

pub(super) struct ForgedRequests;

impl Strategy for ForgedRequests {
    fn name(&self) -> &'static str {
        "forged-requests"
    }
    fn outgoing(&mut self, ctx: &mut ByzCtx<'_>, to: ReplicaId, msg: PeerMessage) -> Vec<Outgoing> {
        match msg {
            PeerMessage::PrePrepare(pp) => {
                // The same forged batch to everyone: only the signature check saves the backups.
                let mut b: Batch = (*pp.batch).clone();
                let seq = pp.seq.0;
                b.requests.push(Request {
                    client: ClientId(1_000_000 + seq % 3),
                    id: RequestId(seq),
                    read_only: false,
                    operation: Bytes::from_static(&[0, 0, 1, 0, 0, 0, 0, 0, 0, 0]),
                    auth: Bytes::from_static(b"forged"),
                });
                let _ = &ctx.rng;
                vec![Outgoing::now(to, PeerMessage::PrePrepare(PrePrepare { batch: Arc::new(b), ..pp }))]
            }
            other => vec![Outgoing::now(to, other)],
        }
    }
}

/// As primary, tampers with a real client request in each batch it
/// proposes: alters its operation, or replays it under another client's id,
/// keeping the client's authenticator. The same batch goes to everyone, so
/// only the authenticator saves the backups.
pub(super) struct TamperedRequests;

impl Strategy for TamperedRequests {
    fn name(&self) -> &'static str {
        "tampered-requests"
    }
    fn outgoing(&mut self, _ctx: &mut ByzCtx<'_>, to: ReplicaId, msg: PeerMessage) -> Vec<Outgoing> {
        let PeerMessage::PrePrepare(pp) = msg else {
            return vec![Outgoing::now(to, msg)];
        };
        let mut b: Batch = (*pp.batch).clone();
        let seq = pp.seq.0;
        if let Some(r) = b.requests.first_mut() {
            if seq % 2 == 0 {
                let mut op = r.operation.to_vec();
                match op.last_mut() {
                    Some(x) => *x ^= 1,
                    None => op.push(1),
                }
                r.operation = Bytes::from(op);
            } else {
                r.client = ClientId(r.client.0 ^ 1);
            }
        }
        vec![Outgoing::now(to, PeerMessage::PrePrepare(PrePrepare { batch: Arc::new(b), ..pp }))]
    }
}

/// Omits its own P entries and promotes digests it really saw pre-prepared
/// (so a correct replica holds them) to P entries of the latest view: the
/// most believable lie, which the decision rule's vouchers must still see
/// through.
#[derive(Default)]
pub(super) struct PlausibleViewChange;

impl Strategy for PlausibleViewChange {
    fn name(&self) -> &'static str {
        "plausible-view-change"
    }
    fn outgoing(&mut self, ctx: &mut ByzCtx<'_>, to: ReplicaId, msg: PeerMessage) -> Vec<Outgoing> {
        let PeerMessage::ViewChange(vc) = msg else {
            return vec![Outgoing::now(to, msg)];
        };
        if vc.body.replica != ctx.me {
            return vec![Outgoing::now(to, PeerMessage::ViewChange(vc))];
        }
        let mut body: ViewChangeBody = vc.body.clone();
        let claim_view = ViewNo(body.new_view.0.saturating_sub(1));
        let own: std::collections::BTreeMap<SeqNo, Digest> = body.prepared.iter().map(|e| (e.seq, e.digest)).collect();
        body.prepared.clear();
        let mut promoted: std::collections::BTreeMap<SeqNo, Digest> = Default::default();
        for e in &body.preprepared {
            if own.get(&e.seq) != Some(&e.digest) && ctx.rng.chance(0.7) {
                promoted.entry(e.seq).or_insert(e.digest);
            }
        }
        for (&seq, &digest) in &promoted {
            body.prepared.push(PreparedEntry { seq, view: claim_view, digest });
            for q in body.preprepared.iter_mut().filter(|q| q.seq == seq && q.digest == digest) {
                q.view = claim_view;
            }
        }
        vec![Outgoing::now(to, PeerMessage::ViewChange(crypto::sign(ctx.crypto, Domain::ViewChange, body)))]
    }
}

/// As a new primary, sends backups NEW-VIEWs built from different quorums
/// of the VIEW-CHANGEs it received: each valid on its own, so only the
/// backups' recomputation and vouchers keep them consistent.
#[derive(Default)]
pub(super) struct TwoNewViews {
    seen: std::collections::BTreeMap<(ViewNo, ReplicaId), Signed<ViewChangeBody>>,
}

impl Strategy for TwoNewViews {
    fn name(&self) -> &'static str {
        "two-new-views"
    }
    fn observe(&mut self, _ctx: &mut ByzCtx<'_>, _from: ReplicaId, msg: &PeerMessage) {
        if let PeerMessage::ViewChange(vc) = msg {
            self.seen.insert((vc.body.new_view, vc.body.replica), vc.clone());
            if self.seen.len() > 256 {
                self.seen.pop_first();
            }
        }
    }
    fn outgoing(&mut self, ctx: &mut ByzCtx<'_>, to: ReplicaId, msg: PeerMessage) -> Vec<Outgoing> {
        let PeerMessage::NewView(nv) = msg else {
            return vec![Outgoing::now(to, msg)];
        };
        let odd = ctx.membership.index_of(to).unwrap_or(0) % 2 == 1;
        if nv.body.replica != ctx.me || !odd {
            return vec![Outgoing::now(to, PeerMessage::NewView(nv))];
        }
        let view = nv.body.view;
        let mut pool: Vec<Signed<ViewChangeBody>> = nv.body.view_changes.clone();
        for ((v, r), vc) in &self.seen {
            if *v == view && !pool.iter().any(|p| p.body.replica == *r) {
                pool.push(vc.clone());
            }
        }
        let q = ctx.membership.quorum();
        if pool.len() > q {
            // Another quorum: leave out a different VIEW-CHANGE.
            let skip = ctx.rng.below(pool.len() as u64) as usize;
            pool.remove(skip);
        }
        let bodies: Vec<&ViewChangeBody> = pool.iter().map(|vc| &vc.body).collect();
        let vouchers = ctx.membership.voucher_quorum();
        let Some(plan) = palisade_core::view_change::decide(&bodies, q, vouchers) else {
            return vec![Outgoing::now(to, PeerMessage::NewView(nv))];
        };
        let body = NewViewBody { view, replica: ctx.me, view_changes: pool, chosen: plan.chosen };
        let other = crypto::sign(ctx.crypto, Domain::NewView, body);
        vec![Outgoing::now(to, PeerMessage::NewView(Arc::new(other)))]
    }
}

/// As primary, leaves one backup (a different one each time) without the
/// PRE-PREPARE.
pub(super) struct PartialPrePrepare;

impl Strategy for PartialPrePrepare {
    fn name(&self) -> &'static str {
        "partial-pre-prepare"
    }
    fn outgoing(&mut self, ctx: &mut ByzCtx<'_>, to: ReplicaId, msg: PeerMessage) -> Vec<Outgoing> {
        if let PeerMessage::PrePrepare(pp) = &msg {
            let n = ctx.membership.n() as u64;
            let left_out = ctx.membership.members()[((pp.seq.0 + pp.view.0) % n) as usize];
            if to == left_out {
                return Vec::new();
            }
        }
        vec![Outgoing::now(to, msg)]
    }
}

/// Gives each batch it proposes to a single backup, claims in its
/// VIEW-CHANGEs to have prepared every one, and never answers a batch
/// request: the cluster must fetch from the one correct holder.
#[derive(Default)]
pub(super) struct WithholdBatches {
    proposed: std::collections::BTreeMap<SeqNo, (ViewNo, Digest)>,
}

impl Strategy for WithholdBatches {
    fn name(&self) -> &'static str {
        "withhold-batches"
    }
    fn outgoing(&mut self, ctx: &mut ByzCtx<'_>, to: ReplicaId, msg: PeerMessage) -> Vec<Outgoing> {
        match msg {
            PeerMessage::BatchReply { .. } => Vec::new(),
            PeerMessage::PrePrepare(pp) => {
                self.proposed.insert(pp.seq, (pp.view, pp.batch.digest()));
                if self.proposed.len() > 256 {
                    self.proposed.pop_first();
                }
                let n = ctx.membership.n() as u64;
                let holder = ctx.membership.members()[((pp.seq.0 + 1) % n) as usize];
                let holder =
                    if holder == ctx.me { ctx.membership.members()[((pp.seq.0 + 2) % n) as usize] } else { holder };
                if to == holder {
                    vec![Outgoing::now(to, PeerMessage::PrePrepare(pp))]
                } else {
                    Vec::new()
                }
            }
            PeerMessage::ViewChange(vc) if vc.body.replica == ctx.me => {
                let mut body: ViewChangeBody = vc.body.clone();
                let low = body.checkpoint.seq;
                let high = SeqNo(low.0 + ctx.log_window);
                for (&seq, &(view, digest)) in self.proposed.range(low.next()..=high) {
                    if view >= body.new_view || body.prepared.iter().any(|e| e.seq == seq) {
                        continue;
                    }
                    body.prepared.push(PreparedEntry { seq, view, digest });
                    if !body.preprepared.iter().any(|e| e.seq == seq && e.digest == digest) {
                        body.preprepared.push(PrePreparedEntry { seq, digest, view });
                    }
                }
                body.prepared.sort();
                body.preprepared.sort();
                body.preprepared.dedup_by(|a, b| a.seq == b.seq && a.digest == b.digest);
                vec![Outgoing::now(to, PeerMessage::ViewChange(crypto::sign(ctx.crypto, Domain::ViewChange, body)))]
            }
            other => vec![Outgoing::now(to, other)],
        }
    }
}

/// Says in every STATUS that it is far behind, in an old view, and
/// repeats questions whose answers are large: every batch it knows of,
/// every checkpoint, and how far everyone got.
#[derive(Default)]
pub(super) struct StatusFlood {
    known: VecDeque<(SeqNo, Digest)>,
    ticks: u64,
}

impl Strategy for StatusFlood {
    fn name(&self) -> &'static str {
        "status-flood"
    }
    fn observe(&mut self, _ctx: &mut ByzCtx<'_>, _from: ReplicaId, msg: &PeerMessage) {
        if let PeerMessage::PrePrepare(pp) = msg {
            self.known.push_back((pp.seq, pp.batch.digest()));
            if self.known.len() > 64 {
                self.known.pop_front();
            }
        }
    }
    fn outgoing(&mut self, _ctx: &mut ByzCtx<'_>, to: ReplicaId, msg: PeerMessage) -> Vec<Outgoing> {
        match msg {
            PeerMessage::Status(st) => {
                let lie = palisade_core::message::Status {
                    view: ViewNo(0),
                    normal: false,
                    delivered: SeqNo(0),
                    stable: SeqNo(0),
                };
                let _ = st;
                (0..10).map(|_| Outgoing::now(to, PeerMessage::Status(lie))).collect()
            }
            other => vec![Outgoing::now(to, other)],
        }
    }
    fn on_tick(&mut self, ctx: &mut ByzCtx<'_>) -> Vec<Outgoing> {
        self.ticks += 1;
        let mut out = Vec::new();
        if !self.ticks.is_multiple_of(10) {
            return out;
        }
        for &to in ctx.membership.members() {
            if to == ctx.me {
                continue;
            }
            for &(seq, digest) in &self.known {
                out.push(Outgoing::now(to, PeerMessage::BatchRequest { seq, digest }));
            }
            let seq = SeqNo(8 * ctx.rng.below(8));
            out.push(Outgoing::now(to, PeerMessage::StateFetch { seq, query: StateQuery::Manifest { from: 0 } }));
            let query = StateQuery::Parts { parts: (0..64).collect(), digests_from: 0, record: 0, offset: 0 };
            out.push(Outgoing::now(to, PeerMessage::StateFetch { seq, query }));
            out.push(Outgoing::now(to, PeerMessage::RejoinQuery { nonce: ctx.rng.next_u64() }));
        }
        out
    }
}

/// Lies about the chain of membership epochs: tampers with the links it
/// relays (a member's address changed, the newest link dropped, a forged
/// link appended), and sends forged links unasked to every replica that
/// asked anyone for the chain (joiners) and to the members.
#[derive(Default)]
pub(super) struct LyingChain {
    /// Replicas seen asking for links: joiners and laggards.
    askers: std::collections::BTreeSet<ReplicaId>,
    /// The newest genuine link it has seen.
    newest: Option<Handover>,
    ticks: u64,
}

impl LyingChain {
    fn remember(&mut self, links: &[Handover]) {
        if let Some(last) = links.iter().max_by_key(|l| l.config.epoch) {
            if self.newest.as_ref().is_none_or(|n| n.config.epoch < last.config.epoch) {
                self.newest = Some(last.clone());
            }
        }
    }

    /// A link for the epoch after `after`'s, which only this replica signed:
    /// a made-up member is added, so it would matter if it were believed.
    fn forged_after(ctx: &mut ByzCtx<'_>, after: &Handover) -> Handover {
        let mut config = after.config.clone();
        config.epoch += 1;
        config.members.push(Member { id: ReplicaId(200), address: "forged:1".into(), public_key: [7; 32] });
        let (seq, state) = (SeqNo(after.cert.seq.0 + 8), random_digest(ctx.rng));
        let body = CheckpointBody { seq, state, config: config.digest(), replica: ctx.me };
        let vote = crypto::sign(ctx.crypto, Domain::Checkpoint, body);
        Handover { config, cert: CheckpointCert { seq, state, proof: vec![vote] } }
    }
}

impl Strategy for LyingChain {
    fn name(&self) -> &'static str {
        "lying-chain"
    }
    fn observe(&mut self, _ctx: &mut ByzCtx<'_>, from: ReplicaId, msg: &PeerMessage) {
        match msg {
            PeerMessage::HandoverQuery { .. } => {
                self.askers.insert(from);
            }
            PeerMessage::Handovers(links) => self.remember(links),
            _ => {}
        }
    }
    fn outgoing(&mut self, ctx: &mut ByzCtx<'_>, to: ReplicaId, msg: PeerMessage) -> Vec<Outgoing> {
        let PeerMessage::Handovers(mut links) = msg else { return vec![Outgoing::now(to, msg)] };
        self.remember(&links);
        match ctx.rng.below(3) {
            0 => {
                if let Some(first) = links.first_mut().and_then(|l| l.config.members.first_mut()) {
                    first.address = "evil:1".into();
                }
            }
            1 => {
                links.pop();
            }
            _ => {
                if let Some(last) = links.last().cloned() {
                    links.push(Self::forged_after(ctx, &last));
                }
            }
        }
        vec![Outgoing::now(to, PeerMessage::Handovers(links))]
    }
    fn on_tick(&mut self, ctx: &mut ByzCtx<'_>) -> Vec<Outgoing> {
        self.ticks += 1;
        let Some(newest) = self.newest.clone().filter(|_| self.ticks.is_multiple_of(10)) else { return Vec::new() };
        let forged = Self::forged_after(ctx, &newest);
        let to: std::collections::BTreeSet<ReplicaId> =
            self.askers.iter().chain(ctx.membership.members()).copied().filter(|r| *r != ctx.me).collect();
        to.into_iter().map(|r| Outgoing::now(r, PeerMessage::Handovers(vec![forged.clone()]))).collect()
    }
}

/// Never hands its core one client's requests (the first client whose
/// request reaches it), from the client or forwarded: as primary it orders
/// everyone else at full speed, so every round stays short, and only a
/// timer on that client's requests, or the backups' watch on the batches,
/// can tell.
#[derive(Default)]
pub(super) struct Censor {
    victim: Option<ClientId>,
}

impl Strategy for Censor {
    fn name(&self) -> &'static str {
        "censor"
    }
    fn outgoing(&mut self, _ctx: &mut ByzCtx<'_>, to: ReplicaId, msg: PeerMessage) -> Vec<Outgoing> {
        vec![Outgoing::now(to, msg)]
    }
    fn admits(&mut self, request: &Request) -> bool {
        *self.victim.get_or_insert(request.client) != request.client
    }
}
