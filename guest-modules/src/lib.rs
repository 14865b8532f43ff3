//! The guest components in `guests/`, compiled for wasm32-wasip2 by this crate's build script.
//!
//! Each guest has a path constant (`FEATURES`), its bytes (`FEATURES_WASM`), an entry in
//! [`path`], and a line in [`foreach_guest!`]. This crate does not load or run anything.

include!(concat!(env!("OUT_DIR"), "/gen.rs"));
