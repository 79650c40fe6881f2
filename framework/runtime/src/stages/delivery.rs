//! Delivery: the service in order, snapshots at checkpoints, state
//! transfer, answers to clients; hosted by the one driver every host
//! shares ([`ExecutionHost`]).

use super::{Control, ReplyBatch};
use crate::egress::{send_to_peer, Egress};
use crate::metrics::RuntimeMetrics;
use crate::queue::{Ended, Outflow, Rx};
use crate::runner::Stage;
use crate::storage::{DurableMarks, SnapshotWriter};
use palisade_core::{Digest, Input, PeerMessage, ReplicaId, SeqNo, Service};
use palisade_host::{ClientMail, ExecCommand, ExecEvent, ExecutionHost, ExecutionIo, Reconfigured};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Batches of replies held for durability at most; past it, delivery
/// takes nothing new until storage catches up.
const HELD_MAX: usize = 1024;

/// What delivery does about the disk.
pub struct DeliveryDisk {
    /// `log` mode: replies wait until their batch is durable.
    pub hold_replies: bool,
    /// How far storage has got.
    pub marks: Arc<DurableMarks>,
    /// Writes checkpoints' states in the background.
    pub snapshots: SnapshotWriter,
    /// Replies waiting for their batch (its sequence number) to be durable.
    pub held: VecDeque<(u64, Vec<ClientMail>)>,
    /// Tentative replies waiting for the records before them to be
    /// durable (the group count they need).
    pub held_tentative: VecDeque<(u64, Vec<ClientMail>)>,
    /// A fetched state that must be written (the log cannot replay to it)
    /// once the writer is free.
    pub forced: Option<SeqNo>,
}

/// Runs decisions through the service. Its replies and checkpoint digests
/// are never dropped: while any wait for room, it takes nothing new.
pub struct Delivery<S: Service> {
    /// Decisions in.
    pub rx: Rx<ExecCommand>,
    /// The service, its snapshots and who answers in full.
    pub host: ExecutionHost<S>,
    /// Checkpoint digests, fetched states and membership news back to
    /// consensus.
    pub tx_control: Outflow<Control>,
    /// Replies out, one batch per delivered batch.
    pub tx_reply: Outflow<ReplyBatch>,
    /// Where snapshots for peers go.
    pub egress: Arc<dyn Egress>,
    /// Counters.
    pub metrics: Arc<RuntimeMetrics>,
    /// Commands per wake-up.
    pub drain_max: usize,
    /// The disk, when the replica keeps one.
    pub disk: Option<DeliveryDisk>,
    /// The last batch delivered (what a read's answer reflects).
    pub delivered: u64,
    /// The last state transfer target logged.
    pub fetch_logged: u64,
}

/// Replies held until a mark (a sequence number, a group count) is durable.
type Held = VecDeque<(u64, Vec<ClientMail>)>;

struct Wiring<'a> {
    held: Option<&'a mut Held>,
    /// Tentative replies held for durable records, and how many groups
    /// of records are durable now.
    held_tentative: Option<(&'a mut Held, u64)>,
    seq: u64,
    /// States fetched from peers during this command.
    fetched: Vec<SeqNo>,
    tx_control: &'a mut Outflow<Control>,
    tx_reply: &'a mut Outflow<ReplyBatch>,
    egress: &'a dyn Egress,
    metrics: &'a RuntimeMetrics,
    ended: bool,
}

impl ExecutionIo for Wiring<'_> {
    fn replies(&mut self, mails: Vec<ClientMail>) {
        for m in &mails {
            if let ClientMail::Answer { client, request, .. } = m {
                self.metrics.latency.answered(*client, *request);
            }
        }
        if let Some(held) = self.held.as_deref_mut() {
            held.push_back((self.seq, mails));
            return;
        }
        if self.tx_reply.push(mails).is_err() {
            self.ended = true;
        }
    }

    fn tentative_replies(&mut self, mails: Vec<ClientMail>, durable_group: u64) {
        for m in &mails {
            if let ClientMail::Answer { client, request, .. } = m {
                self.metrics.latency.answered(*client, *request);
            }
        }
        if let Some((held, done)) = self.held_tentative.as_mut() {
            if durable_group > *done || !held.is_empty() {
                held.push_back((durable_group, mails));
                return;
            }
        }
        if self.tx_reply.push(mails).is_err() {
            self.ended = true;
        }
    }

    fn checkpoint(&mut self, seq: SeqNo, state: Digest, config: Digest) {
        if self.tx_control.push(Control::Input(Input::CheckpointReady { seq, state, config })).is_err() {
            self.ended = true;
        }
    }

    fn state_fetched(&mut self, seq: SeqNo, state: Digest) {
        self.fetched.push(seq);
        if self.tx_control.push(Control::Input(Input::StateFetched { seq, state })).is_err() {
            self.ended = true;
        }
    }

    fn reconfigured(&mut self, event: Reconfigured) {
        if self.tx_control.push(Control::Reconfigured(event)).is_err() {
            self.ended = true;
        }
    }

    fn send(&mut self, to: ReplicaId, epoch: u64, msg: PeerMessage) {
        let body = self.egress.peer_body(epoch, &msg);
        send_to_peer(self.egress, self.metrics, to, vec![body]);
    }

    fn note(&mut self, event: ExecEvent) {
        let c = &self.metrics.counters;
        match event {
            ExecEvent::BatchDelivered => RuntimeMetrics::add(&c.batches_delivered, 1),
            ExecEvent::Executed(n) => RuntimeMetrics::add(&c.requests_executed, n),
            ExecEvent::DigestReplies(n) => RuntimeMetrics::add(&c.reply_digests, n),
            ExecEvent::CheckpointTaken => RuntimeMetrics::add(&c.checkpoints_taken, 1),
            ExecEvent::StateServed => RuntimeMetrics::add(&c.state_answers_served, 1),
            ExecEvent::PartInstalled => RuntimeMetrics::add(&c.state_parts_installed, 1),
            ExecEvent::BadStateData => RuntimeMetrics::add(&c.state_data_bad, 1),
            ExecEvent::VoidBatch => RuntimeMetrics::add(&c.batches_void, 1),
            ExecEvent::Tentative => RuntimeMetrics::add(&c.batches_tentative, 1),
            ExecEvent::RolledBack => RuntimeMetrics::add(&c.tentative_rollbacks, 1),
            ExecEvent::Admin { accepted: true } => RuntimeMetrics::add(&c.admin_requests_accepted, 1),
            ExecEvent::Admin { accepted: false } => RuntimeMetrics::add(&c.admin_requests_rejected, 1),
        }
    }
}

impl<S: Service + Send + Sync> Stage for Delivery<S> {
    fn name(&self) -> &'static str {
        "delivery"
    }

    fn poll(&mut self) -> Result<bool, Ended> {
        let mut busy = self.release_held()?;
        self.offer_again();
        for _ in 0..self.drain_max {
            if !(self.tx_control.flush()? && self.tx_reply.flush()?) {
                break;
            }
            if self.disk.as_ref().is_some_and(|d| d.held.len() >= HELD_MAX) {
                break;
            }
            let Some(cmd) = self.rx.take() else { break };
            match &cmd {
                ExecCommand::Deliver { seq, .. } | ExecCommand::Confirm { seq, .. } => self.delivered = seq.0,
                // Logged once a target: the core asks again while it waits.
                ExecCommand::Fetch { epoch, seq, holders, .. } if seq.0 != self.fetch_logged => {
                    self.fetch_logged = seq.0;
                    tracing::info!(
                        replica = self.egress.me().0,
                        epoch = *epoch,
                        seq = seq.0,
                        delivered = self.delivered,
                        holders = *holders,
                        "state transfer started"
                    );
                }
                _ => {}
            }
            let hold = self.disk.as_ref().is_some_and(|d| d.hold_replies);
            let (held, held_tentative) = match self.disk.as_mut() {
                Some(d) => {
                    let done = d.marks.groups_done.load(Ordering::Acquire);
                    (if hold { Some(&mut d.held) } else { None }, Some((&mut d.held_tentative, done)))
                }
                None => (None, None),
            };
            let mut io = Wiring {
                held,
                held_tentative,
                seq: self.delivered,
                fetched: Vec::new(),
                tx_control: &mut self.tx_control,
                tx_reply: &mut self.tx_reply,
                egress: &*self.egress,
                metrics: &self.metrics,
                ended: false,
            };
            // The digest matched a certificate signed by a quorum; a
            // snapshot that does not install means this build cannot read
            // its own cluster's state: stop rather than diverge.
            if let Err(e) = self.host.handle(cmd, &mut io) {
                panic!("{e}");
            }
            if io.ended {
                return Err(Ended);
            }
            let fetched = std::mem::take(&mut io.fetched);
            self.offer(fetched);
            busy = true;
        }
        busy |= self.release_held()?;
        Ok(busy)
    }
}

impl<S: Service + Send + Sync> Delivery<S> {
    /// Sends the held replies whose batches are now durable.
    fn release_held(&mut self) -> Result<bool, Ended> {
        let Some(disk) = &mut self.disk else { return Ok(false) };
        let durable = disk.marks.decided.load(Ordering::Acquire);
        let mut any = false;
        while disk.held.front().is_some_and(|(seq, _)| *seq <= durable) {
            let (_, mails) = disk.held.pop_front().expect("a front");
            self.tx_reply.push(mails)?;
            any = true;
        }
        let groups = disk.marks.groups_done.load(Ordering::Acquire);
        while disk.held_tentative.front().is_some_and(|(group, _)| *group <= groups) {
            let (_, mails) = disk.held_tentative.pop_front().expect("a front");
            self.tx_reply.push(mails)?;
            any = true;
        }
        Ok(any)
    }

    /// Offers the snapshot writer the newest stable checkpoint's state,
    /// and any state fetched (the log cannot replay up to it).
    fn offer(&mut self, fetched: Vec<SeqNo>) {
        let Some(disk) = &mut self.disk else { return };
        for seq in fetched {
            let Some(kept) = self.host.store().get(seq) else { continue };
            if !disk.snapshots.offer(seq, kept, true) {
                disk.forced = Some(seq);
            }
        }
        self.offer_again();
    }

    /// Retries writing a fetched state the writer was too busy for, and
    /// offers the newest stable state (the writer rings when it is free).
    fn offer_again(&mut self) {
        let Some(disk) = &mut self.disk else { return };
        if let Some(seq) = disk.forced {
            match self.host.store().get(seq) {
                Some(kept) if !disk.snapshots.offer(seq, kept, true) => {}
                _ => disk.forced = None,
            }
        }
        if let Some((seq, kept)) = self.host.store().newest_stable() {
            disk.snapshots.offer(seq, kept, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::tests::Collect;
    use crate::queue::{queue, Bell};
    use bytes::Bytes;
    use palisade_core::message::StateQuery;
    use palisade_core::{Batch, ClientId, Executor, Membership, Mode, Request, RequestId, ViewNo};
    use palisade_host::ExecutionConfig;
    use palisade_services::counter::{Counter, CounterOp};
    use palisade_wire::envelope::Answer;
    use parking_lot::RwLock;

    fn add(client: u64, id: u64) -> Request {
        Request {
            client: ClientId(client),
            id: RequestId(id),
            read_only: false,
            operation: CounterOp::Add(1).encode(),
            auth: Bytes::new(),
        }
    }

    type CounterStage = (Delivery<Counter>, crate::queue::Tx<ExecCommand>, Rx<Control>, Rx<ReplyBatch>, Arc<Collect>);

    /// A delivery stage for replica 0 of four, over a counter that
    /// checkpoints every two batches: the stage, its command input, its
    /// outputs, and where its frames go.
    fn counter_stage(disk: Option<DeliveryDisk>, metrics: Arc<RuntimeMetrics>) -> CounterStage {
        let bell = Bell::default();
        let (tx_cmd, rx) = queue(16, &bell, None);
        let (tx_control, rx_control) = queue(16, &bell, None);
        let (tx_reply, rx_reply) = queue(16, &bell, None);
        let membership = Membership::with_size(4, Mode::Bft).unwrap();
        let exec = Arc::new(RwLock::new(Executor::new(Counter::default(), 16)));
        let cfg = ExecutionConfig { checkpoint_interval: 2, ..ExecutionConfig::new(ReplicaId(0), membership) };
        let host = ExecutionHost::new(exec, cfg, None).unwrap();
        let egress = Arc::new(Collect::default());
        let delivery = Delivery {
            rx,
            host,
            tx_control: Outflow::new(tx_control),
            tx_reply: Outflow::new(tx_reply),
            egress: egress.clone(),
            metrics,
            drain_max: 8,
            disk,
            delivered: 0,
            fetch_logged: 0,
        };
        (delivery, tx_cmd, rx_control, rx_reply, egress)
    }

    #[test]
    fn a_delivered_batch_answers_every_client_once_in_full_or_by_digest_and_checkpoints_report_back() {
        let (mut delivery, tx_cmd, rx_control, rx_reply, egress) = counter_stage(None, Arc::default());
        let requests: Vec<Request> = (1..=8).map(|c| add(c, 1)).collect();
        for seq in 1..=2 {
            let batch =
                Arc::new(Batch { timestamp_ms: 1, proposed_in: palisade_core::ViewNo(0), requests: requests.clone() });
            tx_cmd.try_send(ExecCommand::Deliver { epoch: 0, seq: SeqNo(seq), view: ViewNo(0), batch }).unwrap();
        }
        let query = StateQuery::Manifest { from: 0 };
        tx_cmd.try_send(ExecCommand::Serve { epoch: 0, to: ReplicaId(2), seq: SeqNo(2), query }).unwrap();
        assert!(delivery.poll().unwrap());
        let replies: Vec<ReplyBatch> = rx_reply.take_up_to(8);
        assert_eq!(replies.len(), 2, "one reply batch per delivered batch");
        let first = &replies[0];
        assert_eq!(first.len(), 8);
        let full = first.iter().filter(|m| matches!(m, ClientMail::Answer { answer: Answer::Full(_), .. })).count();
        assert_eq!(full, 8, "a counter's result is smaller than its digest: every replica sends it in full");
        let control: Vec<u64> = rx_control
            .take_up_to(8)
            .iter()
            .map(|i| match i {
                Control::Input(Input::CheckpointReady { seq, .. }) => seq.0,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(control, vec![2]);
        assert_eq!(egress.peer_bodies(ReplicaId(2)), 1, "the state at the checkpoint was served");
    }

    /// The checkpoints on `dir` that have a snapshot.
    fn snapshots_on(dir: &palisade_storage::MemDir) -> Vec<u64> {
        use palisade_storage::Dir;
        let names = dir.list().unwrap();
        names.iter().filter_map(|n| n.strip_prefix("snap-")?.strip_suffix(".snap")?.parse().ok()).collect()
    }

    #[test]
    fn only_a_stable_checkpoints_state_goes_to_disk_so_a_restart_can_serve_it() {
        use crate::storage::{DurableMarks, SnapshotPolicy, SnapshotWriter};
        use palisade_storage::snapshot::Snapshots;
        use palisade_storage::MemDir;
        use std::sync::atomic::AtomicBool;
        let dir = MemDir::new();
        let (files, _) = Snapshots::open(Arc::new(dir.clone()), 2).unwrap();
        let marks = Arc::new(DurableMarks::default());
        let metrics = Arc::new(RuntimeMetrics::default());
        let stop = Arc::new(AtomicBool::new(false));
        let policy = SnapshotPolicy { interval: 1, last: SeqNo(0), duty_percent: 100 };
        let (writer, thread) =
            SnapshotWriter::spawn(files, policy, marks.clone(), metrics.clone(), stop.clone(), Bell::default());
        let disk = DeliveryDisk {
            hold_replies: false,
            marks: marks.clone(),
            snapshots: writer,
            held: VecDeque::new(),
            held_tentative: VecDeque::new(),
            forced: None,
        };
        let (mut delivery, tx_cmd, _rx_control, _rx_reply, _) = counter_stage(Some(disk), metrics.clone());
        // Polls until the writer has written `count` snapshots and is idle.
        let settle = |delivery: &mut Delivery<Counter>, count: u64| {
            for _ in 0..1000 {
                delivery.poll().unwrap();
                let written = metrics.counters.snapshots_written.load(Ordering::Acquire);
                if written >= count && !marks.snapshot_busy.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            panic!("the writer did not write {count} snapshots");
        };
        for seq in 1..=6 {
            let batch = Arc::new(Batch { timestamp_ms: 1, proposed_in: ViewNo(0), requests: vec![add(1, seq)] });
            tx_cmd.try_send(ExecCommand::Deliver { epoch: 0, seq: SeqNo(seq), view: ViewNo(0), batch }).unwrap();
        }
        settle(&mut delivery, 0);
        assert_eq!(snapshots_on(&dir), Vec::<u64>::new(), "checkpoints 2, 4 and 6 are not stable yet");
        // The cluster is slow to agree: 4 becomes stable while this
        // replica has executed to 6.
        tx_cmd.try_send(ExecCommand::Stable { seq: SeqNo(4), keep_from: SeqNo(2) }).unwrap();
        settle(&mut delivery, 1);
        assert_eq!(snapshots_on(&dir), vec![4], "the stable checkpoint, not the newer 6");
        tx_cmd.try_send(ExecCommand::Stable { seq: SeqNo(6), keep_from: SeqNo(4) }).unwrap();
        settle(&mut delivery, 2);
        assert_eq!(snapshots_on(&dir), vec![4, 6]);
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
    }
}
