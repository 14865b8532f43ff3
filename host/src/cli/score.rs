//! `edge-host score`: the offline scoring loop over JSON lines.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use fleet_host::pipeline::Pipeline;

use super::{RuntimeArgs, lines};

#[derive(Args, Debug)]
pub(crate) struct ScoreArgs {
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Events as JSON lines; `-` or absent reads stdin.
    #[arg(long, short)]
    input: Option<PathBuf>,
    /// Most events per batch through the modules (a batch also ends when input pauses).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Where dead-lettered events go, as JSON lines. Default: stderr.
    #[arg(long)]
    dead_letters: Option<PathBuf>,
}

pub(crate) fn run(args: ScoreArgs) -> anyhow::Result<()> {
    let registry = args.runtime.registry()?;
    let _reloads = args.runtime.reload_triggers(&registry)?;
    let mut pipeline = Pipeline::new(registry.clone());

    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut dead: Box<dyn Write> = match &args.dead_letters {
        Some(p) => Box::new(BufWriter::new(
            File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::stderr()),
    };
    let mut stats = Stats::default();
    let input = lines::open(args.input.as_deref())?;
    let line_stats = lines::for_each_batch(
        input,
        args.batch,
        |_| Ok(()),
        |batch| {
            let outcome = pipeline.process(batch);
            stats.decisions += outcome.decisions.len();
            stats.duplicates += outcome.duplicates;
            stats.dead += outcome.dead_letters.len();
            write_outcome(
                &mut out,
                &mut dead,
                &outcome.decisions,
                &outcome.dead_letters,
            )
        },
    )?;
    tracing::info!(
        lines = line_stats.lines,
        decisions = stats.decisions,
        malformed = line_stats.malformed,
        duplicates = stats.duplicates,
        dead_lettered = stats.dead,
        "done"
    );
    Ok(())
}

/// Writes decisions (stdout) and dead letters (their sink) as JSON lines.
pub(crate) fn write_outcome(
    out: &mut impl Write,
    dead: &mut dyn Write,
    decisions: &[fleet_host::decision::Decision],
    dead_letters: &[fleet_host::decision::DeadLetter],
) -> anyhow::Result<()> {
    for d in decisions {
        serde_json::to_writer(&mut *out, d)?;
        out.write_all(b"\n")?;
    }
    for d in dead_letters {
        write!(dead, "dead-letter: ")?;
        serde_json::to_writer(&mut *dead, d)?;
        dead.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

#[derive(Default)]
struct Stats {
    decisions: usize,
    duplicates: usize,
    dead: usize,
}
