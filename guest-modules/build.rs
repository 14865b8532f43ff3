//! Builds every crate in `guests/` for wasm32-wasip2 and writes `gen.rs`: one constant per guest
//! with the component's path and bytes, `path(name)`, and the `foreach_guest!` macro.
//!
//! When the wasm32-wasip2 target is missing, the build still succeeds (so `cargo check` and
//! clippy work anywhere): every guest then has empty bytes and `MISSING_TARGET` says how to fix
//! it, which the tests that load a guest report.

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

    let names = guest_names(&guests_dir);
    let built = if target_installed() {
        build_guests(&guests_dir, &out_dir.join("guests-target"));
        true
    } else {
        println!(
            "cargo:warning=the {TARGET} target is not installed; guest modules are not built \
             (rustup target add {TARGET})"
        );
        false
    };

    let release = out_dir.join("guests-target").join(TARGET).join("release");
    let empty = out_dir.join("empty.wasm");
    fs::write(&empty, b"").expect("write sentinel");
    let mut code = String::new();
    writeln!(
        code,
        "/// Set when the guests could not be built, with the command that fixes it.\n\
         pub const MISSING_TARGET: Option<&str> = {};",
        if built {
            "None".to_string()
        } else {
            format!("Some(\"rustup target add {TARGET}\")")
        }
    )
    .unwrap();
    for name in &names {
        let path = if built {
            release.join(format!("{name}.wasm"))
        } else {
            empty.clone()
        };
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
    for name in &names {
        writeln!(code, "        {name:?} => Some({}),", name.to_uppercase()).unwrap();
    }
    writeln!(code, "        _ => None,\n    }}\n}}").unwrap();
    writeln!(
        code,
        "/// Calls `$m!(name)` for every guest, so a test file can require one test per guest.\n\
         #[macro_export]\nmacro_rules! foreach_guest {{\n    ($m:ident) => {{"
    )
    .unwrap();
    for name in &names {
        writeln!(code, "        $m!({name});").unwrap();
    }
    writeln!(code, "    }};\n}}").unwrap();
    fs::write(out_dir.join("gen.rs"), code).expect("write gen.rs");
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
