//! sled 1.0.0-alpha.124 as this project uses it (the journal and the history both sit on it).
//!
//! - [`open`](mod@open): one configuration for both, and a clear error when another process has the
//!   directory open.
//! - [`range`]: range and prefix scans that stop at their upper bound.

pub mod open;
pub mod range;

pub use open::{Db, OpenError, Tree, open};
