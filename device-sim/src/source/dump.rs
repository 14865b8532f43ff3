//! A scenario written out instead of run: every event as the JSON line a handset sends, and
//! each task's truth, for training and evaluating models on exactly what a fleet run replays.

use std::io::Write;

use super::{Scenario, TaskTruth};

/// What [`write()`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub events: u64,
    pub tasks: u64,
    pub late: u64,
}

/// The header of the tasks file.
pub const TASKS_HEADER: &str = "task_id,source,promised_ms,ended_ms,late";

/// Writes every event of `scenario`, courier after courier (each courier's in time order,
/// which is all a task's features need), and the truth of every task, with `source` naming
/// where it came from.
pub fn write(
    scenario: Scenario,
    source: &str,
    events: &mut impl Write,
    tasks: &mut impl Write,
) -> std::io::Result<Written> {
    let mut written = Written::default();
    writeln!(tasks, "{TASKS_HEADER}")?;
    let mut batch = Vec::new();
    let mut truth: Vec<TaskTruth> = Vec::new();
    for mut feed in scenario.feeds {
        while !feed.done() {
            feed.advance(i64::MAX, &mut batch, &mut truth);
            for e in batch.drain(..) {
                serde_json::to_writer(&mut *events, &e)?;
                events.write_all(b"\n")?;
                written.events += 1;
            }
        }
        for t in truth.drain(..) {
            writeln!(
                tasks,
                "{},{source},{},{},{}",
                t.task_id,
                t.promised_ms,
                t.ended_ms,
                u8::from(t.late)
            )?;
            written.tasks += 1;
            written.late += u64::from(t.late);
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::city::{CityConfig, scenario};

    #[test]
    fn a_city_is_written_as_events_the_host_reads_and_tasks_with_their_truth() {
        let config = CityConfig {
            couriers: 3,
            center: (12.97, 77.59),
            radius_km: 5.0,
            seed: 9,
            start_ms: 1_795_300_000_000,
            offset: chrono::FixedOffset::east_opt(19_800).unwrap(),
            duration_ms: 3_600_000,
            ping_s: 10.0,
            shift_start_s: 60.0,
            noise: Default::default(),
            promises: crate::source::promise::Promises::Quoted,
        };
        let (mut events, mut tasks) = (Vec::new(), Vec::new());
        let written = write(scenario(&config), "city", &mut events, &mut tasks).unwrap();
        assert!(written.events > 100 && written.tasks > 0, "{written:?}");
        let lines: Vec<&str> = std::str::from_utf8(&events).unwrap().lines().collect();
        assert_eq!(lines.len() as u64, written.events);
        for line in &lines {
            fleet_host::event::Event::from_json(line).unwrap();
        }
        let tasks = String::from_utf8(tasks).unwrap();
        let mut rows = tasks.lines();
        assert_eq!(rows.next(), Some(TASKS_HEADER));
        let first: Vec<&str> = rows.next().unwrap().split(',').collect();
        assert_eq!(first[1], "city");
        let (promised, ended): (i64, i64) = (first[2].parse().unwrap(), first[3].parse().unwrap());
        assert_eq!(first[4], if ended > promised { "1" } else { "0" });
        // Every task is assigned in the events.
        assert!(
            lines
                .iter()
                .any(|l| l.contains(first[0]) && l.contains("task_assigned"))
        );
        // The same seed, the same data.
        let (mut again, mut again_tasks) = (Vec::new(), Vec::new());
        write(scenario(&config), "city", &mut again, &mut again_tasks).unwrap();
        assert_eq!(again, events);
    }
}
