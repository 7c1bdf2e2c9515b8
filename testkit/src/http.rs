//! The one loopback HTTP client of the tests: `GET` on 127.0.0.1, HTTP/1.0,
//! enough for /metrics, /healthz, /readyz and nats-server's monitoring.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An answer: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub code: u16,
    pub body: String,
}

/// `GET path` on loopback `port`; an error when nothing answers there.
pub fn get(port: u16, path: &str) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok(Response { code, body })
}

/// As [`get`], from async code: the blocking read runs off the runtime's
/// threads (the server may be served by the same runtime).
pub async fn get_async(port: u16, path: &str) -> std::io::Result<Response> {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || get(port, &path))
        .await
        .expect("the HTTP request's thread")
}

/// Whether something listens on loopback `port` and answers `GET path` with 200.
pub fn ok(port: u16, path: &str) -> bool {
    get(port, path).is_ok_and(|r| r.code == 200)
}
