//! `edge-host features`: run only the features module, for training and inspection.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use super::{RuntimeArgs, lines};

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
    let input = lines::open(args.input.as_deref())?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    writeln!(out, "event_id,task_id,{}", extractor.names().join(","))?;
    let stats = lines::for_each_batch(
        input,
        args.batch,
        |_| Ok(()),
        |batch| {
            for (event, values) in extractor.extract(batch)? {
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
        },
    )?;
    out.flush()?;
    if stats.malformed > 0 {
        bail!("{} malformed lines", stats.malformed);
    }
    Ok(())
}
