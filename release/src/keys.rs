//! Release keys: the operator's ed25519 signing key, the public keys a fleet trusts (one file
//! each in the fleet directory's `release-keys/`, apart from the TLS CA), and the signature
//! over a canonical manifest.
//!
//! Files are one line each: `fleet-release-key ed25519 <base64 public key> [comment]` and
//! `fleet-release-secret ed25519 <base64 seed>`. The signature (`release.sig`) is JSON naming
//! the key by id (the first 8 bytes of the public key's sha256, in hex).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::ReleaseError;
use crate::manifest::Sha256Digest;

const PUBLIC_TAG: &str = "fleet-release-key";
const SECRET_TAG: &str = "fleet-release-secret";
const ALGORITHM: &str = "ed25519";
/// Prefixed to the manifest before signing, so a release signature is never valid as
/// anything else signed with the same key.
const CONTEXT: &[u8] = b"fleet-release-manifest-v1\0";

/// A public key's id: 16 hex digits of its sha256.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    fn of(key: &VerifyingKey) -> Self {
        Self(Sha256Digest::of(key.as_bytes()).hex()[..16].to_string())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An operator's signing key.
pub struct ReleaseSigner {
    key: SigningKey,
}

impl ReleaseSigner {
    /// A new key from the operating system's randomness.
    pub fn generate() -> Result<Self, ReleaseError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| ReleaseError::Key(format!("no randomness: {e}")))?;
        Ok(Self {
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn key_id(&self) -> KeyId {
        KeyId::of(&self.key.verifying_key())
    }

    /// The public key's file contents.
    pub fn public_line(&self, comment: &str) -> String {
        let key = BASE64.encode(self.key.verifying_key().as_bytes());
        let comment = comment.replace(['\n', '\r'], " ");
        format!("{PUBLIC_TAG} {ALGORITHM} {key} {comment}\n")
    }

    /// Writes the secret key (mode 0600, refusing to overwrite) and the public key beside it
    /// (`<path>.pub`).
    pub fn write(&self, path: &Path, comment: &str) -> Result<PathBuf, ReleaseError> {
        let io = |e: std::io::Error| ReleaseError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(io)?;
        let seed = BASE64.encode(self.key.to_bytes());
        file.write_all(format!("{SECRET_TAG} {ALGORITHM} {seed}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io)?;
        let public = public_path(path);
        std::fs::write(&public, self.public_line(comment)).map_err(|e| ReleaseError::Io {
            path: public.clone(),
            source: e,
        })?;
        Ok(public)
    }

    /// Reads a secret key file.
    pub fn read(path: &Path) -> Result<Self, ReleaseError> {
        let text = std::fs::read_to_string(path).map_err(|e| ReleaseError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let bad = || {
            ReleaseError::Key(format!(
                "{}: not a release signing key (`{SECRET_TAG} {ALGORITHM} <base64>`)",
                path.display()
            ))
        };
        let mut words = text.split_whitespace();
        if words.next() != Some(SECRET_TAG) || words.next() != Some(ALGORITHM) {
            return Err(bad());
        }
        let seed: [u8; 32] = words
            .next()
            .and_then(|w| BASE64.decode(w).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)?;
        Ok(Self {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Signs a canonical manifest.
    pub fn sign(&self, manifest: &[u8]) -> SignatureFile {
        let signature = self.key.sign(&signed_message(manifest));
        SignatureFile {
            algorithm: ALGORITHM.into(),
            key: self.key_id(),
            signature: BASE64.encode(signature.to_bytes()),
        }
    }
}

/// Where a secret key's public half is written.
pub fn public_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

fn signed_message(manifest: &[u8]) -> Vec<u8> {
    [CONTEXT, manifest].concat()
}

/// `release.sig`: which key signed, and the signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    pub algorithm: String,
    pub key: KeyId,
    pub signature: String,
}

impl SignatureFile {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("serializes");
        bytes.push(b'\n');
        bytes
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ReleaseError> {
        serde_json::from_slice(bytes)
            .map_err(|e| ReleaseError::Signature(format!("release.sig is malformed: {e}")))
    }
}

/// The release keys a device accepts.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<KeyId, VerifyingKey>,
}

impl TrustedKeys {
    /// Every `*.pub` file in `dir`. A missing directory trusts nothing; an unreadable or
    /// malformed key file is an error (a device should not silently trust less than meant).
    pub fn load(dir: &Path) -> Result<Self, ReleaseError> {
        let mut trusted = Self::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(trusted),
            Err(e) => {
                return Err(ReleaseError::Io {
                    path: dir.to_path_buf(),
                    source: e,
                });
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "pub"))
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|e| ReleaseError::Io {
                path: path.clone(),
                source: e,
            })?;
            let key = parse_public(&text).ok_or_else(|| {
                ReleaseError::Key(format!(
                    "{}: not a release public key (`{PUBLIC_TAG} {ALGORITHM} <base64> [comment]`)",
                    path.display()
                ))
            })?;
            trusted.keys.insert(KeyId::of(&key), key);
        }
        Ok(trusted)
    }

    /// Trusts one more key, given as a public key file's contents.
    pub fn add_public_line(&mut self, line: &str) -> Result<KeyId, ReleaseError> {
        let key = parse_public(line)
            .ok_or_else(|| ReleaseError::Key("not a release public key line".into()))?;
        let id = KeyId::of(&key);
        self.keys.insert(id.clone(), key);
        Ok(id)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.keys()
    }

    /// Checks that `signature` is a trusted key's signature over `manifest`.
    pub fn verify(&self, manifest: &[u8], signature: &SignatureFile) -> Result<(), ReleaseError> {
        if signature.algorithm != ALGORITHM {
            return Err(ReleaseError::Signature(format!(
                "algorithm {:?} (only {ALGORITHM} is accepted)",
                signature.algorithm
            )));
        }
        let key = self
            .keys
            .get(&signature.key)
            .ok_or_else(|| ReleaseError::UntrustedKey {
                key: signature.key.clone(),
            })?;
        let bytes: [u8; 64] = BASE64
            .decode(&signature.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| ReleaseError::Signature("not a base64 ed25519 signature".into()))?;
        key.verify(
            &signed_message(manifest),
            &ed25519_dalek::Signature::from_bytes(&bytes),
        )
        .map_err(|_| {
            ReleaseError::Signature(format!(
                "does not verify with key {} (the manifest or the signature was changed)",
                signature.key
            ))
        })
    }
}

fn parse_public(text: &str) -> Option<VerifyingKey> {
    let mut words = text.split_whitespace();
    if words.next() != Some(PUBLIC_TAG) || words.next() != Some(ALGORITHM) {
        return None;
    }
    let bytes: [u8; 32] = BASE64.decode(words.next()?).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_unchanged_and_with_a_trusted_key() {
        let signer = ReleaseSigner::generate().unwrap();
        let other = ReleaseSigner::generate().unwrap();
        let mut trusted = TrustedKeys::default();
        trusted.add_public_line(&signer.public_line("ops")).unwrap();

        let manifest = b"{\"name\": \"late-risk\"}\n";
        let signature = signer.sign(manifest);
        trusted.verify(manifest, &signature).unwrap();

        let err = trusted
            .verify(b"{\"name\": \"late-risq\"}\n", &signature)
            .unwrap_err();
        assert!(matches!(err, ReleaseError::Signature(_)), "{err}");

        let err = trusted.verify(manifest, &other.sign(manifest)).unwrap_err();
        assert!(matches!(err, ReleaseError::UntrustedKey { .. }), "{err}");

        // A signature copied under another key's id does not verify either.
        let mut forged = other.sign(manifest);
        forged.key = signer.key_id();
        assert!(matches!(
            trusted.verify(manifest, &forged).unwrap_err(),
            ReleaseError::Signature(_)
        ));
    }

    #[test]
    fn keys_round_trip_through_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("release.key");
        let signer = ReleaseSigner::generate().unwrap();
        let public = signer.write(&secret, "ops@depot").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Never overwrites a key.
        assert!(signer.write(&secret, "again").is_err());

        let read = ReleaseSigner::read(&secret).unwrap();
        assert_eq!(read.key_id(), signer.key_id());

        let trust = dir.path().join("release-keys");
        std::fs::create_dir(&trust).unwrap();
        std::fs::copy(&public, trust.join("ops.pub")).unwrap();
        let trusted = TrustedKeys::load(&trust).unwrap();
        assert_eq!(trusted.ids().collect::<Vec<_>>(), vec![&signer.key_id()]);
        trusted.verify(b"m", &read.sign(b"m")).unwrap();

        std::fs::write(trust.join("bad.pub"), "ssh-ed25519 AAAA").unwrap();
        let err = TrustedKeys::load(&trust).unwrap_err().to_string();
        assert!(err.contains("bad.pub"), "{err}");
        assert!(
            TrustedKeys::load(&dir.path().join("none"))
                .unwrap()
                .is_empty()
        );
    }
}
