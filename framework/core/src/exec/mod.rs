//! Deterministic execution: the service, plus the client table that makes
//! execution exactly-once.
//!
//! The client table is replicated state. It goes into every snapshot and so
//! into every checkpoint digest, so that a replica restored by state
//! transfer filters duplicates exactly as the others do.

mod parts;

use crate::message::{Batch, Request};
use crate::reconfig::{AdminVerify, Configuration, Reconfig};
use crate::state::PartedState;
use crate::types::{ClientId, Digest, RequestId, SeqNo, ViewNo};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a service sees with each ordered request. Everything in it is the
/// same on every correct replica, so services can use it instead of clocks
/// and random number generators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecContext {
    /// Sequence number of the batch.
    pub seq: SeqNo,
    /// View in which the batch was delivered on this replica. It can differ
    /// between replicas (a laggard learns decisions later), so services
    /// must not let it influence state.
    pub view: ViewNo,
    /// Who sent the request.
    pub client: ClientId,
    /// The client's number for it.
    pub request: RequestId,
    /// The primary-chosen timestamp, made monotonic across batches.
    pub timestamp_ms: u64,
    /// A per-batch seed derived from the sequence number and the set of
    /// requests in the batch (see [`batch_seed`] for what a faulty primary
    /// can still influence).
    pub seed: u64,
}

/// A replicated service: deterministic, snapshot-able state.
pub trait Service {
    /// Applies an ordered request and returns its result.
    fn execute(&mut self, ctx: &ExecContext, operation: &[u8]) -> Bytes;
    /// Applies the fresh requests of one delivered batch, in order, and
    /// returns their results in the same order. The default calls
    /// [`Service::execute`] on each; override it to amortize work per batch
    /// (one lock, one write, one index update).
    fn execute_batch(&mut self, requests: &[(ExecContext, &[u8])]) -> Vec<Bytes> {
        requests.iter().map(|(ctx, op)| self.execute(ctx, op)).collect()
    }
    /// Answers a read-only request; must not change state.
    fn execute_unordered(&self, operation: &[u8]) -> Bytes;
    /// Serializes the whole state deterministically: equal states must give
    /// equal bytes, because checkpoint digests are taken over them.
    fn snapshot(&self) -> Bytes;
    /// Replaces the state with a snapshot.
    fn install(&mut self, snapshot: &[u8]) -> Result<(), String>;
    /// The state divided into parts, for a service whose state is too
    /// large to snapshot whole at every checkpoint (see
    /// [`crate::state`]). With the default, the state is one part: the
    /// snapshot.
    fn parted(&self) -> Option<&dyn PartedState> {
        None
    }
    /// The same, to change: return the same object as [`Service::parted`].
    fn parted_mut(&mut self) -> Option<&mut dyn PartedState> {
        None
    }
}

/// One request's outcome in a delivered batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executed {
    /// Who sent it.
    pub client: ClientId,
    /// Its id.
    pub request: RequestId,
    /// The result to send back.
    pub result: Bytes,
    /// False when it had already executed and `result` is the cached reply.
    pub fresh: bool,
}

/// What the execution layer knows of a client request it has not seen in a batch yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Not executed yet: order it.
    New,
    /// Executed already: resend this reply.
    Cached(Bytes),
    /// Executed tentatively and not committed yet: do not resend this
    /// reply as committed; treat the request as not executed yet.
    Tentative(Bytes),
    /// Below the client's window: neither executable nor cached.
    Stale,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ClientRecord {
    /// Highest request id executed.
    high: u64,
    /// Ids executed within (high - window, high] and their replies.
    done: BTreeMap<u64, Bytes>,
}

// In snapshots a record is `high` and its entries newest first, each id
// as its distance below `high`: one or two bytes instead of eight or nine
// for clock-based ids, and the reply caches are most of a snapshot.
impl Serialize for ClientRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        struct Entries<'a>(&'a ClientRecord);
        impl Serialize for Entries<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.done.iter().rev().map(|(id, r)| (self.0.high - id, r)))
            }
        }
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.high)?;
        t.serialize_element(&Entries(self))?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for ClientRecord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (high, entries): (u64, Vec<(u64, Bytes)>) = Deserialize::deserialize(d)?;
        let mut done = BTreeMap::new();
        for (below, result) in entries {
            let id =
                high.checked_sub(below).ok_or_else(|| serde::de::Error::custom("a request id above the highest"))?;
            done.insert(id, result);
        }
        Ok(ClientRecord { high, done })
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotRepr {
    window: u64,
    last_timestamp_ms: u64,
    clients: Vec<(ClientId, ClientRecord)>,
    service: Bytes,
    reconfig: Option<Reconfig>,
}

/// [`SnapshotRepr`] by reference: encodes to the same bytes.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    window: u64,
    last_timestamp_ms: u64,
    clients: Vec<(ClientId, &'a ClientRecord)>,
    service: Bytes,
    reconfig: Option<&'a Reconfig>,
}

/// Runs a [`Service`] over delivered batches with exactly-once semantics.
///
/// Each client has a window of `window` request ids below its highest
/// executed id; ids inside it execute at most once (out of order is fine,
/// so a client may keep many requests in flight), ids below it are stale.
/// A client that restarts simply continues above its old ids.
pub struct Executor<S> {
    service: S,
    clients: BTreeMap<ClientId, ClientRecord>,
    window: u64,
    last_timestamp_ms: u64,
    /// Each client's record as of the last checkpoint, with its digest:
    /// the client table's part re-hashes only the clients in `dirty`.
    frozen: BTreeMap<ClientId, (Digest, std::sync::Arc<ClientRecord>)>,
    /// Clients whose record changed since then.
    dirty: std::collections::BTreeSet<ClientId>,
    /// The membership, when the cluster can be reconfigured.
    reconfig: Option<Reconfig>,
    /// What admin requests need: the view manager's client id (fixed for
    /// the cluster's life), signature checks and the checkpoint interval.
    admin: Option<Admin>,
    /// The requests of the batch executed tentatively: their cached
    /// replies are tentative until it commits. Not replicated state.
    tentative: std::collections::BTreeSet<(ClientId, RequestId)>,
}

struct Admin {
    client: ClientId,
    verify: std::sync::Arc<dyn AdminVerify>,
    checkpoint_interval: u64,
}

impl<S: Service> Executor<S> {
    /// Wraps a freshly created service.
    pub fn new(service: S, window: u64) -> Self {
        Executor {
            service,
            clients: BTreeMap::new(),
            window: window.max(1),
            last_timestamp_ms: 0,
            frozen: BTreeMap::new(),
            dirty: Default::default(),
            reconfig: None,
            admin: None,
            tentative: Default::default(),
        }
    }

    /// Makes the membership part of the replicated state, starting from
    /// `genesis`: requests from the view manager's client id are then
    /// reconfiguration requests, judged with `verify`, taking effect at the
    /// first checkpoint (every `checkpoint_interval`) at or after them.
    pub fn with_reconfiguration(
        mut self,
        genesis: Configuration,
        verify: std::sync::Arc<dyn AdminVerify>,
        checkpoint_interval: u64,
    ) -> Self {
        self.admin = Some(Admin { client: genesis.view_manager_client(), verify, checkpoint_interval });
        self.reconfig = Some(Reconfig::new(genesis));
        self
    }

    /// The configuration in force, when the cluster can be reconfigured.
    pub fn configuration(&self) -> Option<&Configuration> {
        self.reconfig.as_ref().map(|r| r.current())
    }

    /// The configuration in force and the handover checkpoint it started
    /// at, when the cluster can be reconfigured.
    pub fn configuration_since(&self) -> Option<(&Configuration, SeqNo)> {
        self.reconfig.as_ref().map(|r| (r.current(), r.since()))
    }

    /// An accepted change waiting for its boundary, and the boundary.
    pub fn pending_configuration(&self) -> Option<(&Configuration, SeqNo)> {
        self.reconfig.as_ref().and_then(|r| r.pending())
    }

    /// The service, for inspection.
    pub fn service(&self) -> &S {
        &self.service
    }

    /// Whether `client`'s request `id` still needs ordering.
    pub fn lookup(&self, client: ClientId, id: RequestId) -> Lookup {
        match self.clients.get(&client) {
            None => Lookup::New,
            Some(rec) => {
                if let Some(r) = rec.done.get(&id.0) {
                    if self.tentative.contains(&(client, id)) {
                        Lookup::Tentative(r.clone())
                    } else {
                        Lookup::Cached(r.clone())
                    }
                } else if rec.high >= self.window && id.0 <= rec.high - self.window {
                    Lookup::Stale
                } else {
                    Lookup::New
                }
            }
        }
    }

    /// Marks the fresh requests of `executed` as executed tentatively
    /// (their cached replies are then [`Lookup::Tentative`]), or with an
    /// empty slice, none.
    pub fn set_tentative(&mut self, executed: &[Executed]) {
        self.tentative.clear();
        self.tentative.extend(executed.iter().filter(|e| e.fresh).map(|e| (e.client, e.request)));
    }

    /// Executes a committed batch. Duplicates yield their cached reply;
    /// stale requests and read-only requests smuggled into a batch are skipped.
    ///
    /// With reconfiguration on, the view manager's requests are judged here
    /// instead of by the service, and the batch at a pending change's
    /// boundary (null or not) installs the new configuration.
    pub fn execute_batch(&mut self, seq: SeqNo, view: ViewNo, batch: &Batch) -> Vec<Executed> {
        let out = self.execute_requests(seq, view, batch);
        if let Some(r) = &mut self.reconfig {
            r.after_batch(seq, batch.proposed_in);
        }
        out
    }

    fn execute_requests(&mut self, seq: SeqNo, view: ViewNo, batch: &Batch) -> Vec<Executed> {
        if batch.is_null() {
            return Vec::new();
        }
        self.last_timestamp_ms = self.last_timestamp_ms.max(batch.timestamp_ms);
        let seed = batch_seed(seq, batch);
        // Decide what is fresh first (a request twice in one batch is fresh
        // once), then hand the fresh ones to the service in one call.
        enum Slot {
            Fresh(usize),
            Admin(Bytes),
            Cached(Bytes),
            Again(usize),
        }
        let mut slots: Vec<(&Request, Slot)> = Vec::with_capacity(batch.requests.len());
        let mut fresh: Vec<(ExecContext, &[u8])> = Vec::new();
        let mut fresh_ids: std::collections::BTreeMap<(ClientId, RequestId), usize> = Default::default();
        for req in &batch.requests {
            if req.read_only {
                continue;
            }
            if let Some(&i) = fresh_ids.get(&(req.client, req.id)) {
                slots.push((req, Slot::Again(i)));
                continue;
            }
            match self.lookup(req.client, req.id) {
                Lookup::Stale => {}
                Lookup::Cached(result) | Lookup::Tentative(result) => slots.push((req, Slot::Cached(result))),
                Lookup::New
                    if self.reconfig.is_some() && self.admin.as_ref().is_some_and(|a| a.client == req.client) =>
                {
                    let (Some(admin), Some(reconfig)) = (&self.admin, &mut self.reconfig) else {
                        unreachable!("both checked just above")
                    };
                    let outcome =
                        reconfig.execute(seq, admin.checkpoint_interval, &req.operation, admin.verify.as_ref());
                    slots.push((req, Slot::Admin(outcome.encode())));
                }
                Lookup::New => {
                    let ctx = ExecContext {
                        seq,
                        view,
                        client: req.client,
                        request: req.id,
                        timestamp_ms: self.last_timestamp_ms,
                        seed,
                    };
                    fresh_ids.insert((req.client, req.id), fresh.len());
                    slots.push((req, Slot::Fresh(fresh.len())));
                    fresh.push((ctx, &req.operation[..]));
                }
            }
        }
        let results = if fresh.is_empty() { Vec::new() } else { self.service.execute_batch(&fresh) };
        assert_eq!(results.len(), fresh.len(), "Service::execute_batch must return one result per request");
        let mut out = Vec::with_capacity(slots.len());
        for (req, slot) in slots {
            let (result, is_fresh) = match slot {
                Slot::Fresh(i) => {
                    self.record(req.client, req.id, results[i].clone());
                    (results[i].clone(), true)
                }
                Slot::Admin(result) => {
                    self.record(req.client, req.id, result.clone());
                    (result, true)
                }
                Slot::Again(i) => (results[i].clone(), false),
                Slot::Cached(r) => (r, false),
            };
            out.push(Executed { client: req.client, request: req.id, result, fresh: is_fresh });
        }
        out
    }

    fn record(&mut self, client: ClientId, id: RequestId, result: Bytes) {
        let window = self.window;
        self.dirty.insert(client);
        let rec = self.clients.entry(client).or_default();
        rec.done.insert(id.0, result);
        if id.0 > rec.high {
            rec.high = id.0;
            if rec.high >= window {
                // Ids only grow, so this forgets about one entry per call.
                let floor = rec.high - window;
                while rec.done.first_key_value().is_some_and(|(id, _)| *id <= floor) {
                    rec.done.pop_first();
                }
            }
        }
    }

    /// Answers a read-only request against the current state.
    pub fn execute_read_only(&self, request: &Request) -> Bytes {
        self.service.execute_unordered(&request.operation)
    }

    /// Serializes the client table and the service.
    pub fn snapshot(&self) -> Bytes {
        // Borrowed, not cloned: the reply caches are most of the bytes.
        let repr = SnapshotRef {
            window: self.window,
            last_timestamp_ms: self.last_timestamp_ms,
            clients: self.clients.iter().map(|(c, r)| (*c, r)).collect(),
            service: self.service.snapshot(),
            reconfig: self.reconfig.as_ref(),
        };
        // Sized up front (ids and lengths; results beyond that grow it):
        // growing a buffer of megabytes by doubling copies it.
        let estimate = 64 + repr.service.len() + self.clients.values().map(|r| 16 + r.done.len() * 4).sum::<usize>();
        Bytes::from(postcard::to_extend(&repr, Vec::with_capacity(estimate)).expect("snapshot encodes"))
    }

    /// Replaces all state with `snapshot`, which the caller has already
    /// matched against a certified digest.
    pub fn install(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let repr: SnapshotRepr =
            postcard::from_bytes(snapshot).map_err(|e| format!("snapshot does not decode: {e}"))?;
        self.service.install(&repr.service)?;
        self.window = repr.window.max(1);
        self.last_timestamp_ms = repr.last_timestamp_ms;
        self.clients = repr.clients.into_iter().collect();
        self.reconfig = repr.reconfig;
        self.forget_frozen();
        Ok(())
    }
}

/// Which request ids of one client have been seen, within a sliding window
/// below the highest: the core's record of delivered requests, so that a
/// late retransmission is not ordered (and timed) again.
#[derive(Clone, Debug, Default)]
pub struct IdWindow {
    high: u64,
    seen: std::collections::BTreeSet<u64>,
}

impl IdWindow {
    /// Records `id`; ids more than `window` below the highest are forgotten.
    pub fn insert(&mut self, id: u64, window: u64) {
        self.seen.insert(id);
        if id > self.high {
            self.high = id;
            if self.high >= window {
                let floor = self.high - window;
                while self.seen.first().is_some_and(|id| *id <= floor) {
                    self.seen.pop_first();
                }
            }
        }
    }

    /// Whether `id` was recorded, or is too old to matter.
    pub fn contains(&self, id: u64, window: u64) -> bool {
        self.seen.contains(&id) || (self.high >= window && id <= self.high - window)
    }
}

/// Deterministic per-batch seed: the same on every replica, and
/// unpredictable to a client before its request is ordered.
///
/// It hashes the sequence number and the *set* of requests, named by
/// client and request id, in sorted order: not the primary-chosen
/// timestamp and not the order of the requests, so a faulty primary cannot
/// try timestamps or orders until it likes the seed. It still chooses
/// which pending requests make up a batch, and each choice gives another
/// seed, so the seed is not unbiasable: a service that needs randomness no
/// replica can steer must run its own commit-and-reveal among clients.
pub fn batch_seed(seq: SeqNo, batch: &Batch) -> u64 {
    use sha2::Digest as _;
    let mut ids: Vec<(u64, u64)> = batch.requests.iter().map(|r| (r.client.0, r.id.0)).collect();
    ids.sort_unstable();
    let mut h = sha2::Sha256::new();
    h.update(b"palisade/seed/v1");
    h.update(seq.0.to_le_bytes());
    for (client, id) in ids {
        h.update(client.to_le_bytes());
        h.update(id.to_le_bytes());
    }
    let d: [u8; 32] = h.finalize().into();
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests;
