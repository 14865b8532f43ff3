//! Releases pushed by the aggregator: an operator publishes a signed release and deploys it;
//! every device process (under continuous load) fetches what it lacks over its QUIC control
//! stream, verifies it, and swaps it in between two batches. Nothing is dropped or reordered,
//! decisions after the swap carry the new release and its threshold, a policy-only release
//! sends only the policy, and refusals reach the operator's status with their reason.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_aggregator::auth::Role;
use fleet_host::release::build_contents;
use fleet_release::ReleaseSigner;

use crate::fleet::{self, Api, KillOnDrop};
use crate::util;

const DEVICES: usize = 20;

/// Builds a release whose policy has `policy_config`, signed by `signer`, each component
/// precompiled for this build's engine.
fn release(dir: &Path, signer: &ReleaseSigner, version: &str, policy: &[(&str, &str)]) -> PathBuf {
    build_release(dir, signer, version, policy, true)
}

fn build_release(
    dir: &Path,
    signer: &ReleaseSigner,
    version: &str,
    policy: &[(&str, &str)],
    precompiled: bool,
) -> PathBuf {
    let modules = dir.join(format!("modules-{version}"));
    std::fs::create_dir_all(&modules).unwrap();
    util::module_dir(&modules, "policy", "1.0.0", policy);
    std::fs::write(
        modules.join("late_risk.onnx"),
        fleet_host::defaults::LATE_RISK_ONNX,
    )
    .unwrap();
    let out = dir.join(format!("late-risk-{version}.release"));
    build_contents(
        "late-risk",
        version.parse().unwrap(),
        &modules,
        &[],
        precompiled.then(util::engine).as_deref(),
    )
    .unwrap()
    .write(&out, signer)
    .unwrap();
    out
}

/// Waits until history holds as many events as were acknowledged, then checks that the
/// couriers' routes hold each acknowledged event, once.
fn each_acknowledged_event_stored_once(
    viewer: &Api,
    couriers: &[String],
    acked: &Mutex<HashSet<String>>,
) {
    let acked = acked.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = viewer.get_json("/api/v1/stats");
        if stats["events"].as_u64() == Some(acked.len() as u64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "history holds {} of {} events",
            stats["events"],
            acked.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut stored = 0;
    for courier in couriers {
        for id in fleet::stored_event_ids(viewer, courier) {
            assert!(acked.contains(&id), "{id} stored, never acknowledged");
            stored += 1;
        }
    }
    assert_eq!(stored, acked.len(), "each acknowledged event stored once");
}

/// An aggregator process on free loopback ports, with an operator's and a viewer's API.
struct ReleaseAggregator {
    _process: KillOnDrop,
    quic: SocketAddr,
    operator: Api,
    viewer: Api,
}

impl ReleaseAggregator {
    fn spawn(certs: &Path, data: &Path) -> Self {
        let (quic, http) = (fleet::free_port(), fleet::free_port());
        let process = KillOnDrop(fleet::spawn_aggregator(certs, data, quic, http));
        let http: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
        Self {
            _process: process,
            quic: format!("127.0.0.1:{quic}").parse().unwrap(),
            operator: Api::with_role(http, certs, Role::Operator),
            viewer: Api::with_role(http, certs, Role::Viewer),
        }
    }
}

/// A new operator key, trusted by the fleet in `certs` (devices and aggregator).
fn trusted_signer(certs: &Path) -> ReleaseSigner {
    let signer = ReleaseSigner::generate().unwrap();
    std::fs::create_dir_all(certs.join("release-keys")).unwrap();
    std::fs::write(
        certs.join("release-keys/ops.pub"),
        signer.public_line("ops"),
    )
    .unwrap();
    signer
}

/// `POST path` with a release file as the body; status and JSON answer.
fn post_bytes(api: &Api, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let (status, body) = fleet::request_bytes(
        api.addr,
        Some(&api.token),
        "POST",
        path,
        "application/x-tar",
        body,
    )
    .expect("the API answers");
    (status, serde_json::from_str(&body).unwrap_or_default())
}

fn deploy(api: &Api, release: &str, target: serde_json::Value) -> u16 {
    let body = serde_json::json!({ "release": release, "target": target }).to_string();
    api.request("POST", "/api/v1/deployments", &body).unwrap().0
}

/// Waits until the release's status counts `want` devices at `step`.
fn wait_step(
    api: &Api,
    release: &str,
    step: &str,
    want: u64,
    within: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let status = api.get_json(&format!("/api/v1/releases/{release}"));
        if status["status"]["counts"][step].as_u64() == Some(want) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{step} never reached {want}: {:#}",
            status["status"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn bytes_served(api: &Api) -> u64 {
    let (status, text) = api.request("GET", "/metrics", "").unwrap();
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix("fleet_release_bytes_served_total "))
        .unwrap()
        .parse()
        .unwrap()
}

/// What a producer saw: for each decision, in order.
type Seen = Arc<Mutex<Vec<SeenDecision>>>;

#[derive(Clone, Debug)]
struct SeenDecision {
    release: Option<String>,
    score: f64,
    severity: String,
    alert_step: Option<String>,
    task: String,
}

/// Posts a courier's traffic to a device in small batches until `stop`, remembering what
/// was acknowledged and the decisions that came back.
fn producer(
    http: SocketAddr,
    lines: Vec<String>,
    acked: Arc<Mutex<HashSet<String>>>,
    seen: Seen,
    stop: Arc<AtomicBool>,
) {
    for chunk in lines.chunks(10) {
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if let Some((200, body)) = fleet::http(http, "POST", "/v1/events", &chunk.join("\n")) {
                let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
                let mut seen = seen.lock().unwrap();
                for d in answer["decisions"].as_array().unwrap() {
                    seen.push(SeenDecision {
                        release: d["modules"]["release"].as_str().map(str::to_string),
                        score: d["score"].as_f64().unwrap(),
                        severity: d["severity"].as_str().unwrap().to_lowercase(),
                        alert_step: d["alert_step"].as_str().map(str::to_string),
                        task: d["task_id"].as_str().unwrap_or_default().to_string(),
                    });
                }
                let mut acked = acked.lock().unwrap();
                for l in chunk {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    acked.insert(v["event_id"].as_str().unwrap().to_string());
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

#[test]
fn a_deployed_release_becomes_active_on_every_device_under_load_without_losing_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let names: Vec<String> = (0..DEVICES).map(|i| format!("rel-d{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    fleet::pki(&certs, &refs);
    let signer = trusted_signer(&certs);
    // One device trusts no release key: it refuses every release, and says why.
    let untrusting = dir.path().join("no-keys");
    std::fs::create_dir_all(&untrusting).unwrap();

    let ReleaseAggregator {
        _process,
        quic,
        operator,
        viewer,
    } = ReleaseAggregator::spawn(&certs, &dir.path().join("aggregator"));

    let mut devices = Vec::new();
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    let mut seen = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let port = fleet::free_port();
        let mut cmd = fleet::edge_host_device(&certs, &dir.path().join(name), name, quic);
        cmd.args(["--quiet", "--http", &format!("127.0.0.1:{port}")])
            .args(["--label", if i == 0 { "ring=canary" } else { "ring=main" }])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if i == DEVICES - 1 {
            cmd.arg("--release-keys").arg(&untrusting);
        }
        devices.push(KillOnDrop(cmd.spawn().unwrap()));
        let device: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let (lines, _) = fleet::traffic(1, 200, 20, 1_767_261_600_000, &format!("rel{i}-"));
        let log: Seen = Arc::default();
        seen.push(log.clone());
        let (acked, stop) = (acked.clone(), stop.clone());
        producers.push(std::thread::spawn(move || {
            producer(device, lines, acked, log, stop)
        }));
    }

    // Every device reports (its control stream is up) before the deploy.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let devices = viewer.get_json("/api/v1/devices");
        let reported = devices["devices"]
            .as_array()
            .unwrap()
            .iter()
            // With nothing installed a device runs (and says it runs) the built-in modules.
            .filter(|d| {
                d["release"]["active_label"]
                    .as_str()
                    .is_some_and(|l| l.starts_with("built-in:"))
            })
            .count();
        if reported == DEVICES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {reported} devices reported"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Roles: a viewer cannot publish; nobody without a token learns anything.
    let v1 = std::fs::read(release(
        dir.path(),
        &signer,
        "1.1.0",
        &[
            ("warning_threshold", "0.001"),
            ("critical_threshold", "0.002"),
        ],
    ))
    .unwrap();
    // (A part of the file: the gate answers before the body is read and closes, so a large
    // body could meet a closed connection.)
    assert_eq!(post_bytes(&viewer, "/api/v1/releases", &v1[..1024]).0, 403);
    let anonymous = Api {
        addr: viewer.addr,
        token: "nope".into(),
    };
    assert_eq!(
        post_bytes(&anonymous, "/api/v1/releases", &v1[..1024]).0,
        401
    );
    // A release signed by a key the aggregator does not trust is refused with its reason.
    let stranger = ReleaseSigner::generate().unwrap();
    let forged = std::fs::read(release(dir.path(), &stranger, "9.0.0", &[])).unwrap();
    let (status, answer) = post_bytes(&operator, "/api/v1/releases", &forged);
    assert_eq!(
        (status, answer["reason"].as_str()),
        (422, Some("untrusted-key"))
    );
    // A truncated file is refused too.
    let (status, _) = post_bytes(&operator, "/api/v1/releases", &v1[..v1.len() / 2]);
    assert_eq!(status, 422);

    let (status, answer) = post_bytes(&operator, "/api/v1/releases", &v1);
    assert_eq!(status, 201, "{answer}");
    let id = answer["release"]["id"].as_str().unwrap().to_string();
    let label = answer["release"]["label"].as_str().unwrap().to_string();
    assert_eq!(deploy(&viewer, &id, serde_json::json!("all")), 403);
    let before = bytes_served(&viewer);
    let deployed = Instant::now();
    assert_eq!(deploy(&operator, &id, serde_json::json!("all")), 201);
    let status = wait_step(
        &viewer,
        &id,
        "active",
        DEVICES as u64 - 1,
        Duration::from_secs(120),
    );
    eprintln!(
        "{} devices active {:.2} s after the deploy",
        DEVICES - 1,
        deployed.elapsed().as_secs_f64()
    );
    let refused = status["status"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["step"] == "failed")
        .expect("the device without release keys refused it");
    assert_eq!(refused["device"], names[DEVICES - 1].as_str());
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .starts_with("untrusted-key"),
        "{refused}"
    );
    let full = bytes_served(&viewer) - before;
    // The model registry: the release carries the built-in model's file, now in production
    // through it, on every device (the refusing one runs it built in).
    let models = viewer.get_json("/api/v1/models");
    let models = models["models"].as_array().unwrap();
    assert_eq!(models.len(), 1, "{models:?}");
    let m = &models[0];
    assert!(
        m["model"].as_str().unwrap().starts_with("late_risk@"),
        "{m}"
    );
    assert_eq!(
        (&m["stage"], &m["builtin"]),
        (&"production".into(), &true.into())
    );
    assert_eq!(m["releases"][0]["label"], label.as_str(), "{m}");
    assert_eq!(m["devices_running"], DEVICES as u64, "{m}");
    assert!(m["metrics"]["auc"].as_f64().unwrap() > 0.9, "{m}");
    assert!(m["training"]["train_rows"].as_u64().unwrap() > 0, "{m}");

    // A release that changes only the policy's threshold: only the policy travels.
    let v2 = std::fs::read(release(
        dir.path(),
        &signer,
        "1.2.0",
        &[
            ("warning_threshold", "0.001"),
            ("critical_threshold", "0.003"),
        ],
    ))
    .unwrap();
    let (status, answer) = post_bytes(&operator, "/api/v1/releases", &v2);
    assert_eq!(status, 201, "{answer}");
    let id2 = answer["release"]["id"].as_str().unwrap().to_string();
    let label2 = answer["release"]["label"].as_str().unwrap().to_string();
    let before = bytes_served(&viewer);
    let target = serde_json::json!({"labels": {"ring": "canary"}});
    assert_eq!(deploy(&operator, &id2, target), 201);
    wait_step(&viewer, &id2, "active", 1, Duration::from_secs(60));
    let policy_only = bytes_served(&viewer) - before;
    eprintln!(
        "bytes per device: whole release {} (x{}), policy-only release {policy_only}",
        full / (DEVICES as u64 - 1),
        DEVICES - 1
    );
    // Its components are the ones the device holds (the threshold is configuration, in the
    // signed manifest): no artifact travels at all.
    assert!(
        policy_only < 100 << 10,
        "a policy-only release sent {policy_only} bytes"
    );
    // An older release offered again is refused by the device that runs a newer one.
    assert_eq!(
        deploy(&operator, &id, serde_json::json!({"devices": [names[0]]})),
        201
    );
    let status = wait_step(&viewer, &id, "failed", 2, Duration::from_secs(60));
    assert!(
        status["status"]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["device"] == names[0].as_str()
                && d["detail"].as_str().unwrap().starts_with("not-newer")),
        "{status:#}"
    );

    // Stop the load; every acknowledged event is in history once.
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.join().unwrap();
    }
    for (i, log) in seen.iter().enumerate() {
        let log = log.lock().unwrap();
        // Decisions come in order: the built-in set, then the release, never back.
        let first_new = log
            .iter()
            .position(|d| d.release.as_deref() == Some(label.as_str()));
        if i == DEVICES - 1 {
            assert!(
                first_new.is_none(),
                "the untrusting device kept its modules"
            );
            continue;
        }
        let first_new =
            first_new.unwrap_or_else(|| panic!("device {i} never decided with {label}"));
        // Each task's alert level as the policy keeps it, from its steps (the state carries
        // over from the built-in set to the release).
        let mut open: HashMap<String, u8> = HashMap::new();
        let level_of = |severity: &str| match severity {
            "critical" => 2u8,
            "warning" => 1,
            _ => 0,
        };
        for (n, d) in log.iter().enumerate() {
            let level = open.entry(d.task.clone()).or_default();
            if n >= first_new {
                if i == 0 && d.release.as_deref() != Some(label.as_str()) {
                    break; // the canary moved on to 1.2.0
                }
                assert_eq!(
                    d.release.as_deref(),
                    Some(label.as_str()),
                    "device {i}: a mix"
                );
                // The new thresholds decide: a task alerts when its risk rises past the
                // level its alert is at, and only then.
                let want = if d.score >= 0.002 {
                    2
                } else if d.score >= 0.001 {
                    1
                } else {
                    0
                };
                if want > *level {
                    assert_eq!(level_of(&d.severity), want, "device {i}: {d:?}");
                    let step = if *level == 0 { "opened" } else { "escalated" };
                    assert_eq!(d.alert_step.as_deref(), Some(step), "device {i}: {d:?}");
                } else {
                    assert_eq!(d.severity, "info", "device {i}: {d:?}");
                }
            }
            match d.alert_step.as_deref() {
                Some("opened" | "escalated") => *level = level_of(&d.severity),
                Some("resolved") => *level = 0,
                _ => {}
            }
        }
        assert!(log[..first_new].iter().all(|d| d.release.is_none()));
    }
    let couriers: Vec<String> = (0..DEVICES).map(|i| format!("rel{i}-c0")).collect();
    each_acknowledged_event_stored_once(&viewer, &couriers, &acked);

    // History's alerts name the release that raised them: none before the swap, one of the
    // two releases after it.
    let mut by_release = std::collections::BTreeMap::<String, usize>::new();
    let mut cursor = String::new();
    loop {
        let page = viewer.get_json(&format!("/api/v1/alerts?limit=1000{cursor}"));
        for a in page["alerts"].as_array().unwrap() {
            let release = a["release"].as_str().unwrap_or("none").to_string();
            *by_release.entry(release).or_default() += 1;
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    eprintln!("alerts by release: {by_release:?}");
    assert!(
        by_release.get(&label).is_some_and(|&n| n > 0),
        "{by_release:?}"
    );
    assert!(
        by_release
            .keys()
            .all(|r| [label.as_str(), label2.as_str(), "none"].contains(&r.as_str())),
        "{by_release:?}"
    );
}

/// A fleet upgrades the aggregator first: a device that speaks only the previous protocol
/// version (no control stream for releases, decisions without their release) keeps syncing
/// every event and decision, while a current device beside it names its release in history.
#[test]
fn a_device_of_the_previous_protocol_version_still_syncs_events_and_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    fleet::pki(&certs, &["old", "new"]);
    let signer = trusted_signer(&certs);
    let file = release(
        dir.path(),
        &signer,
        "1.0.0",
        &[
            ("warning_threshold", "0.001"),
            ("critical_threshold", "0.002"),
        ],
    );
    let agg = fleet::InProcess::start(&certs, &dir.path().join("history"));
    let mut decisions_with_release = 0;
    for (device, version) in [
        ("old", fleet_proto::MIN_PROTOCOL_VERSION),
        ("new", fleet_proto::PROTOCOL_VERSION),
    ] {
        let (lines, _) = fleet::traffic(2, 1, 60, 1_795_300_000_000, device);
        let input = dir.path().join(format!("{device}.jsonl"));
        std::fs::write(&input, lines.join("\n") + "\n").unwrap();
        let out = fleet::edge_host_device(&certs, &dir.path().join(device), device, agg.quic)
            .args(["--no-http", "--exit-when-synced", "--protocol-version"])
            .arg(version.to_string())
            .arg("--release")
            .arg(&file)
            .arg("--input")
            .arg(&input)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The device's own prediction log names the release either way.
        let printed: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(!printed.is_empty());
        assert!(printed.iter().all(|d| {
            d["modules"]["release"]
                .as_str()
                .is_some_and(|r| r.starts_with("late-risk@1.0.0+"))
        }));
        decisions_with_release += printed.len();

        let ids = fleet::stored_event_ids(&agg.api(), &format!("{device}c0"));
        assert_eq!(
            ids.len(),
            lines.len() / 2,
            "{device}: every event of courier 0"
        );
        let task = agg.api().get_json(&format!("/api/v1/tasks/{device}c0-t0"));
        let releases: HashSet<_> = task["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["kind"] == "decision")
            .map(|i| i["data"]["release"].as_str().map(|r| r[..16].to_string()))
            .collect();
        let want =
            (version >= fleet_proto::RELEASED_DECISIONS).then(|| "late-risk@1.0.0+".to_string());
        assert_eq!(releases, HashSet::from([want]), "{device}");
    }
    let stats = agg.api().get_json("/api/v1/stats");
    assert_eq!(stats["decisions"], decisions_with_release as u64, "{stats}");
    let devices = agg.api().get_json("/api/v1/devices");
    assert_eq!(devices["devices"].as_array().unwrap().len(), 2, "{devices}");
}

/// An `edge-host device` process under load, restarted at will on the same journal, release
/// store and HTTP port.
struct Handset {
    name: String,
    journal: PathBuf,
    http: SocketAddr,
    command: Box<dyn Fn() -> std::process::Command>,
    process: Option<KillOnDrop>,
}

impl Handset {
    fn new(dir: &Path, certs: &Path, name: &str, quic: SocketAddr) -> Self {
        let journal = dir.join(name);
        let http: SocketAddr = format!("127.0.0.1:{}", fleet::free_port()).parse().unwrap();
        let (certs, name_owned, journal_owned) =
            (certs.to_path_buf(), name.to_string(), journal.clone());
        let command = move || {
            let mut cmd = fleet::edge_host_device(&certs, &journal_owned, &name_owned, quic);
            // 256 KiB/s in pieces of 16 KiB: a download lasts long enough to be interrupted
            // on purpose, and what a restart sends again is measured to the piece.
            cmd.args([
                "--quiet",
                "--http",
                &http.to_string(),
                "--release-download-kib-s",
                &(PIECE_KIB * 16).to_string(),
                "--release-piece-kib",
                &PIECE_KIB.to_string(),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
            cmd
        };
        Self {
            name: name.to_string(),
            journal,
            http,
            command: Box::new(command),
            process: None,
        }
    }

    fn start(&mut self) {
        self.process = Some(KillOnDrop((self.command)().spawn().unwrap()));
    }

    fn kill_9(&mut self) {
        self.process.take().expect("running");
    }

    fn store(&self) -> PathBuf {
        self.journal.join("releases")
    }

    /// The store's state file: active, previous, candidate.
    fn state(&self) -> serde_json::Value {
        std::fs::read(self.store().join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Bytes of artifacts on disk, whole and partial, and whether a download is partial.
    fn downloaded(&self) -> (u64, bool) {
        let mut bytes = 0;
        let mut partial = false;
        for entry in std::fs::read_dir(self.store().join("objects"))
            .into_iter()
            .flatten()
        {
            let entry = entry.unwrap();
            bytes += entry.metadata().map_or(0, |m| m.len());
            partial |= entry.file_name().to_string_lossy().ends_with(".partial");
        }
        (bytes, partial)
    }

    /// The release the running device runs (`/v1/release`; `None`: the built-in modules),
    /// once it answers.
    fn running(&self) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((200, body)) = fleet::http(self.http, "GET", "/v1/release", "") {
                let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
                return answer["running"]["release"].as_str().map(str::to_string);
            }
            assert!(Instant::now() < deadline, "{} never answered", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Polls `check` every millisecond until it gives a value.
fn watch<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// KiB per piece of a handset's release download in these tests.
const PIECE_KIB: u64 = 16;

/// kill -9 during a download and during a swap (the release compiled on the device, so the
/// swap lasts long enough to be hit), and a device offline for the whole deploy: each comes
/// back on one whole release, resumes (the download from what it holds), ends on the new
/// release, and never loses, repeats or mixes a decision. Then an artifact rots on the
/// aggregator's disk: the device refuses that release (digest), and keeps its own.
#[test]
fn kill_9_during_download_and_swap_and_a_device_offline_all_end_on_the_new_release() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let names = ["dl", "swap", "offline"];
    fleet::pki(&certs, &names);
    let signer = trusted_signer(&certs);
    let ReleaseAggregator {
        _process,
        quic,
        operator,
        viewer,
    } = ReleaseAggregator::spawn(&certs, &dir.path().join("aggregator"));

    let acked = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handsets = Vec::new();
    let mut producers = Vec::new();
    let mut seen = Vec::new();
    for name in names {
        let mut h = Handset::new(dir.path(), &certs, name, quic);
        h.start();
        let (lines, _) = fleet::traffic(1, 200, 20, 1_767_261_600_000, &format!("{name}-"));
        let log: Seen = Arc::default();
        seen.push(log.clone());
        let (acked, stop, device) = (acked.clone(), stop.clone(), h.http);
        producers.push(std::thread::spawn(move || {
            producer(device, lines, acked, log, stop)
        }));
        handsets.push(h);
    }
    let [dl, swap, offline] = &mut handsets[..] else {
        unreachable!()
    };
    for h in [&*dl, &*swap, &*offline] {
        assert_eq!(h.running(), None, "{} runs the built-in modules", h.name);
    }

    let file = build_release(
        dir.path(),
        &signer,
        "2.0.0",
        &[
            ("warning_threshold", "0.001"),
            ("critical_threshold", "0.002"),
        ],
        false,
    );
    let size = std::fs::metadata(&file).unwrap().len();
    let (status, answer) = post_bytes(
        &operator,
        "/api/v1/releases",
        &std::fs::read(&file).unwrap(),
    );
    assert_eq!(status, 201, "{answer}");
    let id = answer["release"]["id"].as_str().unwrap().to_string();
    let label = answer["release"]["label"].as_str().unwrap().to_string();

    // 1. Killed during the download, past 40 % of it: the restart fetches only the rest.
    assert_eq!(
        deploy(&operator, &id, serde_json::json!({"devices": ["dl"]})),
        201
    );
    let had = watch("a download past 40 %", Duration::from_secs(60), || {
        let (bytes, partial) = dl.downloaded();
        (partial && bytes * 10 >= size * 4).then_some(bytes)
    });
    dl.kill_9();
    let (had_after_kill, _) = dl.downloaded();
    assert!(
        dl.state()["candidate"].is_null() && dl.state()["active"].is_null(),
        "{}",
        dl.state()
    );
    let served_before = bytes_served(&viewer);
    dl.start();
    assert_eq!(dl.running(), None, "back on the built-in modules");
    wait_step(&viewer, &id, "active", 1, Duration::from_secs(60));
    let served = bytes_served(&viewer) - served_before;
    eprintln!(
        "download killed at {had} (on disk {had_after_kill}) of {size} bytes; {served} bytes served after the restart"
    );
    // What was on disk is not sent again; the pieces in flight at the kill may be (the
    // device asks for four at a time).
    assert!(
        served <= size - had_after_kill + 4 * (PIECE_KIB << 10),
        "{served} bytes served after the restart"
    );

    // 2. One device offline for the whole deploy; another killed while it swaps (compiling
    //    the staged candidate).
    offline.kill_9();
    assert_eq!(deploy(&operator, &id, serde_json::json!("all")), 201);
    // The store names releases as `sha256:<hex>`.
    let stored_id = format!("sha256:{id}");
    watch("a staged candidate", Duration::from_secs(60), || {
        let state = swap.state();
        (state["candidate"].as_str() == Some(stored_id.as_str()) && state["active"].is_null())
            .then_some(())
    });
    swap.kill_9();
    let state = swap.state();
    assert_eq!(
        (state["candidate"].as_str(), &state["active"]),
        (Some(stored_id.as_str()), &serde_json::Value::Null),
        "killed mid-swap"
    );
    swap.start();
    // Back on one whole release: the install resumes at start, before the device serves.
    assert_eq!(swap.running().as_deref(), Some(label.as_str()));
    wait_step(&viewer, &id, "active", 2, Duration::from_secs(60));

    offline.start();
    wait_step(&viewer, &id, "active", 3, Duration::from_secs(60));
    let state = offline.state();
    assert_eq!(
        state["active"].as_str(),
        Some(stored_id.as_str()),
        "{state}"
    );

    // 3. An artifact that rots on the aggregator's disk: the device that fetches it finds its
    //    digest wrong, refuses the release with that reason, and keeps running its own.
    let objects = dir.path().join("aggregator/releases/objects");
    let before: HashSet<_> = std::fs::read_dir(&objects)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let precompiled = build_release(
        dir.path(),
        &signer,
        "2.1.0",
        &[
            ("warning_threshold", "0.001"),
            ("critical_threshold", "0.002"),
        ],
        true,
    );
    let (status, answer) = post_bytes(
        &operator,
        "/api/v1/releases",
        &std::fs::read(&precompiled).unwrap(),
    );
    assert_eq!(status, 201, "{answer}");
    let id3 = answer["release"]["id"].as_str().unwrap().to_string();
    let rotten = std::fs::read_dir(&objects)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| !before.contains(p))
        .expect("the precompiled forms are new artifacts");
    let mut bytes = std::fs::read(&rotten).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&rotten, bytes).unwrap();
    assert_eq!(
        deploy(&operator, &id3, serde_json::json!({"devices": ["dl"]})),
        201
    );
    let status = wait_step(&viewer, &id3, "failed", 1, Duration::from_secs(60));
    let detail = status["status"]["devices"][0]["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(detail.starts_with("digest"), "{status:#}");
    assert_eq!(
        dl.running().as_deref(),
        Some(label.as_str()),
        "still on its release"
    );
    let (_, metrics) = viewer.request("GET", "/metrics", "").unwrap();
    assert!(
        metrics.contains("fleet_release_refusals_total{reason=\"digest\"} 1"),
        "{metrics}"
    );

    // Let every producer get decisions from the new release, then stop them.
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.join().unwrap();
    }
    for (name, log) in names.iter().zip(&seen) {
        let log = log.lock().unwrap();
        let first_new = log
            .iter()
            .position(|d| d.release.as_deref() == Some(label.as_str()))
            .unwrap_or_else(|| panic!("{name} never decided with {label}"));
        assert!(
            log[..first_new].iter().all(|d| d.release.is_none()),
            "{name}: a mix before the swap"
        );
        assert!(
            log[first_new..]
                .iter()
                .all(|d| d.release.as_deref() == Some(label.as_str())),
            "{name}: a mix after the swap"
        );
    }
    let couriers: Vec<String> = names.iter().map(|n| format!("{n}-c0")).collect();
    each_acknowledged_event_stored_once(&viewer, &couriers, &acked);
}
