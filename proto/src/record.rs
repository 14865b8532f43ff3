//! What a device journals and ships. Compact on purpose: positions are fixed-point
//! (1e-7 degree, about 1 cm), times are milliseconds since the Unix epoch, and feature names
//! travel once per model in a [`Schema`] rather than with every decision.

use serde::{Deserialize, Serialize};

/// A device's journal sequence number: dense, starting at 1, never reused.
pub type Seq = u64;

/// A journal's identity, drawn at random when the journal is created: a device that starts
/// over with a new journal (reinstalled, its storage wiped) numbers its entries from 1 again,
/// and the aggregator tells the two sequence spaces apart by this id.
pub type JournalId = u64;

/// One journal entry.
///
/// Encoded as a tagged union whose tags never change meaning (journals, ingest logs and
/// history on disk hold them): a decision that names no release keeps the layout of
/// protocol version 2 (tag 1); one that names its release is tag 5, the same fields followed
/// by the release label; one that moves its task's alert (protocol version 4) is tag 6, the
/// same fields followed by the release (if any) and the [`AlertStep`] (see `WireRecord`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(from = "WireRecord")]
pub enum Record {
    Event(EventRecord),
    Decision(DecisionRecord),
    /// The latest feature state of one key. Superseded states are compacted away before
    /// sending (see [`crate::sender::Outbox::superseded`]).
    State(StateRecord),
    /// Feature names of a model; decisions point at it by `id`.
    Schema(Schema),
    /// An event its modules failed on (kept, and retried later), or its later rescoring.
    DeadLetter(DeadLetterRecord),
}

/// [`Record`] as encoded: the tag of each variant is its position.
#[derive(Deserialize)]
enum WireRecord {
    Event(EventRecord),
    Decision(DecisionRecord),
    State(StateRecord),
    Schema(Schema),
    DeadLetter(DeadLetterRecord),
    ReleasedDecision(DecisionRecord, String),
    SteppedDecision(DecisionRecord, Option<String>, AlertStep),
}

impl From<WireRecord> for Record {
    fn from(w: WireRecord) -> Self {
        match w {
            WireRecord::Event(e) => Self::Event(e),
            WireRecord::Decision(d) => Self::Decision(d),
            WireRecord::State(s) => Self::State(s),
            WireRecord::Schema(s) => Self::Schema(s),
            WireRecord::DeadLetter(d) => Self::DeadLetter(d),
            WireRecord::ReleasedDecision(mut d, release) => {
                d.release = Some(release);
                Self::Decision(d)
            }
            WireRecord::SteppedDecision(mut d, release, step) => {
                d.release = release;
                d.alert_step = Some(step);
                Self::Decision(d)
            }
        }
    }
}

impl Serialize for Record {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        const NAME: &str = "Record";
        match self {
            Self::Event(e) => s.serialize_newtype_variant(NAME, 0, "Event", e),
            Self::Decision(d) => match (&d.release, d.alert_step) {
                (release, Some(step)) => {
                    let mut v = s.serialize_tuple_variant(NAME, 6, "SteppedDecision", 3)?;
                    serde::ser::SerializeTupleVariant::serialize_field(&mut v, d)?;
                    serde::ser::SerializeTupleVariant::serialize_field(&mut v, release)?;
                    serde::ser::SerializeTupleVariant::serialize_field(&mut v, &step)?;
                    serde::ser::SerializeTupleVariant::end(v)
                }
                (None, None) => s.serialize_newtype_variant(NAME, 1, "Decision", d),
                (Some(release), None) => {
                    let mut v = s.serialize_tuple_variant(NAME, 5, "ReleasedDecision", 2)?;
                    serde::ser::SerializeTupleVariant::serialize_field(&mut v, d)?;
                    serde::ser::SerializeTupleVariant::serialize_field(&mut v, release)?;
                    serde::ser::SerializeTupleVariant::end(v)
                }
            },
            Self::State(st) => s.serialize_newtype_variant(NAME, 2, "State", st),
            Self::Schema(sc) => s.serialize_newtype_variant(NAME, 3, "Schema", sc),
            Self::DeadLetter(d) => s.serialize_newtype_variant(NAME, 4, "DeadLetter", d),
        }
    }
}

impl Record {
    /// Whether a journal under pressure may thin this record away (location pings only;
    /// status events and decisions are never thinned).
    pub fn thinnable(&self) -> bool {
        matches!(self, Self::Event(e) if e.event_type == EventKind::Location)
    }
}

/// Event types, as in the producer schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    TaskAssigned,
    Location,
    ArrivedPickup,
    PickedUp,
    ArrivedDropoff,
    Delivered,
    DeliveryFailed,
}

impl EventKind {
    pub const ALL: [Self; 7] = [
        Self::TaskAssigned,
        Self::Location,
        Self::ArrivedPickup,
        Self::PickedUp,
        Self::ArrivedDropoff,
        Self::Delivered,
        Self::DeliveryFailed,
    ];

    /// The producer schema's name (`task_assigned`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TaskAssigned => "task_assigned",
            Self::Location => "location",
            Self::ArrivedPickup => "arrived_pickup",
            Self::PickedUp => "picked_up",
            Self::ArrivedDropoff => "arrived_dropoff",
            Self::Delivered => "delivered",
            Self::DeliveryFailed => "delivery_failed",
        }
    }
}

/// A position in 1e-7 degrees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeoE7 {
    pub lat: i32,
    pub lon: i32,
}

impl GeoE7 {
    /// Rounds degrees to the nearest 1e-7.
    pub fn from_degrees(lat: f64, lon: f64) -> Self {
        Self {
            lat: (lat * 1e7).round() as i32,
            lon: (lon * 1e7).round() as i32,
        }
    }

    pub fn lat_deg(self) -> f64 {
        f64::from(self.lat) / 1e7
    }

    pub fn lon_deg(self) -> f64 {
        f64::from(self.lon) / 1e7
    }
}

/// A producer event, as journaled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub event_id: String,
    pub courier_id: String,
    pub task_id: Option<String>,
    pub event_type: EventKind,
    /// Event time, ms since the Unix epoch.
    pub time_ms: i64,
    /// The producer's UTC offset, in seconds (kept so local time can be shown as sent).
    pub utc_offset_s: i32,
    pub position: GeoE7,
    pub speed_kmh: Option<f32>,
    pub accuracy_m: Option<f32>,
    /// Present on `task_assigned`.
    pub context: Option<Box<TaskContext>>,
}

/// The task context a `task_assigned` event carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskContext {
    pub pickup: Option<GeoE7>,
    pub dropoff: Option<GeoE7>,
    pub promised_at_ms: Option<i64>,
    pub stops_remaining: Option<u32>,
    pub order_type: Option<String>,
    pub vehicle_type: Option<String>,
    pub courier_rating: Option<f32>,
    pub courier_age: Option<f32>,
}

/// Severity of a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "info" => Some(Self::Info),
            "warning" => Some(Self::Warning),
            "critical" => Some(Self::Critical),
            _ => None,
        }
    }
}

/// One action a policy asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ActionRecord {
    Alert { severity: Severity, message: String },
    NotifyCourier { message: String },
    Reassign { reason: String },
    Surge { multiplier: f32 },
}

/// A decision with its prediction log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub event_id: String,
    pub prediction_id: String,
    pub courier_id: String,
    pub task_id: Option<String>,
    /// Event time of the scored event, ms since the Unix epoch.
    pub time_ms: i64,
    pub score: f32,
    pub severity: Severity,
    pub actions: Vec<ActionRecord>,
    /// `name@version` of the model.
    pub model: String,
    /// `name@version+digest` of the features, scorer and policy modules.
    pub modules: [String; 3],
    /// The [`Schema`] naming `features`.
    pub schema: u64,
    pub features: Vec<f32>,
    /// Top contributing factors: feature index into the schema, signed log-odds contribution.
    pub top_factors: Vec<(u32, f32)>,
    /// `name@version+id` of the signed release the modules and model came in, if any.
    /// Encoded after the other fields (see [`Record`]); peers of protocol version 2 never see it.
    #[serde(skip)]
    pub release: Option<String>,
    /// What this decision does to its task's alert, when its policy keeps state per key.
    /// Encoded after the other fields (see [`Record`]); peers of protocol version 3 or older
    /// never see it.
    #[serde(skip)]
    pub alert_step: Option<AlertStep>,
}

/// What a decision does to its task's alert (a policy with state per key decides it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStep {
    /// The task's first alert, or its first since the last one resolved.
    Opened,
    /// The open alert's severity rose.
    Escalated,
    /// The open alert ended: the risk fell back below the policy's threshold.
    Resolved,
}

impl AlertStep {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opened => "opened",
            Self::Escalated => "escalated",
            Self::Resolved => "resolved",
        }
    }
}

/// The latest feature state of a key (task, or courier when there is no task).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateRecord {
    pub key: String,
    /// The features module that wrote it (`name@version+digest`); state is opaque to anyone else.
    pub module: String,
    pub bytes: Vec<u8>,
}

/// Names of a model's features, in vector order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    pub id: u64,
    pub model: String,
    pub feature_names: Vec<String>,
}

/// Where in the pipeline a module failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Features,
    Scorer,
    Policy,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Features => "features",
            Self::Scorer => "scorer",
            Self::Policy => "policy",
        }
    }
}

/// Why a module failed on an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCause {
    /// The call ran past its CPU deadline.
    Deadline,
    /// Linear memory would have grown past the cap.
    MemoryCap,
    /// Runaway recursion.
    StackOverflow,
    /// The module's code panicked.
    Panic,
    /// Any other trap.
    Trap,
    /// The module returned an error value.
    Returned,
    /// The module's output broke its contract (counts, sizes).
    Contract,
    /// The module could not be instantiated.
    Instantiate,
    /// Not a failure of its own: an earlier event of the same key failed in the same batch,
    /// and a key's events are never scored out of order.
    HeldBack,
}

impl std::fmt::Display for FailureCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FailureCause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deadline => "deadline",
            Self::MemoryCap => "memory_cap",
            Self::StackOverflow => "stack_overflow",
            Self::Panic => "panic",
            Self::Trap => "trap",
            Self::Returned => "returned",
            Self::Contract => "contract",
            Self::Instantiate => "instantiate",
            Self::HeldBack => "held_back",
        }
    }
}

/// A dead letter's history: each failed attempt, and the rescoring that ends it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    pub event_id: String,
    pub courier_id: String,
    pub task_id: Option<String>,
    /// Event time, ms since the Unix epoch.
    pub time_ms: i64,
    /// 1 for the first failure; each retry that fails again counts one more.
    pub attempt: u32,
    pub outcome: DeadLetterOutcome,
}

/// What one attempt at a dead-lettered event came to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DeadLetterOutcome {
    /// A module failed on the event alone (not because of others in its batch).
    Failed {
        stage: Stage,
        cause: FailureCause,
        /// `name@version+digest` of the module that failed.
        module: String,
        error: String,
    },
    /// A later attempt went through: its decision (the prediction id; none for an event that
    /// is only folded into state) is journaled with this record.
    Rescored { prediction_id: Option<String> },
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn decision(release: Option<&str>) -> Record {
        Record::Decision(DecisionRecord {
            event_id: "e1".into(),
            prediction_id: "p1".into(),
            courier_id: "C1".into(),
            task_id: Some("T1".into()),
            time_ms: 1_700_000_000_000,
            score: 0.9,
            severity: Severity::Critical,
            actions: vec![ActionRecord::Alert {
                severity: Severity::Critical,
                message: "late".into(),
            }],
            model: "late-risk@1".into(),
            modules: ["f".into(), "s".into(), "p".into()],
            schema: 7,
            features: vec![1.0, f32::NAN],
            top_factors: vec![(0, 0.5)],
            release: release.map(str::to_string),
            alert_step: None,
        })
    }

    /// The layout journals, ingest logs and histories of protocol version 2 hold.
    #[derive(Serialize)]
    enum Version2<'a> {
        #[allow(dead_code)]
        Event(&'a EventRecord),
        Decision(&'a DecisionRecord),
    }

    fn roundtrip(r: &Record) -> Record {
        postcard::from_bytes(&postcard::to_stdvec(r).unwrap()).unwrap()
    }

    #[test]
    fn a_decision_without_a_release_keeps_the_version_2_layout() {
        let r = decision(None);
        let Record::Decision(d) = &r else {
            unreachable!()
        };
        let old = postcard::to_stdvec(&Version2::Decision(d)).unwrap();
        assert_eq!(postcard::to_stdvec(&r).unwrap(), old);
        let back: Record = postcard::from_bytes(&old).unwrap();
        assert!(
            matches!(back, Record::Decision(d) if d.release.is_none() && d.prediction_id == "p1")
        );
    }

    #[test]
    fn a_decision_keeps_its_release_through_encoding() {
        let r = decision(Some("city@1.2.0+0123456789abcdef"));
        let back = roundtrip(&r);
        let (Record::Decision(a), Record::Decision(b)) = (&r, &back) else {
            unreachable!()
        };
        assert_eq!(b.release.as_deref(), Some("city@1.2.0+0123456789abcdef"));
        assert_eq!(
            (&a.prediction_id, &a.modules, a.schema),
            (&b.prediction_id, &b.modules, b.schema)
        );
        // An unknown tag is an error, not a wrong record.
        let mut bytes = postcard::to_stdvec(&r).unwrap();
        bytes[0] = 7;
        assert!(postcard::from_bytes::<Record>(&bytes).is_err());
    }

    #[test]
    fn a_decision_keeps_its_alert_step_with_or_without_a_release() {
        for release in [None, Some("city@1.2.0+0123456789abcdef")] {
            let mut r = decision(release);
            if let Record::Decision(d) = &mut r {
                d.alert_step = Some(AlertStep::Resolved);
            }
            let Record::Decision(back) = roundtrip(&r) else {
                unreachable!()
            };
            assert_eq!(
                (
                    back.alert_step,
                    back.release.as_deref(),
                    back.prediction_id.as_str()
                ),
                (Some(AlertStep::Resolved), release, "p1")
            );
            assert_eq!(postcard::to_stdvec(&r).unwrap()[0], 6);
        }
    }
}
