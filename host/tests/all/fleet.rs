//! Shared pieces of the sync and fault tests: a PKI, an aggregator (in-process or as a child
//! process), a device (in-process, or an `edge-host device` process), generated courier
//! traffic, a producer that resends until acknowledged, and a minimal HTTP client.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fleet_aggregator::auth::{Role, TokenFile};
use fleet_aggregator::{ServeConfig, Shared};
use fleet_host::device::sync::{self, SyncConfig, SyncStatus};
use fleet_host::device::writer::{self, DeviceRuntime};
use fleet_journal::{Journal, JournalConfig};
use fleet_net::pki::Pki;
use fleet_proto::sender::{Outbox, SenderConfig};
use tokio::sync::Notify;

/// A PKI with the given devices issued, and a viewer token for the HTTP API in
/// `viewer.token` (issued before any aggregator reads the token file).
pub(crate) fn pki(dir: &Path, devices: &[&str]) -> Pki {
    let pki = Pki::at(dir);
    pki.init(&[]).unwrap();
    for d in devices {
        pki.issue_device(d, 30).unwrap();
    }
    let tokens = TokenFile::in_dir(dir);
    for role in [Role::Viewer, Role::Operator, Role::Admin] {
        let (_, secret) = tokens.issue(role, "tests").unwrap();
        std::fs::write(dir.join(format!("{role}.token")), secret).unwrap();
    }
    pki
}

/// An aggregator's HTTP API with a token of the fleet directory made by [`pki`].
#[derive(Clone, Debug)]
pub(crate) struct Api {
    pub(crate) addr: SocketAddr,
    pub(crate) token: String,
}

impl Api {
    /// The API at `addr`, called with the viewer token of the fleet directory `certs`.
    pub(crate) fn viewer(addr: SocketAddr, certs: &Path) -> Self {
        Self::with_role(addr, certs, Role::Viewer)
    }

    pub(crate) fn with_role(addr: SocketAddr, certs: &Path, role: Role) -> Self {
        let token = std::fs::read_to_string(certs.join(format!("{role}.token")))
            .expect("a fleet directory made by fleet::pki");
        Self { addr, token }
    }

    pub(crate) fn request(&self, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
        request(self.addr, Some(&self.token), method, path, body)
    }

    pub(crate) fn get_json(&self, path: &str) -> serde_json::Value {
        get_json_as(self.addr, Some(&self.token), path)
    }
}

/// A free loopback port (UDP and TCP are checked separately by their users).
pub(crate) fn free_port() -> u16 {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = udp.local_addr().unwrap().port();
    drop(udp);
    port
}

/// An aggregator running in this process.
pub(crate) struct InProcess {
    pub(crate) shared: Arc<Shared>,
    pub(crate) quic: SocketAddr,
    pub(crate) http: SocketAddr,
    certs: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
}

impl InProcess {
    pub(crate) fn start(certs: &Path, data: &Path) -> Self {
        Self::start_at(certs, data, "127.0.0.1:0".parse().unwrap())
    }

    pub(crate) fn start_at(certs: &Path, data: &Path, quic: SocketAddr) -> Self {
        Self::start_with(ServeConfig {
            listen: quic,
            ..ServeConfig::loopback(data, certs)
        })
    }

    pub(crate) fn start_with(config: ServeConfig) -> Self {
        let (certs, data) = (config.certs.clone(), config.data.clone());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let shared = Shared::open_sled(&data).unwrap();
        let (quic, http, serving) = runtime
            .block_on(fleet_aggregator::start(&config, shared.clone()))
            .unwrap();
        runtime.spawn(serving);
        Self {
            shared,
            quic,
            http,
            certs,
            runtime: Some(runtime),
        }
    }

    /// Its HTTP API, as a viewer.
    pub(crate) fn api(&self) -> Api {
        Api::viewer(self.http, &self.certs)
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// Environment variable that turns the test binary into an aggregator process (see
/// `sync::aggregator_child`).
pub(crate) const AGGREGATOR_CHILD: &str = "FLEET_TEST_AGGREGATOR";

/// An aggregator as a child process of this test binary, so it can be killed with SIGKILL.
pub(crate) fn spawn_aggregator(certs: &Path, data: &Path, quic: u16, http: u16) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sync::aggregator_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            AGGREGATOR_CHILD,
            format!(
                "{}|{}|127.0.0.1:{quic}|127.0.0.1:{http}",
                data.display(),
                certs.display()
            ),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

pub(crate) fn child_config() -> Option<ServeConfig> {
    let spec = std::env::var(AGGREGATOR_CHILD).ok()?;
    let parts: Vec<&str> = spec.split('|').collect();
    Some(ServeConfig {
        data: PathBuf::from(parts[0]),
        certs: PathBuf::from(parts[1]),
        listen: parts[2].parse().unwrap(),
        http: parts[3].parse().unwrap(),
        api_rate: fleet_aggregator::auth::DEFAULT_RATE,
    })
}

/// One HTTP/1.1 request, without a token (a device's loopback endpoints); `None` when the
/// server is not there.
pub(crate) fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Option<(u16, String)> {
    request(addr, None, method, path, body)
}

/// One HTTP/1.1 request, with a bearer token if given (a JSON body, if any).
pub(crate) fn request(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
) -> Option<(u16, String)> {
    request_bytes(
        addr,
        token,
        method,
        path,
        "application/json",
        body.as_bytes(),
    )
}

/// One HTTP/1.1 request with a body of `content_type` (none when the body is empty).
pub(crate) fn request_bytes(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut headers = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    if !body.is_empty() {
        headers.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .ok()?;
    s.write_all(body).ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    Some((status, body.to_string()))
}

/// `GET path` as JSON from a device's loopback endpoint (no token).
pub(crate) fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    get_json_as(addr, None, path)
}

fn get_json_as(addr: SocketAddr, token: Option<&str>, path: &str) -> serde_json::Value {
    // A freshly (re)started server may take a moment to listen.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        match request(addr, token, "GET", path, "") {
            Some(answer) => break answer,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            None => panic!("GET {path}: nothing listens on {addr}"),
        }
    };
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Courier traffic: for each courier, a task every hour (assigned, picked up, delivered)
/// with location pings every `ping_s` seconds, from `start_ms` for `hours` hours. Returns JSON
/// lines and the number of non-ping (status) events.
pub(crate) fn traffic(
    couriers: usize,
    hours: u32,
    ping_s: u32,
    start_ms: i64,
    prefix: &str,
) -> (Vec<String>, usize) {
    let mut lines = Vec::new();
    let mut statuses = 0;
    let base = (12.9716, 77.5946);
    for c in 0..couriers {
        let courier = format!("{prefix}c{c}");
        let mut n = 0u64;
        let mut id = || {
            n += 1;
            format!("{courier}-e{n}")
        };
        for h in 0..hours {
            let task = format!("{courier}-t{h}");
            let t0 = start_ms + i64::from(h) * 3_600_000;
            let time = |ms: i64| {
                chrono::DateTime::from_timestamp_millis(ms)
                    .unwrap()
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            };
            let at = |k: f64| (base.0 + 0.0001 * c as f64 + 0.02 * k, base.1);
            lines.push(
                serde_json::json!({
                    "event_id": id(), "courier_id": courier, "task_id": task, "event_type": "task_assigned",
                    "event_time": time(t0), "lat": at(0.0).0, "lon": at(0.0).1,
                    "pickup": {"lat": at(0.1).0, "lon": at(0.1).1}, "dropoff": {"lat": at(1.0).0, "lon": at(1.0).1},
                    "promised_at": time(t0 + 40 * 60_000), "order_type": "meal", "vehicle_type": "motorcycle",
                    "courier_rating": 4.6, "courier_age": 30
                })
                .to_string(),
            );
            statuses += 1;
            let pings = 3_600 / ping_s;
            for p in 1..pings {
                let t = t0 + i64::from(p * ping_s) * 1000;
                let k = f64::from(p) / f64::from(pings);
                let kind = match p {
                    _ if p == pings / 4 => "picked_up",
                    _ if p == pings - 1 => "delivered",
                    _ => "location",
                };
                statuses += usize::from(kind != "location");
                lines.push(
                    serde_json::json!({
                        "event_id": id(), "courier_id": courier, "task_id": task, "event_type": kind,
                        "event_time": time(t), "lat": at(k).0, "lon": at(k).1, "speed_kmh": 20.0, "accuracy_m": 5.0
                    })
                    .to_string(),
                );
            }
        }
    }
    (lines, statuses)
}

/// A courier's whole stored route, page after page.
pub(crate) fn route_points(api: &Api, courier: &str) -> Vec<serde_json::Value> {
    let mut points = Vec::new();
    let mut path = format!("/api/v1/couriers/{courier}/route?limit=10000");
    loop {
        let page = api.get_json(&path);
        points.extend(page["points"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => {
                path = format!("/api/v1/couriers/{courier}/route?limit=10000&cursor={next}");
            }
            None => return points,
        }
    }
}

/// Event ids in a courier's stored route, in order.
pub(crate) fn stored_event_ids(api: &Api, courier: &str) -> Vec<String> {
    route_points(api, courier)
        .iter()
        .map(|p| p["event_id"].as_str().unwrap().to_string())
        .collect()
}

/// Status (non-location) events stored for couriers `{prefix}c0..{prefix}c{couriers}`.
pub(crate) fn stored_statuses(api: &Api, prefix: &str, couriers: usize) -> usize {
    (0..couriers)
        .map(|c| {
            route_points(api, &format!("{prefix}c{c}"))
                .iter()
                .filter(|p| p["event_type"] != "location")
                .count()
        })
        .sum()
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves nothing running.
pub(crate) struct KillOnDrop(pub(crate) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

pub(crate) fn edge_host_device(
    certs: &Path,
    journal: &Path,
    device: &str,
    aggregator: SocketAddr,
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge-host"));
    cmd.args([
        "device",
        "--device",
        device,
        "--aggregator",
        &aggregator.to_string(),
    ])
    .arg("--certs")
    .arg(certs)
    .arg("--journal")
    .arg(journal);
    cmd
}

/// Starts a device runtime in this process: writer thread and sync loop.
pub(crate) struct LocalDevice {
    pub(crate) writer: writer::WriterHandle,
    pub(crate) journal: Arc<Journal>,
    pub(crate) status: Arc<SyncStatus>,
    stop: Arc<Notify>,
    rt: tokio::runtime::Runtime,
}

impl LocalDevice {
    pub(crate) fn start(
        pki: &Pki,
        device: &str,
        journal: JournalConfig,
        aggregator: SocketAddr,
    ) -> Self {
        let (journal, _) = Journal::open(journal).unwrap();
        let journal = Arc::new(journal);
        let wake = Arc::new(Notify::new());
        let writer = writer::spawn(
            DeviceRuntime::new(crate::util::registry()),
            journal.clone(),
            wake.clone(),
        );
        let status = Arc::new(SyncStatus::default());
        let stop = Arc::new(Notify::new());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.spawn(sync::run(
            journal.clone(),
            wake,
            SyncConfig {
                aggregator,
                server_name: "localhost".into(),
                client: fleet_net::tls::client_config(&pki.ca_cert(), &pki.device(device)).unwrap(),
                device: device.into(),
                backoff_min: Duration::from_millis(50),
                backoff_max: Duration::from_millis(500),
                sender: SenderConfig::default(),
                endpoint: None,
                handshakes: None,
                releases: None,
            },
            status.clone(),
            stop.clone(),
        ));
        Self {
            writer,
            journal,
            status,
            stop,
            rt,
        }
    }

    pub(crate) fn wait_synced(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.status.acked.load(Ordering::Relaxed) < self.journal.last_seq() {
            assert!(
                Instant::now() < deadline,
                "not synced: acked {} of {}",
                self.status.acked.load(Ordering::Relaxed),
                self.journal.last_seq()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LocalDevice {
    fn drop(&mut self) {
        self.stop.notify_one();
        std::thread::sleep(Duration::from_millis(50));
        let _ = &self.rt;
    }
}

/// A producer posting batches to the device's HTTP endpoint and remembering what was
/// acknowledged (a 200 means durable on the device).
pub(crate) fn produce(
    device: SocketAddr,
    lines: Vec<String>,
    acked: Arc<std::sync::Mutex<HashSet<String>>>,
    stop: Arc<AtomicBool>,
) {
    let mut pending: Vec<&[String]> = lines.chunks(40).collect();
    pending.reverse();
    while let Some(chunk) = pending.last() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match http(device, "POST", "/v1/events", &chunk.join("\n")) {
            Some((200, _)) => {
                let mut acked = acked.lock().unwrap();
                for l in chunk.iter() {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    acked.insert(v["event_id"].as_str().unwrap().to_string());
                }
                pending.pop();
            }
            // Not acknowledged (device down or restarting): send the same batch again.
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

pub(crate) fn spawn_device(
    certs: &Path,
    journal: &Path,
    device: &str,
    aggregator: SocketAddr,
    http: u16,
) -> Child {
    edge_host_device(certs, journal, device, aggregator)
        .args(["--quiet", "--http", &format!("127.0.0.1:{http}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until the device process at `device` has every journaled entry acknowledged by the
/// aggregator.
pub(crate) fn wait_device_synced(device: SocketAddr, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if let Some((200, body)) = http(device, "GET", "/v1/sync", "") {
            let s: serde_json::Value = serde_json::from_str(&body).unwrap();
            if s["acked"] == s["journaled"] && s["connected"] == true {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the device never caught up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads back the routes of couriers `{prefix}c0..{prefix}c{couriers}`: every acknowledged
/// event is there, none twice, and the stats count exactly those. Returns how many.
pub(crate) fn audit(api: &Api, prefix: &str, couriers: usize, acked: &HashSet<String>) -> usize {
    let mut stored = HashSet::new();
    for c in 0..couriers {
        for id in stored_event_ids(api, &format!("{prefix}c{c}")) {
            assert!(stored.insert(id.clone()), "{id} is in history twice");
        }
    }
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    assert_eq!(api.get_json("/api/v1/stats")["events"], stored.len() as u64);
    stored.len()
}
