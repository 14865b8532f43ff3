//! Signed releases: built from a module directory and the model, verified, loaded from their
//! precompiled form (or compiled when it does not fit), refused with a reason when anything is
//! wrong, and swapped in on a running device with the modules and the model together.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_host::engine::{SandboxEngine, SandboxLimits};
use fleet_host::registry::{ModuleRegistry, ModuleSet, ModuleSource, RegistryError};
use fleet_host::release::{
    LoadStats, ReleaseContents, ReleaseLoadError, ReleaseSource, build_contents, module_set,
};
use fleet_release::{ArtifactKind, ReleaseSigner, Sha256Digest, TrustedKeys};

use crate::device_swap::Device;
use crate::util;

/// A signing key and a module directory (the real guests and the shipped model).
struct Workshop {
    dir: tempfile::TempDir,
    signer: ReleaseSigner,
}

impl Workshop {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("modules")).unwrap();
        std::fs::create_dir(dir.path().join("release-keys")).unwrap();
        let signer = ReleaseSigner::generate().unwrap();
        std::fs::write(
            dir.path().join("release-keys/ops.pub"),
            signer.public_line("ops"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("modules/late_risk.onnx"),
            fleet_host::defaults::LATE_RISK_ONNX,
        )
        .unwrap();
        Self { dir, signer }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The contents of a release whose policy has `config`.
    fn contents(&self, version: &str, policy_config: &[(&str, &str)]) -> ReleaseContents {
        util::module_dir(&self.path("modules"), "policy", "1.0.0", policy_config);
        build_contents(
            "late-risk",
            version.parse().unwrap(),
            &self.path("modules"),
            &[],
            Some(&util::engine()),
        )
        .unwrap()
    }

    /// Writes a release file (signed with the workshop's key) and returns its path.
    fn release(&self, version: &str, policy_config: &[(&str, &str)]) -> PathBuf {
        let out = self.path(&format!("late-risk-{version}.release"));
        self.contents(version, policy_config)
            .write(&out, &self.signer)
            .unwrap();
        out
    }

    fn trusted(&self) -> TrustedKeys {
        TrustedKeys::load(&self.path("release-keys")).unwrap()
    }

    fn source(&self, path: &Path) -> ModuleSource {
        ModuleSource::Release(Arc::new(ReleaseSource::new(
            Some(path.to_path_buf()),
            self.trusted(),
            fleet_release::DEFAULT_BUDGET,
            None,
        )))
    }

    /// Verifies and loads a release on a fresh engine (nothing compiled before).
    fn load(&self, path: &Path) -> Result<(ModuleSet, LoadStats), RegistryError> {
        let release =
            fleet_release::open_bundle(path, &self.trusted(), u64::MAX).map_err(|error| {
                ReleaseLoadError::Refused {
                    path: path.to_path_buf(),
                    error,
                }
            })?;
        let engine = SandboxEngine::new(SandboxLimits::default()).unwrap();
        module_set(&engine, &release, 1)
    }
}

#[test]
fn a_release_carries_modules_and_model_and_its_label_reaches_every_decision() {
    let shop = Workshop::new();
    let path = shop.release("1.4.0", &[("critical_threshold", "0.6")]);
    // No models registered outside the release: the scorer can only read the release's own.
    let registry = Arc::new(
        ModuleRegistry::new(
            util::engine(),
            Arc::new(fleet_host::inference::ModelRegistry::new()),
            shop.source(&path),
        )
        .unwrap(),
    );
    let set = registry.current();
    let release = set.release.clone().expect("a set from a release knows it");
    assert!(
        release.label.starts_with("late-risk@1.4.0+"),
        "{}",
        release.label
    );
    assert!(set.models.get("late_risk").is_some());

    let mut pipeline = fleet_host::pipeline::Pipeline::new(registry);
    let outcome = pipeline.process(util::healthy_task("T-1"));
    assert_eq!(outcome.decisions.len(), 5);
    for decision in &outcome.decisions {
        assert_eq!(
            decision.modules.release.as_deref(),
            Some(release.label.as_str())
        );
    }
    let line = serde_json::to_value(&outcome.decisions[0]).unwrap();
    assert_eq!(line["modules"]["release"], release.label.as_str());
}

#[test]
fn precompiled_modules_load_without_compiling_and_decide_as_compiled_ones() {
    let shop = Workshop::new();
    let (precompiled, stats) = shop.load(&shop.release("1.0.0", &[])).unwrap();
    assert_eq!(stats.precompiled, 3, "{stats:?}");
    assert_eq!(stats.compiled, 0);

    // The same release with its precompiled forms marked for another engine: compiled here.
    let mut contents = shop.contents("1.0.1", &[]);
    for module in &mut contents.manifest.modules {
        module.precompiled[0].engine = "0000000000000000".into();
    }
    let other = shop.path("other-engine.release");
    contents.write(&other, &shop.signer).unwrap();
    let (compiled, stats) = shop.load(&other).unwrap();
    assert_eq!((stats.precompiled, stats.compiled), (0, 3));
    assert_eq!(
        compiled.identity(),
        precompiled.identity(),
        "same components, same behaviour"
    );

    // A "precompiled" artifact that is not machine code for this engine (here, the component
    // itself) is refused by wasmtime and the module compiled instead.
    let mut contents = shop.contents("1.0.2", &[]);
    let policy = contents.manifest.modules[2].clone();
    let component = contents.artifacts[&policy.component].clone();
    let fake = Sha256Digest::of(&[&component[..], b"\0"].concat());
    contents.artifacts.remove(&policy.precompiled[0].artifact);
    contents
        .manifest
        .artifacts
        .retain(|a| a.sha256 != policy.precompiled[0].artifact);
    contents
        .artifacts
        .insert(fake, [&component[..], b"\0"].concat());
    contents.manifest.artifacts.push(fleet_release::Artifact {
        sha256: fake,
        size: component.len() as u64 + 1,
        kind: ArtifactKind::Precompiled,
        encoding: fleet_release::Encoding::Identity,
    });
    contents.manifest.modules[2].precompiled[0].artifact = fake;
    contents.manifest.normalize();
    let bogus = shop.path("bogus-precompiled.release");
    contents.write(&bogus, &shop.signer).unwrap();
    let (_, stats) = shop.load(&bogus).unwrap();
    assert_eq!((stats.precompiled, stats.compiled), (2, 1));

    // Sandbox limits are not part of the machine code: a device with another memory cap
    // loads the precompiled form too.
    let engine = SandboxEngine::new(SandboxLimits {
        memory_bytes: 32 << 20,
        ..SandboxLimits::default()
    })
    .unwrap();
    let release = fleet_release::open_bundle(
        &shop.path("late-risk-1.0.0.release"),
        &shop.trusted(),
        u64::MAX,
    )
    .unwrap();
    let (_, stats) = module_set(&engine, &release, 1).unwrap();
    assert_eq!((stats.precompiled, stats.compiled), (3, 0));
}

#[test]
fn releases_whose_modules_do_not_load_are_refused_with_the_reason() {
    let shop = Workshop::new();
    // A configuration the policy refuses in `init`.
    let err = shop
        .load(&shop.release("2.0.0", &[("critical_threshold", "2.0")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("init failed") && err.contains("critical_threshold"),
        "{err}"
    );

    // A component of the wrong world: the policy's component named as the scorer.
    let modules = shop.path("modules");
    util::module_dir(&modules, "policy", "1.0.0", &[]);
    std::fs::write(
        modules.join("scorer.toml"),
        "name = \"scorer\"\nkind = \"scorer\"\nversion = \"1.0.0\"\ncomponent = \"policy.wasm\"\n",
    )
    .unwrap();
    let contents =
        build_contents("late-risk", "2.0.1".parse().unwrap(), &modules, &[], None).unwrap();
    let out = shop.path("wrong-world.release");
    contents.write(&out, &shop.signer).unwrap();
    let err = shop.load(&out).unwrap_err().to_string();
    assert!(err.contains("does not export the scorer world"), "{err}");

    // A scorer that reads a model the release does not carry.
    util::module_dir(&modules, "policy", "1.0.0", &[]);
    util::write_manifest(&modules, "scorer", "scorer", "1.0.0", &[("model", "eta")]);
    let out = shop.path("no-model.release");
    build_contents("late-risk", "2.0.2".parse().unwrap(), &modules, &[], None)
        .unwrap()
        .write(&out, &shop.signer)
        .unwrap();
    let err = shop.load(&out).unwrap_err().to_string();
    assert!(err.contains("\"eta\""), "{err}");
}

/// Replaces `target` with `source` in one rename, as an installer would.
fn install(source: &Path, target: &Path) {
    let tmp = target.with_extension("tmp");
    std::fs::copy(source, &tmp).unwrap();
    std::fs::rename(&tmp, target).unwrap();
}

/// Restarts `device` (SIGKILL, then a new process on the same journal) with `source`.
fn restart(device: &mut Device, dir: &Path, source: &[std::ffi::OsString]) {
    device.kill9();
    let tasks = device.tasks;
    *device = Device::start_with(dir, source);
    device.tasks = tasks;
}

/// The release label of one task's decisions, and the severities of the alerts they raised.
fn decided(device: &mut Device) -> (String, Vec<String>) {
    let decisions = device.task_decisions();
    let label = decisions[0]["modules"]["release"]
        .as_str()
        .unwrap_or("")
        .to_string();
    for d in &decisions {
        assert_eq!(
            d["modules"]["release"],
            label.as_str(),
            "one task, one release"
        );
    }
    // The task's alerts: a policy that keeps state per task raises one per severity at most.
    let raised = decisions
        .iter()
        .map(|d| d["severity"].as_str().unwrap().to_string())
        .filter(|s| s != "info")
        .collect();
    (label, raised)
}

#[test]
fn a_device_swaps_to_a_new_release_and_keeps_its_release_when_a_bad_one_arrives() {
    let shop = Workshop::new();
    // 1.0.0 alerts on nothing; 1.1.0 on everything (both thresholds at 0).
    let quiet = shop.release(
        "1.0.0",
        &[("warning_threshold", "1.0"), ("critical_threshold", "1.0")],
    );
    let loud = shop.release(
        "1.1.0",
        &[("warning_threshold", "0.0"), ("critical_threshold", "0.0")],
    );
    let active = shop.path("active.release");
    install(&quiet, &active);
    let certs = shop.path("certs");
    let keys = certs.join("release-keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::copy(shop.path("release-keys/ops.pub"), keys.join("ops.pub")).unwrap();
    let port = crate::fleet::free_port();
    let http: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut device = Device::start_serving(
        shop.dir.path(),
        &["--release".into(), active.clone().into_os_string()],
        port,
    );
    let (first, severities) = decided(&mut device);
    assert!(first.starts_with("late-risk@1.0.0+"), "{first}");
    assert!(severities.is_empty(), "{severities:?}");

    // Each bad release is refused, and the device goes on deciding with the release it has.
    let stranger = ReleaseSigner::generate().unwrap();
    let untrusted = shop.path("untrusted.release");
    shop.contents("1.2.0", &[])
        .write(&untrusted, &stranger)
        .unwrap();
    let tampered = shop.path("tampered.release");
    let mut bytes = std::fs::read(&loud).unwrap();
    let at = bytes.len() - 4000;
    bytes[at] ^= 0x20;
    std::fs::write(&tampered, bytes).unwrap();
    let truncated = shop.path("truncated.release");
    let bytes = std::fs::read(&loud).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    for (bad, reason) in [
        (&untrusted, "does not trust"),
        (&tampered, "does not match its digest"),
        (&truncated, "corrupt release file"),
    ] {
        install(bad, &active);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !device.log().contains(reason) {
            assert!(
                Instant::now() < deadline,
                "no {reason:?} in:\n{}",
                device.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            decided(&mut device).0,
            first,
            "still on its release after {reason}"
        );
    }

    // The device says what it runs and what it refused, and why.
    let report = crate::fleet::get_json(http, "/v1/release");
    assert_eq!(report["running"]["release"], first.as_str(), "{report}");
    assert_eq!(report["refused"]["total"], 3, "{report}");
    for reason in ["untrusted-key", "digest", "corrupt"] {
        assert_eq!(
            report["refused"]["by_reason"][reason], 1,
            "{reason}: {report}"
        );
    }
    assert!(
        report["refused"]["last"][1]
            .as_str()
            .unwrap()
            .contains("corrupt")
    );
    assert!(
        report["store"]["active"]
            .as_str()
            .is_some_and(|a| first.contains(&a[7..19]))
    );

    // The good release swaps in between two batches: its label and its thresholds.
    install(&loud, &active);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (label, severities) = decided(&mut device);
        if label != first {
            assert!(label.starts_with("late-risk@1.1.0+"), "{label}");
            assert_eq!(severities, ["critical"], "one alert for the task");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never swapped:\n{}",
            device.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(device.is_running());
}

#[test]
fn a_device_keeps_its_installed_release_across_kill_9_and_refuses_an_older_one() {
    let shop = Workshop::new();
    let v1 = shop.release(
        "1.0.0",
        &[("warning_threshold", "1.0"), ("critical_threshold", "1.0")],
    );
    let v2 = shop.release(
        "1.1.0",
        &[("warning_threshold", "0.0"), ("critical_threshold", "0.0")],
    );
    let keys = shop.path("certs/release-keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::copy(shop.path("release-keys/ops.pub"), keys.join("ops.pub")).unwrap();
    let active = shop.path("active.release");
    install(&v1, &active);
    let with_file = ["--release".into(), active.clone().into_os_string()];
    let mut device = Device::start_with(shop.dir.path(), &with_file);
    let first = decided(&mut device).0;
    assert!(first.starts_with("late-risk@1.0.0+"), "{first}");
    let v1_label = first;

    // The new release arrives and the device is killed at some instant of its install
    // (verify, stage, load, activate, swap); started again, it runs one whole release, and
    // finishes the install.
    let dir = shop.dir.path();
    let mut v2_label = None;
    for delay_ms in [0u64, 40, 120, 400] {
        // Back to 1.0.0 for each round: a fresh journal and release store.
        install(&v1, &active);
        device.kill9();
        std::fs::remove_dir_all(shop.path("journal")).unwrap();
        restart(&mut device, dir, &with_file);
        assert_eq!(decided(&mut device).0, v1_label);
        install(&v2, &active);
        std::thread::sleep(Duration::from_millis(delay_ms));
        restart(&mut device, dir, &with_file);
        let (label, severities) = decided(&mut device);
        assert!(
            label == v1_label || label.starts_with("late-risk@1.1.0+"),
            "{label}"
        );
        let expected: &[&str] = if label == v1_label {
            &[]
        } else {
            &["critical"]
        };
        assert_eq!(severities, expected, "{label}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let label = loop {
            let (label, _) = decided(&mut device);
            if label != v1_label {
                break label;
            }
            assert!(
                Instant::now() < deadline,
                "the install never finished:\n{}",
                device.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        v2_label = Some(label);
    }
    let v2_label = v2_label.unwrap();

    // Installed means installed: without the file, after a restart, the device runs 1.1.0.
    std::fs::remove_file(&active).unwrap();
    restart(&mut device, dir, &[]);
    assert_eq!(decided(&mut device).0, v2_label);

    // A crash right after staging (the candidate whole on disk, not yet active): the next
    // start finishes the install, with no release file offered.
    let v3 = shop.release("1.2.0", &[("critical_threshold", "0.99")]);
    device.kill9();
    let store = fleet_host::release::ReleaseStore::open(&shop.path("journal/releases")).unwrap();
    let staged = fleet_release::open_bundle(&v3, &shop.trusted(), u64::MAX).unwrap();
    store.stage(&staged).unwrap();
    assert_eq!(store.state().unwrap().candidate, Some(staged.id));
    restart(&mut device, dir, &[]);
    assert_eq!(decided(&mut device).0, staged.label());
    let state = store.state().unwrap();
    assert_eq!(state.active, Some(staged.id));
    assert_eq!(state.candidate, None);
    assert!(
        state
            .previous
            .is_some_and(|p| v2_label.contains(&p.hex()[..12]))
    );
    let v2_label = staged.label();

    // An older release (a replay of 1.0.0) is refused, at start and while running.
    install(&v1, &active);
    restart(&mut device, dir, &with_file);
    assert_eq!(decided(&mut device).0, v2_label);
    assert!(device.log().contains("not newer"), "{}", device.log());
    device.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(decided(&mut device).0, v2_label);
}
