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
    /// Where dead-lettered events go: one JSON line per event, the event as it came with the
    /// failure in a `dead_letter` field that input ignores, so the file can be scored again
    /// (`--input FILE`). Default: stderr, each line prefixed `dead-letter: `.
    #[arg(long)]
    dead_letters: Option<PathBuf>,
}

pub(crate) fn run(args: ScoreArgs) -> anyhow::Result<()> {
    let registry = args.runtime.registry()?;
    let _reloads = args.runtime.reload_triggers(&registry)?;
    let mut pipeline = Pipeline::new(registry.clone());

    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut dead = match &args.dead_letters {
        Some(p) => DeadLetterSink::file(
            File::create(p).with_context(|| format!("creating {}", p.display()))?,
        ),
        None => DeadLetterSink::stderr(),
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

/// Where dead letters are written: a file that event input reads again, or stderr.
pub(crate) struct DeadLetterSink {
    out: Box<dyn Write>,
    prefix: &'static str,
}

impl DeadLetterSink {
    pub(crate) fn file(file: File) -> Self {
        Self {
            out: Box::new(BufWriter::new(file)),
            prefix: "",
        }
    }

    /// Among the log lines, each prefixed `dead-letter: `.
    pub(crate) fn stderr() -> Self {
        Self {
            out: Box::new(std::io::stderr()),
            prefix: "dead-letter: ",
        }
    }
}

/// Writes decisions (stdout) and dead letters (their sink) as JSON lines.
pub(crate) fn write_outcome(
    out: &mut impl Write,
    dead: &mut DeadLetterSink,
    decisions: &[fleet_host::decision::Decision],
    dead_letters: &[fleet_host::decision::DeadLetter],
) -> anyhow::Result<()> {
    for d in decisions {
        serde_json::to_writer(&mut *out, d)?;
        out.write_all(b"\n")?;
    }
    for d in dead_letters {
        writeln!(dead.out, "{}{}", dead.prefix, d.to_json_line())?;
    }
    dead.out.flush()?;
    out.flush()?;
    Ok(())
}

#[derive(Default)]
struct Stats {
    decisions: usize,
    duplicates: usize,
    dead: usize,
}
