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
mod tests {
    use super::*;

    /// Appends each operation's first byte; replies with the length so far.
    #[derive(Default)]
    pub(super) struct Log(Vec<u8>);

    impl Service for Log {
        fn execute(&mut self, _: &ExecContext, op: &[u8]) -> Bytes {
            self.0.push(op[0]);
            Bytes::from(vec![self.0.len() as u8])
        }
        fn execute_unordered(&self, _: &[u8]) -> Bytes {
            Bytes::from(self.0.clone())
        }
        fn snapshot(&self) -> Bytes {
            Bytes::from(self.0.clone())
        }
        fn install(&mut self, s: &[u8]) -> Result<(), String> {
            self.0 = s.to_vec();
            Ok(())
        }
    }

    pub(super) fn req(client: u64, id: u64, op: u8) -> Request {
        Request {
            client: ClientId(client),
            id: RequestId(id),
            read_only: false,
            operation: Bytes::from(vec![op]),
            auth: Bytes::new(),
        }
    }

    pub(super) fn batch(reqs: Vec<Request>) -> Batch {
        Batch { timestamp_ms: 1, proposed_in: ViewNo(0), requests: reqs }
    }

    fn reconfigurable() -> Executor<Log> {
        use crate::reconfig::tests::{genesis, TestVerify};
        Executor::new(Log::default(), 4).with_reconfiguration(
            genesis(4, crate::Mode::Bft),
            std::sync::Arc::new(TestVerify),
            8,
        )
    }

    fn admin_req(id: u64, operation: Bytes) -> Request {
        let client = ClientId::of_key(&crate::reconfig::tests::VM);
        Request { client, id: RequestId(id), read_only: false, operation, auth: Bytes::new() }
    }

    #[test]
    fn the_view_managers_requests_change_the_membership_not_the_service_and_only_at_the_boundary() {
        use crate::reconfig::tests::{add, signed};
        use crate::reconfig::AdminOutcome;
        let mut ex = reconfigurable();
        let genesis_digest = ex.state_digest();
        let out = ex.execute_batch(
            SeqNo(3),
            ViewNo(0),
            &batch(vec![req(1, 1, b'a'), admin_req(1, signed(0, 1, vec![add(4)]))]),
        );
        assert_eq!(ex.service().0, b"a", "the admin request never reached the service");
        let Some(AdminOutcome::Accepted { next, boundary }) = AdminOutcome::decode(&out[1].result) else {
            panic!("not accepted: {:?}", out[1])
        };
        assert_eq!((next.epoch, boundary), (1, SeqNo(8)));
        assert_eq!(ex.pending_configuration().map(|(c, s)| (c.epoch, s)), Some((1, SeqNo(8))));
        // The retransmitted request gets the same answer, and is not judged
        // again (which would now say a change is pending).
        let again = ex.execute_batch(SeqNo(4), ViewNo(0), &batch(vec![admin_req(1, signed(0, 1, vec![add(4)]))]));
        assert!(!again[0].fresh);
        assert_eq!(again[0].result, out[1].result);
        for seq in 5..8 {
            ex.execute_batch(
                SeqNo(seq),
                ViewNo(0),
                &Batch { timestamp_ms: 1, proposed_in: ViewNo(0), requests: vec![] },
            );
            assert_eq!(ex.configuration().unwrap().epoch, 0);
        }
        // A null batch at the boundary hands over all the same.
        ex.execute_batch(SeqNo(8), ViewNo(0), &Batch { timestamp_ms: 1, proposed_in: ViewNo(0), requests: vec![] });
        assert_eq!(ex.configuration().unwrap().members.len(), 5);
        assert!(ex.pending_configuration().is_none());
        assert_ne!(ex.state_digest(), genesis_digest);
    }

    #[test]
    fn the_membership_travels_in_snapshots_and_parts_and_is_covered_by_the_digest() {
        use crate::reconfig::tests::{add, signed};
        let mut a = reconfigurable();
        a.execute_batch(SeqNo(1), ViewNo(0), &batch(vec![admin_req(1, signed(0, 1, vec![add(4)]))]));
        let mut b = reconfigurable();
        b.execute_batch(SeqNo(1), ViewNo(0), &batch(vec![req(1, 1, b'x')]));
        b.execute_batch(SeqNo(2), ViewNo(0), &batch(vec![]));
        assert_ne!(a.state_digest(), reconfigurable().state_digest(), "a pending change is in the digest");
        // Install by parts: same digest, same pending change.
        for i in 0..a.part_count() {
            b.install_part(i, a.part(i).records()).unwrap();
        }
        assert_eq!(b.state_digest(), a.state_digest());
        assert_eq!(b.pending_configuration().map(|(c, s)| (c.epoch, s)), Some((1, SeqNo(8))));
        // And by whole snapshot.
        let mut c = reconfigurable();
        c.install(&a.snapshot()).unwrap();
        assert_eq!(c.state_digest(), a.state_digest());
        // Without reconfiguration the settings hash as they always did.
        assert_eq!(Executor::new(Log::default(), 4).part(0).records()[0].len(), 2);
    }

    #[test]
    fn a_request_from_any_other_client_is_the_services_even_if_it_looks_like_an_admin_request() {
        use crate::reconfig::tests::{add, signed};
        let mut ex = reconfigurable();
        let mut r = admin_req(1, signed(0, 1, vec![add(4)]));
        r.client = ClientId(99);
        ex.execute_batch(SeqNo(1), ViewNo(0), &batch(vec![r]));
        assert!(ex.pending_configuration().is_none());
        assert_eq!(ex.service().0.len(), 1);
    }

    #[test]
    fn a_retransmitted_request_gets_the_cached_reply_and_does_not_execute_again() {
        let mut ex = Executor::new(Log::default(), 4);
        let first = ex.execute_batch(SeqNo(1), ViewNo(0), &batch(vec![req(1, 1, b'a')]));
        let again = ex.execute_batch(SeqNo(2), ViewNo(0), &batch(vec![req(1, 1, b'a')]));
        assert!(first[0].fresh && !again[0].fresh);
        assert_eq!(first[0].result, again[0].result);
        assert_eq!(ex.service().0, b"a");
        assert_eq!(ex.lookup(ClientId(1), RequestId(1)), Lookup::Cached(first[0].result.clone()));
    }

    #[test]
    fn requests_inside_the_window_may_execute_out_of_order_but_once() {
        let mut ex = Executor::new(Log::default(), 4);
        ex.execute_batch(SeqNo(1), ViewNo(0), &batch(vec![req(1, 5, b'a'), req(1, 3, b'b'), req(1, 3, b'c')]));
        assert_eq!(ex.service().0, b"ab");
        // 1 is at the window's edge (5 - 4): stale, neither executed nor cached.
        assert_eq!(ex.lookup(ClientId(1), RequestId(1)), Lookup::Stale);
        assert_eq!(ex.lookup(ClientId(1), RequestId(2)), Lookup::New);
        let out = ex.execute_batch(SeqNo(2), ViewNo(0), &batch(vec![req(1, 1, b'z')]));
        assert!(out.is_empty());
        assert_eq!(ex.service().0, b"ab");
    }

    #[test]
    fn a_snapshot_restores_the_client_table_and_the_service() {
        let mut ex = Executor::new(Log::default(), 4);
        ex.execute_batch(SeqNo(1), ViewNo(0), &batch(vec![req(1, 1, b'a'), req(2, 9, b'b')]));
        let snap = ex.snapshot();
        let mut other = Executor::new(Log::default(), 4);
        other.install(&snap).unwrap();
        assert_eq!(other.snapshot(), snap);
        let out = other.execute_batch(SeqNo(2), ViewNo(0), &batch(vec![req(2, 9, b'b')]));
        assert!(!out[0].fresh);
        assert!(other.install(b"\xff\xff\xff").is_err());
    }

    #[test]
    fn the_per_batch_seed_cannot_be_ground_by_the_primary_through_timestamp_or_order() {
        let a = Batch { timestamp_ms: 100, proposed_in: ViewNo(0), requests: vec![req(1, 1, 0), req(2, 1, 0)] };
        let later = Batch { timestamp_ms: 101, ..a.clone() };
        let swapped = Batch { timestamp_ms: 100, proposed_in: ViewNo(0), requests: vec![req(2, 1, 0), req(1, 1, 0)] };
        assert_eq!(batch_seed(SeqNo(3), &a), batch_seed(SeqNo(3), &later));
        assert_eq!(batch_seed(SeqNo(3), &a), batch_seed(SeqNo(3), &swapped));
        assert_ne!(batch_seed(SeqNo(3), &a), batch_seed(SeqNo(4), &a));
        let other = Batch { timestamp_ms: 100, proposed_in: ViewNo(0), requests: vec![req(1, 2, 0), req(2, 1, 0)] };
        assert_ne!(batch_seed(SeqNo(3), &a), batch_seed(SeqNo(3), &other));
    }

    #[test]
    fn timestamps_seen_by_the_service_never_go_backwards() {
        struct Ts(Vec<u64>);
        impl Service for Ts {
            fn execute(&mut self, ctx: &ExecContext, _: &[u8]) -> Bytes {
                self.0.push(ctx.timestamp_ms);
                Bytes::new()
            }
            fn execute_unordered(&self, _: &[u8]) -> Bytes {
                Bytes::new()
            }
            fn snapshot(&self) -> Bytes {
                Bytes::new()
            }
            fn install(&mut self, _: &[u8]) -> Result<(), String> {
                Ok(())
            }
        }
        let mut ex = Executor::new(Ts(vec![]), 4);
        let b = |ts, id| Batch { timestamp_ms: ts, proposed_in: ViewNo(0), requests: vec![req(1, id, 0)] };
        ex.execute_batch(SeqNo(1), ViewNo(0), &b(100, 1));
        ex.execute_batch(SeqNo(2), ViewNo(0), &b(50, 2));
        ex.execute_batch(SeqNo(3), ViewNo(0), &b(200, 3));
        assert_eq!(ex.service().0, vec![100, 100, 200]);
    }

    /// Counts how often the batch entry point is used.
    #[derive(Default)]
    struct Batched {
        calls: usize,
        log: Vec<u8>,
    }

    impl Service for Batched {
        fn execute(&mut self, _: &ExecContext, op: &[u8]) -> Bytes {
            self.log.push(op[0]);
            Bytes::from(vec![op[0]])
        }
        fn execute_batch(&mut self, requests: &[(ExecContext, &[u8])]) -> Vec<Bytes> {
            self.calls += 1;
            requests.iter().map(|(c, op)| self.execute(c, op)).collect()
        }
        fn execute_unordered(&self, _: &[u8]) -> Bytes {
            Bytes::new()
        }
        fn snapshot(&self) -> Bytes {
            Bytes::new()
        }
        fn install(&mut self, _: &[u8]) -> Result<(), String> {
            Ok(())
        }
    }

    #[test]
    fn a_batch_reaches_the_service_in_one_call_with_in_batch_duplicates_executed_once() {
        let mut ex = Executor::new(Batched::default(), 16);
        let b = Batch {
            timestamp_ms: 1,
            proposed_in: ViewNo(0),
            requests: vec![req(1, 1, b'a'), req(2, 1, b'b'), req(1, 1, b'a'), req(1, 2, b'c')],
        };
        let out = ex.execute_batch(SeqNo(1), ViewNo(0), &b);
        assert_eq!(ex.service().calls, 1);
        assert_eq!(ex.service().log, b"abc");
        assert_eq!(out.iter().map(|e| e.fresh).collect::<Vec<_>>(), vec![true, true, false, true]);
        assert_eq!(out[2].result, out[0].result);
        let again = ex.execute_batch(SeqNo(2), ViewNo(0), &b);
        assert_eq!(ex.service().calls, 1, "nothing fresh: the service is not called");
        assert!(again.iter().all(|e| !e.fresh));
    }
}
