//! A directory of PEM files for the examples and for trying ferrule by hand: a CA
//! (`ca.pem`, `ca-key.pem`) and one Consul-shaped leaf per service (`<svc>.pem`,
//! `<svc>-key.pem`), as `ferrule certs DIR` and `cargo xtask certs DIR` write it. An
//! existing CA in the directory is reused, so writing again renews the leaves and keeps
//! the trust bundle. Files are replaced whole (a temporary file, then a rename), so a
//! proxy watching the directory never loads half a PEM; keys are created 0600.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{CaError, DevCa, LEAF_TTL, LeafSpec};

/// What to write into a directory.
#[derive(Debug, Clone)]
pub struct CertsDir {
    pub dir: PathBuf,
    /// One leaf each; names become file names, so letters, digits, `-` and `_` only.
    pub services: Vec<String>,
    /// The leaves' lifetime.
    pub ttl: Duration,
    /// The cluster UUID of a new CA (trust domain `<UUID>.consul`); random if `None`.
    /// With an existing CA it must be that CA's.
    pub cluster_id: Option<String>,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct CertsReport {
    pub dir: PathBuf,
    /// The CA was already there and is kept.
    pub reused_ca: bool,
    pub trust_domain: String,
    /// Every file written, in order.
    pub written: Vec<PathBuf>,
    /// Each service and the SPIFFE ID of its leaf.
    pub leaves: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("service name {0:?}: use letters, digits, '-' and '_' only")]
    ServiceName(String),
    #[error("service name \"ca\" would overwrite ca.pem and ca-key.pem")]
    ReservedName,
    #[error(
        "cluster id {wanted} differs from the existing CA's {existing} in {dir}; remove ca.pem \
         and ca-key.pem to start a new CA"
    )]
    ClusterMismatch {
        wanted: String,
        existing: String,
        dir: PathBuf,
    },
    #[error("{present} exists but {missing} does not; restore it or remove both")]
    HalfCa { present: PathBuf, missing: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("the CA in {dir}: {source}")]
    LoadCa { dir: PathBuf, source: CaError },
    #[error(transparent)]
    Ca(#[from] CaError),
}

impl CertsDir {
    /// `web` and `api`, valid 72h, in a new cluster: what the README's examples use.
    pub fn new(dir: impl Into<PathBuf>) -> CertsDir {
        CertsDir {
            dir: dir.into(),
            services: vec!["web".to_owned(), "api".to_owned()],
            ttl: LEAF_TTL.unsigned_abs(),
            cluster_id: None,
        }
    }

    /// Writes (or renews) the CA and the leaves.
    pub fn write(&self) -> Result<CertsReport, CertsError> {
        for svc in &self.services {
            check_service_name(svc)?;
        }
        let mut report = CertsReport {
            dir: self.dir.clone(),
            reused_ca: false,
            trust_domain: String::new(),
            written: Vec::new(),
            leaves: Vec::new(),
        };
        let ttl = time::Duration::try_from(self.ttl)
            .map_err(|e| CaError::CaCert(format!("leaf TTL {:?}: {e}", self.ttl)))?;
        let ca = self.ca(&mut report)?;
        report.trust_domain = ca.trust_domain();
        for svc in &self.services {
            let mut spec = LeafSpec::service(svc);
            spec.ttl = ttl;
            let leaf = ca.issue(&spec)?;
            report.write(&self.dir.join(format!("{svc}.pem")), &leaf.cert_pem, false)?;
            report.write(
                &self.dir.join(format!("{svc}-key.pem")),
                &leaf.key_pem,
                true,
            )?;
            report.leaves.push((svc.clone(), leaf.service_uri));
        }
        Ok(report)
    }

    /// The CA in the directory, or a new one written there.
    fn ca(&self, report: &mut CertsReport) -> Result<DevCa, CertsError> {
        let cert = self.dir.join("ca.pem");
        let key = self.dir.join("ca-key.pem");
        match (cert.exists(), key.exists()) {
            (true, true) => {
                let ca = DevCa::from_pem(&read(&cert)?, &read(&key)?).map_err(|source| {
                    CertsError::LoadCa {
                        dir: self.dir.clone(),
                        source,
                    }
                })?;
                if let Some(wanted) = &self.cluster_id
                    && !wanted.eq_ignore_ascii_case(ca.cluster_id())
                {
                    return Err(CertsError::ClusterMismatch {
                        wanted: wanted.clone(),
                        existing: ca.cluster_id().to_owned(),
                        dir: self.dir.clone(),
                    });
                }
                report.reused_ca = true;
                Ok(ca)
            }
            (false, false) => {
                let ca = DevCa::generate(self.cluster_id.as_deref())?;
                fs::create_dir_all(&self.dir).map_err(|source| CertsError::Write {
                    path: self.dir.clone(),
                    source,
                })?;
                report.write(&cert, ca.cert_pem(), false)?;
                report.write(&key, ca.key_pem(), true)?;
                Ok(ca)
            }
            // Regenerating would silently replace half of a CA someone may still rely on.
            (true, false) => Err(CertsError::HalfCa {
                present: cert,
                missing: key,
            }),
            (false, true) => Err(CertsError::HalfCa {
                present: key,
                missing: cert,
            }),
        }
    }
}

impl CertsReport {
    fn write(&mut self, path: &Path, contents: &str, secret: bool) -> Result<(), CertsError> {
        write_replace(path, contents, secret).map_err(|source| CertsError::Write {
            path: path.to_owned(),
            source,
        })?;
        self.written.push(path.to_owned());
        Ok(())
    }
}

/// The lines `ferrule certs` and `cargo xtask certs` print.
impl fmt::Display for CertsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reused_ca {
            writeln!(
                f,
                "reusing the CA in {} (ca.pem, ca-key.pem): leaves are renewed, the trust \
                 bundle is unchanged",
                self.dir.display()
            )?;
        }
        for path in &self.written {
            writeln!(f, "wrote {}", path.display())?;
        }
        writeln!(f, "trust domain: {}", self.trust_domain)?;
        for (svc, uri) in &self.leaves {
            writeln!(f, "{svc}: {uri}")?;
        }
        Ok(())
    }
}

/// A leaf TTL flag: a Go duration (`72h`, `90m`) or a bare number of hours, within
/// Consul's range for `leaf_cert_ttl` (1h to 8760h).
pub fn leaf_ttl_flag(text: &str) -> Result<Duration, String> {
    let ttl = match text.parse::<u64>() {
        Ok(hours) => Duration::from_secs(hours.saturating_mul(3600)),
        Err(_) => ferrule_control::duration::flag(text).map_err(|e| e.to_string())?,
    };
    if !(3600..=8760 * 3600).contains(&ttl.as_secs()) {
        return Err(format!("{text:?}: Consul allows 1h to 8760h"));
    }
    Ok(ttl)
}

/// Names become file names next to `ca.pem`, so keep them to what Consul accepts in a
/// DNS label and keep `ca` for the CA itself.
fn check_service_name(name: &str) -> Result<(), CertsError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if name.is_empty() || !ok_chars {
        return Err(CertsError::ServiceName(name.to_owned()));
    }
    if name == "ca" {
        return Err(CertsError::ReservedName);
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, CertsError> {
    fs::read_to_string(path).map_err(|source| CertsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Through a temporary file and a rename; a secret is created 0600, so it is never
/// readable by others, even briefly.
fn write_replace(path: &Path, contents: &str, secret: bool) -> io::Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_ca_and_leaves_then_renews_the_leaves_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let first = CertsDir::new(&dir).write().unwrap();
        assert!(!first.reused_ca);
        let names: Vec<_> = first
            .written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "ca.pem",
                "ca-key.pem",
                "web.pem",
                "web-key.pem",
                "api.pem",
                "api-key.pem"
            ]
        );
        assert_eq!(first.leaves[0].0, "web");
        assert!(
            first.leaves[1]
                .1
                .ends_with(&format!("{}/ns/default/dc/dc1/svc/api", first.trust_domain))
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join("web-key.pem")).unwrap().permissions();
            assert_eq!(mode.mode() & 0o777, 0o600);
        }
        let ca = fs::read_to_string(dir.join("ca.pem")).unwrap();
        let web = fs::read_to_string(dir.join("web.pem")).unwrap();

        let again = CertsDir::new(&dir).write().unwrap();
        assert!(again.reused_ca);
        assert_eq!(again.trust_domain, first.trust_domain);
        assert_eq!(fs::read_to_string(dir.join("ca.pem")).unwrap(), ca);
        assert_ne!(fs::read_to_string(dir.join("web.pem")).unwrap(), web);
        assert!(again.to_string().starts_with("reusing the CA in "));
        assert!(
            again
                .to_string()
                .contains(&format!("trust domain: {}\n", first.trust_domain))
        );

        let mut other = CertsDir::new(&dir);
        other.cluster_id = Some("11111111-2222-4333-8444-555555555555".into());
        assert!(matches!(
            other.write(),
            Err(CertsError::ClusterMismatch { .. })
        ));
        fs::remove_file(dir.join("ca-key.pem")).unwrap();
        let err = CertsDir::new(&dir).write().unwrap_err();
        assert!(matches!(err, CertsError::HalfCa { .. }), "{err}");
    }

    #[test]
    fn refuses_bad_names_and_unwritable_directories() {
        let mut bad = CertsDir::new("unused");
        bad.services = vec!["../x".into()];
        assert!(matches!(bad.write(), Err(CertsError::ServiceName(_))));
        bad.services = vec!["ca".into()];
        assert!(matches!(bad.write(), Err(CertsError::ReservedName)));

        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a-file");
        fs::write(&file, "x").unwrap();
        let err = CertsDir::new(file.join("certs")).write().unwrap_err();
        match &err {
            CertsError::Write { path, .. } => assert_eq!(path, &file.join("certs")),
            other => panic!("{other}"),
        }
        assert!(err.to_string().starts_with("cannot write "), "{err}");
    }

    #[test]
    fn ttl_flags_are_go_durations_or_hours_within_consuls_range() {
        let hours = |h: u64| Duration::from_secs(h * 3600);
        assert_eq!(leaf_ttl_flag("72h"), Ok(hours(72)));
        assert_eq!(leaf_ttl_flag("24"), Ok(hours(24)));
        assert_eq!(leaf_ttl_flag("90m"), Ok(Duration::from_secs(90 * 60)));
        assert!(leaf_ttl_flag("30m").is_err());
        assert!(leaf_ttl_flag("8761h").is_err());
        assert!(leaf_ttl_flag("soon").is_err());
    }
}
