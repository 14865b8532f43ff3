//! The shared wasmtime [`Engine`]: configuration, the epoch ticker behind per-call deadlines,
//! and the pooling allocator with its on-demand fallback.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

#[cfg(feature = "compiler")]
use crate::compile_cache::{COMPILE_CACHE_BYTES, CompileCacheStats, FunctionCodeCache};
use crate::engine_config::{DEFAULT_STACK_BYTES, fleet_config};
use crate::inference::{InferenceError, Model};

#[cfg(not(any(feature = "compiler", feature = "handset")))]
compile_error!(
    "fleet-host needs the `compiler` feature, or `handset` (built-in modules precompiled by the \
     build script) to run without it"
);

#[cfg(not(feature = "compiler"))]
mod precompiled {
    //! The built-in modules precompiled by the build script, and the compatibility string of
    //! the engine that precompiled them (the same configuration as this build's).
    include!(concat!(env!("OUT_DIR"), "/precompiled.rs"));
}

/// Limits applied to every module instance.
#[derive(Clone, Debug)]
pub struct SandboxLimits {
    /// Largest linear memory one instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// CPU deadline for one call into a module.
    pub deadline: Duration,
    /// Largest wasm stack, in bytes (deep recursion traps past it).
    pub stack_bytes: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            deadline: Duration::from_millis(100),
            stack_bytes: DEFAULT_STACK_BYTES,
        }
    }
}

/// Epoch tick period: a deadline is a whole number of ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// A module's instantiation and `init` may take this many calls' deadlines.
const SETUP_CALLS: u64 = 10;

/// Instances the pooling allocator reserves room for.
const POOLED_INSTANCES: u32 = 64;

/// Compiled components kept by digest, so reloading a set recompiles only what changed.
const COMPILED_CACHE: usize = 16;

/// Models kept by digest, so a release reloaded with the same model (or taken by many
/// devices of one process) is parsed once.
const MODEL_CACHE: usize = 4;

/// An engine plus the thread that advances its epoch, and caches of compiled components and
/// of compiled functions.
pub struct SandboxEngine {
    engine: Engine,
    #[cfg(feature = "compiler")]
    functions: Arc<FunctionCodeCache>,
    limits: SandboxLimits,
    pooled: bool,
    stop: Arc<AtomicBool>,
    compatibility: String,
    compiled: Mutex<VecDeque<(String, Component)>>,
    models: Mutex<VecDeque<(String, Arc<Model>)>>,
}

impl SandboxEngine {
    /// Builds the engine, pooled if the platform lets us reserve the address space.
    pub fn new(limits: SandboxLimits) -> wasmtime::Result<Self> {
        #[cfg(feature = "compiler")]
        let functions = Arc::new(FunctionCodeCache::new(COMPILE_CACHE_BYTES));
        let config = |pooled: bool| -> wasmtime::Result<wasmtime::Config> {
            #[cfg_attr(not(feature = "compiler"), allow(unused_mut))]
            let mut config = config(&limits, pooled);
            #[cfg(feature = "compiler")]
            config
                .cranelift_opt_level(wasmtime::OptLevel::Speed)
                .enable_incremental_compilation(functions.clone())?;
            Ok(config)
        };
        let (engine, pooled) = match Engine::new(&config(true)?) {
            Ok(engine) => (engine, true),
            Err(e) => {
                tracing::warn!(error = %e, "pooling allocator unavailable; using on-demand instances");
                (Engine::new(&config(false)?)?, false)
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = engine.weak();
        let stop_ticker = stop.clone();
        thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !stop_ticker.load(Ordering::Relaxed) {
                    thread::sleep(EPOCH_TICK);
                    match ticker.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })
            .map_err(wasmtime::Error::from)?;
        Ok(Self {
            compatibility: Self::compatibility_of(&engine),
            engine,
            #[cfg(feature = "compiler")]
            functions,
            limits,
            pooled,
            stop,
            compiled: Mutex::new(VecDeque::new()),
            models: Mutex::new(VecDeque::new()),
        })
    }

    /// Compiles `bytes` (whose digest is `digest`), or returns the component compiled for the
    /// same digest earlier.
    pub fn compile(&self, digest: &str, bytes: &[u8]) -> wasmtime::Result<Component> {
        if let Some(component) = self.cached(digest) {
            return Ok(component);
        }
        let component = self.compile_new(digest, bytes)?;
        self.remember(digest, &component);
        Ok(component)
    }

    #[cfg(feature = "compiler")]
    fn compile_new(&self, _digest: &str, bytes: &[u8]) -> wasmtime::Result<Component> {
        Component::new(&self.engine, bytes)
    }

    /// Without a compiler, only the built-in modules "compile": the build script precompiled
    /// them.
    #[cfg(not(feature = "compiler"))]
    fn compile_new(&self, digest: &str, _bytes: &[u8]) -> wasmtime::Result<Component> {
        let Some((_, precompiled)) = precompiled::BUILT_IN.iter().find(|(d, _)| *d == digest)
        else {
            wasmtime::bail!(
                "this build cannot compile components (it was built without the `compiler` \
                 feature): it runs its built-in modules and releases precompiled for its engine"
            );
        };
        // SAFETY: the build script precompiled these bytes for this build's configuration
        // from the built-in component of this digest; they are part of the binary.
        unsafe { Component::deserialize(&self.engine, precompiled) }
    }

    /// What a component precompiled for this engine must have been compiled for: wasmtime's
    /// compatibility hash of the engine's configuration, as 16 hex digits. A release's
    /// precompiled artifact is used only where this matches.
    pub fn compatibility(&self) -> &str {
        &self.compatibility
    }

    #[cfg(feature = "compiler")]
    fn compatibility_of(engine: &Engine) -> String {
        crate::engine_config::compatibility_string(engine.precompile_compatibility_hash())
    }

    /// In a build without a compiler, the hash the build script's engine (this build's
    /// configuration, with Cranelift) computed.
    #[cfg(not(feature = "compiler"))]
    fn compatibility_of(_engine: &Engine) -> String {
        precompiled::ENGINE_COMPATIBILITY.to_string()
    }

    /// Compiles a component ahead of time for engines like this one.
    #[cfg(feature = "compiler")]
    pub fn precompile(&self, bytes: &[u8]) -> wasmtime::Result<Vec<u8>> {
        self.engine.precompile_component(bytes)
    }

    /// Loads a component this engine's configuration precompiled, caching it by `digest` (the
    /// digest of the component it was compiled from).
    ///
    /// # Safety
    ///
    /// `precompiled` must be the output of [`Self::precompile`] on an engine of the same
    /// [`Self::compatibility`]: wasmtime runs the machine code in it as it is. A release's
    /// precompiled artifact qualifies once its signature and digest have been verified.
    pub unsafe fn load_precompiled(
        &self,
        digest: &str,
        precompiled: &[u8],
    ) -> wasmtime::Result<Component> {
        if let Some(component) = self.cached(digest) {
            return Ok(component);
        }
        // SAFETY: the caller vouches for the bytes (see above); wasmtime itself refuses bytes
        // that are not a precompiled component for this engine's configuration.
        let component = unsafe { Component::deserialize(&self.engine, precompiled)? };
        self.remember(digest, &component);
        Ok(component)
    }

    /// Loads the model `bytes` (whose artifact digest is `digest`) under `name`, or returns
    /// the one loaded from the same digest and name earlier.
    pub fn load_model(
        &self,
        name: &str,
        digest: &str,
        bytes: &[u8],
    ) -> Result<Arc<Model>, InferenceError> {
        let key = format!("{digest}/{name}");
        let mut models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, model)) = models.iter().find(|(k, _)| *k == key) {
            return Ok(model.clone());
        }
        let model = Arc::new(Model::load(name, bytes)?);
        models.push_back((key, model.clone()));
        if models.len() > MODEL_CACHE {
            models.pop_front();
        }
        Ok(model)
    }

    fn cached(&self, digest: &str) -> Option<Component> {
        let compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        compiled
            .iter()
            .find(|(d, _)| d == digest)
            .map(|(_, c)| c.clone())
    }

    fn remember(&self, digest: &str, component: &Component) {
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        compiled.push_back((digest.to_string(), component.clone()));
        if compiled.len() > COMPILED_CACHE {
            compiled.pop_front();
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// How often compiling a function found its code already compiled.
    #[cfg(feature = "compiler")]
    pub fn function_cache_stats(&self) -> CompileCacheStats {
        self.functions.stats()
    }

    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    /// Whether instances come from the pooling allocator.
    pub fn pooled(&self) -> bool {
        self.pooled
    }

    /// The deadline in epoch ticks.
    pub fn deadline_ticks(&self) -> u64 {
        (self.limits.deadline.as_millis() as u64 / EPOCH_TICK.as_millis() as u64).max(1)
    }

    /// The deadline of instantiating a module and its `init`, in epoch ticks: ten calls'
    /// worth. It runs once per instance, often while a set loads off the hot path (at a lower
    /// priority, on a busy machine), and the deadline is wall time; a module that never
    /// returns from `init` is still stopped.
    pub fn setup_ticks(&self) -> u64 {
        self.deadline_ticks().saturating_mul(SETUP_CALLS)
    }
}

impl Drop for SandboxEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn config(limits: &SandboxLimits, pooled: bool) -> wasmtime::Config {
    let mut config = fleet_config(limits.stack_bytes);
    if pooled {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOLED_INSTANCES)
            .total_core_instances(POOLED_INSTANCES * 4)
            .total_memories(POOLED_INSTANCES * 4)
            .total_tables(POOLED_INSTANCES * 4)
            .max_memory_size(limits.memory_bytes)
            .max_memories_per_component(4)
            .max_tables_per_component(4);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}
