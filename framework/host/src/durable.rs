//! Bringing a replica back from its disk: the newest snapshot that checks,
//! the decided batches after it replayed up to a checkpoint, and, in
//! `full` mode, its protocol records, so that it rejoins as the replica it
//! was. The runtime and the simulator both recover through here.

use crate::consensus::ExecCommand;
use crate::execution::{ClientMail, ExecutionConfig, ExecutionHost, ExecutionIo};
use palisade_core::replica::Restart;
use palisade_core::state::Part;
use palisade_core::{Batch, Digest, Executor, PeerMessage, ReplicaId, SeqNo, Service, ViewNo};
use palisade_storage::snapshot::{Rejected, Snapshots};
use palisade_storage::{Cut, CutKind, Dir, Journal, WalOptions};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::Arc;

/// What a replica writes to disk, and so what it survives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Nothing: a restarted replica comes back empty and catches up from
    /// its peers, without voting until it is past what it may have voted
    /// on. All replicas crashing at once loses everything.
    None,
    /// Durable-SMaRt's parallel logging: decided batches are logged while
    /// execution goes on, and replies wait until their batch is durable. A
    /// restarted replica recovers its state from disk but not its votes,
    /// so it rejoins like one in `none` mode, only faster.
    Log,
    /// PBFT's persistence: also the view, pre-prepares and votes, each
    /// durable before the message that depends on it is sent. A restarted
    /// replica is the replica it was; every replica crashing at once loses
    /// no acknowledged operation.
    #[default]
    Full,
}

impl Durability {
    /// Whether decided batches are logged.
    pub fn logs_batches(self) -> bool {
        self != Durability::None
    }

    /// Whether protocol records are logged before what depends on them.
    pub fn logs_votes(self) -> bool {
        self == Durability::Full
    }
}

impl FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Durability::None),
            "log" => Ok(Durability::Log),
            "full" => Ok(Durability::Full),
            other => Err(format!("unknown durability {other:?}: use none, log or full")),
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Durability::None => "none",
            Durability::Log => "log",
            Durability::Full => "full",
        })
    }
}

/// What recovery found, for the operator.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    /// The snapshot loaded: its checkpoint and size in bytes.
    pub snapshot: Option<(SeqNo, u64)>,
    /// Snapshots that did not check, and were deleted.
    pub rejected: Vec<Rejected>,
    /// Log entries read.
    pub entries: usize,
    /// Protocol records restored.
    pub records: usize,
    /// Decided batches replayed on top of the snapshot.
    pub replayed: u64,
    /// The checkpoint the service state was brought to.
    pub executed: SeqNo,
    /// Where the log was cut, if it was.
    pub cut: Option<Cut>,
    /// Whether the replica must rejoin without its votes.
    pub votes_lost: bool,
}

impl RecoveryReport {
    /// Whether the disk held anything at all.
    pub fn found_anything(&self) -> bool {
        self.snapshot.is_some() || self.entries > 0 || !self.rejected.is_empty() || self.cut.is_some()
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.snapshot {
            Some((seq, bytes)) => write!(f, "snapshot at {seq} ({bytes} bytes)")?,
            None => write!(f, "no snapshot")?,
        }
        write!(
            f,
            ", {} log entries, {} protocol records, {} batches replayed; state at {}",
            self.entries, self.records, self.replayed, self.executed
        )?;
        for r in &self.rejected {
            write!(f, "; discarded {} ({}), will fetch from peers", r.name, r.reason)?;
        }
        if let Some(c) = &self.cut {
            match c.kind {
                CutKind::TornTail => write!(f, "; cut a torn tail at {}:{}", c.segment, c.offset)?,
                CutKind::Corrupt => write!(
                    f,
                    "; DAMAGED log at {}:{} (and {} later segments) discarded",
                    c.segment, c.offset, c.later_segments
                )?,
            }
        }
        if self.votes_lost {
            write!(f, "; rejoining without its votes")?;
        }
        Ok(())
    }
}

/// Replay drops everything a live replica would send.
struct Quiet {
    checkpoints: Vec<(SeqNo, Digest)>,
}

impl ExecutionIo for Quiet {
    fn replies(&mut self, _mails: Vec<ClientMail>) {}
    fn checkpoint(&mut self, seq: SeqNo, state: Digest, _config: Digest) {
        self.checkpoints.push((seq, state));
    }
    fn state_fetched(&mut self, _seq: SeqNo, _state: Digest) {}
    fn send(&mut self, _to: ReplicaId, _epoch: u64, _msg: PeerMessage) {}
}

/// Snapshots kept on disk: the newest and one fallback, in case the
/// newest rots.
pub const SNAPSHOTS_KEPT: usize = 2;

/// A replica brought back from its disk.
pub struct Recovered<S: Service, D: Dir> {
    /// The journal, open for what comes next.
    pub journal: Journal<D>,
    /// The snapshots on disk, for the writer of the next ones.
    pub snapshots: Snapshots<D>,
    /// The service at the recovered checkpoint.
    pub execution: ExecutionHost<S>,
    /// How the core restarts; `None` when the disk held nothing (a first
    /// start, or a replaced disk: the caller decides which).
    pub restart: Option<Restart>,
    /// What was found.
    pub report: RecoveryReport,
    /// The link of the epoch whose core the records are (none: epoch 0):
    /// the core to restart is that epoch's.
    pub epoch: Option<palisade_core::reconfig::Handover>,
}

/// Recovers from `dir`. A snapshot that does not check is deleted and the
/// next older one tried; a damaged log is cut where the damage starts, and
/// the replica then rejoins without its votes. Errors are the disk's own
/// (unreadable, full, read-only): a replica must not run on without the
/// durability it was configured for.
pub fn recover<S: Service, D: Dir>(
    dir: Arc<D>,
    mode: Durability,
    wal: WalOptions,
    exec: Arc<RwLock<Executor<S>>>,
    ecfg: ExecutionConfig,
    nonce: u64,
) -> io::Result<Recovered<S, D>> {
    let checkpoint_interval = ecfg.checkpoint_interval.max(1);
    let log_window = ecfg.log_window;
    let (mut snapshots, rejected) = Snapshots::open(dir.clone(), SNAPSHOTS_KEPT)?;
    let mut report = RecoveryReport { rejected, ..RecoveryReport::default() };
    // The genesis parts, to put back should every snapshot fail part way
    // (frozen: cheap, and shared with the service until it changes them).
    let genesis: Vec<Part> = {
        let e = exec.read();
        (0..e.part_count()).map(|i| e.part(i)).collect()
    };
    let max_record = ecfg.max_record_bytes.min(usize::MAX as u64) as usize;
    // A first read of the log finds the stable checkpoint (and cuts a torn
    // or damaged tail): the replica must be able to serve that state to a
    // peer fetching it, so the state is rebuilt from a snapshot at or
    // before it (the log keeps the batches after the older snapshot).
    let (first, scan) = Journal::open_with(dir.clone(), wal, |_, _, _, _| Ok(()))?;
    drop(first);
    // (A core of a later epoch starts stable at its handover checkpoint.)
    let stable = scan.records.iter().filter_map(|r| match r {
        palisade_core::Record::Stable(cert) => Some(cert.seq),
        _ => None,
    });
    let stable = stable.chain(scan.epoch.as_ref().map(|l| l.cert.seq)).max();
    // Installed part by part as the files are read: a gigabyte state is
    // never held twice.
    let (loaded, rejected) = snapshots
        .load_not_after(stable, genesis.len(), max_record, |i, records| exec.write().install_part(i, records))?;
    if loaded.is_none() && !rejected.is_empty() {
        let mut e = exec.write();
        for (i, p) in genesis.iter().enumerate() {
            e.install_part(i as u32, p.records())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("the genesis state: {e}")))?;
        }
    }
    drop(genesis);
    report.rejected.extend(rejected);
    let restored = loaded.map(|l| {
        report.snapshot = Some((l.seq, l.bytes));
        (l.seq, l.root)
    });
    let mut execution = ExecutionHost::new(exec, ecfg, restored)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("the snapshot does not install: {e}")))?;
    let (mut executed, mut state) = execution.restored();
    // Replay the decided batches that follow as the log is read, a whole
    // checkpoint interval at a time once all of it has been read: the core
    // restarts at a checkpoint, and learns anything later again from its
    // records and its peers. At most one interval's batches are held.
    let mut waiting: BTreeMap<SeqNo, Vec<(u64, ViewNo, Arc<Batch>)>> = BTreeMap::new();
    let mut replayed_to = executed;
    let mut quiet = Quiet { checkpoints: Vec::new() };
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    let (mut journal, rec) = Journal::open_with(dir, wal, |epoch, seq, view, batch| {
        // A life of the replica logs decisions in order, so the batches
        // that can still be replayed run on from the last one held; a batch
        // past a gap (a state fetched and not yet snapshotted, snapshots
        // refused) can never be reached, and is not held.
        let run_end = waiting.last_key_value().map_or(replayed_to, |(s, _)| *s);
        if seq <= replayed_to || seq > run_end.next() {
            return Ok(());
        }
        let held = waiting.entry(seq).or_default();
        if !held.iter().any(|(e, _, _)| *e == epoch) {
            held.push((epoch, view, batch));
        }
        let next = replayed_to.next();
        let boundary = SeqNo(next.0.div_ceil(checkpoint_interval) * checkpoint_interval);
        if seq != boundary {
            return Ok(());
        }
        // Epochs change only at checkpoints, so one interval's batches are
        // all of the epoch the state is in at its start; one an epoch's
        // core delivered past that epoch's end is void, as in execution.
        // An interval whose batches of the state's epoch are not all in yet
        // (the previous epoch's core logged void ones first) waits for them.
        let epoch = execution.epoch();
        let complete = waiting.range(..=boundary).filter(|(_, held)| held.iter().any(|(e, _, _)| *e == epoch)).count();
        if complete as u64 != boundary.0 - replayed_to.0 {
            return Ok(());
        }
        let later = waiting.split_off(&boundary.next());
        let interval: Vec<(SeqNo, ViewNo, Arc<Batch>)> = std::mem::replace(&mut waiting, later)
            .into_iter()
            .filter_map(|(s, held)| held.into_iter().find(|(e, _, _)| *e == epoch).map(|(_, v, b)| (s, v, b)))
            .collect();
        for (seq, view, batch) in interval {
            execution.handle(ExecCommand::Deliver { epoch, seq, view, batch }, &mut quiet).map_err(invalid)?;
            report.replayed += 1;
        }
        replayed_to = boundary;
        if let Some(&(s, d)) = quiet.checkpoints.last() {
            (executed, state) = (s, d);
            // The stable checkpoint is at most a log window behind the
            // newest state: keep what may be it, so that peers can still
            // fetch it (parts unchanged since are shared, not copied).
            let keep_from = SeqNo(s.0.saturating_sub(log_window));
            let _ = execution.handle(ExecCommand::Stable { seq: stable.unwrap_or_default(), keep_from }, &mut quiet);
        }
        Ok(())
    })?;
    // Nothing older than the stable checkpoint is needed.
    if let Some(stable) = stable {
        let _ = execution.handle(ExecCommand::Stable { seq: stable, keep_from: stable.min(executed) }, &mut quiet);
    }
    drop(waiting);
    // The log keeps the batches after the loaded snapshot's fallback, so
    // that the fallback still reaches it should it rot before the next.
    if let Some(fallback) = report.snapshot.and_then(|(seq, _)| snapshots.before(seq)) {
        journal.snapshot_durable(fallback)?;
    }
    report.entries = rec.entries;
    // The first read cut the log where it was torn or damaged.
    report.cut = scan.cut.clone();
    report.executed = executed;
    let damaged = report.cut.as_ref().is_some_and(|c| c.kind == CutKind::Corrupt);
    report.votes_lost = !mode.logs_votes() || damaged;
    report.records = if report.votes_lost { 0 } else { rec.records.len() };
    let epoch = rec.epoch;
    let restart = report.found_anything().then(|| Restart {
        records: if report.votes_lost { Vec::new() } else { rec.records },
        votes_lost: report.votes_lost,
        executed,
        executed_state: state,
        nonce,
    });
    Ok(Recovered { journal, snapshots, execution, restart, report, epoch })
}
