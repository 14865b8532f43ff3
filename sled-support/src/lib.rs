//! sled 1.0.0-alpha.124 as this project uses it (the journal and the history both sit on it).
//!
//! - [`range`]: range and prefix scans that stop at their upper bound.

pub mod range;
