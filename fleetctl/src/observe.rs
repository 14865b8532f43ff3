//! What the fleet is doing, for an operator at a terminal: alerts and drift, through the
//! aggregator's API. Options are named as the API's parameters, and `--json` prints the
//! API's objects unchanged, so the CLI and the API share their field names.

use clap::Args;
use serde_json::Value;

use crate::api::ApiArgs;
use crate::fleet::text;

#[derive(Args, Debug)]
pub(crate) struct AlertsArgs {
    /// Alerts opened at or after this time (RFC 3339 or epoch milliseconds).
    #[arg(long)]
    since: Option<String>,
    /// At least this severe: warning or critical.
    #[arg(long)]
    severity: Option<String>,
    /// open, resolved or all.
    #[arg(long, default_value = "open")]
    state: String,
    #[arg(long)]
    task: Option<String>,
    #[arg(long)]
    courier: Option<String>,
    #[arg(long)]
    device: Option<String>,
    /// `name@version` of the model.
    #[arg(long)]
    model: Option<String>,
    /// At most this many alerts (the oldest first).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    #[command(flatten)]
    api: ApiArgs,
    /// Print the aggregator's JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct ModelsArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Print the aggregator's JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct DriftArgs {
    /// `name@version` of the model (all with a baseline by default).
    #[arg(long)]
    model: Option<String>,
    /// Decisions from this event time (RFC 3339 or epoch milliseconds); default: the last day
    /// of decisions.
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    until: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
    /// Print the aggregator's JSON.
    #[arg(long)]
    json: bool,
}

/// `?a=1&b=2` of the parameters given, each encoded.
fn query(params: &[(&str, Option<&str>)]) -> String {
    let given: Vec<String> = params
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode(v))))
        .collect();
    if given.is_empty() {
        String::new()
    } else {
        format!("?{}", given.join("&"))
    }
}

/// Percent-encodes everything but unreserved characters.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) fn alerts(args: AlertsArgs) -> anyhow::Result<()> {
    let path = format!(
        "/api/v1/alerts{}",
        query(&[
            ("since", args.since.as_deref()),
            ("severity", args.severity.as_deref()),
            ("state", Some(&args.state)),
            ("task", args.task.as_deref()),
            ("courier", args.courier.as_deref()),
            ("device", args.device.as_deref()),
            ("model", args.model.as_deref()),
        ])
    );
    let all = args.api.connect()?.get_all(&path, "alerts", args.limit)?;
    if args.json {
        println!("{:#}", Value::Array(all));
        return Ok(());
    }
    println!(
        "{:<22} {:<9} {:<9} {:<24} {:<16} {:<25} {:>10}  release",
        "id", "state", "severity", "task_id", "courier_id", "opened", "peak_score"
    );
    for a in &all {
        println!(
            "{:<22} {:<9} {:<9} {:<24} {:<16} {:<25} {:>10.3}  {}",
            text(&a["id"]),
            text(&a["state"]),
            text(&a["severity"]),
            text(&a["task_id"]),
            text(&a["courier_id"]),
            text(&a["opened"]),
            a["peak_score"].as_f64().unwrap_or(0.0),
            text(&a["release"]),
        );
    }
    if all.is_empty() {
        println!("(none)");
    }
    Ok(())
}

pub(crate) fn models(args: ModelsArgs) -> anyhow::Result<()> {
    let answer = args.api.connect()?.get("/api/v1/models")?;
    if args.json {
        println!("{answer:#}");
        return Ok(());
    }
    println!(
        "{:<24} {:<11} {:>7} {:>8}  releases",
        "model", "stage", "devices", "auc"
    );
    for m in answer["models"].as_array().into_iter().flatten() {
        let mut carriers: Vec<String> = m["releases"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| text(&r["label"]))
            .collect();
        if m["builtin"] == Value::Bool(true) {
            carriers.insert(0, "built in".into());
        }
        println!(
            "{:<24} {:<11} {:>7} {:>8}  {}",
            text(&m["model"]),
            text(&m["stage"]),
            m["devices_running"],
            m["metrics"]["auc"]
                .as_f64()
                .map_or("-".into(), |a| format!("{a:.3}")),
            carriers.join(", ")
        );
    }
    Ok(())
}

pub(crate) fn drift(args: DriftArgs) -> anyhow::Result<()> {
    let answer = args.api.connect()?.get(&format!(
        "/api/v1/drift{}",
        query(&[
            ("model", args.model.as_deref()),
            ("since", args.since.as_deref()),
            ("until", args.until.as_deref()),
        ])
    ))?;
    if args.json {
        println!("{answer:#}");
        return Ok(());
    }
    let models = answer["models"].as_array().cloned().unwrap_or_default();
    if models.is_empty() {
        println!("no decisions of a model with a training baseline yet");
    }
    for m in &models {
        let alert = if m["alert"] == Value::Bool(true) {
            let drifting: Vec<String> = m["drifting"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            format!("DRIFT ALERT: {}", drifting.join(", "))
        } else {
            "no alert".into()
        };
        println!(
            "{}: {} decisions from {} to {}; {} ({alert})",
            text(&m["model"]),
            m["decisions"],
            text(&m["from"]),
            text(&m["to"]),
            text(&m["band"]),
        );
        if let Some(note) = m["note"].as_str() {
            println!("  {note}");
        }
        println!("  {:<26} {:>8}  band", "feature", "psi");
        let mut rows: Vec<&Value> = std::iter::once(&m["score"])
            .chain(m["features"].as_array().into_iter().flatten())
            .collect();
        rows.sort_by(|a, b| {
            let psi = |v: &Value| v["psi"].as_f64().unwrap_or(0.0);
            psi(b).total_cmp(&psi(a))
        });
        for f in rows {
            let name = if f["seasonal"] == Value::Bool(true) {
                format!("{} (calendar)", text(&f["name"]))
            } else {
                text(&f["name"])
            };
            println!(
                "  {name:<26} {:>8}  {}",
                f["psi"].as_f64().map_or("-".into(), |p| format!("{p:.4}")),
                text(&f["band"])
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_encoded_and_absent_ones_left_out() {
        assert_eq!(query(&[("a", None)]), "");
        assert_eq!(
            query(&[
                ("since", Some("2026-01-01T10:00:00+05:30")),
                ("task", None),
                ("model", Some("late_risk@1.0.0"))
            ]),
            "?since=2026-01-01T10%3A00%3A00%2B05%3A30&model=late_risk%401.0.0"
        );
    }
}
