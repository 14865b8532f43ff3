//! API tokens on disk: `api-tokens.json` in the fleet directory holds, per token, an id, a
//! role, a name, when it was issued and the sha256 of its secret (never the secret, which is
//! shown once when issued). Written whole (temporary file, rename), mode 0600.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// What a token may do; each role may do what the ones before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads: history, stats, metrics.
    Viewer,
    /// Releases and deployments, and what a viewer may do.
    Operator,
    /// Keys, devices and tokens, and what an operator may do.
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        })
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Self::Viewer),
            "operator" => Ok(Self::Operator),
            "admin" => Ok(Self::Admin),
            other => Err(format!("role {other:?}: viewer, operator or admin")),
        }
    }
}

/// One issued token, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// 8 hex digits; names the token in lists, logs and revocation.
    pub id: String,
    pub role: Role,
    /// Who or what holds it.
    pub name: String,
    pub issued_ms: i64,
    /// sha256 of the secret, hex.
    pub sha256: String,
    /// A customer's token: it follows this one task on the live stream (its courier's
    /// positions and its status), and reads nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenList {
    tokens: Vec<TokenRecord>,
}

/// The sha256 of a secret, as stored.
pub fn secret_hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The token file of a fleet directory.
#[derive(Clone, Debug)]
pub struct TokenFile {
    path: PathBuf,
}

impl TokenFile {
    /// `api-tokens.json` in `dir` (the fleet directory, beside the CA).
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            path: dir.join("api-tokens.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// The tokens issued and not revoked (none if the file does not exist).
    pub fn load(&self) -> anyhow::Result<Vec<TokenRecord>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                let list: TokenList = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!("{}: not a token file: {e}", self.path.display())
                })?;
                Ok(list.tokens)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(anyhow::anyhow!("{}: {e}", self.path.display())),
        }
    }

    fn store(&self, tokens: Vec<TokenRecord>) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let mut bytes = serde_json::to_vec_pretty(&TokenList { tokens })?;
        bytes.push(b'\n');
        write_private(&tmp, &bytes)?;
        std::fs::rename(&tmp, &self.path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.path.display()))
    }

    /// Issues a token: stores its record and returns it with the secret (shown only now).
    pub fn issue(&self, role: Role, name: &str) -> anyhow::Result<(TokenRecord, String)> {
        self.issue_scoped(role, name, None)
    }

    /// Issues a token; one with a `task` is a viewer's that follows only that task.
    pub fn issue_scoped(
        &self,
        role: Role,
        name: &str,
        task: Option<&str>,
    ) -> anyhow::Result<(TokenRecord, String)> {
        if task.is_some() && role != Role::Viewer {
            anyhow::bail!("a token that follows one task is a viewer's (--role viewer)");
        }
        let mut random = [0u8; 36];
        getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let id: String = random[..4].iter().map(|b| format!("{b:02x}")).collect();
        let secret = format!(
            "fleet_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&random[4..])
        );
        let record = TokenRecord {
            id,
            role,
            name: name.replace(['\n', '\r'], " "),
            issued_ms: crate::now_ms(),
            sha256: secret_hash(&secret),
            task: task.map(str::to_string),
        };
        let mut tokens = self.load()?;
        tokens.push(record.clone());
        self.store(tokens)?;
        Ok((record, secret))
    }

    /// Revokes the token `id`; false if there is none.
    pub fn revoke(&self, id: &str) -> anyhow::Result<bool> {
        let mut tokens = self.load()?;
        let before = tokens.len();
        tokens.retain(|t| t.id != id);
        if tokens.len() == before {
            return Ok(false);
        }
        self.store(tokens)?;
        Ok(true)
    }

    /// On a fleet directory without tokens: issues the first admin token and writes its
    /// secret to `admin.token` (mode 0600) beside the file. Returns the secret if it did.
    pub fn bootstrap(&self) -> anyhow::Result<Option<String>> {
        if self.exists() {
            return Ok(None);
        }
        let (_, secret) = self.issue(Role::Admin, "first admin (certs init)")?;
        write_private(&self.admin_token_path(), format!("{secret}\n").as_bytes())?;
        Ok(Some(secret))
    }

    /// Where [`Self::bootstrap`] writes the first admin token.
    pub fn admin_token_path(&self) -> PathBuf {
        self.path.with_file_name("admin.token")
    }
}

/// Writes `bytes` to `path` (created with mode 0600, or truncated) and syncs it.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_issued_stored_as_hashes_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::in_dir(dir.path());
        assert!(file.load().unwrap().is_empty());
        let (viewer, secret) = file.issue(Role::Viewer, "grafana").unwrap();
        assert!(secret.starts_with("fleet_") && secret.len() > 40);
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(!text.contains(&secret), "the secret is never stored");
        assert!(text.contains(&secret_hash(&secret)));
        let (admin, _) = file.issue(Role::Admin, "ops").unwrap();
        assert_ne!(viewer.id, admin.id);
        assert_eq!(file.load().unwrap(), vec![viewer.clone(), admin.clone()]);
        assert!(file.revoke(&viewer.id).unwrap());
        assert!(!file.revoke(&viewer.id).unwrap());
        assert_eq!(file.load().unwrap(), vec![admin]);
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);

        // The first admin token is made once, and only where there is no token file.
        assert_eq!(file.bootstrap().unwrap(), None);
        let fresh = tempfile::tempdir().unwrap();
        let file = TokenFile::in_dir(fresh.path());
        let secret = file.bootstrap().unwrap().unwrap();
        let written = std::fs::read_to_string(file.admin_token_path()).unwrap();
        assert_eq!(written.trim(), secret);
        assert_eq!(file.load().unwrap()[0].role, Role::Admin);
    }
}
