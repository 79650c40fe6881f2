//! Request verification (when clients sign): client requests, and the
//! requests inside PRE-PREPAREs, checked in parallel batches on a
//! rayon pool, cheap checks first.

use super::fair::FairIntake;
use super::{notify, pass_on, ReplyBatch};
use crate::crypto::{ClientKeys, VerifiedRequests};
use crate::egress::Egress;
use crate::metrics::RuntimeMetrics;
use crate::queue::{offer_peer, Ended, Rx, Tx};
use crate::runner::Stage;
use crate::shared::ClientCredits;
use crate::shared::CurrentView;
use palisade_core::{ClientId, PeerMessage, ReplicaId, Request};
use palisade_host::ClientMail;
use palisade_wire::envelope::RejectReason;
use palisade_wire::verify::{self, VerifyLimits};
use std::collections::HashMap;
use std::sync::Arc;

/// Request verification (when clients sign): cheap checks, then client
/// signatures (of requests to order; reads need none) in parallel batches
/// on a rayon pool. Takes only as many requests as the filter's queue has
/// room for, so a slow pipeline fills the verify queue and the network
/// pushes clients back.
pub struct Verifier {
    /// Requests from the network.
    pub rx: Rx<Request>,
    /// Requests to the request filter: verified, except on a backup with
    /// authenticators, which leaves signatures to the primary.
    pub tx: Tx<Request>,
    /// Refusals.
    pub tx_reply: Tx<ReplyBatch>,
    /// Requests known to be verified.
    pub verified: Arc<VerifiedRequests>,
    /// Size limits.
    pub limits: VerifyLimits,
    /// Signature-checking threads.
    pub pool: Arc<rayon::ThreadPool>,
    /// Counters.
    pub metrics: Arc<RuntimeMetrics>,
    /// Requests per wake-up.
    pub drain_max: usize,
    /// With authenticators: check signatures only while this replica is
    /// the primary (the others pass requests on unchecked).
    pub primary_only: Option<Arc<CurrentView>>,
    /// Requests taken from the network, waiting their client's turn.
    pub intake: FairIntake,
    /// Failed verifications per client since its connections were last
    /// closed for them.
    pub failures: HashMap<ClientId, u32>,
    /// Failed verifications after which a client's connections close.
    pub failures_max: u32,
    /// Where to close a client's connections.
    pub egress: Arc<dyn Egress>,
    /// With authenticators: the client keys and this replica, whose MAC a
    /// backup checks on each request.
    pub macs: Option<(Arc<ClientKeys>, ReplicaId)>,
    /// Each client's requests handed on and not yet taken by the core.
    pub credits: Arc<ClientCredits>,
    /// Where clients over their quota are marked, for the network stage.
    pub over_quota: Arc<crate::shared::OverQuota>,
    /// Where clients closed for forged requests are kept, so that the
    /// network stage refuses them a while.
    pub banned: Arc<crate::shared::Banned>,
    /// Each client's requests waiting for verification, as the network
    /// stage counts them: given back as they leave the intake.
    pub waiting: Option<Arc<ClientCredits>>,
}

impl Verifier {
    /// Hands `r` on to the filter, counting it against its client.
    fn hand_on(&self, r: Request) -> Result<(), Ended> {
        // Taken before it is sent: the next stage, on its own thread, may
        // give it back before this one would have taken it.
        let client = r.client;
        self.credits.take(client);
        if !pass_on(&self.tx, r, &self.tx_reply, &self.metrics)? {
            self.credits.give_back(client);
        }
        Ok(())
    }

    /// A request failed verification: it costs its client, whose
    /// connections close after `failures_max` (it must then shake hands
    /// again, which is capped and costs it a signature).
    fn failed(&mut self, client: ClientId) {
        let n = self.failures.entry(client).or_default();
        *n += 1;
        if *n >= self.failures_max {
            self.failures.remove(&client);
            self.banned.ban(client);
            RuntimeMetrics::add(&self.metrics.counters.clients_closed, 1);
            crate::events::warn_limited!(client = client.0, "closed a client whose requests kept failing verification");
            self.egress.close_client(client);
        }
        // Bounded by the clients that failed since their last close; a
        // table grown past the connection limit starts over.
        if self.failures.len() > 65_536 {
            self.failures.clear();
        }
    }
}

impl Stage for Verifier {
    fn name(&self) -> &'static str {
        "verify"
    }

    fn next_deadline(&self) -> Option<std::time::Instant> {
        // Requests left waiting while the next stage was full: look again
        // soon, not only when more arrive.
        (!self.intake.is_empty()).then(|| std::time::Instant::now() + std::time::Duration::from_millis(1))
    }

    fn poll(&mut self) -> Result<bool, Ended> {
        // Into the intake, one queue per client; past a client's quota a
        // request is dropped at once, at no cost but the count.
        // Everything that arrived, whatever the room downstream: the shared
        // queue from the network must not stay full of one client's
        // requests, or every other client is pushed back at the door.
        let room = self.drain_max.min(self.tx.room());
        let fits = self.intake.capacity().saturating_sub(self.intake.len());
        let arrived = self.rx.take_up_to((self.drain_max.max(1) * 8).min(fits));
        let took = !arrived.is_empty();
        for r in arrived {
            if let Err(r) = self.intake.push(r) {
                if let Some(w) = &self.waiting {
                    w.give_back(r.client);
                }
                // A correct client keeps far fewer outstanding: no answer
                // (a refusal would cost a frame per request); it retransmits
                // if it meant it.
                self.over_quota.mark(r.client);
                RuntimeMetrics::add(&self.metrics.counters.requests_over_quota, 1);
            }
        }
        let credits = &self.credits;
        let mut batch = self.intake.take(room, |c| credits.has_room(c));
        if let Some(w) = &self.waiting {
            batch.iter().for_each(|r| w.give_back(r.client));
        }
        if batch.is_empty() {
            return Ok(took);
        }
        if self.primary_only.as_ref().is_some_and(|v| !v.is_primary()) {
            // A backup leaves signatures to the primary, but checks its own
            // MAC, which is cheap: a request without a valid one is checked
            // in full below, so a client cannot fill the backups' pools
            // with requests nobody will order, whose timers would blame
            // the primary.
            let macs = &self.macs;
            let (on_mac, rest): (Vec<Request>, Vec<Request>) = batch
                .into_iter()
                .partition(|r| r.read_only || macs.as_ref().is_none_or(|(keys, me)| keys.check(r, *me)));
            for r in on_mac {
                self.hand_on(r)?;
            }
            if rest.is_empty() {
                return Ok(true);
            }
            batch = rest;
        }
        // Reads carry no signature: the network stage has bound each to its
        // client's authenticated channel, their answers go back on it, and
        // the core never proposes or relays one.
        let (reads, batch): (Vec<Request>, Vec<Request>) = batch.into_iter().partition(|r| r.read_only);
        for r in reads {
            self.hand_on(r)?;
        }
        if batch.is_empty() {
            return Ok(true);
        }
        RuntimeMetrics::add(&self.metrics.counters.request_signatures_checked, batch.len() as u64);
        let checked = verify::verify_batch(batch, self.limits, |_, _| true, &self.pool);
        RuntimeMetrics::add(&self.metrics.counters.client_signatures_verified, checked.signatures_checked as u64);
        for verdict in checked.verdicts {
            match verdict {
                Ok(r) => {
                    self.verified.insert(&r);
                    self.hand_on(r)?;
                }
                // A second copy of a request in the same batch (a client's
                // retransmission waited beside the original): the first
                // goes on, and this one is no fault of the client's.
                Err((_, verify::Rejection::Duplicate)) => {}
                Err((r, why)) => {
                    RuntimeMetrics::add(&self.metrics.counters.requests_invalid, 1);
                    // An id out of range is a slow client, not a forgery.
                    if matches!(
                        why,
                        verify::Rejection::BadSignature
                            | verify::Rejection::BadAuthFormat
                            | verify::Rejection::ClientIdMismatch
                    ) {
                        self.failed(r.client);
                    }
                    crate::events::warn_limited!(
                        client = r.client.0,
                        request = r.id.0,
                        reason = ?why,
                        "refused a request that failed verification"
                    );
                    let invalid =
                        ClientMail::Refusal { client: r.client, request: r.id, reason: RejectReason::Invalid };
                    notify(&self.tx_reply, invalid, &self.metrics);
                }
            }
        }
        Ok(true)
    }
}

/// Request verification for PRE-PREPAREs (when clients sign): checks the
/// requests of a batch not already known (with authenticators, only those
/// whose MAC for this replica fails) in parallel batches, records
/// those that check as verified for the consensus stage, and passes the
/// PRE-PREPARE on, so that the core sees a bad request as the proof against
/// the primary it is.
pub struct PrePrepareVerifier {
    /// PRE-PREPAREs from the network.
    pub rx: Rx<crate::queue::PeerItem>,
    /// Checked PRE-PREPAREs to consensus.
    pub tx_peer: Tx<crate::queue::PeerItem>,
    /// Requests known to be verified.
    pub verified: Arc<VerifiedRequests>,
    /// Size limits.
    pub limits: VerifyLimits,
    /// Signature-checking threads.
    pub pool: Arc<rayon::ThreadPool>,
    /// Counters.
    pub metrics: Arc<RuntimeMetrics>,
    /// Messages per wake-up.
    pub drain_max: usize,
    /// With authenticators: the client keys and this replica, so that only
    /// requests whose MAC for it fails have their signatures checked.
    pub macs: Option<(Arc<ClientKeys>, ReplicaId)>,
}

impl Stage for PrePrepareVerifier {
    fn name(&self) -> &'static str {
        "verify-pp"
    }

    fn poll(&mut self) -> Result<bool, Ended> {
        let batch = self.rx.take_up_to(self.drain_max);
        if batch.is_empty() {
            return Ok(false);
        }
        for (from, epoch, msg) in batch {
            if let PeerMessage::PrePrepare(pp) = &msg {
                let mac_ok = |r: &Request| self.macs.as_ref().is_some_and(|(keys, me)| keys.check(r, *me));
                let mut unchecked = Vec::new();
                let mut on_mac = 0;
                for r in pp.batch.requests.iter().filter(|r| !self.verified.contains(r)) {
                    if mac_ok(r) {
                        on_mac += 1;
                    } else {
                        unchecked.push(r.clone());
                    }
                }
                let c = &self.metrics.counters;
                RuntimeMetrics::add(&c.request_macs_accepted, on_mac);
                RuntimeMetrics::add(&c.request_signatures_checked, unchecked.len() as u64);
                // Requests that check are cached for the consensus stage. A
                // PRE-PREPARE with one that does not goes on all the same:
                // the core refuses it there and, since a correct primary
                // never proposes such a request, starts a view change at
                // once (at the cost of one more check of the bad request).
                let checked = verify::verify_batch(unchecked, self.limits, |_, _| true, &self.pool);
                RuntimeMetrics::add(&c.client_signatures_verified, checked.signatures_checked as u64);
                for r in checked.verdicts.into_iter().flatten() {
                    self.verified.insert(&r);
                }
            }
            if !offer_peer(&self.tx_peer, (from, epoch, msg), &self.metrics) {
                return Err(Ended);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{queue, Bell};
    use bytes::Bytes;
    use palisade_core::{ClientId, RequestId};

    fn request(id: u64, read_only: bool) -> Request {
        Request {
            client: ClientId(3),
            id: RequestId(id),
            read_only,
            operation: Bytes::from_static(b"op"),
            auth: Bytes::new(),
        }
    }

    #[test]
    fn reads_pass_unsigned_and_requests_to_order_need_a_valid_signature() {
        let bell = Bell::default();
        let (tx_in, rx) = queue(16, &bell, None);
        let (tx, rx_out) = queue(16, &bell, None);
        let (tx_reply, rx_reply) = queue(16, &bell, None);
        let key = palisade_wire::keys::generate(&mut rand_core::OsRng);
        let mut signed = [request(3, false)];
        verify::sign_group(&key, &mut signed);
        let metrics = Arc::new(RuntimeMetrics::default());
        let mut verifier = Verifier {
            rx,
            tx,
            tx_reply,
            verified: Arc::new(VerifiedRequests::new(16)),
            limits: VerifyLimits::default(),
            pool: Arc::new(rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap()),
            metrics: metrics.clone(),
            drain_max: 16,
            primary_only: None,
            intake: FairIntake::new(16, 64),
            failures: HashMap::new(),
            failures_max: 16,
            egress: Arc::new(crate::egress::tests::Collect::default()),
            macs: None,
            credits: Arc::new(ClientCredits::new(100)),
            over_quota: Arc::default(),
            banned: Arc::default(),
            waiting: None,
        };
        for r in [request(1, true), request(2, false), signed[0].clone()] {
            tx_in.try_send(r).unwrap();
        }
        assert!(verifier.poll().unwrap());
        let passed: Vec<(u64, bool)> = rx_out.take_up_to(10).iter().map(|r| (r.id.0, r.read_only)).collect();
        assert_eq!(passed, vec![(1, true), (3, false)]);
        let refused: Vec<ClientMail> = rx_reply.take_up_to(10).into_iter().flatten().collect();
        assert_eq!(
            refused,
            vec![ClientMail::Refusal { client: ClientId(3), request: RequestId(2), reason: RejectReason::Invalid }]
        );
        assert_eq!(
            metrics.counters.request_signatures_checked.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "the read was not checked"
        );
    }

    #[test]
    fn a_client_that_floods_gets_its_turn_and_one_whose_requests_keep_failing_is_closed() {
        let bell = Bell::default();
        let (tx_in, rx) = queue(256, &bell, None);
        let (tx, rx_out) = queue(256, &bell, None);
        let (tx_reply, rx_reply) = queue(256, &bell, None);
        let egress = Arc::new(crate::egress::tests::Collect::default());
        let metrics = Arc::new(RuntimeMetrics::default());
        let honest = palisade_wire::keys::generate(&mut rand_core::OsRng);
        let mut verifier = Verifier {
            rx,
            tx,
            tx_reply,
            verified: Arc::new(VerifiedRequests::new(256)),
            limits: VerifyLimits::default(),
            pool: Arc::new(rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap()),
            metrics: metrics.clone(),
            drain_max: 8,
            primary_only: None,
            intake: FairIntake::new(20, 256),
            failures: HashMap::new(),
            failures_max: 16,
            egress: egress.clone(),
            macs: None,
            credits: Arc::new(ClientCredits::new(100)),
            over_quota: Arc::default(),
            banned: Arc::default(),
            waiting: None,
        };
        // Client 3 floods 40 unsigned requests before the honest client's 4.
        for id in 0..40 {
            tx_in.try_send(request(id, false)).unwrap();
        }
        let mut good: Vec<Request> = (0..4).map(|id| request(100 + id, false)).collect();
        verify::sign_group(&honest, &mut good);
        let honest_id = good[0].client;
        for r in good {
            tx_in.try_send(r).unwrap();
        }
        // A wake-up takes everything that arrived into the intake: client
        // 3's quota of 20, the other 20 dropped at once without a check,
        // and the honest 4. It passes 8 on, the clients in turn: all 4
        // honest requests pass in this first wake-up.
        assert!(verifier.poll().unwrap());
        let passed: Vec<_> = rx_out.take_up_to(100).into_iter().map(|r| r.client).collect();
        assert_eq!(passed, vec![honest_id; 4], "the honest requests passed in the first wake-up");
        while verifier.poll().unwrap() {}
        assert!(rx_out.take().is_none(), "none of client 3's passed");
        let refusals: Vec<ClientMail> = rx_reply.take_up_to(100).into_iter().flatten().collect();
        let busy =
            refusals.iter().filter(|m| matches!(m, ClientMail::Refusal { reason: RejectReason::Busy, .. })).count();
        assert_eq!(busy, 0, "over its quota, dropped without an answer");
        assert_eq!(metrics.counters.requests_over_quota.load(std::sync::atomic::Ordering::Relaxed), 20);
        // 20 failed checks: its connections closed at the 16th, and its
        // count started again from zero.
        assert_eq!(*egress.closed.lock(), vec![ClientId(3)]);
        assert_eq!(verifier.failures.get(&ClientId(3)), Some(&4));
        assert!(verifier.banned.is_banned(ClientId(3)), "its next connections are refused a while");
        assert!(!verifier.banned.is_banned(honest_id));
        assert_eq!(metrics.counters.clients_closed.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
