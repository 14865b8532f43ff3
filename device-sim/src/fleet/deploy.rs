//! The deploy scenario: at a set time of the run, a release is published to the aggregator
//! and deployed to every device, as an operator would (`fleetctl release publish`, `deploy
//! --all`); meanwhile how many devices run which release is sampled, with the fleet's event
//! throughput and decision latency before and during the swap.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleet_host::registry::ModuleRegistry;

use super::ledger::Ledger;
use crate::http::Api;
use crate::report::{DeployReport, Percentiles};

/// How often the devices' releases are counted.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Longest wait, after the deploy, for every device to run the release.
const WITHIN: Duration = Duration::from_secs(300);

/// A release to deploy mid-run.
#[derive(Clone, Debug)]
pub struct Deploy {
    pub file: PathBuf,
    /// Wall seconds from the start.
    pub at_s: f64,
    /// The operator's API token.
    pub token: String,
}

/// One sample: wall seconds, events acknowledged and decisions timed so far, devices per
/// release label (`built-in` without one).
struct Sample {
    at_s: f64,
    acknowledged: u64,
    decisions: usize,
    releases: BTreeMap<String, usize>,
}

/// Runs the scenario on its own thread; the answer comes once every device runs the release
/// (or `stop` is set, or it took too long).
pub(super) fn spawn(
    deploy: Deploy,
    api: Api,
    registries: Vec<Arc<ModuleRegistry>>,
    ledger: Arc<Mutex<Ledger>>,
    started: Instant,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<DeployReport>> {
    std::thread::spawn(move || {
        let sample = || {
            let (acknowledged, decisions) = {
                let l = ledger.lock().unwrap_or_else(|e| e.into_inner());
                (l.acknowledged, l.decision_micros.len())
            };
            let mut releases = BTreeMap::new();
            for r in &registries {
                let label = r
                    .current()
                    .release_label()
                    .unwrap_or("built-in")
                    .to_string();
                *releases.entry(label).or_default() += 1;
            }
            Sample {
                at_s: started.elapsed().as_secs_f64(),
                acknowledged,
                decisions,
                releases,
            }
        };
        let mut samples = Vec::new();
        while started.elapsed().as_secs_f64() < deploy.at_s {
            if stop.load(Ordering::Relaxed) {
                anyhow::bail!("the run ended before the deploy at {} s", deploy.at_s);
            }
            samples.push(sample());
            std::thread::sleep(SAMPLE_EVERY);
        }
        let bytes = std::fs::read(&deploy.file)
            .with_context(|| format!("reading {}", deploy.file.display()))?;
        let operator = Api {
            token: deploy.token.clone(),
            ..api.clone()
        };
        let published_at_s = started.elapsed().as_secs_f64();
        let (status, answer) = operator.post("/api/v1/releases", "application/x-tar", &bytes)?;
        anyhow::ensure!(
            status == "201" || status == "200",
            "publishing {}: {status} {answer}",
            deploy.file.display()
        );
        let id = answer["release"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let label = answer["release"]["label"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let served_before = bytes_served(&api);
        let deployed_at_s = started.elapsed().as_secs_f64();
        let body = serde_json::json!({"release": id, "target": "all"}).to_string();
        let (status, answer) =
            operator.post("/api/v1/deployments", "application/json", body.as_bytes())?;
        anyhow::ensure!(status == "201", "deploying {label}: {status} {answer}");
        samples.push(sample());
        let all = registries.len();
        let mut all_at_s = None;
        while all_at_s.is_none() && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(SAMPLE_EVERY);
            let s = sample();
            if s.releases.get(&label) == Some(&all) {
                all_at_s = Some(s.at_s);
            }
            samples.push(s);
            if started.elapsed().as_secs_f64() - deployed_at_s > WITHIN.as_secs_f64() {
                break;
            }
        }
        let served = bytes_served(&api).saturating_sub(served_before);
        let micros = ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .decision_micros
            .clone();
        Ok(report(
            &samples,
            &micros,
            label,
            published_at_s,
            deployed_at_s,
            all_at_s,
            served,
            all,
        ))
    })
}

/// The aggregator's count of release bytes served (0 when it cannot be read).
fn bytes_served(api: &Api) -> u64 {
    api.get_text("/metrics")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("fleet_release_bytes_served_total "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[allow(clippy::too_many_arguments)]
fn report(
    samples: &[Sample],
    micros: &[u32],
    label: String,
    published_at_s: f64,
    deployed_at_s: f64,
    all_at_s: Option<f64>,
    bytes_served: u64,
    devices: usize,
) -> DeployReport {
    let end = all_at_s.unwrap_or_else(|| samples.last().map_or(deployed_at_s, |s| s.at_s));
    // The swap window, and one as long just before it.
    let length = (end - deployed_at_s).max(1.0);
    let window = |from: f64, to: f64| {
        let first = samples.iter().find(|s| s.at_s >= from)?;
        let last = samples.iter().rev().find(|s| s.at_s <= to)?;
        let seconds = last.at_s - first.at_s;
        (seconds > 0.0).then(|| {
            let rate = (last.acknowledged - first.acknowledged) as f64 / seconds;
            let slice = micros
                .get(first.decisions..last.decisions)
                .unwrap_or_default()
                .to_vec();
            (rate, Percentiles::of(slice))
        })
    };
    let before = window(deployed_at_s - length, deployed_at_s);
    let during = window(deployed_at_s, end + SAMPLE_EVERY.as_secs_f64());
    DeployReport {
        release: label,
        devices,
        published_at_s,
        deployed_at_s,
        all_active_after_s: all_at_s.map(|t| t - deployed_at_s),
        bytes_served_per_device: bytes_served / devices.max(1) as u64,
        events_per_s_before: before.as_ref().map(|b| b.0),
        events_per_s_during: during.as_ref().map(|d| d.0),
        decision_ms_before: before.map(|b| b.1),
        decision_ms_during: during.map(|d| d.1),
        timeline: samples
            .iter()
            .filter(|s| s.at_s >= deployed_at_s - 0.5)
            .map(|s| (s.at_s - deployed_at_s, s.releases.clone()))
            .collect(),
    }
}
