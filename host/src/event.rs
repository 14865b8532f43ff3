//! The event schema producers send (JSON), its validation, and its conversion to the WIT event.
//!
//! Validation happens once, here, at the edge: a module only ever sees well-formed events.

use chrono::{DateTime, FixedOffset, SecondsFormat, TimeZone};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::bindings::types as wit;

/// Longest accepted id (event, courier, task), in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Longest accepted JSON line, in bytes (an event is well under 1 KiB).
pub const MAX_LINE: usize = 64 << 10;

/// Event times (and promises) must fall in `[EARLIEST_MS, LATEST_MS)`: 2000-01-01 to
/// 2100-01-01 UTC. Anything outside is a broken clock or a corrupt field, not an event.
pub const EARLIEST_MS: i64 = 946_684_800_000;
/// See [`EARLIEST_MS`].
pub const LATEST_MS: i64 = 4_102_444_800_000;

/// How far an event may be ahead of the clock of the device that takes it in
/// ([`Event::check_clock`]): handset clocks drift, but not by a day.
pub const MAX_AHEAD_OF_CLOCK_MS: i64 = 24 * 3_600_000;

/// The lifecycle of a task, plus free-running location pings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    TaskAssigned,
    Location,
    ArrivedPickup,
    PickedUp,
    ArrivedDropoff,
    Delivered,
    DeliveryFailed,
}

/// A WGS-84 position.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Geo {
    pub lat: f64,
    pub lon: f64,
}

/// One event as a producer sends it (one JSON object per line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub event_id: String,
    pub courier_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    pub event_type: EventType,
    /// RFC 3339 with an offset, e.g. `2026-11-22T10:05:00+05:30`.
    pub event_time: DateTime<FixedOffset>,
    pub lat: f64,
    pub lon: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_kmh: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_m: Option<f32>,
    /// Task context, on `task_assigned`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pickup: Option<Geo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropoff: Option<Geo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promised_at: Option<DateTime<FixedOffset>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stops_remaining: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vehicle_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub courier_rating: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub courier_age: Option<f32>,
    /// Read and ignored: what `--dead-letters` writes beside a failed event, so that the
    /// file can be fed back as input.
    #[serde(default, skip_serializing)]
    dead_letter: Ignored,
}

/// A field whose value is read and thrown away.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Ignored;

impl<'de> Deserialize<'de> for Ignored {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Self)
    }
}

/// Why an event was refused; names the offending field.
#[derive(Debug, Error, PartialEq)]
#[error("{field}: {message}")]
pub struct EventError {
    /// The JSON field at fault (`.` when the line is not an object at all).
    pub field: String,
    pub message: String,
}

impl EventError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl Event {
    /// An event with what every event carries; the optional context (speed, task details)
    /// is left empty for the caller to fill in.
    pub fn new(
        event_id: String,
        courier_id: String,
        task_id: Option<String>,
        event_type: EventType,
        event_time: DateTime<FixedOffset>,
        lat: f64,
        lon: f64,
    ) -> Self {
        Self {
            event_id,
            courier_id,
            task_id,
            event_type,
            event_time,
            lat,
            lon,
            speed_kmh: None,
            accuracy_m: None,
            pickup: None,
            dropoff: None,
            promised_at: None,
            stops_remaining: None,
            order_type: None,
            vehicle_type: None,
            courier_rating: None,
            courier_age: None,
            dead_letter: Ignored,
        }
    }

    /// Parses and validates one JSON line.
    pub fn from_json(line: &str) -> Result<Self, EventError> {
        // serde would read a struct from a JSON array too; the schema is an object.
        if !line.trim_start().starts_with('{') {
            return Err(EventError::new(".", "expected a JSON object"));
        }
        let de = &mut serde_json::Deserializer::from_str(line);
        let event: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                top_level_field(e.inner())
            } else {
                path
            };
            EventError::new(&field, strip_position(&e.inner().to_string()))
        })?;
        event.validate()?;
        Ok(event)
    }

    /// Checks what the types alone do not: ranges, lengths, required context.
    pub fn validate(&self) -> Result<(), EventError> {
        for (field, id) in [
            ("event_id", Some(&self.event_id)),
            ("courier_id", Some(&self.courier_id)),
            ("task_id", self.task_id.as_ref()),
        ] {
            if let Some(id) = id {
                if id.trim().is_empty() {
                    return Err(EventError::new(field, "must not be empty"));
                }
                if id.len() > MAX_ID_LEN {
                    return Err(EventError::new(
                        field,
                        format!("longer than {MAX_ID_LEN} bytes"),
                    ));
                }
                // Control characters have no place in an id (and mark the host's own keys).
                if id.chars().any(char::is_control) {
                    return Err(EventError::new(field, "must not hold control characters"));
                }
            }
        }
        check_position("lat", "lon", self.lat, self.lon)?;
        check_time("event_time", self.event_time_ms())?;
        if let Some(promised) = self.promised_at {
            check_time("promised_at", promised.timestamp_millis())?;
        }
        for (field, value, max) in [
            ("speed_kmh", self.speed_kmh, 500.0),
            ("accuracy_m", self.accuracy_m, 1e6),
            ("courier_age", self.courier_age, 150.0),
        ] {
            if let Some(v) = value
                && (!v.is_finite() || v < 0.0 || v > max)
            {
                return Err(EventError::new(field, format!("{v} is outside 0..={max}")));
            }
        }
        if let Some(r) = self.courier_rating
            && (!r.is_finite() || !(0.0..=5.0).contains(&r))
        {
            return Err(EventError::new(
                "courier_rating",
                format!("{r} is outside 0..=5"),
            ));
        }
        if self.event_type == EventType::TaskAssigned {
            if self.task_id.is_none() {
                return Err(EventError::new("task_id", "required on task_assigned"));
            }
            for (field, geo) in [("pickup", self.pickup), ("dropoff", self.dropoff)] {
                let geo = geo.ok_or_else(|| EventError::new(field, "required on task_assigned"))?;
                check_position(
                    &format!("{field}.lat"),
                    &format!("{field}.lon"),
                    geo.lat,
                    geo.lon,
                )?;
            }
            if self.promised_at.is_none() {
                return Err(EventError::new("promised_at", "required on task_assigned"));
            }
        }
        Ok(())
    }

    /// Refuses an event more than [`MAX_AHEAD_OF_CLOCK_MS`] ahead of `now_ms`, the clock of
    /// the device taking it in (late events are normal; events from the future are not).
    pub fn check_clock(&self, now_ms: i64) -> Result<(), EventError> {
        let ahead = self.event_time_ms() - now_ms;
        if ahead > MAX_AHEAD_OF_CLOCK_MS {
            return Err(EventError::new(
                "event_time",
                format!(
                    "{} is {:.1} h ahead of this device's clock ({}); at most {} h is accepted",
                    self.event_time.to_rfc3339(),
                    ahead as f64 / 3.6e6,
                    format_time(now_ms, FixedOffset::east_opt(0).expect("UTC")),
                    MAX_AHEAD_OF_CLOCK_MS / 3_600_000
                ),
            ));
        }
        Ok(())
    }

    /// The key feature state lives under: the task, or the courier when there is none.
    pub fn state_key(&self) -> &str {
        self.task_id.as_deref().unwrap_or(&self.courier_id)
    }

    /// Event time as epoch milliseconds (UTC).
    pub fn event_time_ms(&self) -> i64 {
        self.event_time.timestamp_millis()
    }

    /// The event as a module sees it.
    pub fn to_wit(&self) -> wit::Event {
        let task = (self.event_type == EventType::TaskAssigned).then(|| wit::TaskContext {
            pickup: self
                .pickup
                .map(to_wit_geo)
                .unwrap_or(wit::Geo { lat: 0.0, lon: 0.0 }),
            dropoff: self
                .dropoff
                .map(to_wit_geo)
                .unwrap_or(wit::Geo { lat: 0.0, lon: 0.0 }),
            promised_at_ms: self.promised_at.map_or(0, |t| t.timestamp_millis()),
            stops_remaining: self.stops_remaining.unwrap_or(0),
            order_type: self.order_type.clone().unwrap_or_default(),
            vehicle_type: self.vehicle_type.clone().unwrap_or_default(),
            courier_rating: self.courier_rating,
            courier_age: self.courier_age,
        });
        wit::Event {
            event_id: self.event_id.clone(),
            courier_id: self.courier_id.clone(),
            task_id: self.task_id.clone(),
            event_type: self.event_type.into(),
            event_time_ms: self.event_time_ms(),
            utc_offset_min: self.event_time.offset().local_minus_utc() / 60,
            position: wit::Geo {
                lat: self.lat,
                lon: self.lon,
            },
            speed_kmh: self.speed_kmh,
            accuracy_m: self.accuracy_m,
            task,
        }
    }
}

impl From<EventType> for wit::EventType {
    fn from(t: EventType) -> Self {
        match t {
            EventType::TaskAssigned => Self::TaskAssigned,
            EventType::Location => Self::Location,
            EventType::ArrivedPickup => Self::ArrivedPickup,
            EventType::PickedUp => Self::PickedUp,
            EventType::ArrivedDropoff => Self::ArrivedDropoff,
            EventType::Delivered => Self::Delivered,
            EventType::DeliveryFailed => Self::DeliveryFailed,
        }
    }
}

fn to_wit_geo(g: Geo) -> wit::Geo {
    wit::Geo {
        lat: g.lat,
        lon: g.lon,
    }
}

fn check_position(lat_field: &str, lon_field: &str, lat: f64, lon: f64) -> Result<(), EventError> {
    if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
        return Err(EventError::new(
            lat_field,
            format!("{lat} is not a latitude"),
        ));
    }
    if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
        return Err(EventError::new(
            lon_field,
            format!("{lon} is not a longitude"),
        ));
    }
    Ok(())
}

fn check_time(field: &str, ms: i64) -> Result<(), EventError> {
    if (EARLIEST_MS..LATEST_MS).contains(&ms) {
        return Ok(());
    }
    Err(EventError::new(
        field,
        format!(
            "{} is outside the accepted years 2000-2099",
            format_time(ms, FixedOffset::east_opt(0).expect("UTC"))
        ),
    ))
}

/// For errors about the object itself ("missing field `x`"), the field is in the message.
fn top_level_field(err: &serde_json::Error) -> String {
    let text = err.to_string();
    text.split('`')
        .nth(1)
        .map_or_else(|| ".".to_string(), str::to_string)
}

/// serde_json appends " at line 1 column 17"; the caller reports the line itself.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Formats a time in the RFC 3339 form the schema uses.
pub fn format_time(ms: i64, offset: FixedOffset) -> String {
    offset
        .timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, false))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"event_id":"e1","courier_id":"123","task_id":"T-999","event_type":"task_assigned","event_time":"2026-11-22T10:00:00+05:30","lat":12.97,"lon":77.59,"pickup":{"lat":12.97,"lon":77.59},"dropoff":{"lat":13.0,"lon":77.62},"promised_at":"2026-11-22T10:30:00+05:30","order_type":"meal","vehicle_type":"motorcycle"}"#;

    #[test]
    fn a_valid_assignment_parses_with_its_offset() {
        let e = Event::from_json(GOOD).unwrap();
        let w = e.to_wit();
        assert_eq!(w.utc_offset_min, 330);
        assert_eq!(w.event_time_ms, 1_795_321_800_000);
        assert_eq!(w.task.unwrap().promised_at_ms, 1_795_323_600_000);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                GOOD.replace(
                    r#""lat":12.97,"lon":77.59,"pickup""#,
                    r#""lat":"north","lon":77.59,"pickup""#,
                ),
                "lat",
            ),
            (GOOD.replace(r#""courier_id":"123","#, ""), "courier_id"),
            (GOOD.replace("task_assigned", "teleported"), "event_type"),
            (
                GOOD.replace("2026-11-22T10:00:00+05:30", "yesterday"),
                "event_time",
            ),
            (
                GOOD.replace(
                    r#""lat":12.97,"lon":77.59,"pickup""#,
                    r#""lat":123.0,"lon":77.59,"pickup""#,
                ),
                "lat",
            ),
            (
                GOOD.replace(r#","promised_at":"2026-11-22T10:30:00+05:30""#, ""),
                "promised_at",
            ),
            (
                GOOD.replace(r#""dropoff":{"lat":13.0"#, r#""dropoff":{"lat":913.0"#),
                "dropoff.lat",
            ),
            (
                GOOD.replace(r#""event_id":"e1""#, r#""event_id":"""#),
                "event_id",
            ),
            (
                GOOD.replace(r#""event_id":"e1""#, r#""event_id":"e\u0001""#),
                "event_id",
            ),
            (GOOD.replace(r#""order_type""#, r#""colour""#), "colour"),
            (
                GOOD.replace("2026-11-22T10:00:00+05:30", "9999-01-01T00:00:00Z"),
                "event_time",
            ),
            (
                GOOD.replace("2026-11-22T10:00:00+05:30", "0000-01-01T00:00:00Z"),
                "event_time",
            ),
            (
                GOOD.replace("2026-11-22T10:30:00+05:30", "2207-01-01T00:00:00Z"),
                "promised_at",
            ),
        ];
        for (line, field) in cases {
            let err = Event::from_json(&line).unwrap_err();
            assert_eq!(err.field, field, "{err} for {line}");
        }
        assert_eq!(Event::from_json("[1,2]").unwrap_err().field, ".");
        assert!(Event::from_json("{not json").is_err());
    }

    #[test]
    fn an_event_far_ahead_of_the_devices_clock_is_refused() {
        let e = Event::from_json(GOOD).unwrap();
        let t = e.event_time_ms();
        assert!(e.check_clock(t).is_ok());
        assert!(e.check_clock(t - MAX_AHEAD_OF_CLOCK_MS).is_ok());
        assert!(e.check_clock(t + 365 * 86_400_000).is_ok(), "late is fine");
        let err = e.check_clock(t - MAX_AHEAD_OF_CLOCK_MS - 1).unwrap_err();
        assert_eq!(err.field, "event_time");
        assert!(
            err.message.contains("ahead of this device's clock"),
            "{err}"
        );
    }

    #[test]
    fn a_dead_letter_note_is_read_and_ignored() {
        let noted = GOOD.replace(
            r#""event_id":"e1","#,
            r#""event_id":"e1","dead_letter":{"stage":"policy","error":"panic"},"#,
        );
        assert_eq!(
            Event::from_json(&noted).unwrap(),
            Event::from_json(GOOD).unwrap()
        );
        let written = serde_json::to_string(&Event::from_json(&noted).unwrap()).unwrap();
        assert!(!written.contains("dead_letter"), "{written}");
    }
}
