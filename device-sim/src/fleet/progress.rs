//! Progress while a run goes: a bar on a terminal, a plain line every few seconds when
//! stderr goes to a file or a pipe (a bar would print nothing there).

use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::ledger::Ledger;
use crate::source::Scenario;

/// How often a line is printed when stderr is not a terminal.
const EVERY: Duration = Duration::from_secs(5);

pub(super) enum Progress {
    Off,
    Bar(indicatif::ProgressBar),
    Lines {
        total_s: u64,
        last: Instant,
        started: Instant,
    },
}

impl Progress {
    pub(super) fn new(enabled: bool, scenario: &Scenario) -> Self {
        let total_s = ((scenario.end_ms - scenario.start_ms) / 1000) as u64;
        if !enabled {
            return Self::Off;
        }
        if !std::io::stderr().is_terminal() {
            let now = Instant::now();
            return Self::Lines {
                total_s,
                // The first line comes at the first tick.
                last: now.checked_sub(EVERY).unwrap_or(now),
                started: now,
            };
        }
        let bar = indicatif::ProgressBar::new(total_s);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} simulated {pos}/{len} s [{bar:30}] {elapsed} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        Self::Bar(bar)
    }

    pub(super) fn tick(&mut self, simulated_s: u64, ledger: &Mutex<Ledger>) {
        let counts = || {
            let l = ledger.lock().unwrap_or_else(|e| e.into_inner());
            (l.acknowledged, l.stored_micros.len())
        };
        match self {
            Self::Off => {}
            Self::Bar(bar) => {
                bar.set_position(simulated_s);
                let (acked, stored) = counts();
                bar.set_message(format!("{acked} events, {stored} stored"));
            }
            Self::Lines {
                total_s,
                last,
                started,
            } => {
                if last.elapsed() < EVERY {
                    return;
                }
                *last = Instant::now();
                let (acked, stored) = counts();
                eprintln!(
                    "{:>5.0} s: simulated {simulated_s}/{total_s} s, {acked} events acknowledged by the devices, {stored} stored by the aggregator",
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }

    pub(super) fn message(&self, message: &str) {
        match self {
            Self::Bar(bar) => bar.set_message(message.to_string()),
            Self::Lines { .. } => eprintln!("{message}"),
            Self::Off => {}
        }
    }

    pub(super) fn finish(self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
