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

/// Reply sending: encodes replies and routes them to client connections.
/// The answers one client gets from one wake-up travel as one
/// `Replies` frame (split by count and size), and each client's frames as
/// one mailbox message.
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
}

/// Answers for one client in one view, gathered for one frame.
#[derive(Default)]
struct Answers {
    list: Vec<(RequestId, Answer)>,
    bytes: usize,
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
        let mut gathered: BTreeMap<(ClientId, ViewNo), Answers> = BTreeMap::new();
        let mut taken = 0;
        while taken < self.drain_max {
            let Some(mails) = self.rx.take() else { break };
            taken += mails.len().max(1);
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
                let a = gathered.entry((client, view)).or_default();
                if !a.list.is_empty() && (a.list.len() >= MAX_LIST || a.bytes + size > max_bytes) {
                    self.seal((client, view), std::mem::take(a).list);
                }
                a.bytes += size;
                a.list.push((request, answer));
            }
        }
        if taken == 0 {
            return Ok(false);
        }
        for (key, a) in gathered {
            self.seal(key, a.list);
        }
        for (client, bodies) in self.outbox.drain() {
            self.send(client, bodies);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::tests::Collect;
    use crate::queue::{queue, Bell};
    use palisade_wire::envelope::RejectReason;

    #[test]
    fn one_clients_answers_from_one_wake_up_share_a_frame_and_each_client_gets_its_own() {
        let bell = Bell::default();
        let (tx, rx) = queue(8, &bell, None);
        let egress = Arc::new(Collect::default());
        let metrics = Arc::new(RuntimeMetrics::default());
        let mut replier =
            Replier { rx, egress: egress.clone(), metrics: metrics.clone(), drain_max: 64, outbox: Outbox::new() };
        let answer = |client: u64, request: u64| ClientMail::Answer {
            client: ClientId(client),
            view: ViewNo(1),
            request: RequestId(request),
            answer: Answer::Full(Bytes::from_static(b"ok")),
        };
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
}
