//! A minimal HTTP/1.1 GET for reading the aggregator's JSON API on loopback. Hand-written:
//! one request shape to one local server; a client crate would bring a TLS and connection
//! pool stack we do not need here.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Context as _;

pub fn get_json(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    s.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path}: no HTTP response"))?;
    let status = head.get(9..12).unwrap_or("");
    if status != "200" {
        anyhow::bail!("GET {path}: status {status}: {body}");
    }
    serde_json::from_str(body).with_context(|| format!("GET {path}: body is not JSON"))
}
