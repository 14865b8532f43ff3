//! JSON-line input shared by the commands that read events: numbered lines, malformed ones
//! reported on stderr by line and field, valid ones handed on in batches that end when full
//! or when the input pauses (a live producer is not kept waiting for a batch to fill).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

use anyhow::Context as _;

use fleet_host::event::Event;

/// How long a partial batch waits for more input.
const IDLE_FLUSH: Duration = Duration::from_millis(2);

/// Counts of what the input held.
#[derive(Debug, Default)]
pub(crate) struct LineStats {
    pub(crate) lines: usize,
    pub(crate) malformed: usize,
}

/// Opens `path`, or stdin for `None` or `-`.
pub(crate) fn open(path: Option<&Path>) -> anyhow::Result<Box<dyn BufRead + Send>> {
    Ok(match path {
        Some(p) if p.as_os_str() != "-" => Box::new(BufReader::new(
            File::open(p).with_context(|| format!("opening {}", p.display()))?,
        )),
        _ => Box::new(BufReader::new(std::io::stdin())),
    })
}

/// Reads events and calls `on_batch` with each batch, until the input ends.
pub(crate) fn for_each_batch(
    input: Box<dyn BufRead + Send>,
    batch_size: usize,
    mut on_batch: impl FnMut(Vec<Event>) -> anyhow::Result<()>,
) -> anyhow::Result<LineStats> {
    let lines = read_lines(input);
    let mut stats = LineStats::default();
    let mut batch = Vec::with_capacity(batch_size);
    loop {
        let next = if batch.is_empty() {
            lines.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            lines.recv_timeout(IDLE_FLUSH)
        };
        let (n, line) = match next {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => {
                on_batch(std::mem::take(&mut batch))?;
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
        if batch.len() >= batch_size {
            on_batch(std::mem::take(&mut batch))?;
        }
    }
    if !batch.is_empty() {
        on_batch(batch)?;
    }
    Ok(stats)
}

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
