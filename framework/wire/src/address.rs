//! Where a replica listens, as the configuration writes it, and how a
//! connection to it notices that it is gone.
//!
//! An address is `ip:port` or `host:port`. A host name is kept as written
//! and looked up at each connection attempt, not once at start: in a
//! container orchestrator a replica keeps its name across restarts while
//! its IP address changes (a StatefulSet pod behind a headless Service).

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// How long a connection may go without any sign of its peer (no ACK for
/// data sent, no answer to keepalive probes) before it is closed and
/// redialled.
pub const PEER_SILENCE: Duration = Duration::from_secs(8);

/// Settings for every connection between replicas, and from clients:
/// no Nagle delay, and a bounded wait for a peer that vanished without a
/// word. A host that loses power, a container whose network namespace is
/// removed or a pulled cable sends no FIN or RST; without keepalive probes
/// and `TCP_USER_TIMEOUT` the connection would look open for the kernel's
/// default of about fifteen minutes, and nobody would redial a replica
/// rescheduled at a new address.
///
/// Best effort: a platform that refuses one of the options still gets the
/// connection, with the kernel's default for that option. A peer that
/// stops reading for longer is cut off too (Linux applies the timeout to a
/// zero window), which bounds what it holds, as the outbound queues do.
#[cfg(unix)]
pub fn tune_connection<S: std::os::fd::AsFd>(stream: &S) {
    let socket = socket2::SockRef::from(stream);
    let _ = socket.set_tcp_nodelay(true);
    let probes =
        socket2::TcpKeepalive::new().with_time(PEER_SILENCE / 4).with_interval(PEER_SILENCE / 8).with_retries(6);
    let _ = socket.set_tcp_keepalive(&probes);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket.set_tcp_user_timeout(Some(PEER_SILENCE));
}

/// `ip:port` or `host:port`, checked for form; resolved when used.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort(String);

impl HostPort {
    /// Checks the form: a port that is a number, and a host that is an IP
    /// address (IPv6 in brackets) or a DNS name (letters, digits, `-`, `.`
    /// and `_`, at most 253 characters).
    pub fn parse(text: &str) -> Result<HostPort, String> {
        if text.parse::<SocketAddr>().is_ok() {
            return Ok(HostPort(text.to_string()));
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!("{text:?} has no :port"));
        };
        if port.parse::<u16>().is_err() {
            return Err(format!("{text:?}: {port:?} is not a port"));
        }
        let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
        if host.is_empty() || host.len() > 253 || !host.chars().all(name_char) {
            return Err(format!("{text:?}: {host:?} is neither an IP address nor a host name"));
        }
        Ok(HostPort(text.to_string()))
    }

    /// As written, for `TcpStream::connect` (which looks names up) and for
    /// the configuration file.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The socket address when written as one, without a lookup.
    pub fn literal(&self) -> Option<SocketAddr> {
        self.0.parse().ok()
    }

    /// The first address a lookup gives now (blocking). `None` when the
    /// name does not resolve, which for a peer is a transient state.
    pub fn resolve(&self) -> Option<SocketAddr> {
        self.literal().or_else(|| self.0.to_socket_addrs().ok()?.next())
    }
}

impl From<SocketAddr> for HostPort {
    fn from(a: SocketAddr) -> HostPort {
        HostPort(a.to_string())
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_ip_port_or_host_port_and_nothing_else() {
        for good in ["127.0.0.1:7000", "[::1]:7000", "palisade-0.palisade.default.svc.cluster.local:7000", "r_1:1"] {
            assert_eq!(HostPort::parse(good).unwrap().as_str(), good);
        }
        for bad in ["127.0.0.1", "host:", "host:70000", ":7000", "a b:7000", "host/x:7000", "[::1:7000"] {
            assert!(HostPort::parse(bad).is_err(), "{bad}");
        }
        let long = format!("{}:1", "a".repeat(254));
        assert!(HostPort::parse(&long).is_err());
    }

    #[test]
    fn a_literal_needs_no_lookup_and_localhost_resolves() {
        let a = HostPort::parse("10.1.2.3:7000").unwrap();
        assert_eq!(a.literal(), Some("10.1.2.3:7000".parse().unwrap()));
        let l = HostPort::parse("localhost:7000").unwrap();
        assert_eq!(l.literal(), None);
        assert_eq!(l.resolve().map(|s| s.port()), Some(7000));
        assert_eq!(HostPort::parse("no-such-host.invalid:1").unwrap().resolve(), None);
    }
}
