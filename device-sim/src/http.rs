//! A minimal HTTP/1.1 client for the aggregator's JSON API on loopback (GET, and POST for a
//! deploy), with the bearer token the API asks for. Hand-written: two request shapes to one
//! local server; a client crate would bring a TLS and connection pool stack we do not need.

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

    /// `GET path` as text (`/metrics`).
    pub fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let (status, _, body) = self.get(path)?;
        anyhow::ensure!(status == "200", "GET {path}: status {status}: {body}");
        Ok(body)
    }

    /// `POST path` with `body`; the status and the JSON answer (`null` when not JSON).
    pub fn post(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> anyhow::Result<(String, serde_json::Value)> {
        let (status, _, answer) = self.request("POST", path, Some((content_type, body)))?;
        Ok((status, serde_json::from_str(&answer).unwrap_or_default()))
    }

    fn get(&self, path: &str) -> anyhow::Result<(String, Option<u64>, String)> {
        self.request("GET", path, None)
    }

    /// Status, `Retry-After` seconds if given, and body.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> anyhow::Result<(String, Option<u64>, String)> {
        let addr = self.addr;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n",
            self.token
        )?;
        match body {
            Some((content_type, body)) => {
                write!(
                    s,
                    "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )?;
                s.write_all(body)?;
            }
            None => write!(s, "\r\n")?,
        }
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
