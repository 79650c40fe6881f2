//! Reading a replica's metrics endpoint the way Prometheus does: one HTTP
//! GET, then one sample out of the text format.

use std::io::{Read, Write};
use std::time::Duration;

/// `GET path` on `addr`: the status code and the body (status 0 when
/// nothing answers, so that a test can wait for an endpoint to come up).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let get = || -> std::io::Result<String> {
        let addr: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    let Ok(out) = get() else { return (0, String::new()) };
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// The value of the sample `name` (with its labels, if any) in a scrape.
pub fn sample(scrape: &str, name: &str) -> Option<f64> {
    scrape.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `name` scraped from `addr`'s `/metrics`, if it answers and has it.
pub fn metric(addr: &str, name: &str) -> Option<f64> {
    match http_get(addr, "/metrics") {
        (200, body) => sample(&body, name),
        _ => None,
    }
}
