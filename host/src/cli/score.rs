//! `edge-host score`: the offline scoring loop over JSON lines.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use fleet_host::event::Event;
use fleet_host::pipeline::Pipeline;

use super::RuntimeArgs;

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
    let _watcher = args
        .runtime
        .modules
        .as_ref()
        .map(|_| fleet_host::watch::watch(registry.clone(), Duration::from_millis(500)));
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .context("installing the SIGHUP handler")?;
    let mut pipeline = Pipeline::new(registry.clone());

    let input: Box<dyn BufRead + Send> = match &args.input {
        Some(p) if p.as_os_str() != "-" => Box::new(BufReader::new(
            File::open(p).with_context(|| format!("opening {}", p.display()))?,
        )),
        _ => Box::new(BufReader::new(std::io::stdin())),
    };
    let lines = read_lines(input);
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut dead: Box<dyn Write> = match &args.dead_letters {
        Some(p) => Box::new(BufWriter::new(
            File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::stderr()),
    };
    let mut stats = Stats::default();
    let mut batch = Vec::with_capacity(args.batch);
    let mut flush = |batch: &mut Vec<Event>,
                     out: &mut BufWriter<_>,
                     dead: &mut Box<dyn Write>,
                     stats: &mut Stats|
     -> anyhow::Result<()> {
        if reload.swap(false, Ordering::Relaxed)
            && let Err(e) = registry.reload()
        {
            tracing::error!(error = %e, "reload on SIGHUP failed; keeping the current modules");
        }
        let outcome = pipeline.process(std::mem::take(batch));
        stats.decisions += outcome.decisions.len();
        stats.duplicates += outcome.duplicates;
        stats.dead += outcome.dead_letters.len();
        for d in &outcome.decisions {
            serde_json::to_writer(&mut *out, d)?;
            out.write_all(b"\n")?;
        }
        for d in &outcome.dead_letters {
            write!(dead, "dead-letter: ")?;
            serde_json::to_writer(&mut *dead, d)?;
            dead.write_all(b"\n")?;
        }
        out.flush()?;
        Ok(())
    };
    loop {
        // A batch ends when full, or when the input pauses: a live producer is not kept
        // waiting for the batch to fill.
        let next = if batch.is_empty() {
            lines.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            lines.recv_timeout(IDLE_FLUSH)
        };
        let (n, line) = match next {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => {
                flush(&mut batch, &mut out, &mut dead, &mut stats)?;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let line = line.with_context(|| format!("reading line {n}"))?;
        if line.trim().is_empty() {
            continue;
        }
        stats.lines += 1;
        match Event::from_json(&line) {
            Ok(event) => batch.push(event),
            Err(e) => {
                stats.malformed += 1;
                eprintln!("line {n}: field {}: {}", e.field, e.message);
            }
        }
        if batch.len() >= args.batch {
            flush(&mut batch, &mut out, &mut dead, &mut stats)?;
        }
    }
    if !batch.is_empty() {
        flush(&mut batch, &mut out, &mut dead, &mut stats)?;
    }
    tracing::info!(
        lines = stats.lines,
        decisions = stats.decisions,
        malformed = stats.malformed,
        duplicates = stats.duplicates,
        dead_lettered = stats.dead,
        "done"
    );
    Ok(())
}

/// How long a partial batch waits for more input.
const IDLE_FLUSH: Duration = Duration::from_millis(2);

/// Reads lines on a thread of its own, numbered from 1, so the loop can wait with a timeout.
fn read_lines(input: Box<dyn BufRead + Send>) -> Receiver<(usize, std::io::Result<String>)> {
    let (tx, rx) = mpsc::sync_channel(4096);
    std::thread::spawn(move || {
        for (n, line) in input.lines().enumerate() {
            let failed = line.is_err();
            if tx.send((n + 1, line)).is_err() || failed {
                return;
            }
        }
    });
    rx
}

#[derive(Default)]
struct Stats {
    lines: usize,
    decisions: usize,
    malformed: usize,
    duplicates: usize,
    dead: usize,
}
