//! Embeds the shipped late-risk model. When it is missing (a checkout before training), an
//! empty file stands in and loading the default model fails with the command that makes it.

use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
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
