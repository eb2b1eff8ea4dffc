//! The first configuration in static mode: every file the config names must be readable
//! and good before the proxy starts, because there is no last good state to keep yet.
//! A problem here is a start-up error naming the file and the reason (the binary exits
//! 2); the same problem later, while polling, keeps the last good state and warns.
//!
//! The checks are the ones the poller makes (`model::parse_leaf`, the config's identity
//! pins, the intentions' validation), plus the leaf's validity period: a leaf that has
//! expired, or is not valid yet, would be refused by every peer.

use std::path::{Path, PathBuf};

use rustls::crypto::CryptoProvider;

use super::config::{IdentityFiles, StaticConfig};
use super::{check_leaf, parse_entries};
use crate::identity::ServiceId;
use crate::intentions::{Destination, Intentions, validate_config_entries};
use crate::model::{self, PemError};

/// A file that makes the first configuration impossible, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", file.display())]
pub struct StartupError {
    pub file: PathBuf,
    pub reason: String,
}

impl StartupError {
    fn new(file: &Path, reason: impl Into<String>) -> StartupError {
        StartupError {
            file: file.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Checks every file `config` names, as the first configuration needs them: the leaf
/// and its key (with `--workload-api` they are not named), the bundle, the intentions.
pub(super) fn check(config: &StaticConfig, provider: &CryptoProvider) -> Result<(), StartupError> {
    let me = match &config.files {
        Some(files) => Some(check_identity(config, files, provider)?),
        None => None,
    };
    if let Some(path) = &config.intentions {
        check_intentions(config, path, me.as_ref())?;
    }
    Ok(())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, StartupError> {
    std::fs::read(path).map_err(|e| StartupError::new(path, format!("cannot read the {what}: {e}")))
}

/// The leaf, its key and the bundle; returns the leaf's identity.
fn check_identity(
    config: &StaticConfig,
    files: &IdentityFiles,
    provider: &CryptoProvider,
) -> Result<ServiceId, StartupError> {
    let cert = read(&files.cert, "certificate")?;
    let key = read(&files.key, "private key")?;
    let bundle = read(&files.bundle, "trust bundle")?;
    model::parse_certificates(&cert)
        .map_err(|e| StartupError::new(&files.cert, format!("certificate: {e}")))?;
    let leaf = model::parse_leaf(&cert, &key, provider).map_err(|e| match e {
        PemError::NoKey | PemError::Pem(_) => {
            StartupError::new(&files.key, format!("private key: {e}"))
        }
        PemError::KeyMismatch(_) => StartupError::new(
            &files.key,
            format!(
                "private key does not match the certificate in {}",
                files.cert.display()
            ),
        ),
        other => StartupError::new(&files.cert, other.to_string()),
    })?;
    check_leaf(&config.pins, None, &leaf)
        .map_err(|e| StartupError::new(&files.cert, e.to_string()))?;
    if let Some(problem) = leaf.validity_problem(model::unix_seconds()) {
        return Err(StartupError::new(&files.cert, problem));
    }
    model::parse_certificates(&bundle)
        .map_err(|e| StartupError::new(&files.bundle, format!("trust bundle: {e}")))?;
    Ok(leaf.id)
}

/// The intentions file parses, validates, and applies to this service when it is known.
fn check_intentions(
    config: &StaticConfig,
    path: &Path,
    me: Option<&ServiceId>,
) -> Result<(), StartupError> {
    let bytes = read(path, "intentions")?;
    let entries = parse_entries(&bytes)
        .and_then(|entries| {
            validate_config_entries(&entries)
                .map(|()| entries)
                .map_err(|e| e.to_string())
        })
        .map_err(|e| StartupError::new(path, format!("intentions: {e}")))?;
    if let Some(me) = me {
        Intentions::from_config_entries(
            &entries,
            Destination::from(me),
            config.default_action.action,
        )
        .map_err(|e| StartupError::new(path, format!("intentions: {e}")))?;
    }
    Ok(())
}
