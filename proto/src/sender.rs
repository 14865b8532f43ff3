//! The device end: decides what to send from the journal (the [`Outbox`]) and tracks what the
//! aggregator has acknowledged. Time is passed in, so a virtual clock drives it in tests.

use std::collections::VecDeque;
use std::time::Duration;

use crate::batch::{BatchBody, Codec, Entry};
use crate::frame::ErrorCode;
use crate::frame::{Frame, ProtocolError};
use crate::record::{JournalId, Record, Seq};
use crate::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, RELEASED_DECISIONS, STEPPED_DECISIONS};

/// The device's journal, as the sender sees it.
pub trait Outbox {
    /// Up to `max` journaled entries with sequence numbers above `after`, in order.
    fn read_after(&self, after: Seq, max: usize) -> Vec<Entry>;
    /// Highest sequence number that may be sent (0 when none): only durable entries, since
    /// a crash could hand an unflushed entry's number to another record. `read_after` may
    /// return entries past it; they wait.
    fn last_seq(&self) -> Seq;
    /// Whether the state record at `seq` for `key` has a newer state later in the journal;
    /// superseded states are never sent.
    fn superseded(&self, key: &str, seq: Seq) -> bool;
}

/// Sender tuning.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// Most entries read into one batch.
    pub max_batch_entries: usize,
    /// Most batches in flight, before the aggregator's own limit (`welcome.window`) applies.
    pub window: u32,
    pub codec: Codec,
    pub zstd_level: i32,
    /// An unacknowledged batch older than this is sent again (go-back-N from the last ack).
    pub resend_after: Duration,
    pub agent: String,
    /// Sent in `hello` for the aggregator to check against the certificate.
    pub device: Option<String>,
    /// The journal's identity ([`JournalId`]), sent in `hello`.
    pub journal: JournalId,
    /// Highest protocol version to offer (within what this build speaks): lower than
    /// [`PROTOCOL_VERSION`] only to pin a device to an older aggregator's version.
    pub max_version: u16,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            max_batch_entries: 512,
            window: 8,
            codec: Codec::Zstd,
            zstd_level: 3,
            resend_after: Duration::from_secs(10),
            agent: concat!("fleet-proto/", env!("CARGO_PKG_VERSION")).into(),
            device: None,
            journal: 0,
            max_version: PROTOCOL_VERSION,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Disconnected,
    AwaitingWelcome,
    Streaming,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            Self::Disconnected => "disconnected",
            Self::AwaitingWelcome => "awaiting-welcome",
            Self::Streaming => "streaming",
        }
    }
}

#[derive(Debug)]
struct InFlight {
    through: Seq,
    sent_at: Duration,
}

/// What the driver must act on after a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum SenderEvent {
    /// Everything up to here is durable at the aggregator: persist the cursor, and the journal
    /// may drop it.
    Acked(Seq),
    /// The aggregator answered a ping.
    Pong(u64),
}

/// One device's sending session. Survives reconnects: call [`Sender::connected`] on each new
/// connection and [`Sender::disconnected`] when it drops.
#[derive(Debug)]
pub struct Sender {
    config: SenderConfig,
    state: State,
    acked: Seq,
    /// First sequence not yet sent on this connection.
    next: Seq,
    /// Highest sequence sent on this connection: no ack may go past it.
    sent_max: Seq,
    window: u32,
    in_flight: VecDeque<InFlight>,
    /// Batches given up on after a timeout and sent again (a measure of waste).
    pub resent_batches: u64,
    /// The highest version offered in `hello`: lowered when an older aggregator refuses it.
    offered_version: u16,
    /// The version agreed in the last welcome.
    version: Option<u16>,
}

impl Sender {
    /// A sender whose journal is acknowledged through `acked` (the persisted cursor).
    pub fn new(config: SenderConfig, acked: Seq) -> Self {
        let window = config.window;
        let offered_version = config
            .max_version
            .clamp(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION);
        Self {
            config,
            state: State::Disconnected,
            acked,
            next: acked + 1,
            sent_max: acked,
            window,
            in_flight: VecDeque::new(),
            resent_batches: 0,
            offered_version,
            version: None,
        }
    }

    /// The version agreed with the aggregator on this connection, once welcomed.
    pub fn version(&self) -> Option<u16> {
        self.version.filter(|_| self.state == State::Streaming)
    }

    pub fn acked(&self) -> Seq {
        self.acked
    }

    pub fn is_streaming(&self) -> bool {
        self.state == State::Streaming
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// A new connection is up: send this first.
    pub fn connected(&mut self) -> Frame {
        self.state = State::AwaitingWelcome;
        self.in_flight.clear();
        self.sent_max = self.acked;
        self.version = None;
        Frame::Hello {
            version: self.offered_version,
            journal: self.config.journal,
            acked_through: self.acked,
            device: self.config.device.clone(),
            agent: self.config.agent.clone(),
        }
    }

    /// The connection is gone; whatever was in flight is sent again on the next one.
    pub fn disconnected(&mut self) {
        self.state = State::Disconnected;
        self.in_flight.clear();
        self.next = self.acked + 1;
    }

    /// Handles a frame from the aggregator.
    pub fn handle(&mut self, frame: Frame) -> Result<Option<SenderEvent>, ProtocolError> {
        let unexpected = |state: State, frame: &Frame| ProtocolError::Unexpected {
            got: frame.name(),
            state: state.name(),
        };
        match frame {
            Frame::Welcome {
                version,
                acked_through,
                window,
            } if self.state == State::AwaitingWelcome => {
                if !(MIN_PROTOCOL_VERSION..=self.offered_version).contains(&version) {
                    return Err(ProtocolError::VersionMismatch {
                        theirs: version,
                        ours: self.offered_version,
                    });
                }
                self.version = Some(version);
                self.state = State::Streaming;
                self.window = window.clamp(1, self.config.window.max(1));
                // The aggregator's record decides where to resume. Behind ours means it lost
                // history we no longer hold: resume from what we hold.
                let advanced = acked_through > self.acked;
                self.acked = self.acked.max(acked_through);
                self.next = self.acked + 1;
                self.sent_max = self.acked;
                Ok(advanced.then_some(SenderEvent::Acked(self.acked)))
            }
            Frame::Ack { through } if self.state == State::Streaming => {
                if through > self.sent_max {
                    return Err(ProtocolError::BadRange {
                        from: self.acked + 1,
                        through,
                        why: "ack beyond what was sent",
                    });
                }
                while self.in_flight.front().is_some_and(|b| b.through <= through) {
                    self.in_flight.pop_front();
                }
                if through > self.acked {
                    self.acked = through;
                    self.next = self.next.max(through + 1);
                    return Ok(Some(SenderEvent::Acked(through)));
                }
                Ok(None)
            }
            // A repeated welcome on a link that duplicates frames: already streaming.
            Frame::Welcome { .. } if self.state == State::Streaming => Ok(None),
            Frame::Control(crate::frame::Control::Pong { nonce }) => {
                Ok(Some(SenderEvent::Pong(nonce)))
            }
            Frame::Control(crate::frame::Control::Ping { .. }) => Ok(None),
            Frame::Error { code, message } => {
                // An older aggregator: offer one version less next time (it says which it
                // speaks only in its message).
                if code == ErrorCode::VersionMismatch && self.offered_version > MIN_PROTOCOL_VERSION
                {
                    self.offered_version -= 1;
                }
                Err(ProtocolError::Refused { code, message })
            }
            other => Err(unexpected(self.state, &other)),
        }
    }

    /// The next batch to send, if the window allows and the journal has anything new.
    pub fn poll_transmit(&mut self, now: Duration, outbox: &impl Outbox) -> Option<Frame> {
        if self.state != State::Streaming || self.in_flight.len() >= self.window as usize {
            return None;
        }
        let last = outbox.last_seq();
        if last < self.next {
            return None;
        }
        let from = self.next;
        let mut read = outbox.read_after(from - 1, self.config.max_batch_entries);
        // The outbox may already hold entries past `last` that are not durable yet.
        read.retain(|e| e.seq <= last);
        // A full read ends at its last entry; a short one covers the whole backlog, including
        // entries thinned away at the end.
        let through = match read.last() {
            Some(e) if read.len() == self.config.max_batch_entries => e.seq,
            _ => last,
        };
        let mut entries: Vec<Entry> = read
            .into_iter()
            .filter(|e| match &e.record {
                Record::State(s) => !outbox.superseded(&s.key, e.seq),
                _ => true,
            })
            .collect();
        if self.version < Some(STEPPED_DECISIONS) {
            for e in &mut entries {
                if let Record::Decision(d) = &mut e.record {
                    d.alert_step = None;
                    if self.version < Some(RELEASED_DECISIONS) {
                        d.release = None;
                    }
                }
            }
        }
        let (codec, body) =
            BatchBody::encode(from, &entries, self.config.codec, self.config.zstd_level);
        self.in_flight.push_back(InFlight {
            through,
            sent_at: now,
        });
        self.next = through + 1;
        self.sent_max = self.sent_max.max(through);
        Some(Frame::Batch {
            from,
            through,
            journaled: last,
            codec,
            body,
        })
    }

    /// When [`Sender::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.in_flight
            .front()
            .map(|b| b.sent_at + self.config.resend_after)
    }

    /// Goes back to the last acknowledgement when the oldest batch waited too long.
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.poll_timeout().is_some_and(|t| now >= t) {
            self.resent_batches += self.in_flight.len() as u64;
            self.in_flight.clear();
            self.next = self.acked + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::AlertStep;

    fn offered(frame: &Frame) -> u16 {
        match frame {
            Frame::Hello { version, .. } => *version,
            other => panic!("{other:?}"),
        }
    }

    fn welcome(version: u16) -> Frame {
        Frame::Welcome {
            version,
            acked_through: 0,
            window: 4,
        }
    }

    #[test]
    fn a_device_refused_by_an_older_aggregator_offers_an_older_version_next() {
        let mut s = Sender::new(SenderConfig::default(), 0);
        assert_eq!(offered(&s.connected()), PROTOCOL_VERSION);
        let refused = Frame::Error {
            code: ErrorCode::VersionMismatch,
            message: "protocol version 3 is not supported (this build speaks 2)".into(),
        };
        assert!(s.handle(refused).is_err());
        s.disconnected();
        assert_eq!(offered(&s.connected()), PROTOCOL_VERSION - 1);
        s.handle(welcome(PROTOCOL_VERSION - 1)).unwrap();
        assert_eq!(s.version(), Some(PROTOCOL_VERSION - 1));
    }

    struct OneDecision(Record);

    impl Outbox for OneDecision {
        fn read_after(&self, after: Seq, _max: usize) -> Vec<Entry> {
            let entry = Entry {
                seq: 1,
                record: self.0.clone(),
            };
            if after == 0 { vec![entry] } else { vec![] }
        }
        fn last_seq(&self) -> Seq {
            1
        }
        fn superseded(&self, _key: &str, _seq: Seq) -> bool {
            false
        }
    }

    /// The release and alert step of a decision, as sent to an aggregator welcoming in
    /// `version`.
    fn sent(version: u16) -> (Option<String>, Option<AlertStep>) {
        let mut record = crate::record::tests::decision(Some("city@2.0.0+00ff"));
        if let Record::Decision(d) = &mut record {
            d.alert_step = Some(AlertStep::Escalated);
        }
        let outbox = OneDecision(record);
        let mut s = Sender::new(SenderConfig::default(), 0);
        s.connected();
        s.handle(welcome(version)).unwrap();
        let Some(Frame::Batch {
            from,
            through,
            codec,
            body,
            ..
        }) = s.poll_transmit(Duration::ZERO, &outbox)
        else {
            panic!("a batch")
        };
        let entries = BatchBody::decode(from, through, codec, &body).unwrap();
        match &entries[0].record {
            Record::Decision(d) => (d.release.clone(), d.alert_step),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decisions_carry_release_and_alert_step_only_to_aggregators_that_read_them() {
        let release = Some("city@2.0.0+00ff".to_string());
        assert_eq!(
            sent(PROTOCOL_VERSION),
            (release.clone(), Some(AlertStep::Escalated))
        );
        assert_eq!(sent(STEPPED_DECISIONS - 1), (release, None));
        assert_eq!(sent(RELEASED_DECISIONS - 1), (None, None));
    }

    #[test]
    fn a_welcome_outside_the_offered_range_is_refused() {
        for version in [MIN_PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1] {
            let mut s = Sender::new(SenderConfig::default(), 0);
            s.connected();
            assert!(
                matches!(
                    s.handle(welcome(version)),
                    Err(ProtocolError::VersionMismatch { .. })
                ),
                "{version}"
            );
            assert_eq!(s.version(), None);
        }
    }
}
