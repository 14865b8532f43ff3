//! `fleetctl` as an operator runs it: a key, the built-in modules exported, a release built
//! from them with one threshold changed, inspected; and each mistake refused with what to do.

use std::path::Path;
use std::process::{Command, Output};

fn fleetctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .current_dir(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("fleetctl runs")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = fleetctl(dir, args);
    assert!(
        out.status.success(),
        "fleetctl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn refused(dir: &Path, args: &[&str]) -> String {
    let out = fleetctl(dir, args);
    assert!(!out.status.success(), "fleetctl {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn an_operator_builds_and_inspects_a_release_from_the_built_in_modules() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    let out = ok(dir, &["keys", "init", "--trust-dir", "certs/release-keys"]);
    assert!(out.contains("release key "), "{out}");
    assert!(dir.join("release.key").exists() && dir.join("release.key.pub").exists());
    assert_eq!(
        std::fs::read_dir(dir.join("certs/release-keys"))
            .unwrap()
            .count(),
        1
    );
    let err = refused(dir, &["keys", "init"]);
    assert!(err.contains("never overwritten"), "{err}");

    ok(dir, &["release", "export-builtin", "mods"]);
    for file in ["features", "scorer", "policy"] {
        assert!(dir.join(format!("mods/{file}.toml")).exists());
        assert!(dir.join(format!("mods/{file}.wasm")).exists());
    }
    assert!(dir.join("mods/late_risk.onnx").exists());
    let err = refused(dir, &["release", "export-builtin", "mods"]);
    assert!(err.contains("empty directory"), "{err}");

    let policy = dir.join("mods/policy.toml");
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(
        &policy,
        text.replace("# critical_threshold = 0.7", "critical_threshold = 0.6"),
    )
    .unwrap();
    let out = ok(dir, &["release", "build", "mods", "--version", "1.4.0"]);
    assert!(out.contains("late-risk@1.4.0+"), "{out}");
    assert!(out.contains("3 precompiled, 0 compiled"), "{out}");
    let err = refused(dir, &["release", "build", "mods", "--version", "1.4.0"]);
    assert!(err.contains("never overwritten"), "{err}");

    let out = ok(dir, &["release", "inspect", "late-risk-1.4.0.release"]);
    assert!(out.contains("(verified)"), "{out}");
    assert!(out.contains("critical_threshold = 0.6"), "{out}");
    assert!(out.contains("fits this build"), "{out}");

    // Another fleet's keys do not verify it.
    std::fs::create_dir(dir.join("other-keys")).unwrap();
    let err = refused(
        dir,
        &[
            "release",
            "inspect",
            "late-risk-1.4.0.release",
            "--release-keys",
            "other-keys",
        ],
    );
    assert!(err.contains("does not trust"), "{err}");
}

#[test]
fn a_release_that_would_not_load_on_a_device_is_not_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let err = refused(dir, &["release", "build", "mods", "--version", "1.0.0"]);
    assert!(err.contains("fleetctl keys init"), "{err}");

    ok(dir, &["keys", "init"]);
    ok(dir, &["release", "export-builtin", "mods"]);
    let policy = dir.join("mods/policy.toml");
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(
        &policy,
        text.replace("# critical_threshold = 0.7", "critical_threshold = 7"),
    )
    .unwrap();
    let err = refused(dir, &["release", "build", "mods", "--version", "1.0.0"]);
    assert!(
        err.contains("does not load") && err.contains("critical_threshold"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("release") && n != "release.key" && n != "release.key.pub")
        .collect();
    assert!(left.is_empty(), "{left:?}");

    std::fs::remove_file(dir.join("mods/scorer.toml")).unwrap();
    let err = refused(dir, &["release", "build", "mods", "--version", "1.0.0"]);
    assert!(err.contains("no scorer module"), "{err}");
}

#[test]
fn commands_that_need_the_aggregator_say_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for command in [
        &["release", "publish", "--help"][..],
        &["release", "list", "--help"],
        &["deploy", "--help"],
        &["status", "--help"],
        &["devices", "--help"],
        &["alerts", "--help"],
        &["drift", "--help"],
        &["models", "--help"],
    ] {
        assert!(ok(dir, command).contains("--token-file"), "{command:?}");
    }
    // No token anywhere: the error names where one was looked for and how to give one.
    let err = refused(dir, &["devices"]);
    assert!(
        err.contains("certs/admin.token") && err.contains("--token-file"),
        "{err}"
    );
    // A token but nothing listening: the address is named.
    std::fs::write(dir.join("op.token"), "fleet_x").unwrap();
    let err = refused(
        dir,
        &[
            "status",
            "late-risk@1.0.0",
            "--token-file",
            "op.token",
            "--api",
            "http://127.0.0.1:9",
        ],
    );
    assert!(err.contains("127.0.0.1:9"), "{err}");
    // A deploy needs a target.
    let err = refused(dir, &["deploy", "late-risk@1.0.0"]);
    assert!(err.contains("--all"), "{err}");
}
