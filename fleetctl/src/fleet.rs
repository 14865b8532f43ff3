//! The commands that go through the aggregator: publish and list releases, deploy one, and
//! see where a release stands on each device and what each device runs.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use serde_json::{Value, json};

use crate::api::ApiArgs;

#[derive(Args, Debug)]
pub(crate) struct PublishArgs {
    /// The release file (`fleetctl release build`).
    file: std::path::PathBuf,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args, Debug)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Print the aggregator's JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct DeployArgs {
    /// The release: its id (or a prefix of 8 or more hex digits), `name@version`, or label.
    release: String,
    /// Every device.
    #[arg(long, conflicts_with_all = ["device", "label"], required_unless_present_any = ["device", "label"])]
    all: bool,
    /// A device id; repeatable.
    #[arg(long)]
    device: Vec<String>,
    /// Devices carrying this label (`region=north`); repeatable: devices must carry every one.
    #[arg(long, value_name = "KEY=VALUE", conflicts_with = "device")]
    label: Vec<String>,
    /// Wait until every targeted device runs the release (or failed), up to this many seconds.
    #[arg(long)]
    wait: Option<u64>,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// The release: id (or prefix), `name@version`, or label.
    release: String,
    #[command(flatten)]
    api: ApiArgs,
    /// Print the aggregator's JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct DevicesArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Print the aggregator's JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let answer = args
        .api
        .connect()?
        .post("/api/v1/releases", "application/x-tar", &bytes)?;
    let release = &answer["release"];
    println!(
        "published {} ({} bytes in {} artifacts, {} decompressed)\nid {}",
        text(&release["label"]),
        release["size"],
        release["artifacts"],
        release["decompressed_size"],
        text(&release["id"])
    );
    Ok(())
}

pub(crate) fn list(args: ListArgs) -> anyhow::Result<()> {
    let answer = args.api.connect()?.get("/api/v1/releases")?;
    if args.json {
        println!("{answer:#}");
        return Ok(());
    }
    println!("{:<40} {:>10}  id", "release", "bytes");
    for r in answer["releases"].as_array().into_iter().flatten() {
        println!(
            "{:<40} {:>10}  {}",
            text(&r["label"]),
            r["size"],
            text(&r["id"])
        );
    }
    Ok(())
}

pub(crate) fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let target = if args.all {
        json!("all")
    } else if !args.device.is_empty() {
        json!({ "devices": args.device })
    } else {
        let mut labels = serde_json::Map::new();
        for l in &args.label {
            let (k, v) = l
                .split_once('=')
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .with_context(|| format!("--label {l:?} is not KEY=VALUE"))?;
            labels.insert(k.to_string(), json!(v));
        }
        json!({ "labels": labels })
    };
    let api = args.api.connect()?;
    let answer = api.post_json(
        "/api/v1/deployments",
        &json!({ "release": args.release, "target": target }),
    )?;
    let release = text(&answer["release"]["label"]);
    println!(
        "deployment {} of {release} to {}",
        answer["deployment"]["id"], answer["deployment"]["target"]
    );
    let Some(wait) = args.wait else {
        return Ok(());
    };
    let id = text(&answer["release"]["id"]);
    let started = Instant::now();
    loop {
        let status = api.get(&format!("/api/v1/releases/{id}"))?;
        let counts = &status["status"]["counts"];
        let count = |step: &str| counts[step].as_u64().unwrap_or(0);
        let targeted = status["status"]["targeted"].as_u64().unwrap_or(0);
        let settled = count("active") + count("failed");
        eprintln!(
            "{:>6.1}s  {}",
            started.elapsed().as_secs_f64(),
            summary(&status["status"])
        );
        if targeted > 0 && settled == targeted {
            anyhow::ensure!(
                count("failed") == 0,
                "{} device(s) refused {release}: fleetctl status {id}",
                count("failed")
            );
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(wait),
            "not every device runs {release} after {wait} s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub(crate) fn status(args: StatusArgs) -> anyhow::Result<()> {
    let answer = args
        .api
        .connect()?
        .get(&format!("/api/v1/releases/{}", args.release))?;
    if args.json {
        println!("{answer:#}");
        return Ok(());
    }
    let status = &answer["status"];
    println!("{}: {}", text(&answer["release"]["label"]), summary(status));
    println!("{:<24} {:<12} {:<9} detail", "device", "step", "online");
    for d in status["devices"].as_array().into_iter().flatten() {
        println!(
            "{:<24} {:<12} {:<9} {}",
            text(&d["device"]),
            text(&d["step"]),
            if d["connected"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            text(&d["detail"])
        );
    }
    Ok(())
}

pub(crate) fn devices(args: DevicesArgs) -> anyhow::Result<()> {
    let all = args
        .api
        .connect()?
        .get_all("/api/v1/devices", "devices", usize::MAX)?;
    if args.json {
        println!("{:#}", Value::Array(all));
        return Ok(());
    }
    println!(
        "{:<24} {:<44} {:<24} {:<20} last seen",
        "device", "release", "labels", "agent"
    );
    for d in &all {
        let release = &d["release"];
        let labels: Vec<String> = release["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect();
        println!(
            "{:<24} {:<44} {:<24} {:<20} {}",
            text(&d["device"]),
            text(&release["active_label"]),
            labels.join(","),
            text(&release["agent"]),
            seen(d)
        );
    }
    Ok(())
}

/// `3 active, 1 downloading of 4`.
fn summary(status: &Value) -> String {
    let parts: Vec<String> = status["counts"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(step, n)| format!("{n} {step}"))
        .collect();
    format!("{} of {} targeted", parts.join(", "), status["targeted"])
}

fn seen(device: &Value) -> String {
    let ms = device["last_seen_ms"].as_i64().unwrap_or(0);
    if ms <= 0 {
        return "-".into();
    }
    let ago = chrono_ago(ms);
    format!("{ago} ago")
}

fn chrono_ago(ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let s = (now - ms).max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}
