//! device-sim: a courier fleet on one machine. Couriers come from a synthetic city or a
//! replay of real data ([`source`]); each device is in-process with its own identity, journal
//! and QUIC connection ([`fleet`]); faults come from a UDP proxy ([`proxy`]) and from killing
//! the aggregator ([`aggregator`]); [`report`] says what happened.

pub mod aggregator;
pub mod fleet;
pub mod http;
pub mod proxy;
pub mod report;
pub mod source;
