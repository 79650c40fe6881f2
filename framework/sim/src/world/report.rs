//! Judging a run: safety from the checkers, liveness from the history.

use super::World;
use palisade_core::ReplicaId;

/// The outcome of a run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Seed.
    pub seed: u64,
    /// Strategy of the Byzantine replicas, if any.
    pub strategy: Option<String>,
    /// The Byzantine replicas.
    pub byzantine: Vec<ReplicaId>,
    /// The faults of this run exceed what the protocol tolerates (f
    /// Byzantine replicas plus a replica that lost its votes): only safety
    /// is judged, since liveness is not promised.
    pub beyond_model: bool,
    /// The fault mix drawn for this seed.
    pub faults: String,
    /// Safety violations.
    pub safety: Vec<String>,
    /// Liveness failures.
    pub liveness: Vec<String>,
    /// Longest time from the heal to the completion of an operation that was pending at the heal.
    pub recovery_ms: Option<u64>,
    /// Operations clients completed.
    pub ops_completed: usize,
    /// Sequence numbers decided.
    pub batches: usize,
    /// Highest view any correct replica reached.
    pub max_view: u64,
    /// Highest membership epoch any correct replica reached.
    pub max_epoch: u64,
    /// Batches correct replicas' cores delivered past their epoch's end,
    /// and so did not execute.
    pub void_batches: u64,
    /// Snapshots installed by state transfer.
    pub state_transfers: u64,
    /// Times a correct replica that lost its votes finished rejoining.
    pub rejoins: u64,
    /// Tentative executions correct replicas undid (a view change
    /// committed something else where they had executed).
    pub rollbacks: u64,
    /// Links of the chain of epochs correct replicas refused as not
    /// certified (a Byzantine replica's forgeries).
    pub bad_links: u64,
    /// View changes correct replicas started because the primary's
    /// batches kept leaving out a request (the batch watch).
    pub skip_suspicions: u64,
    /// Requests correct backups forwarded because the primary had not
    /// proposed them within the forward grace (clients sending to all).
    pub late_forwards: u64,
    /// Messages put on the network.
    pub messages: u64,
    /// What restarts found on disk.
    pub disk: DiskStats,
    /// Client signatures checked by replicas (the rest were accepted on
    /// their MACs).
    pub signature_checks: u64,
    /// Distinct client requests executed.
    pub requests_executed: u64,
    /// Each replica's state at the end, for diagnosing failures.
    pub replica_states: Vec<String>,
}

/// What correct replicas' restarts found on their disks.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiskStats {
    /// Times every correct replica crashed at once.
    pub crash_alls: u64,
    /// Restarts from a disk (the journal and snapshots read back).
    pub recoveries: u64,
    /// Torn tails cut off.
    pub torn_tails: u64,
    /// Damaged logs found (the replica then rejoined without its votes).
    pub damaged_logs: u64,
    /// Snapshots refused because they did not check.
    pub rejected_snapshots: u64,
    /// Decided batches replayed on top of a snapshot.
    pub replayed: u64,
}

impl World {
    /// f Byzantine replicas plus replicas that lost their votes are more
    /// faults than the protocol tolerates: it must stay safe, but it is
    /// not promised to make progress (a replica without its votes waits
    /// for progress to rejoin, and progress waits for its votes). The f
    /// is the smallest of any epoch the run went through: a run that
    /// grew to f = 2 may still be stuck in an epoch with f = 1.
    pub(crate) fn beyond_model(&self) -> bool {
        let byzantine_count = self.replicas.iter().filter(|r| r.strategy.is_some()).count();
        let amnesiac_count =
            if self.faults.amnesia { self.victims.union(&self.lost_votes).count() } else { self.lost_votes.len() };
        byzantine_count + amnesiac_count > self.least_f
    }

    pub(crate) fn report(&mut self) -> Report {
        let history = std::mem::take(&mut self.history);
        // Beyond the fault model the cluster may be stuck for good with a
        // batch that a quorum prepared, and that clients accepted on
        // tentative answers, still uncommitted: such a request is pending,
        // not lost, while a correct replica holds it executed tentatively
        // (docs/protocol.md, "Tentative execution"). Within the model the
        // run drains until no tentative execution is left.
        let beyond_model = self.beyond_model();
        if beyond_model {
            for op in &history {
                let Some(&req) = op.requests.last() else { continue };
                // Executed tentatively, or (after every replica crashed,
                // which forgets tentative executions) prepared and durable.
                let held = self.replicas.iter().filter(|r| r.strategy.is_none()).any(|r| {
                    let tentative = r.execution.as_ref().is_some_and(|e| {
                        let lookup = e.executor().read().lookup(op.client, req);
                        matches!(lookup, palisade_core::exec::Lookup::Tentative(_))
                    });
                    let prepared = r.consensus.as_ref().is_some_and(|c| c.core().prepared_undelivered(op.client, req));
                    tentative || prepared
                });
                if held {
                    self.checker.pending.insert((op.client, req));
                }
            }
        }
        self.checker.check_linearizable(&history);
        let mut max_view = 0;
        let mut max_epoch = 0;
        let mut state_transfers = 0;
        let mut rejoins = 0;
        let mut rollbacks = 0;
        let mut bad_links = 0;
        let (mut skip_suspicions, mut late_forwards) = (0, 0);
        for (r, rep) in self.replicas.iter().enumerate() {
            if rep.strategy.is_some() {
                continue;
            }
            if let Some(host) = &rep.consensus {
                max_epoch = max_epoch.max(host.epoch());
                bad_links += host.counters().bad_links;
            }
            if let Some(core) = rep.consensus.as_ref().map(|h| h.core()) {
                max_view = max_view.max(core.view().0);
                state_transfers += core.metrics().state_transfers;
                rejoins += core.metrics().rejoined;
                rollbacks += core.metrics().rollbacks;
                skip_suspicions += core.metrics().skip_suspicions;
                late_forwards += core.metrics().late_forwards;
                if core.metrics().alarms > 0 {
                    self.checker.on_alarm(ReplicaId(r as u32), core.metrics().alarms);
                }
            }
        }
        let mut liveness = Vec::new();
        let mut recovery_ms: Option<u64> = None;
        for op in &history {
            let start = op.invoke_ms.max(self.heal_at);
            match op.complete_ms {
                Some(done) if done <= start + self.cfg.liveness_bound_ms => {
                    if op.invoke_ms < self.heal_at && done >= self.heal_at {
                        recovery_ms = Some(recovery_ms.unwrap_or(0).max(done - self.heal_at));
                    }
                }
                Some(done) => liveness.push(format!(
                    "client {} request {:?} took {} ms after {} ms (bound {} ms)",
                    op.client,
                    op.requests.last(),
                    done - start,
                    start,
                    self.cfg.liveness_bound_ms
                )),
                None => liveness.push(format!(
                    "client {} request {:?} invoked at {} ms never completed (heal at {} ms)",
                    op.client,
                    op.requests.last(),
                    op.invoke_ms,
                    self.heal_at
                )),
            }
        }
        if let Some(vm) = self.view_manager.as_ref().filter(|vm| !vm.done()) {
            liveness.push(format!(
                "the view manager's plan {} did not finish: epochs {:?} started, {} steps left",
                vm.name,
                vm.accepted,
                vm.plan.len() + usize::from(vm.current.is_some())
            ));
        }
        if !liveness.is_empty() {
            // Where every replica stands, to start the diagnosis from.
            let states: Vec<String> = self
                .replicas
                .iter()
                .map(|r| match &r.consensus {
                    None => format!("{}: down", r.id),
                    Some(h) => {
                        let c = h.core();
                        format!(
                            "{}: epoch {} view {}{} delivered {} stable {}{}{}{}",
                            r.id,
                            h.epoch(),
                            c.view(),
                            if c.is_normal() { "" } else { " (changing)" },
                            c.delivered(),
                            c.stable_checkpoint().seq,
                            if c.rejoining() { " rejoining" } else { "" },
                            if h.standby() { " standby" } else { "" },
                            h.removed().map_or(String::new(), |e| format!(" removed in {e}")),
                        )
                    }
                })
                .collect();
            liveness.insert(0, format!("replicas at the end: {}", states.join("; ")));
        }
        for cl in &self.clients {
            if cl.ops_after_heal > 0 && cl.current.is_none() {
                liveness.push(format!("client {} still had {} operations to run", cl.id, cl.ops_after_heal));
            }
        }
        if beyond_model {
            liveness.clear();
        }
        self.checker.violations.append(&mut self.votes.violations);
        let byzantine: Vec<ReplicaId> = self.replicas.iter().filter(|r| r.strategy.is_some()).map(|r| r.id).collect();
        let replica_states = self
            .replicas
            .iter()
            .map(|rep| match rep.consensus.as_ref().map(|h| h.core()) {
                None => format!("r{} down", rep.id),
                Some(c) => format!(
                    "r{}{} view={}{} delivered={} tentative={:?} stable={} pending={} transfer={} {:?}",
                    rep.id,
                    if rep.strategy.is_some() { "(byz)" } else { "" },
                    c.view(),
                    if c.is_normal() { "" } else { "(changing)" },
                    c.delivered(),
                    c.tentative(),
                    c.stable_checkpoint().seq,
                    c.pending_requests(),
                    c.transferring(),
                    c.metrics().dropped
                ),
            })
            .collect();
        Report {
            replica_states,
            seed: self.cfg.seed,
            strategy: {
                let names: Vec<&str> =
                    self.replicas.iter().filter_map(|r| r.strategy.as_ref().map(|s| s.name())).collect();
                (!names.is_empty()).then(|| names.join("+"))
            },
            byzantine,
            beyond_model,
            faults: match &self.view_manager {
                Some(vm) => format!("{} reconfigure={}", self.faults.describe(), vm.name),
                None => self.faults.describe(),
            },
            safety: std::mem::take(&mut self.checker.violations),
            liveness,
            recovery_ms,
            ops_completed: history.iter().filter(|o| o.complete_ms.is_some()).count(),
            batches: self.checker.decided_count(),
            max_view,
            max_epoch,
            void_batches: self.void_batches,
            state_transfers,
            rejoins,
            rollbacks,
            bad_links,
            skip_suspicions,
            late_forwards,
            messages: self.messages,
            disk: self.disk_stats,
            signature_checks: self.keys.signature_checks(),
            requests_executed: self.checker.executed_count() as u64,
        }
    }
}
