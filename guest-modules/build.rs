//! Builds every crate in `guests/` for wasm32-wasip2 and writes `gen.rs`: one constant per guest
//! with the component's path and bytes, `path(name)`, and the `foreach_guest!` macro.
//!
//! When the wasm32-wasip2 target is missing, this script adds it with rustup (rustup installs
//! a `rust-toolchain.toml` target only with the toolchain, not into a toolchain already
//! installed). When it cannot, the build fails with the command that fixes it: a binary
//! without its guest modules cannot do its job, so none is produced.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let guests_dir = manifest_dir.join("guests");
    println!("cargo:rerun-if-changed={}", guests_dir.display());
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("guest-alloc").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../wit").display()
    );
    println!("cargo:rerun-if-env-changed=RUSTFLAGS");

    if let Err(why) = ensure_target() {
        panic!(
            "\n\nthe guest modules need the {TARGET} target, which is not installed and could not \
             be added: {why}\nrun `rustup target add {TARGET}` and build again\n\n"
        );
    }
    let names = guest_names(&guests_dir);
    build_guests(&guests_dir, &out_dir.join("guests-target"));
    let release = out_dir.join("guests-target").join(TARGET).join("release");
    fs::write(out_dir.join("gen.rs"), generated(&names, &release)).expect("write gen.rs");
    println!("cargo::metadata=dir={}", release.display());
}

/// The generated constants, `path` and `foreach_guest!`.
fn generated(names: &[String], release: &Path) -> String {
    let mut code = String::new();
    for name in names {
        let path = release.join(format!("{name}.wasm"));
        let upper = name.to_uppercase();
        writeln!(
            code,
            "/// Path of the `{name}` guest component.\npub const {upper}: &str = {path:?};\n\
             /// Bytes of the `{name}` guest component.\n\
             pub static {upper}_WASM: &[u8] = include_bytes!({path:?});"
        )
        .unwrap();
    }
    writeln!(code, "/// Path of the guest component called `name`.").unwrap();
    writeln!(
        code,
        "pub fn path(name: &str) -> Option<&'static str> {{\n    match name {{"
    )
    .unwrap();
    for name in names {
        writeln!(code, "        {name:?} => Some({}),", name.to_uppercase()).unwrap();
    }
    writeln!(code, "        _ => None,\n    }}\n}}").unwrap();
    writeln!(
        code,
        "/// Calls `$m!(name)` for every guest, so a test file can require one test per guest.\n\
         #[macro_export]\nmacro_rules! foreach_guest {{\n    ($m:ident) => {{"
    )
    .unwrap();
    for name in names {
        writeln!(code, "        $m!({name});").unwrap();
    }
    writeln!(code, "    }};\n}}").unwrap();
    code
}

fn guest_names(guests_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(guests_dir)
        .expect("read guests/")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Makes sure the target's standard library is installed, adding it with rustup if not.
fn ensure_target() -> Result<(), String> {
    if target_installed() {
        return Ok(());
    }
    // Set by rustup's proxies for the processes they start: the toolchain this build runs on.
    let toolchain = env::var("RUSTUP_TOOLCHAIN")
        .map_err(|_| "this build does not run under rustup (RUSTUP_TOOLCHAIN is not set)")?;

    let output = Command::new("rustup")
        .args(["target", "add", TARGET, "--toolchain", &toolchain])
        .output()
        .map_err(|e| format!("running rustup: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`rustup target add {TARGET} --toolchain {toolchain}` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    if !target_installed() {
        return Err(format!(
            "rustup reported success but rustc still has no {TARGET} standard library"
        ));
    }
    println!("cargo:warning=added the {TARGET} target to toolchain {toolchain} with rustup");
    Ok(())
}

fn target_installed() -> bool {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_some_and(|dir| dir.is_dir())
}

fn build_guests(guests_dir: &Path, target_dir: &Path) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(guests_dir)
        .args(["build", "--release", "--locked", "--target", TARGET])
        // A target dir of our own avoids a deadlock on the outer build's lock.
        .env("CARGO_TARGET_DIR", target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS");
    if env::var("RUSTFLAGS").is_ok_and(|f| f.contains("-D warnings") || f.contains("-Dwarnings")) {
        cmd.env("RUSTFLAGS", "-D warnings");
    }
    let status = cmd.status().expect("run cargo for the guests");
    assert!(
        status.success(),
        "building the guest modules failed (see the output above)"
    );
}
