//! The edge/device runtime: runs delivery events through sandboxed WebAssembly modules
//! (features, scorer, policy) and a natively-run ONNX model, and produces decisions with
//! their prediction log.
//!
//! The [`device`] role wraps the pipeline with the durable journal and QUIC sync.
//!
//! ```no_run
//! use std::sync::Arc;
//! use fleet_host::{engine, inference, pipeline, registry, defaults, event::Event};
//!
//! # fn main() -> anyhow::Result<()> {
//! let engine = Arc::new(engine::SandboxEngine::new(engine::SandboxLimits::default())?);
//! let mut models = inference::ModelRegistry::new();
//! models.insert(defaults::late_risk_model()?);
//! let registry = registry::ModuleRegistry::new(engine, Arc::new(models), registry::ModuleSource::Embedded)?;
//! let mut pipeline = pipeline::Pipeline::new(Arc::new(registry));
//! let event = Event::from_json(r#"{"event_id":"e1","courier_id":"123","task_id":"T-999","event_type":"location","event_time":"2026-11-22T10:05:00Z","lat":12.9,"lon":77.6}"#)?;
//! let outcome = pipeline.process(vec![event]);
//! println!("{} decisions", outcome.decisions.len());
//! # Ok(())
//! # }
//! ```

pub mod bindings;
#[cfg(feature = "compiler")]
pub mod compile_cache;
pub mod decision;
pub mod defaults;
pub mod device;
pub mod engine;
mod engine_config;
pub mod event;
pub mod features_only;
pub mod inference;
pub mod module;
pub mod pipeline;
pub mod registry;
pub mod release;
pub mod sandbox;
pub mod watch;
