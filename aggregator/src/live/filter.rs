//! What a subscriber asks for: topics, and filters on courier, task, area and severity.

use std::collections::HashMap;

use fleet_proto::record::Severity;
use serde::Serialize;

use super::LiveEvent;

/// What a live event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Topic {
    /// An alert opened, escalated or resolved (the alert object with it).
    Alerts,
    /// A courier's position (at most one per courier per interval).
    Positions,
    /// A task's status changed (assigned, at pickup, picked up, at dropoff, delivered, failed).
    Tasks,
    /// A device connected or went away, or reported on a release.
    Devices,
    /// A model's drift alert was raised or cleared (its drift report with it).
    Drift,
}

impl Topic {
    pub const ALL: [Self; 5] = [
        Self::Alerts,
        Self::Positions,
        Self::Tasks,
        Self::Devices,
        Self::Drift,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alerts => "alerts",
            Self::Positions => "positions",
            Self::Tasks => "tasks",
            Self::Devices => "devices",
            Self::Drift => "drift",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// `bbox=min_lat,min_lon,max_lat,max_lon` (degrees, minimum first), if given.
pub fn bbox_param(p: &HashMap<String, String>) -> Result<Option<(f64, f64, f64, f64)>, String> {
    let Some(v) = p.get("bbox") else {
        return Ok(None);
    };
    let n: Vec<f64> = v
        .split(',')
        .map(|x| x.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("bbox={v:?}: expected min_lat,min_lon,max_lat,max_lon"))?;
    match n.as_slice() {
        &[a, b, c, d]
            if a <= c
                && b <= d
                && (-90.0..=90.0).contains(&a)
                && (-90.0..=90.0).contains(&c)
                && (-180.0..=180.0).contains(&b)
                && (-180.0..=180.0).contains(&d) =>
        {
            Ok(Some((a, b, c, d)))
        }
        _ => Err(format!(
            "bbox={v:?}: expected min_lat,min_lon,max_lat,max_lon in degrees, minimum first"
        )),
    }
}

/// `severity=info|warning|critical`, if given.
pub fn severity_param(p: &HashMap<String, String>) -> Result<Option<Severity>, String> {
    p.get("severity")
        .map(|v| {
            Severity::parse(v)
                .ok_or_else(|| format!("severity={v:?}: expected info, warning or critical"))
        })
        .transpose()
}

/// A subscription's filters; what is not given does not filter.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    pub topics: Vec<Topic>,
    pub courier: Option<String>,
    pub task: Option<String>,
    /// `(min lat, min lon, max lat, max lon)`: events with a position outside are left out
    /// (alerts and device events have none and pass).
    pub bbox: Option<(f64, f64, f64, f64)>,
    /// Alerts at least this severe.
    pub severity: Option<Severity>,
}

impl Filter {
    /// From the query parameters `topics`, `courier`, `task`, `bbox`, `severity` (others are
    /// the endpoint's).
    pub fn parse(p: &HashMap<String, String>) -> Result<Self, String> {
        let topics = match p.get("topics") {
            None => Topic::ALL.to_vec(),
            Some(list) => list
                .split(',')
                .map(|t| {
                    Topic::parse(t.trim()).ok_or_else(|| {
                        format!(
                            "topics: unknown topic {t:?}; known: alerts, positions, tasks, devices"
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Self {
            topics,
            courier: p.get("courier").cloned(),
            task: p.get("task").cloned(),
            bbox: bbox_param(p)?,
            severity: severity_param(p)?,
        })
    }

    pub fn matches(&self, e: &LiveEvent) -> bool {
        let is = |want: &Option<String>, have: &Option<String>| {
            want.is_none() || want.as_deref() == have.as_deref()
        };
        self.topics.contains(&e.topic)
            && is(&self.courier, &e.courier)
            && is(&self.task, &e.task)
            && match (self.bbox, e.position) {
                (Some((a, b, c, d)), Some((lat, lon))) => {
                    (a..=c).contains(&lat) && (b..=d).contains(&lon)
                }
                _ => true,
            }
            && match (self.severity, e.severity) {
                (Some(min), Some(s)) => s >= min,
                (Some(_), None) => e.topic != Topic::Alerts,
                _ => true,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(p: &[(&str, &str)]) -> HashMap<String, String> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn event(
        topic: Topic,
        courier: &str,
        at: Option<(f64, f64)>,
        s: Option<Severity>,
    ) -> LiveEvent {
        LiveEvent {
            seq: 1,
            topic,
            courier: Some(courier.into()),
            task: None,
            position: at,
            severity: s,
            json: String::new(),
        }
    }

    #[test]
    fn filters_by_topic_courier_area_and_severity() {
        let f = Filter::parse(&params(&[
            ("topics", "positions,alerts"),
            ("bbox", "12.9,77.5,13.0,77.7"),
            ("severity", "critical"),
        ]))
        .unwrap();
        let inside = Some((12.95, 77.6));
        assert!(f.matches(&event(Topic::Positions, "a", inside, None)));
        assert!(!f.matches(&event(Topic::Positions, "a", Some((13.5, 77.6)), None)));
        assert!(!f.matches(&event(Topic::Tasks, "a", inside, None)));
        assert!(f.matches(&event(Topic::Alerts, "a", None, Some(Severity::Critical))));
        assert!(!f.matches(&event(Topic::Alerts, "a", None, Some(Severity::Warning))));
        let f = Filter::parse(&params(&[("courier", "b")])).unwrap();
        assert_eq!(f.topics, Topic::ALL);
        assert!(!f.matches(&event(Topic::Positions, "a", inside, None)));
        assert!(f.matches(&event(Topic::Positions, "b", inside, None)));
    }

    #[test]
    fn bad_filters_are_refused_with_what_is_wrong() {
        for (k, v, says) in [
            ("topics", "alerts,weather", "weather"),
            ("bbox", "1,2,3", "bbox"),
            ("bbox", "13,77,12,78", "minimum first"),
            ("bbox", "1,2,3,x", "bbox"),
            ("severity", "loud", "severity"),
        ] {
            let err = Filter::parse(&params(&[(k, v)])).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
    }
}
