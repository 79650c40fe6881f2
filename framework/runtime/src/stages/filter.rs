//! The request filter: what is new goes on to consensus; a retransmission
//! of an executed request gets its cached reply, and an id below its
//! client's window is refused, without troubling the core.

use super::{notify, pass_on, ReplyBatch};
use crate::metrics::RuntimeMetrics;
use crate::queue::{Ended, Rx, Tx};
use crate::runner::Stage;
use crate::shared::CurrentView;
use palisade_core::exec::Lookup;
use palisade_core::{Executor, Request, Service};
use palisade_host::ClientMail;
use palisade_wire::envelope::RejectReason;
use parking_lot::RwLock;
use std::sync::Arc;

/// Sorts client requests by the reply cache: new ones to consensus (in
/// bursts; the core, on the primary, cuts them into batches as the
/// pipeline has room), cached replies and stale refusals to reply sending.
/// Takes only as many requests as the consensus queue has room for.
pub struct RequestFilter<S: Service> {
    /// Requests from verification (or the network).
    pub rx: Rx<Request>,
    /// New requests to consensus.
    pub tx: Tx<Request>,
    /// Cached replies and refusals.
    pub tx_reply: Tx<ReplyBatch>,
    /// The reply cache and client windows.
    pub exec: Arc<RwLock<Executor<S>>>,
    /// The view cached replies carry.
    pub view: Arc<CurrentView>,
    /// Counters.
    pub metrics: Arc<RuntimeMetrics>,
    /// Requests per wake-up.
    pub drain_max: usize,
    /// Largest result sent in full (see `palisade_host::answer`).
    pub max_result_bytes: usize,
    /// Each client's requests between verification and the core (when
    /// clients sign: requests then come through verification).
    pub credits: Option<Arc<crate::shared::ClientCredits>>,
}

impl<S: Service + Send + Sync> Stage for RequestFilter<S> {
    fn name(&self) -> &'static str {
        "filter"
    }

    fn poll(&mut self) -> Result<bool, Ended> {
        let batch = self.rx.take_up_to(self.drain_max.min(self.tx.room()));
        if batch.is_empty() {
            return Ok(false);
        }
        let view = self.view.get();
        let verdicts: Vec<(Request, Lookup)> = {
            let exec = self.exec.read();
            batch
                .into_iter()
                .map(|r| {
                    let l = if r.read_only { Lookup::New } else { exec.lookup(r.client, r.id) };
                    (r, l)
                })
                .collect()
        };
        for (r, lookup) in verdicts {
            // A request passed on keeps its client's credit until the core
            // takes it; one answered here, or pushed back, gives it back.
            let client = r.client;
            let passed = match lookup {
                Lookup::New => {
                    if !r.read_only {
                        self.metrics.latency.arrived(r.client, r.id);
                    }
                    pass_on(&self.tx, r, &self.tx_reply, &self.metrics)?
                }
                Lookup::Cached(result) => {
                    RuntimeMetrics::add(&self.metrics.counters.requests_cached, 1);
                    let answer = palisade_host::answer(result, true, self.max_result_bytes);
                    let cached = ClientMail::Answer { client: r.client, view, request: r.id, answer };
                    notify(&self.tx_reply, cached, &self.metrics);
                    false
                }
                // Executed tentatively, not committed yet: not answered
                // from here (it would skip the durability hold, and carry
                // this view rather than the one it prepared in); a
                // committed answer comes after the commit. It goes on to
                // the core as a new request would, so that its timer runs
                // and a batch that never commits is noticed.
                Lookup::Tentative(_) => pass_on(&self.tx, r, &self.tx_reply, &self.metrics)?,
                Lookup::Stale => {
                    RuntimeMetrics::add(&self.metrics.counters.requests_stale, 1);
                    let stale = ClientMail::Refusal { client: r.client, request: r.id, reason: RejectReason::Stale };
                    notify(&self.tx_reply, stale, &self.metrics);
                    false
                }
            };
            if let (false, Some(c)) = (passed, &self.credits) {
                c.give_back(client);
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
    use palisade_core::{Batch, ClientId, RequestId, SeqNo, ViewNo};
    use palisade_services::counter::Counter;
    use palisade_wire::envelope::Answer;

    fn request(id: u64) -> Request {
        Request {
            client: ClientId(7),
            id: RequestId(id),
            read_only: false,
            operation: palisade_services::counter::CounterOp::Add(1).encode(),
            auth: Bytes::new(),
        }
    }

    #[test]
    fn new_requests_go_on_retransmissions_get_the_cached_reply_and_stale_ids_a_refusal() {
        let bell = Bell::default();
        let (tx_in, rx) = queue(16, &bell, None);
        let (tx, rx_out) = queue(16, &bell, None);
        let (tx_reply, rx_reply) = queue(16, &bell, None);
        let exec = Arc::new(RwLock::new(Executor::new(Counter::default(), 4)));
        // Request 10 executed; with a window of 4, ids up to 6 are stale.
        let done = exec.write().execute_batch(
            SeqNo(1),
            ViewNo(0),
            &Batch { timestamp_ms: 1, proposed_in: palisade_core::ViewNo(0), requests: vec![request(10)] },
        );
        let view = Arc::new(CurrentView::default());
        view.set(ViewNo(3), false);
        let mut filter = RequestFilter {
            rx,
            tx,
            tx_reply,
            exec,
            view,
            metrics: Arc::new(RuntimeMetrics::default()),
            drain_max: 16,
            max_result_bytes: usize::MAX,
            credits: None,
        };
        for id in [11, 10, 2] {
            tx_in.try_send(request(id)).unwrap();
        }
        assert!(filter.poll().unwrap());
        assert_eq!(rx_out.take_up_to(10).iter().map(|r| r.id.0).collect::<Vec<_>>(), vec![11]);
        let replies: Vec<ClientMail> = rx_reply.take_up_to(10).into_iter().flatten().collect();
        assert_eq!(
            replies,
            vec![
                ClientMail::Answer {
                    client: ClientId(7),
                    view: ViewNo(3),
                    request: RequestId(10),
                    answer: Answer::Full(done[0].result.clone())
                },
                ClientMail::Refusal { client: ClientId(7), request: RequestId(2), reason: RejectReason::Stale },
            ]
        );
        assert!(!filter.poll().unwrap(), "nothing left: idle");
    }
}
