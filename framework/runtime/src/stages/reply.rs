//! Reply sending: encodes answers and routes them to client connections.

use super::ReplyBatch;
use crate::egress::{Egress, Outbox, BATCH_BYTES};
use crate::metrics::RuntimeMetrics;
use crate::queue::{Ended, Rx};
use crate::runner::Stage;
use bytes::Bytes;
use palisade_core::message::Reply;
use palisade_core::{ClientId, RequestId, ViewNo};
use palisade_host::ClientMail;
use palisade_wire::envelope::{Answer, ReplicaMessage, MAX_LIST};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Reply sending: encodes replies and routes them to client connections.
/// The answers one client gets from one wake-up travel as one
/// `Replies` frame (split by count and size), and each client's frames as
/// one mailbox message; under saturation, a busy client's answers from two
/// batches share a frame (see [`Linger`]).
pub struct Replier {
    /// Replies in.
    pub rx: Rx<ReplyBatch>,
    /// Where frames for clients go.
    pub egress: Arc<dyn Egress>,
    /// Counters.
    pub metrics: Arc<RuntimeMetrics>,
    /// Replies per wake-up (at least one batch).
    pub drain_max: usize,
    /// Bodies gathered per client during one wake-up.
    pub outbox: Outbox<ClientId>,
    /// Under load, how long a busy client's answers may wait for the next
    /// batch's (see [`Linger`]).
    pub linger: Linger,
    /// Answers held for the next batch's (empty but for a saturated
    /// replica's busy clients).
    pub held: BTreeMap<(ClientId, ViewNo), Answers>,
}

/// When a saturated replica holds a client's answers back to send them
/// with the next batch's. Past saturation a batch holds only two or three
/// requests of each of many clients: each then costs every replica a frame
/// (and a MAC and a write) per batch, and its client a burst of new
/// requests too small to share a signature, which the primary checks one
/// by one. Holding a busy client's answers for one more batch halves
/// both, at the cost of one batch interval on a wait that is, by then,
/// mostly queueing. A client with one answer in a batch (one request
/// outstanding, or a light load) is never held.
#[derive(Clone, Copy, Debug)]
pub struct Linger {
    /// Longest hold; zero turns holding off.
    pub max: Duration,
    /// A batch of fewer answers than this is not a saturated replica's.
    pub min_batch: usize,
}

impl Default for Linger {
    fn default() -> Self {
        Linger { max: Duration::from_millis(10), min_batch: 128 }
    }
}

/// Answers for one client in one view, gathered for one frame.
#[derive(Default)]
pub struct Answers {
    list: Vec<(RequestId, Answer)>,
    bytes: usize,
    /// Held for the next batch's answers, since when.
    held_since: Option<Instant>,
    /// Batches whose answers are in it.
    batches: u32,
}

impl Replier {
    fn send(&self, client: ClientId, bodies: Vec<Bytes>) {
        let n = bodies.len() as u64;
        if !self.egress.to_client(client, bodies) {
            RuntimeMetrics::add(&self.metrics.counters.replies_dropped, n);
        }
    }

    fn queue(&mut self, client: ClientId, body: Bytes) {
        if let Some(full) = self.outbox.push(client, body) {
            self.send(client, full);
        }
    }

    /// Encodes gathered answers as one message.
    fn seal(&mut self, (client, view): (ClientId, ViewNo), answers: Vec<(RequestId, Answer)>) {
        let replica = self.egress.me();
        RuntimeMetrics::add(&self.metrics.counters.replies_sent, answers.len() as u64);
        let msg = match <[_; 1]>::try_from(answers) {
            Ok([(request, Answer::Full(result))]) => {
                ReplicaMessage::Reply(Reply { view, replica, client, request, result })
            }
            Ok([(request, Answer::Digest(digest))]) => {
                ReplicaMessage::ReplyDigest { view, replica, client, request, digest }
            }
            Ok([answer]) => ReplicaMessage::Replies { view, replica, client, answers: vec![answer] },
            Err(answers) => ReplicaMessage::Replies { view, replica, client, answers },
        };
        let body = self.egress.client_body(&msg);
        self.queue(client, body);
    }
}

impl Stage for Replier {
    fn name(&self) -> &'static str {
        "reply"
    }

    fn poll(&mut self) -> Result<bool, Ended> {
        // Room for a frame's answers: well inside the frame limit.
        let max_bytes = (self.egress.max_frame_bytes() / 2).min(BATCH_BYTES);
        let mut held = std::mem::take(&mut self.held);
        let mut taken = 0;
        let now = Instant::now();
        let mut per_client: BTreeMap<ClientId, usize> = BTreeMap::new();
        while taken < self.drain_max {
            let Some(mails) = self.rx.take() else { break };
            taken += mails.len().max(1);
            // A saturated replica's batch: its busy clients' answers may
            // wait for the next batch's.
            per_client.clear();
            if !self.linger.max.is_zero() {
                for mail in &mails {
                    if let ClientMail::Answer { client, .. } = mail {
                        *per_client.entry(*client).or_default() += 1;
                    }
                }
                if per_client.values().sum::<usize>() < self.linger.min_batch {
                    per_client.clear();
                }
            }
            // Clients and views this batch has answers for.
            let mut touched: std::collections::BTreeSet<(ClientId, ViewNo)> = Default::default();
            for mail in mails {
                let (client, view, request, answer) = match mail {
                    ClientMail::Answer { client, view, request, answer } => (client, view, request, answer),
                    ClientMail::Refusal { client, request, reason } => {
                        RuntimeMetrics::add(&self.metrics.counters.replies_sent, 1);
                        let body = self.egress.client_body(&ReplicaMessage::Rejected {
                            replica: self.egress.me(),
                            request,
                            reason,
                        });
                        self.queue(client, body);
                        continue;
                    }
                };
                let size = 48
                    + match &answer {
                        Answer::Full(b) | Answer::TentativeFull(b) => b.len(),
                        Answer::Digest(_) | Answer::TentativeDigest(_) => 32,
                        Answer::TooLarge { .. } => 48,
                    };
                // Answers of an older view held for this client leave first:
                // the client takes the view of its latest settled answer.
                let older: Vec<(ClientId, ViewNo)> = held
                    .range((client, ViewNo(0))..(client, view))
                    .filter(|(_, a)| !a.list.is_empty())
                    .map(|(k, _)| *k)
                    .collect();
                for key in older {
                    if let Some(a) = held.remove(&key) {
                        self.seal(key, a.list);
                    }
                }
                // Only a hold needs the count of batches (none when not saturated).
                let first_in_batch = !per_client.is_empty() && touched.insert((client, view));
                let a = held.entry((client, view)).or_default();
                if !a.list.is_empty() && (a.list.len() >= MAX_LIST || a.bytes + size > max_bytes) {
                    let full = std::mem::take(a);
                    self.seal((client, view), full.list);
                }
                if a.list.is_empty() {
                    // A fresh frame: this batch's answers start it.
                    a.batches = 1;
                    a.held_since = None;
                } else if first_in_batch {
                    a.batches += 1;
                }
                let busy = per_client.get(&client).is_some_and(|n| *n >= 2);
                if busy && a.held_since.is_none() {
                    a.held_since = Some(now);
                } else if !busy {
                    a.held_since = None;
                }
                a.bytes += size;
                a.list.push((request, answer));
            }
        }
        let mut sent = false;
        for (key, a) in held {
            let keep = a
                .held_since
                .is_some_and(|since| a.batches < 2 && now.saturating_duration_since(since) < self.linger.max);
            if keep {
                self.held.insert(key, a);
            } else if !a.list.is_empty() {
                self.seal(key, a.list);
                sent = true;
            }
        }
        if taken == 0 && !sent {
            return Ok(false);
        }
        for (client, bodies) in self.outbox.drain() {
            self.send(client, bodies);
        }
        Ok(true)
    }

    fn next_deadline(&self) -> Option<Instant> {
        let since = self.held.values().filter_map(|a| a.held_since).min()?;
        Some(since.checked_add(self.linger.max).unwrap_or(since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::tests::Collect;
    use crate::queue::Tx;
    use crate::queue::{queue, Bell};
    use palisade_wire::envelope::RejectReason;

    type Setup = (Tx<ReplyBatch>, Replier, Arc<Collect>, Arc<RuntimeMetrics>);

    /// A reply stage that takes `drain_max` batches per wake-up and holds
    /// as `linger` says, with its input queue, egress and counters.
    fn replier(drain_max: usize, linger: Linger) -> Setup {
        let bell = Bell::default();
        let (tx, rx) = queue(8, &bell, None);
        let egress = Arc::new(Collect::default());
        let metrics = Arc::new(RuntimeMetrics::default());
        let replier = Replier {
            rx,
            egress: egress.clone(),
            metrics: metrics.clone(),
            drain_max,
            outbox: Outbox::new(),
            linger,
            held: BTreeMap::new(),
        };
        (tx, replier, egress, metrics)
    }

    fn in_view(client: u64, request: u64, view: u64) -> ClientMail {
        ClientMail::Answer {
            client: ClientId(client),
            view: ViewNo(view),
            request: RequestId(request),
            answer: Answer::Full(Bytes::from_static(b"ok")),
        }
    }

    fn answer(client: u64, request: u64) -> ClientMail {
        in_view(client, request, 1)
    }

    #[test]
    fn one_clients_answers_from_one_wake_up_share_a_frame_and_each_client_gets_its_own() {
        let (tx, mut replier, egress, metrics) = replier(64, Linger::default());
        tx.try_send(vec![answer(1, 1), answer(2, 1), answer(1, 2)]).unwrap();
        tx.try_send(vec![ClientMail::Refusal {
            client: ClientId(3),
            request: RequestId(9),
            reason: RejectReason::Busy,
        }])
        .unwrap();
        assert!(replier.poll().unwrap());
        assert_eq!(egress.client_bodies(ClientId(1)), 1, "client 1's two answers in one frame");
        assert_eq!(egress.client_bodies(ClientId(2)), 1);
        assert_eq!(egress.client_bodies(ClientId(3)), 1);
        assert_eq!(metrics.counters.replies_sent.load(std::sync::atomic::Ordering::Relaxed), 4);
        assert!(!replier.poll().unwrap());
    }

    #[test]
    fn a_saturated_replica_holds_a_busy_clients_answers_for_the_next_batch_and_never_a_lone_answer() {
        let (tx, mut replier, egress, metrics) = replier(1, Linger { max: Duration::from_secs(60), min_batch: 3 });
        // A saturated batch: client 1 has two answers in it, client 2 one.
        tx.try_send(vec![answer(1, 1), answer(2, 1), answer(1, 2)]).unwrap();
        assert!(replier.poll().unwrap());
        assert_eq!(egress.client_bodies(ClientId(1)), 0, "a busy client's answers wait for the next batch");
        assert_eq!(egress.client_bodies(ClientId(2)), 1, "a lone answer goes at once");
        assert!(replier.next_deadline().is_some(), "held no longer than the linger");
        // The next batch: client 1's four answers leave in one frame.
        tx.try_send(vec![answer(1, 3), answer(3, 1), answer(1, 4)]).unwrap();
        assert!(replier.poll().unwrap());
        assert_eq!(egress.client_bodies(ClientId(1)), 1);
        assert_eq!(egress.client_bodies(ClientId(3)), 1);
        assert_eq!(replier.next_deadline(), None);
        // A batch too small to be a saturated replica's is never held.
        tx.try_send(vec![answer(1, 5), answer(1, 6)]).unwrap();
        assert!(replier.poll().unwrap());
        assert_eq!(egress.client_bodies(ClientId(1)), 2);
        // Held answers leave when the linger runs out, with no batch after.
        replier.linger.max = Duration::from_millis(1);
        tx.try_send(vec![answer(1, 7), answer(1, 8), answer(2, 2)]).unwrap();
        assert!(replier.poll().unwrap());
        assert_eq!(egress.client_bodies(ClientId(1)), 2);
        std::thread::sleep(Duration::from_millis(5));
        assert!(replier.poll().unwrap(), "the expired hold is work");
        assert_eq!(egress.client_bodies(ClientId(1)), 3);
        assert!(!replier.poll().unwrap());
        assert_eq!(metrics.counters.replies_sent.load(std::sync::atomic::Ordering::Relaxed), 11);
        // Answers held from an older view leave as soon as answers of a newer
        // one come: the client follows the view of the answer it settles last.
        replier.linger.max = Duration::from_secs(60);
        tx.try_send(vec![in_view(1, 9, 1), in_view(1, 10, 1), in_view(2, 3, 1)]).unwrap();
        assert!(replier.poll().unwrap());
        assert_eq!(egress.client_bodies(ClientId(1)), 3, "held");
        tx.try_send(vec![in_view(1, 11, 2), in_view(1, 12, 2), in_view(2, 4, 2)]).unwrap();
        assert!(replier.poll().unwrap());
        assert_eq!(egress.client_bodies(ClientId(1)), 4, "view 1's answers left; view 2's are held");
        assert!(replier.next_deadline().is_some());
    }
}
