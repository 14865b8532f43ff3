//! `device-sim`: runs a courier fleet against an aggregator and reports what happened.

mod cli;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use cli::{ScenarioArgs, scenario};
use device_sim::aggregator::{self, Aggregator};
use device_sim::fleet::{self, FleetOptions};
use device_sim::proxy::Impairment;
use fleet_aggregator::auth::{Role, TokenFile};
use fleet_wal::testing::SmallDisk;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "A courier fleet on one machine: a synthetic city or a real-data replay, in-process devices \
             scoring, journaling and syncing over QUIC to an aggregator, with faults and a report",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a fleet (the default).
    Run(Box<RunArgs>),
    /// Writes a scenario's events (JSON lines, as handsets send them) and its tasks' truth
    /// (promise, end, late) instead of running it: training and evaluation data from exactly
    /// what a run replays.
    Generate(cli::GenerateArgs),
    /// Serves an aggregator in this process (what `--aggregator-process` starts).
    #[command(hide = true)]
    Aggregator {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        certs: PathBuf,
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        http: SocketAddr,
        #[arg(long)]
        api_rate: u32,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum ReportFormat {
    Text,
    Json,
}

#[derive(clap::Args, Debug, Clone)]
struct RunArgs {
    #[command(flatten)]
    scenario: ScenarioArgs,
    /// Simulated seconds per wall second.
    #[arg(long, default_value_t = 100.0)]
    speed: f64,
    /// Couriers per device: 1 is a handset each; a large number is one edge node for all.
    #[arg(long, default_value_t = 1)]
    couriers_per_device: usize,
    /// Chance an event reaches its device twice (at-least-once delivery).
    #[arg(long, default_value_t = 0.01)]
    repeat_rate: f64,
    /// Chance an event arrives after later ones.
    #[arg(long, default_value_t = 0.01)]
    late_rate: f64,
    /// How many devices reach the aggregator through the fault proxy.
    #[arg(long, default_value_t = 0)]
    faulty: usize,
    /// Proxy: chance a datagram is dropped.
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f64,
    /// Proxy: extra delay per datagram, uniform in 0..=N ms (reorders too).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Clock skew of the faulty devices' handsets, seconds.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    skew_s: i64,
    /// Partition the faulty devices: `AT:FOR`, wall seconds from the start.
    #[arg(long, value_parser = parse_pair)]
    partition: Option<(f64, f64)>,
    /// SIGKILL the aggregator at `AT` and restart it `DOWN` later, wall seconds (runs it as a
    /// child process).
    #[arg(long, value_parser = parse_pair)]
    kill_aggregator: Option<(f64, f64)>,
    /// A load burst: `AT:FOR:FACTOR`, from `AT` for `FOR` wall seconds the simulated clock
    /// runs FACTOR times faster, so every courier's events come FACTOR times as fast. The
    /// report says how fast the fleet absorbed it.
    #[arg(long, value_parser = parse_burst)]
    burst: Option<fleet::Burst>,
    /// A full disk: `WHO:AT:FOR` (WHO is `devices` or `aggregator`), wall seconds. The
    /// devices' journal store or the aggregator's history is put on a small filesystem this
    /// run mounts (a tmpfs: needs root), filled up at AT and freed FOR seconds later. The
    /// run passes only if nothing acknowledged is lost.
    #[arg(long, value_parser = parse_disk_full)]
    disk_full: Option<fleet::DiskFull>,
    /// Size of the small filesystem of `--disk-full`, MiB.
    #[arg(long, default_value_t = 1024)]
    small_disk_mib: u64,
    /// Devices that start over with new, empty journals under their identity (reinstalled
    /// handsets): `AT:N`, the first N devices at AT wall seconds. History must keep both
    /// journals' events, each once.
    #[arg(long, value_parser = parse_reset)]
    reset_journals: Option<fleet::JournalReset>,
    /// Run the aggregator as a child process (implied by --kill-aggregator).
    #[arg(long)]
    aggregator_process: bool,
    /// Directory for journals, history and certificates (created; must not hold an earlier run).
    #[arg(long, default_value = "sim-data")]
    work: PathBuf,
    /// Delete `--work` first if it exists.
    #[arg(long)]
    fresh: bool,
    #[arg(long, value_enum, default_value = "text")]
    report: ReportFormat,
    #[arg(long)]
    no_progress: bool,
    /// Skip reading every courier's route back (large fleets): lost/duplicated from counts.
    #[arg(long)]
    no_audit: bool,
    /// Longest wait, after the last event, for the aggregator to acknowledge everything.
    #[arg(long, default_value_t = 120)]
    drain_timeout_s: u64,
    /// Keep serving the history API after the report, until Ctrl-C.
    #[arg(long)]
    serve_after: bool,
    /// Run the whole fleet on a module directory (as `edge-host --modules`); devices then
    /// take no releases.
    #[arg(long, conflicts_with_all = ["release", "deploy"])]
    modules: Option<PathBuf>,
    /// Start the whole fleet on a signed release file (`fleetctl release build`).
    #[arg(long)]
    release: Option<PathBuf>,
    /// The release keys the fleet trusts (`*.pub`, as `fleetctl keys init` writes them):
    /// copied into this run's fleet directory, where the aggregator and the devices read them.
    #[arg(long, default_value = "certs/release-keys")]
    release_keys: PathBuf,
    /// A release file to publish and deploy to every device during the run; the report says
    /// how it spread, and what the fleet's throughput and decision latency did meanwhile.
    #[arg(long)]
    deploy: Option<PathBuf>,
    /// When to deploy it, wall seconds from the start.
    #[arg(long, default_value_t = 10.0)]
    deploy_at: f64,
}

fn parse_pair(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = s.split_once(':').ok_or("expected AT:DURATION (seconds)")?;
    Ok((
        a.trim().parse().map_err(|e| format!("{a}: {e}"))?,
        b.trim().parse().map_err(|e| format!("{b}: {e}"))?,
    ))
}

fn parse_burst(s: &str) -> Result<fleet::Burst, String> {
    let mut parts = s.split(':').map(|p| {
        p.trim()
            .parse::<f64>()
            .map_err(|e| format!("{p}: {e} (expected AT:FOR:FACTOR, seconds)"))
    });
    let mut next = || parts.next().ok_or("expected AT:FOR:FACTOR (seconds)")?;
    let burst = fleet::Burst {
        at_s: next()?,
        for_s: next()?,
        factor: next()?,
    };
    if burst.for_s <= 0.0 || burst.factor < 1.0 {
        return Err("a burst lasts more than 0 s and has a factor of at least 1".into());
    }
    Ok(burst)
}

fn parse_disk_full(s: &str) -> Result<fleet::DiskFull, String> {
    let (who, rest) = s
        .split_once(':')
        .ok_or("expected WHO:AT:FOR (WHO: devices or aggregator; seconds)")?;
    let owner = match who {
        "devices" => fleet::DiskOwner::Devices,
        "aggregator" => fleet::DiskOwner::Aggregator,
        other => return Err(format!("{other:?}: expected devices or aggregator")),
    };
    let (at_s, for_s) = parse_pair(rest)?;
    Ok(fleet::DiskFull { owner, at_s, for_s })
}

fn parse_reset(s: &str) -> Result<fleet::JournalReset, String> {
    let (at, n) = s
        .split_once(':')
        .ok_or("expected AT:N (seconds, devices)")?;
    Ok(fleet::JournalReset {
        at_s: at.trim().parse().map_err(|e| format!("{at}: {e}"))?,
        devices: n.trim().parse().map_err(|e| format!("{n}: {e}"))?,
    })
}

fn main() -> anyhow::Result<()> {
    fleet_process::prepare();
    fleet_process::log_to_stderr("warn");
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Aggregator {
            data,
            certs,
            listen,
            http,
            api_rate,
        }) => aggregator::serve_child(&fleet_aggregator::ServeConfig {
            data,
            listen,
            http,
            certs,
            api_rate,
        }),
        Some(Command::Run(args)) => run(*args),
        Some(Command::Generate(args)) => cli::generate(&args),
        None => run(cli.run),
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.fresh && args.work.exists() {
        std::fs::remove_dir_all(&args.work)
            .with_context(|| format!("removing {}", args.work.display()))?;
    }
    if args.work.join("history").exists() {
        anyhow::bail!(
            "{} holds an earlier run: pass --fresh to start over, or another --work",
            args.work.display()
        );
    }
    std::fs::create_dir_all(&args.work)?;
    let scenario = scenario(&args.scenario)?;
    let disk = match &args.disk_full {
        Some(fault) => Some(SmallDisk::mount(args.small_disk_mib).with_context(|| {
            format!(
                "--disk-full {:?} puts its store on a small filesystem",
                fault.owner
            )
        })?),
        None => None,
    };
    let on_disk = |owner: fleet::DiskOwner, name: &str| match (&disk, args.disk_full) {
        (Some(d), Some(f)) if f.owner == owner => d.path().join(name),
        _ => args.work.join(name),
    };
    let certs = args.work.join("certs");
    let history = on_disk(fleet::DiskOwner::Aggregator, "history");
    let devices = on_disk(fleet::DiskOwner::Devices, "devices");
    fleet_net::pki::Pki::at(&certs)
        .init(&[])
        .context("creating the fleet PKI")?;
    let viewer = issue_token(&certs, &args.work, Role::Viewer)?;
    let operator = issue_token(&certs, &args.work, Role::Operator)?;
    let trusted = trust_release_keys(&args, &certs)?;
    let start = match (&args.modules, &args.release) {
        (Some(dir), _) => fleet::Start::Modules(dir.clone()),
        (None, Some(file)) => fleet::Start::Release(file.clone()),
        (None, None) => fleet::Start::BuiltIn,
    };
    let modules = fleet::FleetModules::open(&start, &trusted, &args.work)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut aggregator = if args.aggregator_process || args.kill_aggregator.is_some() {
        Aggregator::child(&history, &certs, viewer)?
    } else {
        Aggregator::in_process(&rt, &history, &certs, viewer)?
    };
    if args.report == ReportFormat::Text {
        eprintln!(
            "{}: {} couriers, aggregator on quic={} http={}",
            scenario.name,
            scenario.feeds.len(),
            aggregator.quic(),
            aggregator.http()
        );
    }
    let mut options = options(&args);
    options.deploy = args.deploy.clone().map(|file| fleet::Deploy {
        file,
        at_s: args.deploy_at,
        token: operator,
    });
    let places = fleet::Places {
        work: &args.work,
        certs: &certs,
        devices: &devices,
        disk: disk.as_ref(),
    };
    let report = fleet::run(scenario, &mut aggregator, &rt, &places, &modules, &options)?;
    match args.report {
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        ReportFormat::Text => {
            print!("{}", report.text());
            print_hints(&args, &report, &history, &certs, aggregator.http());
        }
    }
    if args.serve_after {
        eprintln!(
            "serving the history on http://{} until Ctrl-C",
            aggregator.http()
        );
        rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
    }
    let lost = report.events.lost + report.events.duplicated;
    drop(aggregator);
    rt.shutdown_timeout(Duration::from_secs(1));
    if lost > 0 {
        anyhow::bail!("{lost} events lost or duplicated");
    }
    Ok(())
}

fn options(args: &RunArgs) -> FleetOptions {
    FleetOptions {
        couriers_per_device: args.couriers_per_device,
        speed: args.speed,
        tick: Duration::from_millis(50),
        seed: args.scenario.seed,
        repeat_rate: args.repeat_rate,
        late_rate: args.late_rate,
        faulty: args.faulty,
        impairment: Impairment {
            drop_rate: args.drop_rate,
            delay_ms: args.delay_ms,
        },
        skew_s: args.skew_s,
        partition: args.partition,
        kill_aggregator: args.kill_aggregator,
        burst: args.burst,
        disk_full: args.disk_full,
        reset_journals: args.reset_journals,
        drain_timeout: Duration::from_secs(args.drain_timeout_s),
        audit: !args.no_audit,
        progress: !args.no_progress && args.report == ReportFormat::Text,
        max_in_flight: 4096,
        deploy: None,
    }
}

/// Copies the release keys the fleet trusts into this run's fleet directory (where the
/// aggregator checks what is published, and the devices what is offered); returns it.
fn trust_release_keys(args: &RunArgs, certs: &Path) -> anyhow::Result<PathBuf> {
    let trusted = certs.join("release-keys");
    std::fs::create_dir_all(&trusted)?;
    let wanted = args.release.is_some() || args.deploy.is_some();
    let mut copied = 0;
    if let Ok(entries) = std::fs::read_dir(&args.release_keys) {
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "pub") {
                let name = path.file_name().expect("a file");
                std::fs::copy(&path, trusted.join(name))
                    .with_context(|| format!("copying {}", path.display()))?;
                copied += 1;
            }
        }
    }
    anyhow::ensure!(
        copied > 0 || !wanted,
        "--release and --deploy need the public key the release is signed with: no *.pub in {} (see --release-keys; `fleetctl keys init` writes one)",
        args.release_keys.display()
    );
    // A release to deploy later is checked now: a wrong file or key fails the run at its
    // start, not minutes into it.
    if let Some(file) = &args.deploy {
        let keys = fleet_release::TrustedKeys::load(&trusted)?;
        fleet_release::open_bundle(file, &keys, u64::MAX)
            .with_context(|| format!("--deploy {} is refused", file.display()))?;
    }
    Ok(trusted)
}

/// How to ask the history: now, while it is served, or later with the aggregator binary.
/// Issues an API token of `role` for this run and writes it to `WORK/<role>.token`.
fn issue_token(certs: &Path, work: &Path, role: Role) -> anyhow::Result<String> {
    let (_, secret) = TokenFile::in_dir(certs).issue(role, "device-sim")?;
    let path = work.join(format!("{role}.token"));
    std::fs::write(&path, format!("{secret}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(secret)
}

fn print_hints(
    args: &RunArgs,
    report: &device_sim::report::Report,
    history: &Path,
    certs: &Path,
    http: SocketAddr,
) {
    if args
        .disk_full
        .is_some_and(|f| f.owner == fleet::DiskOwner::Aggregator)
        && !args.serve_after
    {
        println!("\nThe history was on the small disk this run mounted; it is gone with the run.");
        return;
    }
    let base = if args.serve_after {
        println!("\nThe history is served on http://{http} until Ctrl-C. Ask it:");
        format!("http://{http}")
    } else {
        // The aggregator binary beside this one, as built.
        let aggregator = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("aggregator")))
            .filter(|p| p.exists())
            .map_or_else(|| "aggregator".to_string(), |p| p.display().to_string());
        println!(
            "\nThe history is in {}. Serve it (HTTP on 127.0.0.1:8080):\n  {aggregator} --data {} --certs {}\nthen ask it:",
            history.display(),
            history.display(),
            certs.display()
        );
        "http://127.0.0.1:8080".to_string()
    };
    let token = args.work.join("viewer.token");
    let auth = format!(
        "-H \"Authorization: Bearer $(cat {})\"",
        std::path::absolute(&token).unwrap_or(token).display()
    );
    println!(
        "  (the API needs a token: this run wrote viewer.token and operator.token to its work directory)"
    );
    println!("  curl -s {auth} {base}/api/v1/stats");
    println!("  curl -s {auth} '{base}/api/v1/alerts?severity=critical&limit=5'");
    if let Some(task) = &report.sample_task {
        println!("  curl -s {auth} {base}/api/v1/tasks/{task}");
    }
    if let Some(courier) = &report.sample_courier {
        println!("  curl -s {auth} '{base}/api/v1/couriers/{courier}/route?limit=10'");
    }
    println!("  curl -s {auth} {base}/api/v1/devices");
    println!("  curl -s {auth} {base}/api/v1/dead-letters");
    println!(
        "  curl -s {auth} '{base}/api/v1/couriers/nearby?lat=12.97&lon=77.59&radius_km=2&limit=5'"
    );
    println!(
        "  curl -sN {auth} -H 'Accept: text/event-stream' '{base}/api/v1/stream?topics=alerts'   # live, until Ctrl-C"
    );
}
