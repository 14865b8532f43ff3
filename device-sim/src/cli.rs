//! The command line's arguments that choose what couriers a run has (shared by a fleet run
//! and `generate`), and the scenario they make.

use std::io::{BufWriter, Write as _};
use std::path::PathBuf;

use anyhow::Context as _;

use chrono::{DateTime, FixedOffset};
use clap::ValueEnum;

use device_sim::source::{self, Scenario};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Source {
    /// Synthetic couriers and orders around `--center`.
    City,
    /// food-delivery/deliverytime.csv: real orders, simulated tracks.
    Food,
    /// cabspotting: 499 San Francisco cabs, one real day of pings and fares.
    Cabs,
    /// amazon-lmrrc: 13 real Amazon routes, real stop order and delivery windows, simulated
    /// driving.
    Amazon,
}

/// How tasks are promised (the city and the food and cab replays; Amazon's delivery windows
/// are the data's own).
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum PromiseArg {
    /// Assignment + 30 minutes, what the late-risk model 1.0 was trained on.
    Fixed,
    /// Quoted as platforms do: their estimate for the distances and the hour, plus a buffer
    /// for the load, rounded up to 5 minutes.
    Quoted,
}

impl From<PromiseArg> for source::promise::Promises {
    fn from(p: PromiseArg) -> Self {
        match p {
            PromiseArg::Fixed => Self::Fixed,
            PromiseArg::Quoted => Self::Quoted,
        }
    }
}

/// Which couriers, where and for how long.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ScenarioArgs {
    #[arg(long, value_enum, default_value = "city")]
    pub(crate) source: Source,
    /// Couriers (replays: the first N in the data; 0 = all).
    #[arg(long, default_value_t = 200)]
    pub(crate) couriers: usize,
    /// Simulated hours (replays: at most this much of the data).
    #[arg(long, default_value_t = 2.0)]
    pub(crate) hours: f64,
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// City center (synthetic city).
    #[arg(long, default_value = "12.9716,77.5946", value_parser = parse_point)]
    pub(crate) center: (f64, f64),
    #[arg(long, default_value_t = 8.0)]
    pub(crate) radius_km: f64,
    /// Simulated start, RFC 3339 (synthetic city and food replay).
    #[arg(long, default_value = "2026-11-23T10:00:00+05:30")]
    pub(crate) start: DateTime<FixedOffset>,
    /// Seconds between location pings (default: 10 in the city, 60 in the food and Amazon replays).
    #[arg(long)]
    pub(crate) ping_s: Option<f64>,
    /// Synthetic city: couriers take their first order within this many seconds of the
    /// start; 0 puts the whole fleet on the road at once (steady load from the first second).
    #[arg(long, default_value_t = 600.0)]
    pub(crate) shift_start_s: f64,
    #[arg(long, value_enum, default_value = "fixed")]
    pub(crate) promises: PromiseArg,
    /// Where the real data lives (only the replays read it; the synthetic city does not).
    #[arg(long, default_value = "../shared/data")]
    pub(crate) data_dir: PathBuf,
}

fn parse_point(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = s.split_once(',').ok_or("expected LAT,LON")?;
    Ok((
        a.trim().parse().map_err(|e| format!("{a}: {e}"))?,
        b.trim().parse().map_err(|e| format!("{b}: {e}"))?,
    ))
}

/// A file of the data directory a replay reads, or an error that says how to point at it.
fn data_file(args: &ScenarioArgs, source: &str, relative: &str) -> anyhow::Result<PathBuf> {
    let path = args.data_dir.join(relative);
    if !path.exists() {
        anyhow::bail!(
            "the {source} replay reads {}, which does not exist here: point --data-dir at the data directory (default ../shared/data, relative to where device-sim runs); the synthetic city (--source city) needs no data",
            path.display()
        );
    }
    Ok(path)
}

pub(crate) fn scenario(args: &ScenarioArgs) -> anyhow::Result<Scenario> {
    let hours_ms = (args.hours * 3.6e6) as i64;
    let couriers = (args.couriers > 0).then_some(args.couriers);
    Ok(match args.source {
        Source::City => source::city::scenario(&source::city::CityConfig {
            couriers: args.couriers,
            center: args.center,
            radius_km: args.radius_km,
            seed: args.seed,
            start_ms: args.start.timestamp_millis(),
            offset: *args.start.offset(),
            duration_ms: hours_ms,
            ping_s: args.ping_s.unwrap_or(10.0),
            shift_start_s: args.shift_start_s,
            noise: Default::default(),
            promises: args.promises.into(),
        }),
        Source::Food => source::food::scenario(
            &data_file(args, "food", "food-delivery/deliverytime.csv")?,
            &source::food::FoodConfig {
                seed: args.seed,
                start_ms: args.start.timestamp_millis(),
                offset: *args.start.offset(),
                ping_s: args.ping_s.unwrap_or(60.0),
                couriers,
                max_duration_ms: Some(hours_ms),
                promises: args.promises.into(),
            },
        )?,
        Source::Cabs => source::cabs::scenario(
            &data_file(
                args,
                "cabs",
                "cabspotting/cabspotting_sf_2008-05-21_pdt.csv",
            )?,
            FixedOffset::west_opt(7 * 3600).expect("valid offset"),
            couriers,
            Some(hours_ms),
            args.promises.into(),
        )?,
        Source::Amazon => source::amazon::scenario(
            &data_file(args, "amazon", "amazon-lmrrc")?,
            &source::amazon::AmazonConfig {
                seed: args.seed,
                ping_s: args.ping_s.unwrap_or(60.0),
                couriers,
                max_duration_ms: Some(hours_ms),
            },
        )?,
    })
}

#[derive(clap::Args, Debug)]
pub(crate) struct GenerateArgs {
    #[command(flatten)]
    scenario: ScenarioArgs,
    /// Directory for `events.jsonl` and `tasks.csv` (created).
    #[arg(long)]
    out: PathBuf,
}

/// `device-sim generate`: the scenario's events and tasks, written.
pub(crate) fn generate(args: &GenerateArgs) -> anyhow::Result<()> {
    let scenario = scenario(&args.scenario)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let create = |name: &str| {
        let path = args.out.join(name);
        std::fs::File::create(&path)
            .map(BufWriter::new)
            .with_context(|| format!("creating {}", path.display()))
    };
    let (mut events, mut tasks) = (create("events.jsonl")?, create("tasks.csv")?);
    let source = args
        .scenario
        .source
        .to_possible_value()
        .expect("every source has a name");
    let written = source::dump::write(scenario, source.get_name(), &mut events, &mut tasks)?;
    events.flush()?;
    tasks.flush()?;
    println!(
        "wrote {} events and {} tasks ({} late) to {}",
        written.events,
        written.tasks,
        written.late,
        args.out.display()
    );
    Ok(())
}
