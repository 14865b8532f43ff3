//! The aggregator end of one connection: opens the device's journal when it says hello, admits
//! batches in sequence order, hands them to the driver to persist, and acknowledges only what
//! the driver reports durable.

use crate::batch::{BatchBody, Entry};
use crate::frame::{Control, Frame, ProtocolError};
use crate::record::{JournalId, Seq};
use crate::{PROTOCOL_VERSION, negotiate};

/// What the driver must do after a frame.
#[derive(Debug, PartialEq)]
pub enum ReceiverAction {
    /// Send this frame back.
    Reply(Frame),
    /// The device said hello from `journal`: find what history durably holds of that journal
    /// (its cursor, in the journal's own numbers) and call [`Receiver::opened`], or refuse the
    /// device (a stale journal, storage unavailable) by closing the connection.
    Open { journal: JournalId },
    /// Make these entries durable, together with the cursor `through`, then call
    /// [`Receiver::persisted`]. Entries are new: none is at or below a previous `through`.
    /// `journaled` is the device's journal head as it reported it. Persists must complete in
    /// the order they were asked for.
    Persist {
        journal: JournalId,
        through: Seq,
        journaled: Seq,
        entries: Vec<Entry>,
    },
    /// Nothing to do (a duplicate, or a batch past a gap that the sender will resend).
    Nothing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitingHello,
    /// Hello received; waiting for the driver's [`Receiver::opened`].
    Opening(JournalId),
    Streaming(JournalId),
}

impl State {
    fn name(self) -> &'static str {
        match self {
            Self::AwaitingHello => "awaiting-hello",
            Self::Opening(_) => "opening",
            Self::Streaming(_) => "streaming",
        }
    }
}

/// One device connection, from the aggregator's side.
#[derive(Debug)]
pub struct Receiver {
    state: State,
    window: u32,
    durable: Seq,
    accepted: Seq,
    /// Batches that were entirely duplicates (absorbed).
    pub duplicate_batches: u64,
    /// The version agreed in the hello.
    version: u16,
}

impl Receiver {
    /// A connection that has not said hello yet; `window` is the most batches the device may
    /// have in flight.
    pub fn new(window: u32) -> Self {
        Self {
            state: State::AwaitingHello,
            window,
            durable: 0,
            accepted: 0,
            duplicate_batches: 0,
            version: PROTOCOL_VERSION,
        }
    }

    /// The version agreed with the device (this build's until it says hello).
    pub fn version(&self) -> u16 {
        self.version
    }

    pub fn durable(&self) -> Seq {
        self.durable
    }

    /// The journal this connection streams, once it said hello.
    pub fn journal(&self) -> Option<JournalId> {
        match self.state {
            State::AwaitingHello => None,
            State::Opening(j) | State::Streaming(j) => Some(j),
        }
    }

    pub fn handle(&mut self, frame: Frame) -> Result<ReceiverAction, ProtocolError> {
        match (self.state, frame) {
            (
                _,
                Frame::Hello {
                    version, journal, ..
                },
            ) => self.hello(version, journal),
            (
                State::Streaming(journal),
                Frame::Batch {
                    from,
                    through,
                    journaled,
                    codec,
                    body,
                },
            ) => {
                // Decode first: a malformed batch is an error even when it is a duplicate.
                let entries = BatchBody::decode(from, through, codec, &body)?;
                if journaled < through {
                    return Err(ProtocolError::BadRange {
                        from,
                        through,
                        why: "the journal head it reports is before its end",
                    });
                }
                if through <= self.accepted {
                    self.duplicate_batches += 1;
                    // Re-acknowledge so a sender that lost our ack moves on.
                    return Ok(if through <= self.durable {
                        ReceiverAction::Reply(Frame::Ack {
                            through: self.durable,
                        })
                    } else {
                        ReceiverAction::Nothing
                    });
                }
                if from > self.accepted + 1 {
                    // A gap: an earlier batch was lost. The sender goes back and resends.
                    return Ok(ReceiverAction::Nothing);
                }
                let accepted = self.accepted;
                self.accepted = through;
                Ok(ReceiverAction::Persist {
                    journal,
                    through,
                    journaled,
                    entries: entries.into_iter().filter(|e| e.seq > accepted).collect(),
                })
            }
            (_, Frame::Control(Control::Ping { nonce })) => {
                Ok(ReceiverAction::Reply(Frame::Control(Control::Pong {
                    nonce,
                })))
            }
            (_, Frame::Control(Control::Pong { .. })) => Ok(ReceiverAction::Nothing),
            (_, Frame::Error { code, message }) => Err(ProtocolError::Refused { code, message }),
            (state, other) => Err(ProtocolError::Unexpected {
                got: other.name(),
                state: state.name(),
            }),
        }
    }

    fn hello(&mut self, version: u16, journal: JournalId) -> Result<ReceiverAction, ProtocolError> {
        let Some(agreed) = negotiate(version) else {
            return Err(ProtocolError::VersionMismatch {
                theirs: version,
                ours: PROTOCOL_VERSION,
            });
        };
        self.version = agreed;
        match self.state {
            State::AwaitingHello => {
                self.state = State::Opening(journal);
                Ok(ReceiverAction::Open { journal })
            }
            // A repeated hello (the link duplicated it) is answered the same way; what was
            // accepted stays accepted.
            State::Streaming(open) if open == journal => Ok(ReceiverAction::Reply(self.welcome())),
            State::Opening(open) if open == journal => Ok(ReceiverAction::Nothing),
            state => Err(ProtocolError::Unexpected {
                got: "hello for another journal",
                state: state.name(),
            }),
        }
    }

    /// The driver found that history durably holds the journal through `durable` (0: none of
    /// it): the welcome to send.
    pub fn opened(&mut self, durable: Seq) -> Frame {
        if let State::Opening(journal) = self.state {
            self.state = State::Streaming(journal);
            self.durable = durable;
            self.accepted = durable;
        }
        self.welcome()
    }

    fn welcome(&self) -> Frame {
        Frame::Welcome {
            version: self.version,
            acked_through: self.durable,
            window: self.window,
        }
    }

    /// The driver made everything through `through` durable: the ack to send.
    pub fn persisted(&mut self, through: Seq) -> Frame {
        self.durable = self.durable.max(through);
        Frame::Ack {
            through: self.durable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Codec;

    fn hello(journal: JournalId) -> Frame {
        Frame::Hello {
            version: PROTOCOL_VERSION,
            journal,
            acked_through: 0,
            device: None,
            agent: "test".into(),
        }
    }

    fn batch(from: Seq, through: Seq, journaled: Seq) -> Frame {
        let (codec, body) = BatchBody::encode(from, &[], Codec::None, 0);
        Frame::Batch {
            from,
            through,
            journaled,
            codec,
            body,
        }
    }

    #[test]
    fn a_hello_opens_its_journal_before_anything_is_admitted() {
        let mut r = Receiver::new(4);
        assert_eq!(r.handle(hello(7)), Ok(ReceiverAction::Open { journal: 7 }));
        // Nothing is admitted until the driver says what history holds.
        assert!(r.handle(batch(6, 8, 8)).is_err());
        let mut r = Receiver::new(4);
        r.handle(hello(7)).unwrap();
        assert_eq!(r.handle(hello(7)), Ok(ReceiverAction::Nothing));
        assert!(matches!(
            r.opened(5),
            Frame::Welcome {
                acked_through: 5,
                ..
            }
        ));
        assert!(matches!(
            r.handle(batch(6, 8, 9)),
            Ok(ReceiverAction::Persist {
                journal: 7,
                through: 8,
                journaled: 9,
                ..
            })
        ));
        // A repeated hello is welcomed again; one for another journal is refused.
        assert!(matches!(
            r.handle(hello(7)),
            Ok(ReceiverAction::Reply(Frame::Welcome { .. }))
        ));
        assert!(r.handle(hello(8)).is_err());
    }

    #[test]
    fn a_batch_claiming_a_journal_head_before_its_end_is_refused() {
        let mut r = Receiver::new(4);
        r.handle(hello(7)).unwrap();
        r.opened(0);
        assert!(matches!(
            r.handle(batch(1, 5, 4)),
            Err(ProtocolError::BadRange { .. })
        ));
    }

    #[test]
    fn an_older_device_is_welcomed_in_its_version_and_a_too_old_one_refused() {
        let mut r = Receiver::new(4);
        let old = Frame::Hello {
            version: crate::MIN_PROTOCOL_VERSION,
            journal: 7,
            acked_through: 0,
            device: None,
            agent: "old".into(),
        };
        r.handle(old).unwrap();
        assert!(matches!(
            r.opened(0),
            Frame::Welcome { version, .. } if version == crate::MIN_PROTOCOL_VERSION
        ));
        let mut r = Receiver::new(4);
        let ancient = Frame::Hello {
            version: crate::MIN_PROTOCOL_VERSION - 1,
            journal: 7,
            acked_through: 0,
            device: None,
            agent: "ancient".into(),
        };
        assert!(matches!(
            r.handle(ancient),
            Err(ProtocolError::VersionMismatch { .. })
        ));
        // A newer device is welcomed in this build's version.
        let mut r = Receiver::new(4);
        let newer = Frame::Hello {
            version: PROTOCOL_VERSION + 1,
            journal: 7,
            acked_through: 0,
            device: None,
            agent: "newer".into(),
        };
        r.handle(newer).unwrap();
        assert_eq!(r.version(), PROTOCOL_VERSION);
    }
}
