//! Embeds the shipped late-risk model. When it is missing (a checkout before training), an
//! empty file stands in and loading the default model fails with the command that makes it.
//!
//! With the `handset` feature it also precompiles the built-in modules for this build's engine
//! configuration (`src/engine_config.rs`), so a build without the compiler runs them, and
//! records that engine's compatibility string, which picks a release's precompiled artifacts.

use std::path::{Path, PathBuf};

#[cfg(feature = "handset")]
#[path = "src/engine_config.rs"]
mod engine_config;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    embed_model(&manifest_dir, &out_dir);
    #[cfg(feature = "handset")]
    precompile_built_ins(&manifest_dir, &out_dir);
}

fn embed_model(manifest_dir: &Path, out_dir: &Path) {
    let model = manifest_dir.join("../models/late_risk/model.onnx");
    println!("cargo:rerun-if-changed={}", model.display());
    let embedded = if model.is_file() {
        model
    } else {
        let empty = out_dir.join("missing-model.onnx");
        std::fs::write(&empty, b"").expect("write sentinel");
        empty
    };
    std::fs::write(
        out_dir.join("model.rs"),
        format!(
            "pub static LATE_RISK_ONNX: &[u8] = include_bytes!({:?});\n",
            embedded.display().to_string()
        ),
    )
    .expect("write model.rs");
}

/// Writes `precompiled.rs`: `ENGINE_COMPATIBILITY` and `BUILT_IN`, the built-in components'
/// digests with their precompiled bytes.
#[cfg(feature = "handset")]
fn precompile_built_ins(manifest_dir: &Path, out_dir: &Path) {
    use sha2::{Digest as _, Sha256};
    use std::fmt::Write as _;

    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("src/engine_config.rs").display()
    );
    // Set by fleet-guest-modules' build script (its `links` key): where the components are.
    let guests = PathBuf::from(
        std::env::var_os("DEP_FLEET_GUESTS_DIR").expect("fleet-guest-modules names its output"),
    );
    let mut config = engine_config::fleet_config(engine_config::DEFAULT_STACK_BYTES);
    let (host, target) = (std::env::var("HOST"), std::env::var("TARGET"));
    if let (Ok(host), Ok(target)) = (host, target)
        && host != target
    {
        config.target(&target).expect("a target Cranelift supports");
    }
    let engine = wasmtime::Engine::new(&config).expect("the fleet's engine configuration");
    let mut code = format!(
        "pub(crate) const ENGINE_COMPATIBILITY: &str = {:?};\n\
         pub(crate) static BUILT_IN: &[(&str, &[u8])] = &[\n",
        engine_config::compatibility_string(engine.precompile_compatibility_hash())
    );
    for name in ["features", "scorer", "policy"] {
        let path = guests.join(format!("{name}.wasm"));
        println!("cargo:rerun-if-changed={}", path.display());
        let bytes = std::fs::read(&path).expect("a built guest component");
        let precompiled = engine
            .precompile_component(&bytes)
            .expect("the built-in component compiles");
        let out = out_dir.join(format!("{name}.cwasm"));
        std::fs::write(&out, precompiled).expect("write a precompiled component");
        let digest = format!("sha256:{:x}", Sha256::digest(&bytes));
        writeln!(
            code,
            "    ({digest:?}, include_bytes!({:?})),",
            out.display()
        )
        .unwrap();
    }
    code.push_str("];\n");
    std::fs::write(out_dir.join("precompiled.rs"), code).expect("write precompiled.rs");
}
