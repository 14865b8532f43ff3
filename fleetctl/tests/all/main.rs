//! `fleetctl` as an operator runs it, in one test binary: offline (`cli.rs`) and against a
//! real aggregator (`observe.rs`).

mod cli;
mod observe;
