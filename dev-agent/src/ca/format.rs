//! How the CA writes and reads what it makes: PEM blocks, Consul's colon-hex serials and
//! key IDs, cluster UUIDs, and the serial counter.

use aws_lc_rs::{digest, rand};
use time::OffsetDateTime;

use super::CaError;

pub(super) const CERT_TAG: &str = "CERTIFICATE";
pub(super) const SEC1_TAG: &str = "EC PRIVATE KEY";
pub(super) const PKCS8_TAG: &str = "PRIVATE KEY";
pub(super) const PKCS1_TAG: &str = "RSA PRIVATE KEY";

/// Consul's `EncodeSerialNumber`: the minimal big-endian bytes, colon-separated.
pub fn serial_hex(serial: u64) -> String {
    let bytes = serial.to_be_bytes();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    colon_hex(&bytes[first..])
}

/// Consul numbers roots and leaves from one cluster-wide counter kept in Raft. The dev CA
/// keeps nothing on disk, so serials never fall behind the clock (microseconds since the
/// epoch): a new root for the same cluster, or a CA reloaded by a later run, then stays
/// above every serial handed out before. The values also stay below 2^53, so the roots'
/// numeric `SerialNumber` survives JSON readers that use doubles.
pub(super) fn clock_serial() -> u64 {
    let us = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000;
    u64::try_from(us).unwrap_or(1).max(1)
}

pub(super) fn serial_to_u64(raw: &[u8]) -> Option<u64> {
    let first = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let digits = &raw[first..];
    if digits.len() > 8 {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)))
}

pub(super) fn normalize_cluster_id(id: &str) -> Result<String, CaError> {
    let lower = id.to_ascii_lowercase();
    let shape_ok = lower.len() == 36
        && lower.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if shape_ok {
        Ok(lower)
    } else {
        Err(CaError::ClusterId(id.to_owned()))
    }
}

pub(super) fn random_uuid() -> Result<String, CaError> {
    let mut b = random_bytes::<16>()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(format!(
        "{}-{}-{}-{}-{}",
        hex(&b[0..4]),
        hex(&b[4..6]),
        hex(&b[6..8]),
        hex(&b[8..10]),
        hex(&b[10..16])
    ))
}

pub(super) fn random_bytes<const N: usize>() -> Result<[u8; N], CaError> {
    let mut buf = [0u8; N];
    rand::fill(&mut buf).map_err(|_| CaError::Crypto("the system random number generator"))?;
    Ok(buf)
}

pub(super) fn sha256(data: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, data).as_ref().to_vec()
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub(super) fn encode_pem(tag: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(tag, der), config)
}

pub(super) fn decode_pem(
    text: &str,
    tags: &[&str],
    what: &'static str,
) -> Result<Vec<u8>, CaError> {
    let block = pem::parse(text).map_err(|e| CaError::Pem {
        what,
        reason: e.to_string(),
    })?;
    if !tags.contains(&block.tag()) {
        return Err(CaError::Pem {
            what,
            reason: format!("unexpected PEM block {:?}", block.tag()),
        });
    }
    Ok(block.into_contents())
}
