//! `edge-host device` as an operator runs it: a real process whose module directory changes
//! under it, and SIGHUP. Each swap lands between two batches and no event goes undecided.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_net::pki::Pki;

use crate::util;

pub(crate) struct Device {
    child: Child,
    stdin: ChildStdin,
    decisions: Receiver<serde_json::Value>,
    stderr: Arc<Mutex<String>>,
    /// Tasks sent so far (ids go on from here, so a restarted device on the same journal
    /// sees new events, not duplicates).
    pub(crate) tasks: usize,
}

impl Device {
    fn start(dir: &std::path::Path) -> Self {
        Self::start_with(dir, &["--modules".into(), dir.join("modules").into()])
    }

    /// A device whose modules come from `source` (`--modules DIR` or `--release FILE`, with
    /// what else they need), without its HTTP endpoint.
    pub(crate) fn start_with(dir: &std::path::Path, source: &[std::ffi::OsString]) -> Self {
        Self::spawn(dir, source, None)
    }

    /// The same, serving its loopback HTTP endpoint on `port`.
    pub(crate) fn start_serving(
        dir: &std::path::Path,
        source: &[std::ffi::OsString],
        port: u16,
    ) -> Self {
        Self::spawn(dir, source, Some(port))
    }

    fn spawn(dir: &std::path::Path, source: &[std::ffi::OsString], http: Option<u16>) -> Self {
        let pki = Pki::at(dir.join("certs"));
        if !pki.ca_cert().exists() {
            pki.init(&[]).unwrap();
            pki.issue_device("dev-1", 1).unwrap();
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_edge-host"))
            .args(["device", "--device", "dev-1", "--input", "-"])
            .args(match http {
                Some(port) => vec!["--http".to_string(), format!("127.0.0.1:{port}")],
                None => vec!["--no-http".to_string()],
            })
            .arg("--certs")
            .arg(dir.join("certs"))
            .arg("--journal")
            .arg(dir.join("journal"))
            .args(source)
            // Nothing listens there: the device journals and keeps trying to sync.
            .args(["--aggregator", "127.0.0.1:9"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("edge-host runs");
        let stdin = child.stdin.take().unwrap();
        let (tx, decisions) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let log = stderr.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self {
            child,
            stdin,
            decisions,
            stderr,
            tasks: 0,
        }
    }

    /// Sends one task's five events and returns the policy label each decision names.
    fn task(&mut self) -> Vec<String> {
        self.task_decisions()
            .iter()
            .map(|d| d["modules"]["policy"].as_str().unwrap().to_string())
            .collect()
    }

    /// Sends one task's five events and returns their decisions, checked to come in order.
    pub(crate) fn task_decisions(&mut self) -> Vec<serde_json::Value> {
        self.tasks += 1;
        let task = format!("T-{}", self.tasks);
        for e in util::healthy_task(&task) {
            writeln!(self.stdin, "{}", serde_json::to_string(&e).unwrap()).unwrap();
        }
        self.stdin.flush().unwrap();
        (0..5)
            .map(|i| {
                let d = self
                    .decisions
                    .recv_timeout(Duration::from_secs(60))
                    .unwrap_or_else(|_| {
                        panic!("decision {i} of {task} never came; stderr:\n{}", self.log())
                    });
                assert_eq!(
                    d["task_id"],
                    task.as_str(),
                    "decisions in order, none dropped"
                );
                d
            })
            .collect()
    }

    /// Sends tasks until their decisions name a policy other than `old`.
    fn until_swapped_from(&mut self, old: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let labels = self.task();
            // A swap lands between batches: one task's events are decided by one set.
            assert!(labels.iter().all(|l| *l == labels[0]), "{labels:?}");
            if labels[0] != old {
                return labels[0].clone();
            }
            assert!(
                Instant::now() < deadline,
                "still deciding with {old}; stderr:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub(crate) fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub(crate) fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_device_swaps_modules_on_a_file_change_and_on_sighup_without_dropping_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let modules = dir.path().join("modules");
    std::fs::create_dir(&modules).unwrap();
    util::module_dir(
        &modules,
        "policy",
        "1.0.0",
        &[("critical_threshold", "0.95")],
    );
    let mut device = Device::start(dir.path());
    let first = device.task()[0].clone();
    assert!(first.starts_with("policy@1.0.0+"), "{first}");

    // The same version with another threshold is another module: its label says so.
    util::write_manifest(
        &modules,
        "policy",
        "policy",
        "1.0.0",
        &[("critical_threshold", "0.60")],
    );
    let second = device.until_swapped_from(&first);
    assert!(second.starts_with("policy@1.0.0+") && second != first);

    // An edit the watcher cannot see (same length, same modification time): only SIGHUP
    // brings it in, and SIGHUP does not end the process.
    let manifest = modules.join("policy.toml");
    let mtime = std::fs::metadata(&manifest).unwrap().modified().unwrap();
    util::write_manifest(
        &modules,
        "policy",
        "policy",
        "1.0.0",
        &[("critical_threshold", "0.70")],
    );
    std::fs::File::options()
        .write(true)
        .open(&manifest)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        device.task()[0],
        second,
        "the watcher saw nothing to reload"
    );
    device.signal("HUP");
    let third = device.until_swapped_from(&second);
    assert!(third != first && third != second);
    assert!(device.log().contains("SIGHUP: reloading the module set"));
    assert!(
        device.child.try_wait().unwrap().is_none(),
        "SIGHUP ended the device:\n{}",
        device.log()
    );
}
