//! Each client's request rate (`RuntimeConfig::client_rate_max`): a token
//! bucket per client, shared by all its connections to this replica, and
//! a read side that pauses while the client is past its rate, or over its
//! quota at verification.
//!
//! A client past its rate is not refused. What it sent is taken, and its
//! connections read nothing more until the bucket has paid off the debt:
//! TCP slows the client to the rate, its replies keep flowing (only the
//! read side waits), and pacing itself drops nothing. It bounds what a
//! client flooding with valid requests takes of ordering, which fair
//! batches alone do not: they give it the room honest clients leave, and
//! the rounds it fills slow everyone's requests.

use super::Net;
use crate::metrics::RuntimeMetrics;
use actix::prelude::Stream;
use palisade_core::ClientId;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The token buckets. The bound is per client key: keys are free, so a
/// flooder with k keys gets k times the rate (and k connections of the
/// connection limit).
#[derive(Debug)]
pub struct ClientPace {
    /// Requests per second; 0 paces nobody.
    rate: f64,
    /// Requests a client may send at once above its rate.
    burst: f64,
    buckets: Mutex<HashMap<ClientId, (f64, Instant)>>,
}

impl ClientPace {
    /// Clients remembered at most. Full buckets are forgotten first; if
    /// too few are full, all are forgotten (and start full again, their
    /// debts forgiven: reaching this takes that many keys sending).
    const CLIENTS_MAX: usize = 65_536;

    /// A pace of `rate` requests a second per client, with a burst of a
    /// tenth of a second's worth (at least 64).
    pub fn new(rate: u32) -> ClientPace {
        let rate = f64::from(rate);
        ClientPace { rate, burst: (rate / 10.0).max(64.0), buckets: Mutex::new(HashMap::new()) }
    }

    fn refill(&self, bucket: &mut (f64, Instant), now: Instant) {
        let (tokens, at) = bucket;
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
    }

    /// `client` had `n` requests taken at `now`.
    pub fn charge(&self, client: ClientId, n: usize, now: Instant) {
        if self.rate <= 0.0 || n == 0 {
            return;
        }
        let mut m = self.buckets.lock();
        if m.len() >= Self::CLIENTS_MAX && !m.contains_key(&client) {
            let (rate, burst) = (self.rate, self.burst);
            m.retain(|_, (tokens, at)| *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst);
            if m.len() >= Self::CLIENTS_MAX {
                m.clear();
            }
        }
        let bucket = m.entry(client).or_insert((self.burst, now));
        self.refill(bucket, now);
        bucket.0 -= n as f64;
    }

    /// How long `client`'s connections should read nothing more, if it is
    /// past its rate at `now` by a millisecond's worth or more (the timer
    /// cannot wait less).
    pub fn debt(&self, client: ClientId, now: Instant) -> Option<Duration> {
        if self.rate <= 0.0 {
            return None;
        }
        let mut m = self.buckets.lock();
        let bucket = m.get_mut(&client)?;
        self.refill(bucket, now);
        let wait = Duration::from_secs_f64((-bucket.0).max(0.0) / self.rate);
        (wait >= Duration::from_millis(1)).then_some(wait)
    }
}

/// How long a client over its quota at verification reads nothing, before
/// its connection looks again.
const OVER_QUOTA_PAUSE: Duration = Duration::from_millis(20);

/// A client connection's frames, read only while its client is within its
/// rate and not over its quota at verification (then for 20 ms at a time,
/// so TCP pushes back). Peer connections read unpaced.
pub struct PacedRead<S> {
    inner: S,
    client: Option<(Arc<Net>, ClientId)>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> PacedRead<S> {
    /// Paces `inner` when `client` names the connection's net and client.
    pub fn new(inner: S, client: Option<(Arc<Net>, ClientId)>) -> Self {
        PacedRead { inner, client, sleep: None }
    }
}

impl<S: Stream + Unpin> Stream for PacedRead<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        loop {
            if let Some(sleep) = self.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleep = None;
            }
            let wait = self.client.as_ref().and_then(|(net, c)| {
                if net.over_quota.is_over(*c) {
                    return Some(OVER_QUOTA_PAUSE);
                }
                let wait = net.pace.debt(*c, Instant::now())?;
                RuntimeMetrics::add(&net.metrics.counters.client_reads_paced, 1);
                Some(wait)
            });
            match wait {
                Some(wait) => self.sleep = Some(Box::pin(tokio::time::sleep(wait))),
                None => return Pin::new(&mut self.inner).poll_next(cx),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_past_its_rate_owes_a_wait_for_its_debt_and_one_within_it_never() {
        let pace = ClientPace::new(1_000);
        let t0 = Instant::now();
        // The burst (100, a tenth of a second's worth) goes at once.
        pace.charge(ClientId(1), 100, t0);
        assert_eq!(pace.debt(ClientId(1), t0), None);
        // 50 more at once are 50 ms of debt.
        pace.charge(ClientId(1), 50, t0);
        let wait = pace.debt(ClientId(1), t0).expect("past its rate");
        assert!((wait.as_secs_f64() - 0.050).abs() < 1e-6, "{wait:?}");
        // Paid off 50 ms later; then a request a millisecond stays within.
        let mut t = t0 + Duration::from_millis(50);
        assert_eq!(pace.debt(ClientId(1), t), None);
        for _ in 0..500 {
            t += Duration::from_millis(1);
            pace.charge(ClientId(1), 1, t);
            assert_eq!(pace.debt(ClientId(1), t), None);
        }
        // Another client has a bucket of its own, and one never charged
        // owes nothing.
        pace.charge(ClientId(2), 100, t0);
        assert_eq!(pace.debt(ClientId(2), t0), None);
        assert_eq!(pace.debt(ClientId(3), t0), None);
        // A rate of 0 paces nobody.
        let off = ClientPace::new(0);
        off.charge(ClientId(1), 1_000_000, t0);
        assert_eq!(off.debt(ClientId(1), t0), None);
    }
}
