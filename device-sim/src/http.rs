//! A minimal HTTP/1.1 GET for reading the aggregator's JSON API on loopback, with the bearer
//! token the API asks for. Hand-written: one request shape to one local server; a client crate
//! would bring a TLS and connection pool stack we do not need here.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Context as _;

/// How many times a GET refused with 429 is tried again (after the `Retry-After` it names).
const RATE_LIMITED_RETRIES: u32 = 30;

/// The aggregator's API and the token to call it with.
#[derive(Clone, Debug)]
pub struct Api {
    pub addr: SocketAddr,
    pub token: String,
}

impl Api {
    /// `GET path` as JSON; waits out rate limiting (429) and tries again.
    pub fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let mut retries = 0;
        loop {
            let (status, retry_after, body) = self.get(path)?;
            match status.as_str() {
                "200" => {
                    return serde_json::from_str(&body)
                        .with_context(|| format!("GET {path}: body is not JSON"));
                }
                "429" if retries < RATE_LIMITED_RETRIES => {
                    retries += 1;
                    std::thread::sleep(Duration::from_secs(retry_after.unwrap_or(1)));
                }
                _ => anyhow::bail!("GET {path}: status {status}: {body}"),
            }
        }
    }

    /// Status, `Retry-After` seconds if given, and body.
    fn get(&self, path: &str) -> anyhow::Result<(String, Option<u64>, String)> {
        let addr = self.addr;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            self.token
        )?;
        let mut response = Vec::new();
        s.read_to_end(&mut response)?;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .with_context(|| format!("GET {path}: no HTTP response"))?;
        let status = head.get(9..12).unwrap_or("").to_string();
        let retry_after = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("retry-after")
                .then(|| value.trim().parse().ok())?
        });
        Ok((status, retry_after, body.to_string()))
    }
}
