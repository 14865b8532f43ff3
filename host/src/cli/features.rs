//! `edge-host features`: run only the features module, for training and inspection.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;

use fleet_host::event::Event;

use super::RuntimeArgs;

#[derive(Args, Debug)]
pub(crate) struct FeaturesArgs {
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Events as JSON lines; `-` or absent reads stdin.
    #[arg(long, short)]
    input: Option<PathBuf>,
    /// Events per call into the module.
    #[arg(long, default_value_t = 1024)]
    batch: usize,
}

pub(crate) fn run(args: FeaturesArgs) -> anyhow::Result<()> {
    let mut extractor = args.runtime.feature_extractor()?;
    let input: Box<dyn BufRead> = match &args.input {
        Some(p) if p.as_os_str() != "-" => Box::new(BufReader::new(
            File::open(p).with_context(|| format!("opening {}", p.display()))?,
        )),
        _ => Box::new(std::io::stdin().lock()),
    };
    let mut out = BufWriter::new(std::io::stdout().lock());
    writeln!(out, "event_id,task_id,{}", extractor.names().join(","))?;
    let mut batch = Vec::new();
    let mut malformed = 0usize;
    let mut write_batch = |batch: &mut Vec<Event>, out: &mut BufWriter<_>| -> anyhow::Result<()> {
        for (event, values) in extractor.extract(std::mem::take(batch))? {
            let row: Vec<String> = values
                .iter()
                .map(|v| {
                    if v.is_finite() {
                        v.to_string()
                    } else {
                        String::new()
                    }
                })
                .collect();
            writeln!(
                out,
                "{},{},{}",
                event.event_id,
                event.task_id.as_deref().unwrap_or(""),
                row.join(",")
            )?;
        }
        Ok(())
    };
    for (n, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match Event::from_json(&line) {
            Ok(e) => batch.push(e),
            Err(e) => {
                malformed += 1;
                eprintln!("line {}: field {}: {}", n + 1, e.field, e.message);
            }
        }
        if batch.len() >= args.batch {
            write_batch(&mut batch, &mut out)?;
        }
    }
    write_batch(&mut batch, &mut out)?;
    out.flush()?;
    if malformed > 0 {
        bail!("{malformed} malformed lines");
    }
    Ok(())
}
