//! Simulated replicas: the real host driver around the real core, with a
//! simulated disk, network and crashes.

use super::network::Payload;
use super::World;
use crate::byzantine::{ByzCtx, Strategy};
use crate::checker::FreshExec;
use crate::crypto::SimCrypto;
use crate::rng::Rng;
use crate::service::SimService;
use palisade_core::exec::Executed;
use palisade_core::reconfig::Handover;
use palisade_core::replica::{Record, Restart};
use palisade_core::{Batch, ClientId, Digest, Executor, Input, PeerMessage, ReplicaId, RequestId, SeqNo};
use palisade_host::durable::{recover, SNAPSHOTS_KEPT};
use palisade_host::epochs::plan_restart;
use palisade_host::{
    ClientMail, ConsensusIo, Durability, EpochHost, ExecCommand, ExecEvent, ExecutionConfig, ExecutionHost,
    ExecutionIo, Reconfigured,
};
use palisade_storage::snapshot::Snapshots;
use palisade_storage::{CrashKind, Dir, Entry, Journal, MemDir, WalOptions};
use palisade_wire::envelope::RejectReason;
use parking_lot::RwLock;
use std::collections::VecDeque;
use std::sync::Arc;

/// What survives a crash (unless the disk is lost too): the real journal
/// and snapshot files, on a disk that tears and rots.
pub(crate) struct Disk {
    pub dir: MemDir,
    /// The open journal; `None` while the replica is down.
    pub journal: Option<Journal<MemDir>>,
    /// The snapshot files' writer; `None` while the replica is down.
    pub snapshots: Option<Snapshots<MemDir>>,
    /// The newest snapshot written: the log keeps the batches after the
    /// one before it, so that the fallback can replay to it.
    pub newest_snapshot: SeqNo,
    /// The newest stable checkpoint offered to the writer (written or
    /// skipped, as by a writer that was busy).
    pub passed: SeqNo,
    /// The chain of epochs the replica keeps beside its log (the runtime's
    /// `chain.bin`, written whole and synced when it grows).
    pub chain: Vec<Handover>,
}

/// Small segments, so that runs rotate and trim the log.
pub(crate) const SIM_WAL: WalOptions = WalOptions { segment_bytes: 256 << 10 };

impl Disk {
    /// An empty disk with its journal open.
    pub(crate) fn new() -> Disk {
        let dir = MemDir::new();
        let (journal, _) = Journal::open(Arc::new(dir.clone()), SIM_WAL).expect("an empty disk opens");
        let (snapshots, _) = Snapshots::open(Arc::new(dir.clone()), SNAPSHOTS_KEPT).expect("an empty disk opens");
        Disk {
            dir,
            journal: Some(journal),
            snapshots: Some(snapshots),
            newest_snapshot: SeqNo(0),
            passed: SeqNo(0),
            chain: Vec::new(),
        }
    }

    /// Writes `entry` durably (one group).
    fn write(&mut self, entry: Entry) -> Result<(), String> {
        match &mut self.journal {
            Some(j) => j.write(vec![entry]).map_err(|e| format!("the log: {e}")),
            None => Ok(()),
        }
    }
}

/// Something for a replica's consensus side, in the order it happened.
pub(crate) enum Feed {
    Input(Input),
    Peer(ReplicaId, u64, PeerMessage),
    Reconfigured(Reconfigured),
}

pub(crate) struct SimReplica {
    pub id: ReplicaId,
    /// The epochs' cores and the host driver; `None` while crashed.
    pub consensus: Option<EpochHost<SimCrypto>>,
    /// The service and its snapshots; `None` while crashed.
    pub execution: Option<ExecutionHost<SimService>>,
    pub disk: Disk,
    pub crypto: SimCrypto,
    pub strategy: Option<Box<dyn Strategy>>,
    pub rng: Rng,
    pub skew_ms: u64,
}

/// The world as one replica's consensus host sees it during one step.
struct SimIo<'w> {
    world: &'w mut World,
    r: usize,
    inputs: &'w mut VecDeque<Feed>,
    crashed: bool,
}

impl ConsensusIo for SimIo<'_> {
    fn persist(&mut self, record: Record) {
        if self.world.cfg.trace {
            eprintln!("{:>6} r{} persist {record:?}", self.world.now, self.r);
        }
        if let Err(e) = self.world.replicas[self.r].disk.write(Entry::Record(record)) {
            self.world.checker.violations.push(format!("replica {}: {e}", self.r));
        }
        if self.world.torn_step(self.r) {
            // Crash right after this record became durable: the rest of the
            // step never happens.
            self.crashed = true;
        }
    }

    fn stopped(&self) -> bool {
        self.crashed
    }

    fn epoch_started(&mut self, link: &Handover) {
        if let Err(e) = self.world.replicas[self.r].disk.write(Entry::Epoch(link.clone())) {
            self.world.checker.violations.push(format!("replica {}: {e}", self.r));
        }
    }

    fn send(&mut self, to: ReplicaId, epoch: u64, msg: &PeerMessage) {
        self.world.note_said(self.r, epoch, msg);
        self.world.replica_send(self.r, to, epoch, msg.clone());
    }

    fn broadcast(&mut self, to: &[ReplicaId], epoch: u64, msg: &PeerMessage) {
        self.world.note_said(self.r, epoch, msg);
        if let (true, PeerMessage::NewView(nv)) = (self.world.cfg.trace, msg) {
            eprintln!("{:>6} r{} new-view {} chosen {:?}", self.world.now, self.r, nv.body.view, nv.body.chosen);
        }
        for &r in to {
            self.world.replica_send(self.r, r, epoch, msg.clone());
        }
    }

    fn execute(&mut self, cmd: ExecCommand) {
        self.world.execute(self.r, cmd, self.inputs);
    }

    fn refuse(&mut self, client: ClientId, request: RequestId, reason: RejectReason) {
        self.world.replica_mail(self.r, ClientMail::Refusal { client, request, reason });
    }
}

/// The world as one replica's execution host sees it.
struct SimExecIo<'w> {
    world: &'w mut World,
    r: usize,
    inputs: &'w mut VecDeque<Feed>,
    /// States fetched during this command.
    fetched: Vec<SeqNo>,
}

impl ExecutionIo for SimExecIo<'_> {
    fn replies(&mut self, mails: Vec<ClientMail>) {
        for mail in mails {
            self.world.replica_mail(self.r, mail);
        }
    }

    fn checkpoint(&mut self, seq: SeqNo, state: Digest, config: Digest) {
        if !self.world.is_byzantine(self.r) {
            self.world.checker.on_checkpoint(ReplicaId(self.r as u32), seq, state);
        }
        self.inputs.push_back(Feed::Input(Input::CheckpointReady { seq, state, config }));
    }

    fn state_fetched(&mut self, seq: SeqNo, state: Digest) {
        self.inputs.push_back(Feed::Input(Input::StateFetched { seq, state }));
        self.fetched.push(seq);
    }

    fn send(&mut self, to: ReplicaId, epoch: u64, msg: PeerMessage) {
        self.world.replica_send(self.r, to, epoch, msg);
    }

    fn note(&mut self, event: ExecEvent) {
        if event == ExecEvent::VoidBatch && !self.world.is_byzantine(self.r) {
            self.world.void_batches += 1;
        }
    }

    fn reconfigured(&mut self, event: Reconfigured) {
        if let (Reconfigured::NewEpoch { config, .. }, false) = (&event, self.world.is_byzantine(self.r)) {
            self.world.on_new_epoch(config);
        }
        self.inputs.push_back(Feed::Reconfigured(event));
    }

    fn executed(&mut self, seq: SeqNo, batch: &Batch, executed: &[Executed]) {
        let w = &mut *self.world;
        if w.cfg.trace {
            eprintln!(
                "{:>6} r{} deliver seq {seq} batch {} ({} requests)",
                w.now,
                self.r,
                batch.digest(),
                batch.requests.len()
            );
        }
        if w.is_byzantine(self.r) {
            return;
        }
        let fresh = executed
            .iter()
            .filter(|e| e.fresh)
            .map(|e| FreshExec {
                client: e.client,
                request: e.request,
                operation: batch
                    .requests
                    .iter()
                    .find(|q| q.client == e.client && q.id == e.request)
                    .map(|q| q.operation.clone())
                    .unwrap_or_default(),
                result: e.result.clone(),
            })
            .collect::<Vec<FreshExec>>();
        for e in &fresh {
            if !w.keys.issued(e.client, e.request.0, &e.operation) {
                w.checker.violations.push(format!(
                    "authenticity: replica {} executed request {} of client {} at seq {seq}, which the client never sent",
                    self.r, e.request, e.client
                ));
            }
        }
        w.checker.on_deliver(ReplicaId(self.r as u32), seq, batch.digest(), fresh);
    }
}

impl World {
    /// A new replica's execution host.
    pub(crate) fn execution_host(&self, r: usize) -> ExecutionHost<SimService> {
        ExecutionHost::new(self.new_executor(), self.execution_config(r), None).expect("the genesis state installs")
    }

    fn new_executor(&self) -> Arc<RwLock<Executor<SimService>>> {
        let admin = Arc::new(crate::crypto::SimAdmin(self.keys.clone()));
        let exec = Executor::new(SimService::default(), self.core_cfg.client_window).with_reconfiguration(
            self.genesis_config.clone(),
            admin,
            self.core_cfg.checkpoint_interval,
        );
        Arc::new(RwLock::new(exec))
    }

    fn execution_config(&self, r: usize) -> ExecutionConfig {
        ExecutionConfig {
            checkpoint_interval: self.core_cfg.checkpoint_interval,
            log_window: self.core_cfg.log_window,
            reply_digests: true,
            // Small answers, so that fetches of larger states take several
            // questions.
            max_answer_bytes: 4096,
            fetch_window: self.core_cfg.state_fetch_window,
            #[cfg(feature = "planted-bugs")]
            planted: self.cfg.planted,
            ..ExecutionConfig::new(ReplicaId(r as u32), self.membership.clone())
        }
    }

    pub(crate) fn replica_step(&mut self, r: usize, input: Input) {
        self.replica_feed(r, Feed::Input(input));
    }

    pub(crate) fn replica_feed(&mut self, r: usize, feed: Feed) {
        let mut inputs = VecDeque::from([feed]);
        while let Some(feed) = inputs.pop_front() {
            let Some(mut host) = self.replicas[r].consensus.take() else { return };
            let before = (host.core().view(), host.core().is_normal());
            let mut io = SimIo { world: self, r, inputs: &mut inputs, crashed: false };
            match feed {
                Feed::Input(input) => host.step(input, &mut io),
                Feed::Peer(from, epoch, msg) => host.peer(from, epoch, msg, &mut io),
                Feed::Reconfigured(event) => host.reconfigured(event, &mut io),
            }
            let crashed = io.crashed;
            let disk = &mut self.replicas[r].disk;
            if host.chain().len() > disk.chain.len() {
                disk.chain = host.chain().to_vec();
            }
            let after = (host.core().view(), host.core().is_normal());
            if self.cfg.trace && before != after {
                let (now, (v0, n0), (v1, n1)) = (self.now, before, after);
                let why = host.core().metrics().last_view_change.map_or("-", |w| w.name());
                eprintln!("{now:>6} r{r} view {v0} normal={n0} -> view {v1} normal={n1} (last change: {why})");
            }
            if crashed {
                if self.cfg.trace {
                    eprintln!("{:>6} r{r} crashes in the middle of a step", self.now);
                }
                self.replicas[r].consensus = Some(host);
                self.crash(r);
                let down = self.rng.range(100, 1500);
                self.schedule(self.now + down, super::Event::Restart(r));
                return;
            }
            self.replicas[r].consensus = Some(host);
        }
    }

    /// Carries out what a replica's core holds without a new input (a
    /// recovered replica's first words).
    pub(crate) fn drain(&mut self, r: usize) {
        let Some(mut host) = self.replicas[r].consensus.take() else { return };
        let mut inputs = VecDeque::new();
        let mut io = SimIo { world: self, r, inputs: &mut inputs, crashed: false };
        host.carry_out(&mut io);
        self.replicas[r].consensus = Some(host);
        while let Some(i) = inputs.pop_front() {
            self.replica_feed(r, i);
        }
    }

    fn execute(&mut self, r: usize, cmd: ExecCommand, inputs: &mut VecDeque<Feed>) {
        let Some(mut exec) = self.replicas[r].execution.take() else { return };
        if let ExecCommand::Deliver { epoch, seq, view, batch } | ExecCommand::Confirm { epoch, seq, view, batch } =
            &cmd
        {
            // Logged as it is delivered (the runtime does it in parallel).
            let entry = Entry::Decided { epoch: *epoch, seq: *seq, view: *view, batch: batch.clone() };
            if let Err(e) = self.replicas[r].disk.write(entry) {
                self.checker.violations.push(format!("replica {r}: {e}"));
            }
        }
        let mut io = SimExecIo { world: self, r, inputs, fetched: Vec::new() };
        let result = exec.handle(cmd, &mut io);
        let fetched = io.fetched;
        if let Err(e) = result {
            self.checker.violations.push(format!("replica {r}: {e}"));
        }
        // As in the runtime, the newest stable checkpoint's state goes to
        // disk, and a fetched state always (the log cannot reach it). The
        // runtime's writer skips checkpoints while it is busy: so are some
        // here, and recovery replays the log from an older snapshot.
        let mut offered: Vec<SeqNo> = fetched;
        if let Some((seq, _)) = exec.store().newest_stable() {
            let disk = &mut self.replicas[r].disk;
            if seq > disk.newest_snapshot && seq > disk.passed {
                disk.passed = seq;
                if self.rng.chance(0.5) {
                    offered.push(seq);
                }
            }
        }
        for seq in offered {
            let Some(kept) = exec.store().get(seq) else { continue };
            let disk = &mut self.replicas[r].disk;
            if seq <= disk.newest_snapshot {
                continue;
            }
            let fallback = std::mem::replace(&mut disk.newest_snapshot, seq);
            let written = match &mut disk.snapshots {
                Some(s) => s.write(seq, kept.root, &kept.parts, &kept.digests).map(drop),
                None => Ok(()),
            }
            .and_then(|_| disk.journal.as_mut().map_or(Ok(()), |j| j.snapshot_durable(fallback)));
            if let Err(e) = written {
                self.checker.violations.push(format!("replica {r}: the snapshot at {seq}: {e}"));
            }
        }
        self.replicas[r].execution = Some(exec);
    }

    /// Whether replica `r` crashes right after the record it just made durable.
    pub(crate) fn torn_step(&mut self, r: usize) -> bool {
        self.faulty_phase
            && self.faults.torn_steps > 0.0
            && self.victims.contains(&r)
            && self.now + 2_000 < self.heal_at
            && self.rng.chance(self.faults.torn_steps)
    }

    pub(crate) fn crash(&mut self, r: usize) {
        if self.cfg.trace {
            eprintln!("{:>6} r{r} crash", self.now);
        }
        // A crashed process's connections close: every peer sees it at once.
        self.tell_links(r, false);
        let amnesia = self.faults.amnesia;
        let disk_faults = self.faults.disk_faults;
        let seed = self.rng.next_u64();
        let rep = &mut self.replicas[r];
        if let Some(host) = rep.consensus.take() {
            let alarms = host.core().metrics().alarms + host.previous().map_or(0, |p| p.metrics().alarms);
            if alarms > 0 && rep.strategy.is_none() {
                self.checker.on_alarm(rep.id, alarms);
            }
        }
        rep.execution = None;
        rep.disk.journal = None;
        rep.disk.snapshots = None;
        if amnesia {
            // The disk goes too: the replica will restart without its votes.
            rep.disk = Disk {
                dir: MemDir::new(),
                journal: None,
                snapshots: None,
                newest_snapshot: SeqNo(0),
                passed: SeqNo(0),
                chain: Vec::new(),
            };
            return;
        }
        if disk_faults && seed.is_multiple_of(2) {
            // A group being written when the power went: part of it lands.
            tear_tail(&rep.disk.dir, seed);
        }
        rep.disk.dir.crash(CrashKind::Torn { seed });
        if disk_faults && self.faults.disk_rot && seed.is_multiple_of(3) {
            // A sector rots while the replica is down.
            rot(&rep.disk.dir, seed);
        }
    }

    pub(crate) fn restart(&mut self, r: usize) {
        if self.replicas[r].consensus.is_some() {
            return;
        }
        let nonce = self.rng.next_u64();
        let dir = Arc::new(self.replicas[r].disk.dir.clone());
        let exec = self.new_executor();
        let recovered = recover(dir, Durability::Full, SIM_WAL, exec.clone(), self.execution_config(r), nonce);
        let rec = match recovered {
            Ok(rec) => rec,
            Err(e) => {
                self.checker.violations.push(format!("replica {r} cannot recover: {e}"));
                return;
            }
        };
        let genesis = self.genesis;
        let restart = rec.restart.unwrap_or(Restart {
            // Nothing on disk: it never wrote anything, or its disk was lost.
            votes_lost: self.faults.amnesia && self.victims.contains(&r),
            executed: SeqNo(0),
            executed_state: genesis,
            nonce,
            records: Vec::new(),
        });
        if !self.is_byzantine(r) {
            let (d, rep) = (&mut self.disk_stats, &rec.report);
            d.recoveries += 1;
            d.replayed += rep.replayed;
            d.rejected_snapshots += rep.rejected.len() as u64;
            match rep.cut.as_ref().map(|c| c.kind) {
                Some(palisade_storage::CutKind::TornTail) => d.torn_tails += 1,
                Some(palisade_storage::CutKind::Corrupt) => d.damaged_logs += 1,
                None => {}
            }
        }
        if self.cfg.trace {
            let how = if restart.votes_lost { " without its votes" } else { "" };
            eprintln!("{:>6} r{r} restart{how}: {}", self.now, rec.report);
        }
        let rep = &mut self.replicas[r];
        let plan = {
            let e = exec.read();
            let (config, since) = e.configuration_since().unwrap_or((&self.genesis_config, SeqNo(0)));
            let state = (config, since, e.pending_configuration().map(|(_, b)| b));
            plan_restart(restart, rec.epoch.as_ref(), state, (&self.genesis_config, genesis), &rep.disk.chain)
        };
        let plan = match plan {
            Ok(p) => {
                if p.restart.votes_lost {
                    self.lost_votes.insert(r);
                }
                p
            }
            Err(e) => {
                self.checker.violations.push(format!("replica {r} cannot restart: {e}"));
                return;
            }
        };
        let host = EpochHost::restarting(plan, rep.id, self.core_cfg.clone(), crypto_for(&rep.crypto))
            .knowing(rep.disk.chain.clone());
        rep.disk.journal = Some(rec.journal);
        rep.disk.snapshots = Some(rec.snapshots);
        rep.disk.newest_snapshot = rec.report.snapshot.map_or(SeqNo(0), |(s, _)| s);
        rep.disk.passed = SeqNo(0);
        rep.execution = Some(rec.execution);
        rep.consensus = Some(host);
        self.drain(r);
        self.tell_links(r, true);
    }

    /// Tells every other running replica that its connection from `r`
    /// closed or opened.
    fn tell_links(&mut self, r: usize, up: bool) {
        let peer = self.replicas[r].id;
        for q in 0..self.replicas.len() {
            if q != r && self.replicas[q].consensus.is_some() {
                self.replica_step(q, Input::PeerLink { peer, up });
            }
        }
    }

    /// Hands a Byzantine replica's strategy the context it may use: its own key only.
    pub(crate) fn with_strategy<T>(&mut self, r: usize, f: impl FnOnce(&mut dyn Strategy, &mut ByzCtx<'_>) -> T) -> T {
        let (membership, cfg) = (&self.membership, &self.core_cfg);
        let rep = &mut self.replicas[r];
        let mut ctx = ByzCtx {
            me: rep.id,
            crypto: &rep.crypto,
            rng: &mut rep.rng,
            membership,
            request_timeout_ms: cfg.request_timeout_ms,
            log_window: cfg.log_window,
        };
        f(rep.strategy.as_deref_mut().expect("a Byzantine replica"), &mut ctx)
    }

    /// A correct replica said `msg`: the equivocation checker notes it.
    fn note_said(&mut self, r: usize, epoch: u64, msg: &PeerMessage) {
        if let (true, PeerMessage::PrePrepare(pp)) = (self.cfg.trace, msg) {
            eprintln!("{:>6} r{r} pre-prepare {} {} {}", self.now, pp.view, pp.seq, pp.batch.digest());
        }
        if !self.is_byzantine(r) {
            self.votes.on_send(ReplicaId(r as u32), epoch, msg);
        }
    }

    pub(crate) fn replica_send(&mut self, r: usize, to: ReplicaId, epoch: u64, msg: PeerMessage) {
        if self.cfg.trace {
            match &msg {
                PeerMessage::StateFetch { seq, query } => {
                    eprintln!("{:>6} r{r} -> r{} state-fetch {seq} {query:?}", self.now, to.0)
                }
                PeerMessage::StateData { seq, answer } => {
                    let what = match answer {
                        palisade_core::message::StateAnswer::Manifest { from, total, .. } => {
                            format!("manifest from {from} of {total}")
                        }
                        palisade_core::message::StateAnswer::Parts(items) => format!("{} items", items.len()),
                        other => format!("{other:?}"),
                    };
                    eprintln!("{:>6} r{r} -> r{} state-data {seq} {what}", self.now, to.0)
                }
                _ => {}
            }
        }
        if self.replicas[r].strategy.is_none() {
            self.send(r, to.0 as usize, Payload::Peer(epoch, msg), 0);
            return;
        }
        let outs = self.with_strategy(r, |s, ctx| s.outgoing(ctx, to, msg));
        for o in outs {
            if (o.to.0 as usize) < self.n() && o.to.0 as usize != r {
                self.send(r, o.to.0 as usize, Payload::Peer(epoch, o.msg), o.delay_ms);
            }
        }
    }

    /// Sends an answer or a refusal to its client (through the strategy
    /// of a Byzantine replica).
    pub(crate) fn replica_mail(&mut self, r: usize, mail: ClientMail) {
        let mail = if self.replicas[r].strategy.is_some() {
            match self.with_strategy(r, |s, ctx| s.reply(ctx, mail)) {
                Some(m) => m,
                None => return,
            }
        } else {
            mail
        };
        let client = match &mail {
            ClientMail::Answer { client, .. } | ClientMail::Refusal { client, .. } => *client,
        };
        if let Some(node) = self.client_node(client) {
            self.send(r, node, Payload::Mail(mail), 0);
        }
    }
}

/// Each epoch's core signs with the replica's key for that epoch.
pub(crate) fn crypto_for(crypto: &SimCrypto) -> palisade_host::epochs::CryptoFor<SimCrypto> {
    let crypto = crypto.clone();
    Box::new(move |c: &palisade_core::reconfig::Configuration| crypto.in_epoch(c.epoch))
}

/// Writes part of a would-be group after the newest segment's entries,
/// unsynced: the crash that follows keeps some prefix of it.
fn tear_tail(dir: &MemDir, seed: u64) {
    let Some(seg) = dir.list().unwrap_or_default().into_iter().rfind(|n| n.starts_with("wal-")) else {
        return;
    };
    let Some(bytes) = dir.contents(&seg) else { return };
    let end = palisade_storage::wal::entries_end(&bytes);
    let len = 1 + (seed >> 8) as usize % 64;
    if end == 0 || end + len > bytes.len() {
        return;
    }
    let garbage: Vec<u8> = (0..len).map(|i| (seed >> (i % 56)) as u8 | 1).collect();
    let _ = dir.write_at(&seg, end as u64, &garbage);
}

/// Flips a byte somewhere in one of the disk's files.
fn rot(dir: &MemDir, seed: u64) {
    let files: Vec<String> = dir
        .list()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with("wal-") || n.starts_with("snap-"))
        .collect();
    if files.is_empty() {
        return;
    }
    let name = &files[(seed >> 16) as usize % files.len()];
    let Some(bytes) = dir.contents(name) else { return };
    let used = if name.starts_with("wal-") { palisade_storage::wal::entries_end(&bytes) } else { bytes.len() };
    if used > 0 {
        dir.corrupt(name, (seed >> 24) % used as u64);
    }
}
