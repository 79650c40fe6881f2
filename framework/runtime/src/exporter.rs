//! The metrics endpoint (`--metrics-addr`): a replica's counters, queues,
//! connections, protocol state and latency histograms in the Prometheus
//! text format, and health probes for orchestrators, over plain HTTP.
//!
//! Paths: `/metrics` (OpenMetrics text), `/healthz` (200 while the process
//! serves), `/readyz` (200 while the replica is a member in normal
//! operation, 503 with the reason otherwise). Each connection gets a thread
//! of its own, at most 8 at once (more are closed at once), and 2 s in all
//! for its request head of at most 8 KiB: the endpoint is for a scraper
//! and probes on a trusted network, not for the public.

use crate::metrics::RuntimeMetrics;
use palisade_wire::envelope::MemberRole;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Largest request head read; anything longer is answered 400.
const HEAD_MAX: usize = 8192;
/// How long a scraper may take to send its request or read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Unread input drained before closing, at most 16 reads of 4 KiB, each
/// waiting this long.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(100);
const DRAIN_READS: usize = 16;

/// A running metrics endpoint; stops when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Serves `metrics` on `addr` (port 0 picks a free port) from a thread
    /// of its own.
    pub fn start(addr: SocketAddr, metrics: Arc<RuntimeMetrics>) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let registry = Arc::new(registry(metrics.clone()));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("metrics".into())
                .spawn(move || serve(listener, &stop, &registry, &metrics))?
        };
        Ok(MetricsServer { addr, stop, thread: Some(thread) })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Everything `/metrics` shows, prefixed `palisade_`.
pub fn registry(metrics: Arc<RuntimeMetrics>) -> Registry {
    let mut r = Registry::with_prefix("palisade");
    r.register(
        "stage_seconds",
        "Time a stage spent on one wake-up that found work, by stage",
        metrics.latency.stages.clone(),
    );
    r.register(
        "ordering_seconds",
        "From a request's arrival at this replica's request filter to its answer from execution (one request in 16 is sampled)",
        metrics.latency.ordering.clone(),
    );
    r.register_collector(Box::new(Snapshot(metrics)));
    r
}

/// The text `/metrics` answers with.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Reads the replica's counters, queues and core state at each scrape.
struct Snapshot(Arc<RuntimeMetrics>);

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Snapshot")
    }
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> fmt::Result {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let m = &self.0;
        for (name, help, v) in m.counters.described() {
            counter(&mut enc, name, help, v)?;
        }
        let queues = m.queues();
        {
            let mut family =
                enc.encode_descriptor("queue_depth", "Items waiting in a bounded queue", None, MetricType::Gauge)?;
            for (q, depth, _) in &queues {
                ConstGauge::new(*depth as i64).encode(family.encode_family(&[("queue", *q)])?)?;
            }
        }
        {
            let mut family =
                enc.encode_descriptor("queue_capacity", "The bound of a queue", None, MetricType::Gauge)?;
            for (q, _, capacity) in &queues {
                ConstGauge::new((*capacity).min(i64::MAX as usize) as i64)
                    .encode(family.encode_family(&[("queue", *q)])?)?;
            }
        }
        for (name, v) in m.levels() {
            gauge(&mut enc, name, "Distinct peers or clients with a live connection", v as i64)?;
        }
        let c = m.core.lock().clone();
        gauge(&mut enc, "epoch", "The membership epoch of the current core", c.epoch as i64)?;
        gauge(&mut enc, "view", "The current view", c.view as i64)?;
        gauge(&mut enc, "primary", "The id of the current view's primary", c.primary_id.0 as i64)?;
        gauge(&mut enc, "is_primary", "1 while this replica is the primary", c.primary as i64)?;
        gauge(&mut enc, "normal", "1 in normal operation, 0 while changing view", c.normal as i64)?;
        gauge(&mut enc, "delivered_seq", "The last sequence number delivered", c.delivered as i64)?;
        gauge(&mut enc, "stable_seq", "The last stable checkpoint", c.stable as i64)?;
        gauge(&mut enc, "pending_requests", "Requests waiting to be ordered", c.pending_requests as i64)?;
        gauge(&mut enc, "members", "Members of the current epoch", c.members.len() as i64)?;
        gauge(&mut enc, "f", "Faults the current epoch tolerates", c.f as i64)?;
        gauge(&mut enc, "rejoining", "1 while the replica rejoins without its votes", c.rejoining as i64)?;
        let role = match c.role {
            MemberRole::Member => 0,
            MemberRole::Joining => 1,
            MemberRole::Removed => 2,
        };
        gauge(&mut enc, "role", "0 member, 1 waiting to be admitted, 2 removed", role)?;
        counter(&mut enc, "view_changes", "View changes started or joined", c.view_changes)?;
        counter(&mut enc, "rotations", "View changes started by periodic leader rotation", c.rotations)?;
        counter(
            &mut enc,
            "skip_suspicions",
            "View changes started because the primary's batches kept leaving out a request it had",
            c.skip_suspicions,
        )?;
        counter(
            &mut enc,
            "late_forwards",
            "Requests forwarded because the primary had not proposed them within the forward grace",
            c.late_forwards,
        )?;
        gauge(
            &mut enc,
            "request_timeout_ms",
            "Request timeout in force: adaptive, with backoff",
            c.request_timeout_ms as i64,
        )?;
        counter(&mut enc, "state_transfers", "State transfers completed", c.state_transfers)?;
        counter(&mut enc, "alarms", "Evidence of divergent state or a safety bug; must stay 0", c.alarms)?;
        counter(
            &mut enc,
            "timers_restarted",
            "Request timers restarted because the replica was behind",
            c.timers_restarted,
        )?;
        counter(&mut enc, "proposed_batches", "Batches proposed as primary", c.proposed_batches)?;
        counter(&mut enc, "delivered_requests", "Requests in delivered batches", c.delivered_requests)?;
        {
            let mut family = enc.encode_descriptor(
                "core_dropped",
                "Messages the protocol core dropped, by reason",
                None,
                MetricType::Counter,
            )?;
            for (reason, v) in &c.dropped {
                ConstCounter::new(*v).encode(family.encode_family(&[("reason", *reason)])?)?;
            }
        }
        Ok(())
    }
}

/// Connections served at once; more are closed at once, so that a few
/// slow or silent clients cannot keep a probe waiting.
const CONNECTIONS_MAX: usize = 8;

fn serve(listener: TcpListener, stop: &AtomicBool, registry: &Arc<Registry>, metrics: &Arc<RuntimeMetrics>) {
    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((s, _)) => {
                if active.fetch_add(1, Ordering::Relaxed) >= CONNECTIONS_MAX {
                    active.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
                let (registry, metrics, done) = (registry.clone(), metrics.clone(), active.clone());
                // Each connection ends within its deadline; nothing waits for it.
                let spawned = std::thread::Builder::new().name("metrics-conn".into()).spawn(move || {
                    let _ = answer(s, &registry, &metrics);
                    done.fetch_sub(1, Ordering::Relaxed);
                });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Whether the replica can take its share of the work: a member, in
/// normal operation, voting.
fn readiness(metrics: &RuntimeMetrics) -> (u16, String) {
    let c = metrics.core.lock().clone();
    let why = match c.role {
        MemberRole::Joining => Some("waiting to be admitted".to_string()),
        MemberRole::Removed => Some("removed from the cluster".to_string()),
        MemberRole::Member if c.members.is_empty() => Some("starting".to_string()),
        MemberRole::Member if !c.normal => Some(format!("changing view (view {})", c.view)),
        MemberRole::Member if c.rejoining => Some("rejoining without its votes".to_string()),
        MemberRole::Member => None,
    };
    match why {
        None => (200, format!("ready: epoch {} view {} delivered {}\n", c.epoch, c.view, c.delivered)),
        Some(why) => (503, format!("not ready: {why}\n")),
    }
}

fn answer(mut s: TcpStream, registry: &Registry, metrics: &RuntimeMetrics) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    // One deadline for the whole request head, however it trickles in.
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    let mut head = vec![0u8; HEAD_MAX];
    let mut n = 0;
    while n < head.len() && !head[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let text = String::from_utf8_lossy(&head[..n]);
    let mut words = text.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next(), words.next());
    let path = target.map(|t| t.split('?').next().unwrap_or(t));
    let (status, content_type, body) = match (method, path) {
        _ if n == head.len() => (400, "text/plain", "request head too large\n".to_string()),
        (Some("GET"), Some("/metrics")) => (200, CONTENT_TYPE, render(registry)),
        (Some("GET"), Some("/healthz")) => (200, "text/plain", "ok\n".to_string()),
        (Some("GET"), Some("/readyz")) => {
            let (status, body) = readiness(metrics);
            (status, "text/plain", body)
        }
        (Some("GET"), Some(_)) => (404, "text/plain", "not found: try /metrics, /healthz or /readyz\n".to_string()),
        _ => (405, "text/plain", "only GET is served\n".to_string()),
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    write!(
        s,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body.as_bytes())?;
    s.flush()?;
    // Closing with unread input would reset the connection and could lose
    // the answer (a request head that was too large): read a little of
    // what is left, briefly, first.
    s.shutdown(std::net::Shutdown::Write)?;
    s.set_read_timeout(Some(DRAIN_TIMEOUT))?;
    let mut sink = [0u8; 4096];
    for _ in 0..DRAIN_READS {
        match s.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    fn get(addr: SocketAddr, request: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    }

    #[test]
    fn the_endpoint_shows_counters_queues_state_and_latencies_and_probes_readiness() {
        let metrics = Arc::new(RuntimeMetrics::default());
        metrics.counters.requests_received.store(5, Relaxed);
        metrics.gauge("verify_queue", 1024, || 7);
        metrics.level("peers_connected", || 3);
        metrics.latency.stage("consensus").observe(0.002);
        metrics.latency.arrived(palisade_core::ClientId(16), palisade_core::RequestId(32));
        metrics.latency.answered(palisade_core::ClientId(16), palisade_core::RequestId(32));
        {
            let mut c = metrics.core.lock();
            c.view = 2;
            c.epoch = 1;
            c.primary_id = palisade_core::ReplicaId(2);
            c.dropped.insert("stale", 4);
        }
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), metrics.clone()).unwrap();
        let (status, body) = get(server.local_addr(), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, 200);
        for line in [
            "palisade_requests_received_total 5",
            "palisade_queue_depth{queue=\"verify_queue\"} 7",
            "palisade_queue_capacity{queue=\"verify_queue\"} 1024",
            "palisade_peers_connected 3",
            "palisade_view 2",
            "palisade_epoch 1",
            "palisade_primary 2",
            "palisade_core_dropped_total{reason=\"stale\"} 4",
            "palisade_stage_seconds_count{stage=\"consensus\"} 1",
            "palisade_ordering_seconds_count 1",
            "# EOF",
        ] {
            assert!(body.lines().any(|l| l == line), "missing {line:?} in\n{body}");
        }
        assert!(body.contains("# HELP palisade_requests_received Client requests received over connections."));
        // Not in normal operation yet, then ready.
        let (status, body) = get(server.local_addr(), "GET /readyz HTTP/1.1\r\n\r\n");
        assert_eq!((status, body.as_str()), (503, "not ready: starting\n"));
        {
            let mut c = metrics.core.lock();
            c.members = vec![palisade_core::ReplicaId(0)];
            c.normal = true;
        }
        assert_eq!(get(server.local_addr(), "GET /readyz?verbose HTTP/1.1\r\n\r\n").0, 200);
        assert_eq!(get(server.local_addr(), "GET /healthz HTTP/1.1\r\n\r\n").0, 200);
        assert_eq!(get(server.local_addr(), "GET /other HTTP/1.1\r\n\r\n").0, 404);
        assert_eq!(get(server.local_addr(), "POST /metrics HTTP/1.1\r\n\r\n").0, 405);
        assert_eq!(get(server.local_addr(), &format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(10_000))).0, 400);
        // Silent and trickling scrapers do not hold up a probe, and are
        // cut off at the deadline.
        let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(server.local_addr()).unwrap()).collect();
        let started = std::time::Instant::now();
        assert_eq!(get(server.local_addr(), "GET /healthz HTTP/1.1\r\n\r\n").0, 200);
        assert!(started.elapsed() < IO_TIMEOUT, "the probe did not wait for the silent ones");
        let mut trickle = TcpStream::connect(server.local_addr()).unwrap();
        let started = std::time::Instant::now();
        let mut closed = false;
        while started.elapsed() < IO_TIMEOUT * 3 {
            if trickle.write_all(b"G").is_err() {
                closed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(closed, "a request head that trickles in is cut off at the deadline");
        drop(idle);
    }
}
