//! One core per membership epoch, the handover between them, and the chain
//! of handovers that lets a joiner or a laggard find its way
//! (docs/reconfiguration.md).
//!
//! Inside an epoch the protocol is PBFT with fixed members; across epochs
//! nothing is shared but the state at the handover checkpoint. So the host
//! keeps a core per epoch: the current one, and the one before it for as
//! long as laggards of that epoch may still need its answers (checkpoint
//! proofs, batches, state). Messages carry the epoch of the core that sent
//! them and go to the core of that epoch; inputs about the state go to the
//! core whose sequence numbers they concern.
//!
//! The next epoch's core starts once both are true: the execution side says
//! the state has entered that epoch (it executed, or installed, the
//! handover checkpoint), and the current core holds that checkpoint as
//! stable, certified by a quorum of the old members. That certificate and
//! the new configuration are a link of the *chain*, which the host keeps. A
//! replica that is not a member of the new configuration starts no core:
//! its last one keeps answering laggards until the runtime lets it go.
//!
//! A message from an epoch older than any core kept here is answered with
//! the links after it; a replica that is not a member of any epoch it knows
//! (a joiner) asks for them. The receiver checks each link against the
//! configuration before it, from its own, and when the chain leads to an
//! epoch it is a member of, starts that epoch's core at its handover
//! checkpoint, fetching the state there first.

use crate::consensus::{ConsensusHost, ConsensusIo};
use crate::execution::Reconfigured;
use palisade_core::checkpoint::Genesis;
use palisade_core::reconfig::{Configuration, Handover};
use palisade_core::replica::Restart;
use palisade_core::{Config, Crypto, Digest, Input, PeerMessage, Replica, ReplicaId, SeqNo};
use std::collections::BTreeMap;

/// Makes the signing and verification of one epoch's core: the keys are
/// that configuration's, and the epoch is signed into every statement.
pub type CryptoFor<C> = Box<dyn FnMut(&Configuration) -> C + Send>;

/// Links sent in one answer; a replica further behind asks again.
pub const LINKS_PER_ANSWER: usize = 16;

/// Peers whose last answer time is kept; more and the table starts over.
const ANSWERED_MAX: usize = 1024;

/// Whether `to` may be sent another message of a kind whose last sending
/// times `last` keeps, at most one per `period`; notes it if so. The table
/// starts over when it holds too many peers.
fn due(last: &mut BTreeMap<ReplicaId, u64>, to: ReplicaId, now: u64, period: u64) -> bool {
    if last.get(&to).is_some_and(|&t| now < t + period) {
        return false;
    }
    if last.len() >= ANSWERED_MAX {
        last.clear();
    }
    last.insert(to, now);
    true
}

/// Which epoch's core a replica restarts from its disk, and how.
#[derive(Debug)]
pub struct RestartPlan {
    /// The configuration of that core's epoch.
    pub config: Configuration,
    /// The checkpoint it started at.
    pub genesis: Genesis,
    /// Its records (none when they are not its own: it then rejoins
    /// without its votes).
    pub restart: Restart,
    /// The next epoch, when the recovered state has entered it but that
    /// epoch's core never started: the host hands over to it at the
    /// checkpoint it starts at.
    pub entering: Option<(Configuration, SeqNo)>,
    /// Where the core's epoch ends, when the state says it does (a change
    /// accepted before the crash): the core is told again, since the
    /// previous life's core was told and this one was not.
    pub ends: Option<SeqNo>,
    /// The digest of the configuration the recovered state is in: what the
    /// checkpoint of the state executed names. Its vote is signed again
    /// (the previous life's went with it), since at an epoch's end no
    /// later checkpoint makes up for a lost one.
    pub executed_config: Digest,
}

/// Plans a restart from what survived: `restart` (records and the state
/// executed), `records_of`, the link of the epoch whose core wrote the
/// records (none: epoch 0), `state`, the configuration the recovered state
/// is in, the checkpoint it started at and the boundary of a change it has
/// accepted, and the links known. Epochs
/// change only at checkpoints, and a core's records are its own:
///
/// - records of the state's epoch: that core restarts with them;
/// - records of the epoch before (the state executed the handover
///   checkpoint, the next core had not started): the old core restarts
///   with them and hands over as it would have;
/// - records of a later epoch (a joiner whose fetched state was not on
///   disk yet): that core restarts with them and fetches the state;
/// - otherwise, or when the votes were lost, the state's epoch's core
///   rejoins without votes.
pub fn plan_restart(
    restart: Restart,
    records_of: Option<&Handover>,
    state: (&Configuration, SeqNo, Option<SeqNo>),
    genesis: (&Configuration, Digest),
    links: &[Handover],
) -> Result<RestartPlan, String> {
    let start_of = |epoch: u64| -> Option<(Configuration, Genesis)> {
        if epoch == 0 {
            return Some((genesis.0.clone(), Genesis::new(genesis.1)));
        }
        records_of
            .into_iter()
            .chain(links)
            .find(|l| l.config.epoch == epoch)
            .map(|l| (l.config.clone(), Genesis { seq: l.cert.seq, state: l.cert.state }))
    };
    let (state_config, since, pending) = state;
    let records_epoch = records_of.map_or(0, |l| l.config.epoch);
    // Without records there is no old core to finish: the state's epoch's
    // core rejoins at once.
    if !restart.votes_lost && records_epoch + 1 >= state_config.epoch {
        let (config, genesis) = start_of(records_epoch)
            .ok_or_else(|| format!("the records are of epoch {records_epoch}, whose start is unknown"))?;
        let entering = (state_config.epoch == records_epoch + 1).then(|| (state_config.clone(), since));
        let ends = match entering {
            Some(_) => Some(since),
            None => pending.filter(|_| records_epoch == state_config.epoch),
        };
        let executed_config = state_config.digest();
        return Ok(RestartPlan { config, genesis, restart, entering, ends, executed_config });
    }
    let epoch = state_config.epoch;
    let restart = Restart { votes_lost: true, records: Vec::new(), ..restart };
    let executed_config = state_config.digest();
    if let Some((config, genesis)) = start_of(epoch) {
        return Ok(RestartPlan { config, genesis, restart, entering: None, ends: pending, executed_config });
    }
    // The state executed the handover checkpoint, but the link of its
    // epoch was never certified here: the epoch before hands over to it.
    let before = epoch.checked_sub(1).and_then(start_of);
    let (config, genesis) = before.ok_or_else(|| format!("the state is in epoch {epoch}, whose start is unknown"))?;
    let entering = Some((state_config.clone(), since));
    Ok(RestartPlan { config, genesis, restart, entering, ends: Some(since), executed_config })
}

/// Messages that reached no core, and links refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpochCounters {
    /// From an epoch older than any core kept here.
    pub stale: u64,
    /// From an epoch this replica has not reached.
    pub ahead: u64,
    /// Links of the chain that did not check.
    pub bad_links: u64,
}

/// The cores of a replica's current epoch and of the one before.
pub struct EpochHost<C> {
    me: ReplicaId,
    /// Protocol parameters; each epoch's core gets its own membership.
    template: Config,
    crypto: CryptoFor<C>,
    /// The configuration of the current core's epoch.
    config: Configuration,
    /// The newest configuration known: past `config` when a chain showed
    /// this replica epochs it is not a member of.
    newest: Configuration,
    current: ConsensusHost<C>,
    /// The previous epoch's core and configuration, kept for its laggards.
    previous: Option<(ConsensusHost<C>, Configuration)>,
    /// Links for the epochs after the first one this replica knew, in order.
    chain: Vec<Handover>,
    /// Not a member of `config`: the core is not run, and the host asks
    /// the members for the epochs that followed.
    standby: bool,
    /// A configuration the state has entered, with its handover checkpoint,
    /// waiting for that checkpoint to be stable here.
    next: Option<(Configuration, SeqNo)>,
    /// The epoch whose configuration no longer lists this replica.
    removed: Option<u64>,
    counters: EpochCounters,
    now_ms: u64,
    /// When each peer was last sent links.
    answered: BTreeMap<ReplicaId, u64>,
    /// When each peer was last asked for links.
    asked: BTreeMap<ReplicaId, u64>,
    /// When a standby replica next asks for links.
    ask_at_ms: u64,
    /// Peers whose connection to this replica is closed: a core started
    /// for a new epoch is told, since the runtime reports only changes.
    links_down: std::collections::BTreeSet<ReplicaId>,
    /// Set when this life of the replica started without the votes of the
    /// one before: a core it jumps to rejoins without voting until that is
    /// safe, since the previous life may have voted in that epoch.
    amnesia: Option<u64>,
}

impl<C: Crypto> EpochHost<C> {
    /// Hosts `core`, which serves `config`'s epoch (the genesis one, or one
    /// joined at a handover). Later epochs' cores get `template`'s
    /// parameters and `crypto` for their configuration. A replica that is
    /// not a member of `config` waits on standby for the links that make
    /// it one; its `core` is never run.
    pub fn new(core: Replica<C>, config: Configuration, template: Config, crypto: CryptoFor<C>) -> Self {
        let me = core.id();
        EpochHost {
            me,
            template,
            crypto,
            standby: config.member(me).is_none(),
            newest: config.clone(),
            config,
            current: ConsensusHost::new(core),
            previous: None,
            chain: Vec::new(),
            next: None,
            removed: None,
            counters: EpochCounters::default(),
            now_ms: 0,
            answered: BTreeMap::new(),
            asked: BTreeMap::new(),
            ask_at_ms: 0,
            links_down: Default::default(),
            amnesia: None,
        }
    }

    /// Restarts a replica's host as `plan` says (see [`plan_restart`]).
    pub fn restarting(plan: RestartPlan, me: ReplicaId, template: Config, mut crypto: CryptoFor<C>) -> Self {
        let mut cfg = template.clone();
        cfg.membership = plan.config.membership();
        let votes_lost = plan.restart.votes_lost;
        let nonce = plan.restart.nonce;
        let (executed, state) = (plan.restart.executed, plan.restart.executed_state);
        let mut core = Replica::recover_at(cfg, me, crypto(&plan.config), plan.genesis, plan.restart);
        // A log whose records say the core is still rejoining comes from a
        // life after one that lost its votes: that life may have voted in
        // a later epoch too, so every core this one starts rejoins as well.
        let votes_lost = votes_lost || core.rejoining();
        if let Some(last) = plan.ends {
            core.step(Input::EpochEnds { last });
        }
        core.step(Input::CheckpointReady { seq: executed, state, config: plan.executed_config });
        let mut host = EpochHost::new(core, plan.config, template, crypto);
        if let Some((next, since)) = plan.entering {
            host = host.entering(next, since);
        }
        if votes_lost {
            host = host.amnesiac(nonce);
        }
        host
    }

    /// Adds links this replica kept or was given (already checked): it
    /// answers laggards with them, and on standby asks the newest members.
    pub fn knowing(mut self, links: Vec<Handover>) -> Self {
        for link in links {
            if self.chain.last().is_none_or(|l| l.config.epoch < link.config.epoch) {
                if link.config.epoch > self.newest.epoch {
                    self.newest = link.config.clone();
                }
                self.chain.push(link);
            }
        }
        self
    }

    /// Marks this life as started without its previous votes: `nonce`
    /// identifies it to peers when a core it jumps to asks to rejoin.
    pub fn amnesiac(mut self, nonce: u64) -> Self {
        self.amnesia = Some(nonce);
        self
    }

    /// Hosts the core of the epoch before the one the state has entered:
    /// it restarts with its records, and hands over to `next`, which
    /// starts at `since`, once that checkpoint is stable.
    pub fn entering(mut self, next: Configuration, since: SeqNo) -> Self {
        if next.epoch == self.epoch() + 1 {
            self.next = Some((next, since));
        }
        self
    }

    /// The current epoch's core.
    pub fn core(&self) -> &Replica<C> {
        self.current.core()
    }

    /// The previous epoch's core, while kept.
    pub fn previous(&self) -> Option<&Replica<C>> {
        self.previous.as_ref().map(|(h, _)| h.core())
    }

    /// The configurations this replica deals with: the previous epoch's
    /// (while its core is kept), the current one, one the state has
    /// entered but whose core has not started, and the newest known. The
    /// runtime keeps connections with their members.
    pub fn configurations(&self) -> Vec<&Configuration> {
        let mut all: Vec<&Configuration> = self.previous.iter().map(|(_, c)| c).collect();
        all.push(&self.config);
        all.extend(self.next.iter().map(|(c, _)| c));
        all.push(&self.newest);
        all.sort_by_key(|c| c.epoch);
        all.dedup_by_key(|c| c.epoch);
        all
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.config.epoch
    }

    /// The configuration of the current core's epoch.
    pub fn config(&self) -> &Configuration {
        &self.config
    }

    /// The newest configuration this replica knows of.
    pub fn newest(&self) -> &Configuration {
        &self.newest
    }

    /// The links this replica holds, in epoch order.
    pub fn chain(&self) -> &[Handover] {
        &self.chain
    }

    /// Whether this replica waits to be made a member.
    pub fn standby(&self) -> bool {
        self.standby
    }

    /// The epoch whose configuration removed this replica, if one did: it
    /// orders nothing more, and only answers laggards.
    pub fn removed(&self) -> Option<u64> {
        self.removed
    }

    /// Messages that reached no core, and links refused.
    pub fn counters(&self) -> EpochCounters {
        self.counters
    }

    /// Carries out actions the current core holds without a new input (a
    /// recovered replica's first words).
    pub fn carry_out(&mut self, io: &mut impl ConsensusIo) {
        if !self.standby {
            self.current.carry_out(io);
        }
    }

    /// Feeds an input that is not a peer's message (see [`Self::peer`]):
    /// time to every running core (none on standby), a client's request to
    /// the current one, news of
    /// the state to the core whose sequence numbers it concerns.
    pub fn step(&mut self, input: Input, io: &mut impl ConsensusIo) {
        match input {
            Input::Peer { from, msg } => {
                let epoch = self.epoch();
                self.peer(from, epoch, msg, io)
            }
            Input::Tick { now_ms, .. } => {
                self.now_ms = self.now_ms.max(now_ms);
                if self.standby {
                    self.ask_for_links(io);
                    return;
                }
                if let Some((p, _)) = &mut self.previous {
                    p.step(input.clone(), io);
                }
                self.current.step(input, io);
            }
            Input::PeerLink { peer, up } => {
                if up {
                    self.links_down.remove(&peer);
                } else {
                    self.links_down.insert(peer);
                }
                // Links are the same for every epoch's core.
                if !self.standby {
                    if let Some((p, _)) = &mut self.previous {
                        p.step(input.clone(), io);
                    }
                    self.current.step(input, io);
                }
            }
            _ if self.standby => {}
            Input::CheckpointReady { seq, .. } | Input::StateFetched { seq, .. } | Input::EpochEnds { last: seq } => {
                match &mut self.previous {
                    Some((p, _)) if seq <= self.current.core().genesis().seq => p.step(input, io),
                    _ => self.current.step(input, io),
                }
            }
            Input::Request(_) => self.current.step(input, io),
        }
        self.advance(io);
    }

    /// A message from `from`, sent by its core of `epoch`.
    pub fn peer(&mut self, from: ReplicaId, epoch: u64, msg: PeerMessage, io: &mut impl ConsensusIo) {
        match msg {
            PeerMessage::HandoverQuery { after } => return self.answer(from, after, io),
            PeerMessage::Handovers(links) => return self.follow(links, io),
            _ => {}
        }
        if self.standby {
            self.counters.ahead += 1;
            return;
        }
        let input = Input::Peer { from, msg };
        if let Some(host) = self.host_for(epoch) {
            host.step(input, io);
        } else if epoch > self.epoch() {
            // The sender is in an epoch this replica has not reached: ask
            // it for the links (the one ending this epoch may be all this
            // replica's core lacks).
            self.counters.ahead += 1;
            if epoch > self.newest.epoch || self.removed.is_none() {
                self.ask(from, io);
            }
        } else {
            // A laggard no core here can help: show it the way.
            self.counters.stale += 1;
            self.answer(from, epoch, io);
        }
        self.advance(io);
    }

    /// What the execution side said of the membership.
    pub fn reconfigured(&mut self, event: Reconfigured, io: &mut impl ConsensusIo) {
        if self.standby {
            return;
        }
        match event {
            Reconfigured::EpochEnds { epoch, last } => {
                let input = Input::EpochEnds { last };
                if let Some(host) = self.host_for(epoch) {
                    host.step(input, io);
                }
            }
            Reconfigured::NewEpoch { config, since } => {
                if config.epoch > self.epoch() && self.next.as_ref().is_none_or(|(c, _)| c.epoch < config.epoch) {
                    self.next = Some((config, since));
                }
            }
        }
        self.advance(io);
    }

    /// Starts the next epoch's core once its handover checkpoint is stable.
    fn advance(&mut self, io: &mut impl ConsensusIo) {
        let Some((config, since)) = &self.next else { return };
        let stable = self.current.core().stable_checkpoint();
        // The current core's epoch ends at the handover checkpoint, so its
        // stable checkpoint reaches it and goes no further.
        if stable.seq != *since || config.epoch != self.epoch() + 1 {
            return;
        }
        let (config, since) = self.next.take().expect("just matched");
        let link = Handover { config: config.clone(), cert: stable.clone() };
        if self.chain.last().is_none_or(|l| l.config.epoch < config.epoch) {
            self.chain.push(link.clone());
        }
        if config.epoch > self.newest.epoch {
            self.newest = config.clone();
        }
        if config.member(self.me).is_none() {
            // Not a member any more: order nothing more, keep answering
            // laggards.
            self.removed = Some(config.epoch);
            return;
        }
        let genesis = Genesis { seq: since, state: stable.state };
        io.epoch_started(&link);
        // The state is at the handover checkpoint.
        let core = self.start_core(&config, genesis, genesis.seq, genesis.state);
        let old = std::mem::replace(&mut self.current, ConsensusHost::new(core));
        let old_config = std::mem::replace(&mut self.config, config);
        self.previous = Some((old, old_config));
        self.removed = None;
        self.tell_links(io);
        self.current.carry_out(io);
    }

    /// The core of `config`'s epoch, starting at `genesis` with the state
    /// at `executed` (it fetches the state at `genesis` when that is
    /// older). In a life that lost its previous votes every core rejoins
    /// without voting until that is safe: the previous life may have voted
    /// in any epoch that existed before it crashed, and this life cannot
    /// tell which.
    fn start_core(&mut self, config: &Configuration, genesis: Genesis, executed: SeqNo, state: Digest) -> Replica<C> {
        match self.amnesia {
            Some(nonce) => self.core_for(config, |cfg, me, crypto| {
                let restart = Restart { votes_lost: true, executed, executed_state: state, nonce, records: Vec::new() };
                Replica::recover_at(cfg, me, crypto, genesis, restart)
            }),
            None => self.core_for(config, |cfg, me, crypto| Replica::joining(cfg, me, crypto, genesis, executed)),
        }
    }

    fn core_for(
        &mut self,
        config: &Configuration,
        make: impl FnOnce(Config, ReplicaId, C) -> Replica<C>,
    ) -> Replica<C> {
        let mut cfg = self.template.clone();
        cfg.membership = config.membership();
        let crypto = (self.crypto)(config);
        let mut core = make(cfg, self.me, crypto);
        core.step(Input::Tick { now_ms: self.now_ms, wall_ms: self.current.core().wall_ms() });
        core
    }

    /// The core of `epoch`, if one is kept here.
    fn host_for(&mut self, epoch: u64) -> Option<&mut ConsensusHost<C>> {
        if epoch == self.epoch() {
            Some(&mut self.current)
        } else {
            self.previous.as_mut().filter(|(p, _)| p.core().epoch() == epoch).map(|(p, _)| p)
        }
    }

    /// Sends `to` the links after epoch `after`, at most once per
    /// retransmission period.
    fn answer(&mut self, to: ReplicaId, after: u64, io: &mut impl ConsensusIo) {
        let links: Vec<Handover> =
            self.chain.iter().filter(|h| h.config.epoch > after).take(LINKS_PER_ANSWER).cloned().collect();
        if links.is_empty() || to == self.me {
            return;
        }
        if !due(&mut self.answered, to, self.now_ms, self.template.retransmit_ms) {
            return;
        }
        io.send(to, self.epoch(), &PeerMessage::Handovers(links));
    }

    /// Asks `to` for the links after the newest epoch known here, at most
    /// once per retransmission period.
    fn ask(&mut self, to: ReplicaId, io: &mut impl ConsensusIo) {
        if !due(&mut self.asked, to, self.now_ms, self.template.retransmit_ms) {
            return;
        }
        let after = self.newest.epoch;
        io.send(to, self.epoch(), &PeerMessage::HandoverQuery { after });
    }

    /// On standby: ask the members of the newest epoch known here.
    fn ask_for_links(&mut self, io: &mut impl ConsensusIo) {
        if self.now_ms < self.ask_at_ms {
            return;
        }
        self.ask_at_ms = self.now_ms + self.template.status_interval_ms;
        let after = self.newest.epoch;
        for m in &self.newest.members {
            io.send(m.id, after, &PeerMessage::HandoverQuery { after });
        }
    }

    /// Checks links from the newest configuration known on, keeps the good
    /// ones, and acts on them: a link that ends the current core's epoch
    /// gives that core the certificate of its last checkpoint (its quorum
    /// may be short of correct votes, the link has them); a chain two or
    /// more epochs ahead, or one that makes a waiting replica a member,
    /// moves this replica to the newest epoch it is a member of.
    fn follow(&mut self, mut links: Vec<Handover>, io: &mut impl ConsensusIo) {
        links.sort_by_key(|h| h.config.epoch);
        let interval = self.template.checkpoint_interval;
        let mut good: Vec<Handover> = Vec::new();
        for link in links {
            let prev = good.last().map_or(&self.newest, |h| &h.config);
            if link.config.epoch <= prev.epoch {
                continue;
            }
            let crypto = (self.crypto)(prev);
            if link.verify(prev, &crypto, interval).is_err() {
                self.counters.bad_links += 1;
                break;
            }
            good.push(link);
        }
        let Some(last) = good.last() else { return };
        let newest = last.config.clone();
        self.chain.extend(good.iter().cloned());
        self.newest = newest;
        // The newest epoch listing this replica.
        let target = self.chain.iter().rev().find(|l| l.config.member(self.me).is_some()).cloned();
        let far = self.newest.epoch >= self.config.epoch + 2;
        // The current epoch ended at a checkpoint this replica's state has
        // not reached: the members have moved on and may no longer hold
        // that state, so fetch the next epoch's instead of finishing this one.
        let end = self.chain.iter().find(|l| l.config.epoch == self.config.epoch + 1).map(|l| l.cert.seq);
        let behind = self.next.is_none() && end.is_some_and(|e| self.current.core().delivered() < e);
        match target {
            Some(t) if t.config.epoch > self.config.epoch && (far || behind || self.standby) => self.jump(t, io),
            _ => {}
        }
        // The end of the current core's epoch, certified: the core can
        // relay it to its peers as a stable checkpoint's proof.
        if let Some(end) = self.chain.iter().find(|l| l.config.epoch == self.config.epoch + 1).cloned() {
            if !self.standby && self.current.core().stable_checkpoint().seq < end.cert.seq {
                for vote in end.cert.proof {
                    let from = vote.body.replica;
                    self.current.step(Input::Peer { from, msg: PeerMessage::Checkpoint(vote) }, io);
                }
            }
        }
        if !self.standby && self.newest.member(self.me).is_none() {
            self.removed = Some(self.newest.epoch);
        }
        self.advance(io);
    }

    /// Moves to the epoch `link` starts: its core fetches the state at the
    /// handover checkpoint first (only the parts that differ). The cores of
    /// older epochs are dropped: this replica was too far behind for
    /// laggards of those epochs to need it.
    fn jump(&mut self, link: Handover, io: &mut impl ConsensusIo) {
        self.next = None;
        self.previous = None;
        io.epoch_started(&link);
        let config = link.config;
        let genesis = Genesis { seq: link.cert.seq, state: link.cert.state };
        // Executed nothing of this epoch: the state is fetched first.
        let core = self.start_core(&config, genesis, SeqNo(0), Digest::default());
        self.current = ConsensusHost::new(core);
        self.config = config;
        self.standby = false;
        self.removed = None;
        self.tell_links(io);
        self.current.carry_out(io);
    }

    /// Tells a new current core which peers' connections are closed.
    fn tell_links(&mut self, io: &mut impl ConsensusIo) {
        for peer in self.links_down.clone() {
            self.current.step(Input::PeerLink { peer, up: false }, io);
        }
    }
}
