//! The aggregator end of one connection: admits batches in sequence order, hands them to the
//! driver to persist, and acknowledges only what the driver reports durable.

use crate::PROTOCOL_VERSION;
use crate::batch::{BatchBody, Entry};
use crate::frame::{Control, Frame, ProtocolError};
use crate::record::Seq;

/// What the driver must do after a frame.
#[derive(Debug, PartialEq)]
pub enum ReceiverAction {
    /// Send this frame back.
    Reply(Frame),
    /// Make these entries durable, together with the cursor `through`, then call
    /// [`Receiver::persisted`]. Entries are new: none is at or below a previous `through`.
    /// Persists must complete in the order they were asked for.
    Persist { through: Seq, entries: Vec<Entry> },
    /// Nothing to do (a duplicate, or a batch past a gap that the sender will resend).
    Nothing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitingHello,
    Streaming,
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
}

impl Receiver {
    /// `durable` is what history already holds for this device (its cursor).
    pub fn new(durable: Seq, window: u32) -> Self {
        Self {
            state: State::AwaitingHello,
            window,
            durable,
            accepted: durable,
            duplicate_batches: 0,
        }
    }

    pub fn durable(&self) -> Seq {
        self.durable
    }

    pub fn handle(&mut self, frame: Frame) -> Result<ReceiverAction, ProtocolError> {
        match (self.state, frame) {
            // A repeated hello (the link duplicated it) is answered the same way; what was
            // accepted stays accepted.
            (_, Frame::Hello { version, .. }) => {
                if version != PROTOCOL_VERSION {
                    return Err(ProtocolError::VersionMismatch {
                        theirs: version,
                        ours: PROTOCOL_VERSION,
                    });
                }
                self.state = State::Streaming;
                Ok(ReceiverAction::Reply(Frame::Welcome {
                    version: PROTOCOL_VERSION,
                    acked_through: self.durable,
                    window: self.window,
                }))
            }
            (
                State::Streaming,
                Frame::Batch {
                    from,
                    through,
                    codec,
                    body,
                },
            ) => {
                // Decode first: a malformed batch is an error even when it is a duplicate.
                let entries = BatchBody::decode(from, through, codec, &body)?;
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
                    through,
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
                state: match state {
                    State::AwaitingHello => "awaiting-hello",
                    State::Streaming => "streaming",
                },
            }),
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
