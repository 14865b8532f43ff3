//! The device role: events in (stdin, loopback HTTP), scored by the pipeline, journaled
//! durably before they are acknowledged, and synced to the aggregator over QUIC.
//!
//! - [`records`]: pipeline types -> journal/wire records.
//! - [`runtime`]: the pipeline run for one journal at a time, and what a batch journals.
//! - [`writer`]: the one thread that runs the runtime and writes the journal, group-committing
//!   whatever producers submitted meanwhile.
//! - [`sync`]: the QUIC client driving the sans-IO [`fleet_proto::sender::Sender`].
//! - `control`: the control stream: pings, and releases offered by the aggregator, fetched
//!   and installed (the sans-IO [`fleet_proto::distribution::Fetcher`]).
//! - [`http`]: the loopback endpoint for the handset app.

mod blocked;
mod control;
pub mod http;
pub mod records;
pub mod runtime;
pub mod sync;
pub mod writer;
