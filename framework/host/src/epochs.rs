//! One core per membership epoch, and the handover between them
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
//! stable, certified by a quorum of the old members. A replica that is not
//! a member of the new configuration starts no core: its last one keeps
//! answering laggards until the runtime lets it go.

use crate::consensus::{ConsensusHost, ConsensusIo};
use crate::execution::Reconfigured;
use palisade_core::checkpoint::Genesis;
use palisade_core::reconfig::Configuration;
use palisade_core::{Config, Crypto, Input, PeerMessage, Replica, ReplicaId, SeqNo};

/// Makes the signing and verification of one epoch's core: the keys are
/// that configuration's, and the epoch is signed into every statement.
pub type CryptoFor<C> = Box<dyn FnMut(&Configuration) -> C + Send>;

/// Messages that reached no core.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpochCounters {
    /// From an epoch older than any core kept here.
    pub stale: u64,
    /// From an epoch this replica has not reached.
    pub ahead: u64,
}

/// The cores of a replica's current epoch and of the one before.
pub struct EpochHost<C> {
    me: ReplicaId,
    /// Protocol parameters; each epoch's core gets its own membership.
    template: Config,
    crypto: CryptoFor<C>,
    current: ConsensusHost<C>,
    previous: Option<ConsensusHost<C>>,
    /// A configuration the state has entered, with its handover checkpoint,
    /// waiting for that checkpoint to be stable here.
    next: Option<(Configuration, SeqNo)>,
    /// The epoch whose configuration no longer lists this replica.
    removed: Option<u64>,
    counters: EpochCounters,
}

impl<C: Crypto> EpochHost<C> {
    /// Hosts `core` (of any epoch: the genesis one, or one joined at a
    /// handover). Later epochs' cores get `template`'s parameters and
    /// `crypto` for their configuration.
    pub fn new(core: Replica<C>, template: Config, crypto: CryptoFor<C>) -> Self {
        EpochHost {
            me: core.id(),
            template,
            crypto,
            current: ConsensusHost::new(core),
            previous: None,
            next: None,
            removed: None,
            counters: EpochCounters::default(),
        }
    }

    /// The current epoch's core.
    pub fn core(&self) -> &Replica<C> {
        self.current.core()
    }

    /// The previous epoch's core, while kept.
    pub fn previous(&self) -> Option<&Replica<C>> {
        self.previous.as_ref().map(|h| h.core())
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.current.core().epoch()
    }

    /// The epoch whose configuration removed this replica, if one did: it
    /// orders nothing more, and only answers laggards.
    pub fn removed(&self) -> Option<u64> {
        self.removed
    }

    /// Messages that reached no core.
    pub fn counters(&self) -> EpochCounters {
        self.counters
    }

    /// Carries out actions the current core holds without a new input (a
    /// recovered replica's first words).
    pub fn carry_out(&mut self, io: &mut impl ConsensusIo) {
        self.current.carry_out(io);
    }

    /// Feeds an input that is not a peer's message (see [`Self::peer`]):
    /// time to every core, a client's request to the current one, news of
    /// the state to the core whose sequence numbers it concerns.
    pub fn step(&mut self, input: Input, io: &mut impl ConsensusIo) {
        match input {
            Input::Peer { from, msg } => {
                let epoch = self.epoch();
                self.peer(from, epoch, msg, io)
            }
            Input::Tick { .. } => {
                if let Some(p) = &mut self.previous {
                    p.step(input.clone(), io);
                }
                self.current.step(input, io);
            }
            Input::CheckpointReady { seq, .. } | Input::StateFetched { seq, .. } | Input::EpochEnds { last: seq } => {
                match &mut self.previous {
                    Some(p) if seq <= self.current.core().genesis().seq => p.step(input, io),
                    _ => self.current.step(input, io),
                }
            }
            Input::Request(_) => self.current.step(input, io),
        }
        self.advance(io);
    }

    /// A message from `from`, sent by its core of `epoch`.
    pub fn peer(&mut self, from: ReplicaId, epoch: u64, msg: PeerMessage, io: &mut impl ConsensusIo) {
        let input = Input::Peer { from, msg };
        if epoch == self.epoch() {
            self.current.step(input, io);
        } else if let Some(p) = self.previous.as_mut().filter(|p| p.core().epoch() == epoch) {
            p.step(input, io);
        } else if epoch > self.epoch() {
            self.counters.ahead += 1;
        } else {
            self.counters.stale += 1;
        }
        self.advance(io);
    }

    /// What the execution side said of the membership.
    pub fn reconfigured(&mut self, event: Reconfigured, io: &mut impl ConsensusIo) {
        match event {
            Reconfigured::EpochEnds { epoch, last } => {
                let input = Input::EpochEnds { last };
                if epoch == self.epoch() {
                    self.current.step(input, io);
                } else if let Some(p) = self.previous.as_mut().filter(|p| p.core().epoch() == epoch) {
                    p.step(input, io);
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
        let Some((_, since)) = &self.next else { return };
        let stable = self.current.core().stable_checkpoint();
        // The current core's epoch ends at the handover checkpoint, so its
        // stable checkpoint reaches it and goes no further.
        if stable.seq != *since {
            return;
        }
        let (config, since) = self.next.take().expect("just matched");
        if config.member(self.me).is_none() {
            // Not a member any more: order nothing more, keep answering
            // laggards.
            self.removed = Some(config.epoch);
            return;
        }
        let genesis = Genesis { seq: since, state: stable.state };
        let mut cfg = self.template.clone();
        cfg.membership = config.membership();
        let crypto = (self.crypto)(&config);
        let mut core = Replica::starting_at(cfg, self.me, crypto, genesis);
        core.step(self.current.core().last_tick());
        let old = std::mem::replace(&mut self.current, ConsensusHost::new(core));
        self.previous = Some(old);
        self.current.carry_out(io);
    }
}
