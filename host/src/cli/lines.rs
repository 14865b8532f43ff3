//! JSON-line input shared by the commands that read events: numbered lines, malformed ones
//! (bad JSON or fields, invalid UTF-8, longer than [`MAX_LINE`]) reported on stderr by line and
//! skipped, valid ones handed on in batches that end when full or when the input pauses (a
//! live producer is not kept waiting for a batch to fill).

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

use anyhow::Context as _;

use fleet_host::event::{Event, MAX_LINE};

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
        _ => Box::new(BufReader::new(io::stdin())),
    })
}

/// Reads events and calls `on_batch` with each batch, until the input ends. `check` refuses
/// an event that parsed (the device's clock bound, say) with the field and the reason.
pub(crate) fn for_each_batch(
    input: Box<dyn BufRead + Send>,
    batch_size: usize,
    check: impl Fn(&Event) -> Result<(), fleet_host::event::EventError>,
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
        let line = match line.with_context(|| format!("reading line {n}"))? {
            Line::Text(text) if text.trim().is_empty() => continue,
            Line::Text(text) => text,
            Line::Unreadable(why) => {
                stats.lines += 1;
                stats.malformed += 1;
                eprintln!("line {n}: {why}");
                continue;
            }
        };
        stats.lines += 1;
        match Event::from_json(&line).and_then(|e| check(&e).map(|()| e)) {
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

/// One line of input: its text, or why it cannot be read as text.
#[derive(Debug, PartialEq)]
enum Line {
    Text(String),
    Unreadable(String),
}

/// Reads lines on a thread of its own, numbered from 1, so the loop can wait with a timeout.
/// Only an I/O error ends the input early.
fn read_lines(mut input: Box<dyn BufRead + Send>) -> Receiver<(usize, io::Result<Line>)> {
    let (tx, rx) = mpsc::sync_channel(4096);
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        for n in 1.. {
            let line = match next_line(&mut input, &mut buf, MAX_LINE) {
                Ok(Some(line)) => Ok(line),
                Ok(None) => return,
                Err(e) => Err(e),
            };
            let failed = line.is_err();
            if tx.send((n, line)).is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// The next line (without its end), or `None` at the end of input. A line longer than `max`
/// bytes is read through but not kept, so one huge line costs no memory.
fn next_line(input: &mut dyn BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<Option<Line>> {
    buf.clear();
    let mut length = 0usize;
    let mut ended = false;
    loop {
        let available = input.fill_buf()?;
        if available.is_empty() {
            break;
        }
        let (piece, used) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => {
                ended = true;
                (&available[..i], i + 1)
            }
            None => (available, available.len()),
        };
        length += piece.len();
        if length <= max {
            buf.extend_from_slice(piece);
        }
        input.consume(used);
        if ended {
            break;
        }
    }
    if !ended && length == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(if length > max {
        Line::Unreadable(format!(
            "{length} bytes, longer than the {max}-byte limit for a line; skipped"
        ))
    } else {
        match String::from_utf8(std::mem::take(buf)) {
            Ok(text) => Line::Text(text),
            Err(e) => Line::Unreadable(format!(
                "not valid UTF-8 (at byte {}); skipped",
                e.utf8_error().valid_up_to()
            )),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<Line> {
        let mut reader = BufReader::with_capacity(4, input);
        let mut buf = Vec::new();
        std::iter::from_fn(|| next_line(&mut reader, &mut buf, max).unwrap()).collect()
    }

    #[test]
    fn invalid_utf8_and_overlong_lines_are_reported_and_the_rest_read() {
        let input = b"{\"a\":1}\r\nbad \xff\xfe line\n0123456789abcdef\nlast";
        let got = lines(input, 12);
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], Line::Text("{\"a\":1}".into()));
        assert!(
            matches!(&got[1], Line::Unreadable(w) if w.contains("UTF-8") && w.contains("byte 4"))
        );
        assert!(
            matches!(&got[2], Line::Unreadable(w) if w.contains("16 bytes") && w.contains("12-byte"))
        );
        assert_eq!(got[3], Line::Text("last".into()));
        assert_eq!(lines(b"", 10), []);
        assert_eq!(lines(b"\n", 10), [Line::Text(String::new())]);
    }
}
