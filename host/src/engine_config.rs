//! What decides whether a precompiled component fits an engine: the configuration every engine
//! of the fleet shares, and the compatibility string derived from it. The engine uses it, and
//! so does the build script that precompiles the built-in modules for the handset build
//! (`build.rs` includes this file, so it uses nothing but wasmtime and xxhash).

/// Largest wasm stack of an instance unless configured otherwise, in bytes.
pub(crate) const DEFAULT_STACK_BYTES: usize = 512 << 10;

/// The settings of every fleet engine, compiling or not. Compilation settings (Cranelift's
/// optimization level) are left at wasmtime's defaults, which precompiled artifacts record.
pub(crate) fn fleet_config(stack_bytes: usize) -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config
        .wasm_component_model(true)
        // Component-model async support costs ~3x per call and no module needs it.
        .concurrency_support(false)
        .epoch_interruption(true)
        .max_wasm_stack(stack_bytes);
    config
}

/// wasmtime's compatibility hash of a compiling engine
/// (`Engine::precompile_compatibility_hash`) as 16 hex digits: a component precompiled by one
/// engine loads in another only where these match.
#[cfg_attr(not(feature = "compiler"), allow(dead_code))]
pub(crate) fn compatibility_string(hash: impl std::hash::Hash) -> String {
    use std::hash::Hasher as _;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hash.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}
