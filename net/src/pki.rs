//! The fleet PKI, as files in one directory:
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca-key.pem` | the fleet CA (keep the key off devices) |
//! | `server.pem`, `server-key.pem` | the aggregator's certificate (localhost, 127.0.0.1, ::1 and any names given) |
//! | `crl.pem` | revoked device certificates, signed by the CA |
//! | `devices/<id>.pem`, `devices/<id>-key.pem` | one device; the id is the certificate's common name |

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

#[derive(Debug, Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0} already exists (refusing to overwrite a fleet CA)")]
    Exists(PathBuf),
    #[error("invalid device id {0:?}: use 1-64 of A-Z a-z 0-9 . _ -")]
    BadId(String),
    #[error("no certificate for device {0}")]
    UnknownDevice(String),
    #[error("{path} does not parse: {message}")]
    Unparsable { path: PathBuf, message: String },
}

/// Paths of one device's credentials.
#[derive(Clone, Debug)]
pub struct DeviceFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The fleet PKI directory.
pub struct Pki {
    dir: PathBuf,
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.into(),
        source,
    })
}

fn write(path: &Path, contents: &str) -> Result<(), PkiError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|source| PkiError::Io {
            path: parent.into(),
            source,
        })?;
    }
    // Whole or not at all: the aggregator reads the revocation list while it is rewritten.
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|source| PkiError::Io {
            path: path.into(),
            source,
        })
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

/// Whether `id` is acceptable as a device id (it becomes a file name and a common name).
pub fn valid_device_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Pki {
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }
    pub fn crl(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }
    fn revoked_list(&self) -> PathBuf {
        self.dir.join("revoked.txt")
    }
    pub fn device(&self, id: &str) -> DeviceFiles {
        DeviceFiles {
            cert: self.dir.join("devices").join(format!("{id}.pem")),
            key: self.dir.join("devices").join(format!("{id}-key.pem")),
        }
    }

    /// Creates the fleet CA (valid 10 years), an empty CRL and a server certificate for
    /// loopback plus `server_names`.
    pub fn init(&self, server_names: &[String]) -> Result<(), PkiError> {
        if self.ca_cert().exists() {
            return Err(PkiError::Exists(self.ca_cert()));
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "fleet CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key)?;
        write(&self.ca_cert(), &cert.pem())?;
        write(&self.ca_key(), &key.serialize_pem())?;
        write(&self.revoked_list(), "")?;
        self.write_crl()?;
        self.issue_server(server_names)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key = KeyPair::from_pem(&read(&self.ca_key())?)?;
        Ok(Issuer::from_ca_cert_pem(&read(&self.ca_cert())?, key)?)
    }

    fn leaf(
        &self,
        common_name: &str,
        sans: Vec<String>,
        purpose: ExtendedKeyUsagePurpose,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![purpose];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    fn issue_server(&self, names: &[String]) -> Result<(), PkiError> {
        let mut sans = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        sans.extend(names.iter().cloned());
        let now = OffsetDateTime::now_utc();
        let (cert, key) = self.leaf(
            "fleet aggregator",
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
            now - Duration::hours(1),
            now + Duration::days(825),
        )?;
        write(&self.server_cert(), &cert)?;
        write(&self.server_key(), &key)
    }

    /// Issues a device certificate valid for `days` days from now.
    pub fn issue_device(&self, id: &str, days: i64) -> Result<DeviceFiles, PkiError> {
        let now = OffsetDateTime::now_utc();
        self.issue_device_between(id, now - Duration::hours(1), now + Duration::days(days))
    }

    /// Issues a device certificate valid between two instants (an expired one for tests).
    pub fn issue_device_between(
        &self,
        id: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<DeviceFiles, PkiError> {
        if !valid_device_id(id) {
            return Err(PkiError::BadId(id.into()));
        }
        let (cert, key) = self.leaf(
            id,
            vec![format!("{id}.devices.fleet")],
            ExtendedKeyUsagePurpose::ClientAuth,
            not_before,
            not_after,
        )?;
        let files = self.device(id);
        write(&files.cert, &cert)?;
        write(&files.key, &key)?;
        Ok(files)
    }

    /// Revokes a device's certificate: it is added to the CRL the aggregator loads.
    pub fn revoke(&self, id: &str) -> Result<(), PkiError> {
        let files = self.device(id);
        if !files.cert.exists() {
            return Err(PkiError::UnknownDevice(id.into()));
        }
        let pem = read(&files.cert)?;
        let unparsable = |message: String| PkiError::Unparsable {
            path: files.cert.clone(),
            message,
        };
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| unparsable(e.to_string()))?;
        let cert = parsed.parse_x509().map_err(|e| unparsable(e.to_string()))?;
        let serial: String = cert
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut list = read(&self.revoked_list()).unwrap_or_default();
        if !list.lines().any(|l| l == serial) {
            list.push_str(&serial);
            list.push('\n');
            write(&self.revoked_list(), &list)?;
        }
        self.write_crl()
    }

    /// The serial numbers the revocation list names (as in `raw_serial` of the certificates).
    pub fn revoked_serials(&self) -> Result<std::collections::HashSet<Vec<u8>>, PkiError> {
        let path = self.crl();
        let unparsable = |message: String| PkiError::Unparsable {
            path: path.clone(),
            message,
        };
        let pem = read(&path)?;
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| unparsable(e.to_string()))?;
        let (_, crl) =
            x509_parser::parse_x509_crl(&parsed.contents).map_err(|e| unparsable(e.to_string()))?;
        Ok(crl
            .iter_revoked_certificates()
            .map(|r| r.raw_serial().to_vec())
            .collect())
    }

    fn write_crl(&self) -> Result<(), PkiError> {
        let now = OffsetDateTime::now_utc();
        let revoked = read(&self.revoked_list())?
            .lines()
            .filter(|l| !l.is_empty())
            .map(|hex| {
                let bytes: Vec<u8> = (0..hex.len() / 2)
                    .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                    .collect();
                RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                }
            })
            .collect();
        let crl = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(30),
            crl_number: SerialNumber::from(now.unix_timestamp() as u64),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer()?)?;
        write(&self.crl(), &crl.pem()?)
    }
}
