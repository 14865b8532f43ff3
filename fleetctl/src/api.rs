//! The aggregator's HTTP API as `fleetctl` calls it: a bearer token, JSON answers, and the
//! aggregator's own error message when it refuses.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde_json::Value;

/// Where the aggregator is and the token to call it with.
#[derive(Args, Debug, Clone)]
pub(crate) struct ApiArgs {
    /// The aggregator's HTTP API.
    #[arg(long, env = "FLEET_API", default_value = "http://127.0.0.1:8080")]
    api: String,
    /// A file holding an operator's (or admin's) token (`aggregator tokens issue --role
    /// operator`). Default: `$FLEET_TOKEN`, else `certs/admin.token` (what `aggregator certs
    /// init` writes).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

pub(crate) struct Api {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl ApiArgs {
    pub(crate) fn connect(&self) -> anyhow::Result<Api> {
        let token = match (&self.token_file, std::env::var("FLEET_TOKEN")) {
            (Some(path), _) => read_token(path)?,
            (None, Ok(token)) if !token.trim().is_empty() => token.trim().to_string(),
            (None, _) => read_token(&PathBuf::from("certs/admin.token"))?,
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .into();
        Ok(Api {
            base: self.api.trim_end_matches('/').to_string(),
            token,
            agent,
        })
    }
}

fn read_token(path: &PathBuf) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading the API token {} (give --token-file or FLEET_TOKEN)",
            path.display()
        )
    })?;
    Ok(text.trim().to_string())
}

impl Api {
    pub(crate) fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let response = self
            .agent
            .get(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()
            .with_context(|| format!("GET {url}"))?;
        answer("GET", &url, response)
    }

    /// Every item under `key` of a list the API pages, at most `max`: `path` (with its query,
    /// if any) asked page after page, each for what is still wanted (at most the API's
    /// 10,000), following `next_cursor` until the last.
    pub(crate) fn get_all(&self, path: &str, key: &str, max: usize) -> anyhow::Result<Vec<Value>> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        while all.len() < max {
            let limit = (max - all.len()).min(10_000);
            let mut page = format!("{path}{separator}limit={limit}");
            if let Some(c) = &cursor {
                page = format!("{page}&cursor={c}");
            }
            let answer = self.get(&page)?;
            all.extend(answer[key].as_array().cloned().unwrap_or_default());
            match answer["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        Ok(all)
    }

    pub(crate) fn post(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let response = self
            .agent
            .post(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .header("Content-Type", content_type)
            .send(body)
            .with_context(|| format!("POST {url}"))?;
        answer("POST", &url, response)
    }

    pub(crate) fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.post(path, "application/json", body.to_string().as_bytes())
    }
}

/// The JSON body of a 2xx answer; otherwise the aggregator's error, with the status.
fn answer(
    method: &str,
    url: &str,
    mut response: ureq::http::Response<ureq::Body>,
) -> anyhow::Result<Value> {
    let status = response.status();
    let text = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("{method} {url}: reading the answer"))?;
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if status.is_success() {
        return Ok(body);
    }
    let message = body
        .get("error")
        .and_then(Value::as_str)
        .map_or_else(|| body.to_string(), str::to_string);
    anyhow::bail!("{method} {url}: {status}: {message}")
}
