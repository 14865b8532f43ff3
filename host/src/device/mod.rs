//! The device role: events in (stdin, loopback HTTP), scored by the pipeline, journaled
//! durably before they are acknowledged, and synced to the aggregator over QUIC.
//!
//! - [`records`]: pipeline types -> journal/wire records.
//! - [`writer`]: the one thread that runs the pipeline and writes the journal, group-committing
//!   whatever producers submitted meanwhile.
//! - [`sync`]: the QUIC client driving the sans-IO [`fleet_proto::sender::Sender`].
//! - [`http`]: the loopback endpoint for the handset app.

pub mod http;
pub mod records;
pub mod sync;
pub mod writer;
