//! Host integration tests: real guest components, the real model, real sandbox limits.

mod alerts;
mod api_auth;
mod cli;
mod dead_letters;
mod device_swap;
mod distribution;
mod faults;
mod features;
mod fleet;
mod guests;
mod inference;
mod release;
mod sandbox;
mod scenario;
mod stream;
mod swap;
mod sync;
mod util;
