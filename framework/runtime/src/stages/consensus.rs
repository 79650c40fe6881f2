//! The consensus stage: the only owner of the protocol core, hosted by the
//! one driver every host shares ([`ConsensusHost`]).

use super::{notify, ReplyBatch};
use crate::egress::{send_to_peer, Egress, Outbox, PeerAddress};
use crate::metrics::{CoreSnapshot, RuntimeMetrics};
use crate::queue::{Ended, Outflow, Rx, Tx};
use crate::runner::Stage;
use crate::shared::{CurrentView, PublishedChain};
use crate::storage::{DurableMarks, StorageCmd};
use bytes::Bytes;
use palisade_core::reconfig::Handover;
use palisade_core::{ClientId, Crypto, Input, PeerMessage, Record, ReplicaId, Request, RequestId};
use palisade_host::{ClientMail, ConsensusIo, EpochHost, ExecCommand, Reconfigured};
use palisade_storage::Entry;
use palisade_wire::envelope::{MemberRole, RejectReason, ReplicaMessage};
use palisade_wire::ClusterConfig;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What delivery tells the consensus stage.
#[derive(Clone, Debug)]
pub enum Control {
    /// An input for the core: a checkpoint's digest, a fetched state.
    Input(Input),
    /// News of the membership from the executed state.
    Reconfigured(Reconfigured),
}

/// How the consensus stage follows the membership: who to connect to, and
/// where the chain of epochs is published and kept.
pub struct Membership {
    /// The cluster as `cluster.toml` has it: the template each epoch's
    /// members are put into.
    pub cluster: ClusterConfig,
    /// The chain, for connections that answer clients.
    pub chain: Arc<PublishedChain>,
    /// Where the chain is kept across restarts, when the replica keeps a
    /// data directory.
    pub keep_in: Option<PathBuf>,
    /// The epochs whose members the network stage was last told of.
    pub peer_epochs: Vec<u64>,
    /// Links of the chain already published.
    pub published: usize,
}

/// The consensus stage's line to the storage stage.
pub struct JournalLink {
    /// Entries and held-back frames out (never dropped: while any wait for
    /// room, the stage takes no peer message or request).
    pub tx: Outflow<StorageCmd>,
    /// How far storage has got.
    pub marks: Arc<DurableMarks>,
    /// `full` mode: protocol records are logged, and frames wait for them.
    pub votes: bool,
    /// Decided batches are logged (`log` and `full`).
    pub batches: bool,
    /// [`StorageCmd::Entries`] sent so far.
    pub submitted: u64,
    /// Entries of this wake-up not yet handed over.
    pub pending: Vec<Entry>,
}

impl JournalLink {
    /// Hands over the pending entries as one command.
    fn submit(&mut self) -> Result<(), Ended> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.submitted += 1;
        self.tx.push(StorageCmd::Entries(std::mem::take(&mut self.pending)))
    }

    /// Sends `frames` now, or after the entries queued before them are
    /// durable when any are still on their way.
    fn send(
        &mut self,
        frames: Vec<(ReplicaId, Vec<Bytes>)>,
        egress: &dyn Egress,
        metrics: &RuntimeMetrics,
    ) -> Result<(), Ended> {
        if self.votes {
            self.submit()?;
            if self.submitted > self.marks.groups_done.load(Ordering::Acquire) {
                return self.tx.push(StorageCmd::Release(frames));
            }
        }
        for (to, bodies) in frames {
            send_to_peer(egress, metrics, to, bodies);
        }
        Ok(())
    }
}

/// Feeds the core peer messages, requests, ticks and checkpoint digests,
/// and carries out what it decides.
pub struct Consensus<C: Crypto> {
    /// The cores of this replica's epochs, and their driver.
    pub host: EpochHost<C>,
    /// Connections and the chain, following the membership.
    pub membership: Membership,
    /// The journal, when the replica keeps one.
    pub journal: Option<JournalLink>,
    /// Peer messages in.
    pub rx_peer: Rx<crate::queue::PeerItem>,
    /// Requests in.
    pub rx_requests: Rx<Request>,
    /// From delivery: checkpoint digests, fetched states, membership news.
    pub rx_control: Rx<Control>,
    /// Ticks in: the monotonic and the wall clock.
    pub rx_tick: Rx<(u64, u64)>,
    /// Decisions out (never dropped: while any wait for room, the stage
    /// takes no peer message or request).
    pub tx_delivery: Outflow<ExecCommand>,
    /// Push-back out.
    pub tx_reply: Tx<ReplyBatch>,
    /// Where messages to peers go.
    pub egress: Arc<dyn Egress>,
    /// The view, for stages that answer clients without the core.
    pub view: Arc<CurrentView>,
    /// Counters.
    pub metrics: Arc<RuntimeMetrics>,
    /// Inputs per wake-up.
    pub drain_max: usize,
    /// Bodies for each peer gathered during one wake-up, sent together.
    pub outbox: Outbox<ReplicaId>,
    /// Whether the core has had its first tick.
    pub started: bool,
    /// Connections from peers, as the network stage sees them.
    pub links: Arc<crate::shared::PeerLinks>,
    /// Each client's requests between verification and the core (when
    /// clients sign).
    pub credits: Option<Arc<crate::shared::ClientCredits>>,
    /// What the core was last told of each peer's connection.
    pub links_told: std::collections::BTreeMap<palisade_core::ReplicaId, bool>,
    /// Tests only: the request a Byzantine primary adds to its batches.
    #[cfg(feature = "byzantine")]
    pub forged_request: Option<Request>,
    /// Benchmarks only: how this replica misbehaves, once the flag is set.
    #[cfg(feature = "byzantine")]
    pub misbehave: Option<(crate::byzantine::Misbehaviour, Arc<std::sync::atomic::AtomicBool>)>,
    /// With `starve:first`: the client it chose.
    #[cfg(feature = "byzantine")]
    pub starved: Option<ClientId>,
}

/// What the host's actions touch, borrowed from the stage for one step.
struct Wiring<'a> {
    journal: Option<&'a mut JournalLink>,
    outbox: &'a mut Outbox<ReplicaId>,
    egress: &'a dyn Egress,
    tx_delivery: &'a mut Outflow<ExecCommand>,
    tx_reply: &'a Tx<ReplyBatch>,
    metrics: &'a RuntimeMetrics,
    ended: bool,
    #[cfg(feature = "byzantine")]
    forged_request: Option<&'a Request>,
}

impl Wiring<'_> {
    fn queue(&mut self, to: ReplicaId, body: Bytes) {
        if let Some(full) = self.outbox.push(to, body) {
            match self.journal.as_deref_mut() {
                Some(j) => {
                    if j.send(vec![(to, full)], self.egress, self.metrics).is_err() {
                        self.ended = true;
                    }
                }
                None => send_to_peer(self.egress, self.metrics, to, full),
            }
        }
    }
}

impl ConsensusIo for Wiring<'_> {
    fn persist(&mut self, record: Record) {
        // Bodies queued after this leave only once it is durable (see
        // `JournalLink::send`). Without `full` durability the record is not
        // kept: a restart then rejoins without its votes.
        if let Some(j) = self.journal.as_deref_mut().filter(|j| j.votes) {
            j.pending.push(Entry::Record(record));
        }
    }

    fn send(&mut self, to: ReplicaId, epoch: u64, msg: &PeerMessage) {
        let body = self.egress.peer_body(epoch, msg);
        self.queue(to, body);
    }

    fn epoch_started(&mut self, link: &Handover) {
        // Before the new core's records, in every mode that keeps a
        // journal: a restart must know whose records follow, and which
        // epoch's core to bring back.
        if let Some(j) = self.journal.as_deref_mut() {
            j.pending.push(Entry::Epoch(link.clone()));
        }
    }

    fn broadcast(&mut self, to: &[ReplicaId], epoch: u64, msg: &PeerMessage) {
        #[cfg(feature = "byzantine")]
        let forged;
        #[cfg(feature = "byzantine")]
        let msg = match (self.forged_request, msg) {
            (Some(extra), PeerMessage::PrePrepare(pp)) => {
                let mut batch = (*pp.batch).clone();
                let mut r = extra.clone();
                r.id = palisade_core::RequestId(pp.seq.0);
                batch.requests.push(r);
                let batch = std::sync::Arc::new(batch);
                forged = PeerMessage::PrePrepare(palisade_core::message::PrePrepare { batch, ..pp.clone() });
                &forged
            }
            _ => msg,
        };
        let body = self.egress.peer_body(epoch, msg);
        for &r in to {
            self.queue(r, body.clone());
        }
    }

    fn execute(&mut self, mut cmd: ExecCommand) {
        if let Some(j) = self.journal.as_deref_mut() {
            match &mut cmd {
                ExecCommand::Deliver { epoch, seq, view, batch } | ExecCommand::Confirm { epoch, seq, view, batch }
                    if j.batches =>
                {
                    // Logged while delivery executes it (Durable-SMaRt's
                    // parallel logging).
                    j.pending.push(Entry::Decided { epoch: *epoch, seq: *seq, view: *view, batch: batch.clone() });
                }
                ExecCommand::Tentative { durable_group, .. } if j.votes => {
                    // Its answers wait for every record so far (the one
                    // saying it prepared among them).
                    *durable_group = j.submitted + u64::from(!j.pending.is_empty());
                }
                _ => {}
            }
        }
        if self.tx_delivery.push(cmd).is_err() {
            self.ended = true;
        }
    }

    fn refuse(&mut self, client: ClientId, request: RequestId, reason: RejectReason) {
        let counter = match reason {
            RejectReason::TooLarge | RejectReason::Invalid => &self.metrics.counters.requests_invalid,
            RejectReason::Busy | RejectReason::Stale => &self.metrics.counters.requests_busy,
        };
        RuntimeMetrics::add(counter, 1);
        notify(self.tx_reply, ClientMail::Refusal { client, request, reason }, self.metrics);
    }
}

/// What the consensus stage feeds its host.
enum Feed {
    Input(Input),
    Peer(ReplicaId, u64, PeerMessage),
    Reconfigured(Reconfigured),
}

impl<C: Crypto> Consensus<C> {
    fn step(&mut self, input: Input) -> Result<(), Ended> {
        self.feed(Feed::Input(input))
    }

    fn feed(&mut self, feed: Feed) -> Result<(), Ended> {
        let mut io = Wiring {
            journal: self.journal.as_mut(),
            outbox: &mut self.outbox,
            egress: &*self.egress,
            tx_delivery: &mut self.tx_delivery,
            tx_reply: &self.tx_reply,
            metrics: &self.metrics,
            ended: false,
            #[cfg(feature = "byzantine")]
            forged_request: self.forged_request.as_ref(),
        };
        match feed {
            Feed::Input(input) => self.host.step(input, &mut io),
            Feed::Peer(from, epoch, msg) => self.host.peer(from, epoch, msg, &mut io),
            Feed::Reconfigured(event) => self.host.reconfigured(event, &mut io),
        }
        if io.ended {
            Err(Ended)
        } else {
            Ok(())
        }
    }

    /// Whether this (Byzantine) replica keeps `client`'s requests from its core.
    #[cfg(feature = "byzantine")]
    fn starves(&mut self, client: ClientId) -> bool {
        use crate::byzantine::Misbehaviour;
        match &self.misbehave {
            Some((_, on)) if !on.load(Ordering::Relaxed) => false,
            Some((Misbehaviour::StarveFirst, _)) => *self.starved.get_or_insert(client) == client,
            Some((m, _)) => !m.admits(client),
            None => false,
        }
    }

    /// Sends what this wake-up produced: one mailbox message per peer,
    /// behind the entries it depends on.
    fn flush(&mut self) -> Result<(), Ended> {
        let batches: Vec<_> = self.outbox.drain().collect();
        match &mut self.journal {
            Some(j) => {
                j.submit()?;
                if !batches.is_empty() {
                    j.send(batches, &*self.egress, &self.metrics)?;
                }
            }
            None => {
                for (to, bodies) in batches {
                    send_to_peer(&*self.egress, &self.metrics, to, bodies);
                }
            }
        }
        Ok(())
    }

    /// Tells the network stage which replicas to keep connections with,
    /// publishes new links of the chain, keeps them on disk, and pushes
    /// them to every connected client.
    fn follow_membership(&mut self) {
        let ms = &mut self.membership;
        let configs = self.host.configurations();
        let epochs: Vec<u64> = configs.iter().map(|c| c.epoch).collect();
        if epochs != ms.peer_epochs {
            let me = self.host.core().id();
            let mut peers: Vec<PeerAddress> = Vec::new();
            // Newest first: a replica removed and added again under the same
            // id is reached at its new address, with its new key.
            for c in configs.iter().rev() {
                for m in &c.members {
                    let Ok(address) = palisade_wire::address::HostPort::parse(&m.address) else { continue };
                    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&m.public_key) else { continue };
                    if m.id != me && !peers.iter().any(|p| p.id == m.id) {
                        peers.push(PeerAddress { id: m.id, address, key });
                    }
                }
            }
            self.egress.set_peers(peers);
            ms.peer_epochs = epochs;
        }
        let chain = self.host.chain();
        if chain.len() > ms.published {
            ms.chain.set(chain);
            if let Some(dir) = &ms.keep_in {
                // Once per epoch, and small: kept so that a restarted
                // replica knows its epoch's members and certificate.
                if let Err(e) = palisade_wire::chain::save_links(dir, chain) {
                    eprintln!("palisade: cannot keep the chain of epochs in {}: {e}", dir.display());
                }
            }
            // At most one answer's worth: a client that needs older links asks.
            let from = ms.published.max(chain.len().saturating_sub(palisade_host::epochs::LINKS_PER_ANSWER));
            let new = chain[from..].to_vec();
            let n = new.len() as u64;
            let clients = self.egress.to_all_clients(self.egress.client_body(&ReplicaMessage::Chain(new)));
            RuntimeMetrics::add(&self.metrics.counters.chain_links_sent, clients as u64 * n);
            ms.published = chain.len();
        }
    }

    fn publish(&self) {
        let core = self.host.core();
        let m = core.metrics();
        self.view.set(core.view(), core.is_primary() && !self.host.standby() && self.host.removed().is_none());
        let config = self.host.config();
        let role = if self.host.standby() {
            MemberRole::Joining
        } else if self.host.removed().is_some() {
            MemberRole::Removed
        } else {
            MemberRole::Member
        };
        let next = CoreSnapshot {
            view: core.view().0,
            normal: core.is_normal(),
            primary: core.is_primary(),
            delivered: core.delivered().0,
            stable: core.stable_checkpoint().seq.0,
            view_changes: m.view_changes,
            rotations: m.rotations,
            skip_suspicions: m.skip_suspicions,
            late_forwards: m.late_forwards,
            request_timeout_ms: core.request_timeout_ms(),
            state_transfers: m.state_transfers,
            alarms: m.alarms,
            timers_restarted: m.timers_restarted,
            proposed_batches: m.proposed_batches,
            delivered_requests: m.delivered_requests,
            pending_requests: core.pending_requests(),
            dropped: m.dropped.iter().map(|(reason, n)| (reason.name(), *n)).collect(),
            rejoining: core.rejoining(),
            rejoin_mark: core.rejoin_mark().map(|s| s.0),
            epoch: config.epoch,
            members: config.members.iter().map(|m| m.id).collect(),
            f: config.f,
            primary_id: config.membership().primary(core.view()),
            role,
            removed_in: self.host.removed(),
            epoch_counters: self.host.counters(),
            last_view_change: m.last_view_change.map(|r| r.name()),
            last_late_request: m.last_late_request,
        };
        // Logged after the lock is released: a slow stderr must not hold
        // up the network thread's status answers.
        let changed = {
            let mut published = self.metrics.core.lock();
            let changed = crate::events::worth_logging(&published, &next).then(|| (published.clone(), next.clone()));
            *published = next;
            changed
        };
        if let Some((before, after)) = changed {
            crate::events::core_changed(core.id(), &before, &after);
        }
    }
}

impl<C: Crypto + Send> Stage for Consensus<C> {
    fn name(&self) -> &'static str {
        "consensus"
    }

    fn poll(&mut self) -> Result<bool, Ended> {
        let mut busy = false;
        if !self.started {
            // The core's clocks start at zero and move only with ticks: give
            // it the time before any request can be timed (or a batch stamped).
            self.started = true;
            let (now_ms, wall_ms) = super::clocks();
            self.step(Input::Tick { now_ms, wall_ms })?;
            busy = true;
        }
        let mut clear = self.tx_delivery.flush()?;
        if let Some(j) = &mut self.journal {
            clear &= j.tx.flush()?;
        }
        // Checkpoint completions and ticks never wait: they produce little
        // for delivery, and delivery may be waiting on them.
        while let Some(control) = self.rx_control.take() {
            match control {
                Control::Input(input) => self.step(input)?,
                Control::Reconfigured(event) => self.feed(Feed::Reconfigured(event))?,
            }
            busy = true;
        }
        if let Some((now_ms, wall_ms)) = std::iter::from_fn(|| self.rx_tick.take()).last() {
            self.step(Input::Tick { now_ms, wall_ms })?;
            busy = true;
        }
        for (peer, up) in self.links.changes().unwrap_or_default() {
            if self.links_told.insert(peer, up) != Some(up) {
                self.step(Input::PeerLink { peer, up })?;
                busy = true;
            }
        }
        // Peer messages first, then requests, while decisions flow.
        let mut budget = if clear { self.drain_max } else { 0 };
        while budget > 0 && self.tx_delivery.backlog() == 0 && self.journal.as_ref().is_none_or(|j| j.tx.backlog() == 0)
        {
            let next = if let Some((from, epoch, msg)) = self.rx_peer.take() {
                #[cfg(feature = "byzantine")]
                if let PeerMessage::Forward(r) = &msg {
                    if self.starves(r.client) {
                        budget -= 1;
                        continue;
                    }
                }
                Feed::Peer(from, epoch, msg)
            } else if let Some(r) = self.rx_requests.take() {
                if let Some(c) = &self.credits {
                    c.give_back(r.client);
                }
                #[cfg(feature = "byzantine")]
                if self.starves(r.client) {
                    budget -= 1;
                    continue;
                }
                Feed::Input(Input::Request(r))
            } else {
                break;
            };
            self.feed(next)?;
            busy = true;
            budget -= 1;
        }
        if busy {
            // The chain is kept before anything a new epoch's core says
            // leaves: a restart then knows every epoch it spoke in.
            self.follow_membership();
            self.flush()?;
            self.publish();
        }
        Ok(busy)
    }
}
