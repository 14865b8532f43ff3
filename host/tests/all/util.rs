//! Shared fixtures: one engine, the shipped model, guest components, event builders.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use fleet_host::engine::{SandboxEngine, SandboxLimits};
use fleet_host::event::Event;
use fleet_host::inference::ModelRegistry;
use fleet_host::module::{LoadedModule, Manifest, ModuleKind};
use fleet_host::pipeline::Pipeline;
use fleet_host::registry::{ModuleRegistry, ModuleSource};

/// One engine for the whole test binary (its epoch ticker and pool are shared).
pub(crate) fn engine() -> Arc<SandboxEngine> {
    static ENGINE: OnceLock<Arc<SandboxEngine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| Arc::new(SandboxEngine::new(SandboxLimits::default()).expect("engine")))
        .clone()
}

/// The shipped late-risk model, loaded once.
pub(crate) fn models() -> Arc<ModelRegistry> {
    static MODELS: OnceLock<Arc<ModelRegistry>> = OnceLock::new();
    MODELS
        .get_or_init(|| {
            let mut models = ModelRegistry::new();
            models.insert(
                fleet_host::defaults::late_risk_model()
                    .expect("models/late_risk/model.onnx is built in"),
            );
            Arc::new(models)
        })
        .clone()
}

/// Bytes of a guest component.
pub(crate) fn guest(name: &str) -> Vec<u8> {
    let path = fleet_guest_modules::path(name).unwrap_or_else(|| panic!("no guest named {name}"));
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

pub(crate) fn manifest(
    name: &str,
    kind: ModuleKind,
    version: &str,
    config: &[(&str, &str)],
) -> Manifest {
    Manifest {
        name: name.to_string(),
        kind,
        version: version.to_string(),
        component: format!("{name}.wasm").into(),
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), toml::Value::String(v.to_string())))
            .collect(),
    }
}

/// Loads guest `guest_name` as a module of `kind`.
pub(crate) fn load(
    guest_name: &str,
    kind: ModuleKind,
    version: &str,
    config: &[(&str, &str)],
) -> Result<LoadedModule, fleet_host::module::LoadError> {
    LoadedModule::from_bytes(
        &engine(),
        &models(),
        manifest(guest_name, kind, version, config),
        &guest(guest_name),
    )
}

/// The embedded module set.
pub(crate) fn registry() -> Arc<ModuleRegistry> {
    Arc::new(
        ModuleRegistry::new(engine(), models(), ModuleSource::Embedded)
            .expect("embedded modules load"),
    )
}

pub(crate) fn pipeline() -> Pipeline {
    Pipeline::new(registry())
}

/// Writes a module directory: the three real modules, with `policy` config, plus `extra`
/// files. Returns the directory.
pub(crate) fn module_dir(
    dir: &Path,
    policy_guest: &str,
    policy_version: &str,
    policy_config: &[(&str, &str)],
) {
    for (guest_name, kind, version, config) in [
        ("features", "features", "1.0.0", &[][..]),
        ("scorer", "scorer", "1.0.0", &[][..]),
        (policy_guest, "policy", policy_version, policy_config),
    ] {
        std::fs::write(dir.join(format!("{guest_name}.wasm")), guest(guest_name)).unwrap();
        write_manifest(dir, guest_name, kind, version, config);
    }
}

pub(crate) fn write_manifest(
    dir: &Path,
    guest_name: &str,
    kind: &str,
    version: &str,
    config: &[(&str, &str)],
) {
    let mut text = format!(
        "name = \"{guest_name}\"\nkind = \"{kind}\"\nversion = \"{version}\"\ncomponent = \"{guest_name}.wasm\"\n[config]\n"
    );
    for (k, v) in config {
        text.push_str(&format!("{k} = \"{v}\"\n"));
    }
    let tmp = dir.join(format!(".{guest_name}.toml.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join(format!("{guest_name}.toml"))).unwrap();
}

/// Builds events for one task: `at(minutes after 09:40 IST)`.
pub(crate) struct Task {
    pub(crate) task: String,
    pub(crate) courier: String,
    seq: u32,
}

pub(crate) const BASE: &str = "2026-11-22T09:40:00+05:30";

impl Task {
    pub(crate) fn new(task: &str, courier: &str) -> Self {
        Self {
            task: task.to_string(),
            courier: courier.to_string(),
            seq: 0,
        }
    }

    fn time(minutes: f64) -> String {
        let base = chrono::DateTime::parse_from_rfc3339(BASE).unwrap();
        (base + chrono::Duration::milliseconds((minutes * 60_000.0) as i64)).to_rfc3339()
    }

    fn next_id(&mut self) -> String {
        self.seq += 1;
        format!("{}-e{}", self.task, self.seq)
    }

    /// Assignment at `minute`, pickup at `pickup`, dropoff at `dropoff`, promise `promise_min`
    /// after the assignment.
    pub(crate) fn assigned(
        &mut self,
        minute: f64,
        at: (f64, f64),
        pickup: (f64, f64),
        dropoff: (f64, f64),
        promise_min: f64,
    ) -> Event {
        let line = serde_json::json!({
            "event_id": self.next_id(), "courier_id": self.courier, "task_id": self.task,
            "event_type": "task_assigned", "event_time": Self::time(minute),
            "lat": at.0, "lon": at.1,
            "pickup": {"lat": pickup.0, "lon": pickup.1}, "dropoff": {"lat": dropoff.0, "lon": dropoff.1},
            "promised_at": Self::time(minute + promise_min),
            "order_type": "meal", "vehicle_type": "motorcycle", "courier_rating": 4.6, "courier_age": 30,
        });
        Event::from_json(&line.to_string()).unwrap()
    }

    pub(crate) fn event(&mut self, kind: &str, minute: f64, at: (f64, f64)) -> Event {
        let line = serde_json::json!({
            "event_id": self.next_id(), "courier_id": self.courier, "task_id": self.task,
            "event_type": kind, "event_time": Self::time(minute), "lat": at.0, "lon": at.1,
        });
        Event::from_json(&line.to_string()).unwrap()
    }
}

/// A point `km_north` north of `from`.
pub(crate) fn north(from: (f64, f64), km_north: f64) -> (f64, f64) {
    (from.0 + km_north / 111.195, from.1)
}

/// An ordinary task's events: assigned, at pickup, picked up, a few pings (on time).
pub(crate) fn healthy_task(task: &str) -> Vec<Event> {
    let pickup = (12.9716, 77.5946);
    let dropoff = north(pickup, 2.0);
    let mut t = Task::new(task, &format!("c-{task}"));
    vec![
        t.assigned(0.0, north(pickup, -0.3), pickup, dropoff, 30.0),
        t.event("arrived_pickup", 2.0, pickup),
        t.event("picked_up", 5.0, pickup),
        t.event("location", 6.0, north(pickup, 0.4)),
        t.event("location", 7.0, north(pickup, 0.8)),
    ]
}

/// A task that runs late: assigned with a 10-minute promise, picked up at minute 14, then
/// crawling towards a dropoff 6 km away with a ping a minute until minute `until`.
pub(crate) fn late_task(task: &str, until: u32) -> Vec<Event> {
    let pickup = (12.9716, 77.5946);
    let mut t = Task::new(task, &format!("c-{task}"));
    let mut events = vec![
        t.assigned(0.0, north(pickup, -1.0), pickup, north(pickup, 6.0), 10.0),
        t.event("arrived_pickup", 8.0, pickup),
        t.event("picked_up", 14.0, pickup),
    ];
    for minute in 15..until {
        let km = f64::from(minute - 14) * 0.05;
        events.push(t.event("location", f64::from(minute), north(pickup, km)));
    }
    events
}
