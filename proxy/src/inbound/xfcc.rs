//! The `x-forwarded-client-cert` value the app behind an L7 listener receives: the
//! same fields, in the same order and encoding, as Consul's Envoy sets for an HTTP
//! service (`forward_client_cert_details: APPEND_FORWARD` with `set_current_client_cert_details`
//! cert, chain, subject, uri and dns).
//!
//! `By=<our URI SAN>;Hash=<hex SHA-256 of the caller's leaf>;Cert="<leaf>";Chain="<chain>";
//! Subject="<subject>";URI=<caller URI SAN>[;DNS=<each DNS SAN>]`, the key/value pairs
//! joined with `;`. Cert and Chain are PEM (64-character lines, `\n` endings) with
//! newline, space, `+`, `/` and `=` percent-encoded; Chain is every certificate the
//! caller sent, its leaf first. Subject is the RFC 2253 form of the leaf's subject
//! (most specific attribute first), quoted, and present even when empty, as a Consul
//! leaf's is; so is `URI=`. The value is computed once per connection from what the
//! handshake proved, and replaces any the caller sent. See
//! `docs/consul-semantics.md#on-the-wire`.

use std::fmt::Write as _;

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

/// The header value for a caller that presented `chain` (leaf first) to us, `our_uri`.
pub(super) fn value(our_uri: &str, chain: &[CertificateDer<'_>]) -> String {
    let Some(leaf) = chain.first() else {
        return String::new();
    };
    let mut fields = Vec::new();
    if !our_uri.is_empty() {
        fields.push(format!("By={our_uri}"));
    }
    fields.push(format!("Hash={}", sha256_hex(leaf)));
    fields.push(format!("Cert=\"{}\"", url_encoded_pem(leaf)));
    let pems: String = chain.iter().map(|c| url_encoded_pem(c)).collect();
    fields.push(format!("Chain=\"{pems}\""));
    let parsed = X509Certificate::from_der(leaf).ok().map(|(_, cert)| cert);
    let subject = parsed
        .as_ref()
        .map(|c| rfc2253(c.subject()))
        .unwrap_or_default();
    fields.push(format!("Subject=\"{subject}\""));
    let (uris, dns) = parsed.as_ref().map(sans).unwrap_or_default();
    if uris.is_empty() {
        fields.push("URI=".to_owned());
    }
    fields.extend(uris.iter().map(|uri| format!("URI={uri}")));
    fields.extend(dns.iter().map(|name| format!("DNS={name}")));
    fields.join(";")
}

fn sha256_hex(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest.as_ref().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// PEM as OpenSSL writes it, then percent-encoded the way Envoy does: only the
/// characters PEM can hold that are not URL-safe.
fn url_encoded_pem(der: &[u8]) -> String {
    let pem = pem::Pem::new("CERTIFICATE", der);
    let text = pem::encode_config(
        &pem,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("%0A"),
            ' ' => out.push_str("%20"),
            '+' => out.push_str("%2B"),
            '/' => out.push_str("%2F"),
            '=' => out.push_str("%3D"),
            c => out.push(c),
        }
    }
    out
}

/// The leaf's URI and DNS SANs, in certificate order.
fn sans(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<String>) {
    let (mut uris, mut dns) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => uris.push(escape_control(uri)),
                GeneralName::DNSName(name) => dns.push(escape_control(name)),
                _ => {}
            }
        }
    }
    (uris, dns)
}

/// A SAN is IA5 (ASCII) but a peer may put anything there; control bytes would make
/// the header invalid, so they are written as `\XX`.
fn escape_control(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_control() || !c.is_ascii() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "\\{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// RFC 2253 as OpenSSL prints it with `XN_FLAG_RFC2253`: attributes in reverse order,
/// `,` between RDNs and `+` inside one, OpenSSL's short names, special characters
/// backslash-escaped and bytes outside printable ASCII as `\XX`. An attribute with no
/// short name, or a value that is not a string, is written as its OID and `#` with the
/// hex of its bytes.
fn rfc2253(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            let mut attrs: Vec<String> = rdn.iter().map(attribute).collect();
            attrs.reverse();
            attrs.join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// One `type=value` of a distinguished name.
fn attribute(atv: &AttributeTypeAndValue<'_>) -> String {
    let oid = atv.attr_type().to_id_string();
    match (short_name(&oid), atv.as_str().ok()) {
        (Some(sn), Some(v)) => format!("{sn}={}", escape_value(v)),
        (sn, _) => {
            let hex = atv
                .attr_value()
                .data
                .iter()
                .fold(String::new(), |mut s, b| {
                    let _ = write!(s, "{b:02x}");
                    s
                });
            format!("{}=#{hex}", sn.unwrap_or(&oid))
        }
    }
}

fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "title",
        "2.5.4.17" => "postalCode",
        "2.5.4.42" => "GN",
        "2.5.4.43" => "initials",
        "2.5.4.46" => "dnQualifier",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return None,
    })
}

/// RFC 2253 escaping of one attribute value.
fn escape_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c if c.is_ascii_control() || !c.is_ascii() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\{b:02X}");
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn cert(subject: &[(DnType, &str)], sans: Vec<SanType>) -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for (ty, v) in subject {
            dn.push(ty.clone(), *v);
        }
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("self-signed").der().clone()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().expect("ia5"))
    }

    fn encoded(der: &[u8]) -> String {
        // Independent of `url_encoded_pem`: base64 via the pem crate's default (CRLF)
        // encoder, line endings normalized, then the five replacements.
        let text = pem::encode(&pem::Pem::new("CERTIFICATE", der)).replace("\r\n", "\n");
        assert!(text.lines().all(|l| l.len() <= 64));
        text.replace('\n', "%0A")
            .replace(' ', "%20")
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D")
    }

    #[test]
    fn a_consul_shaped_leaf_gets_every_field_envoy_sets() {
        // A Consul leaf: empty subject, one URI SAN, no DNS SAN.
        let caller = "spiffe://td.consul/ns/default/dc/dc1/svc/web";
        let leaf = cert(&[], vec![uri(caller)]);
        let intermediate = cert(&[], vec![uri("spiffe://td.consul")]);
        let by = "spiffe://td.consul/ns/default/dc/dc1/svc/api";
        let got = value(by, &[leaf.clone(), intermediate.clone()]);
        let want = format!(
            "By={by};Hash={};Cert=\"{}\";Chain=\"{}{}\";Subject=\"\";URI={caller}",
            sha256_hex(&leaf),
            encoded(&leaf),
            encoded(&leaf),
            encoded(&intermediate),
        );
        assert_eq!(got, want);
        assert!(
            got.contains("Cert=\"-----BEGIN%20CERTIFICATE-----%0AMII"),
            "{got}"
        );
        assert!(
            got.contains("-----END%20CERTIFICATE-----%0A\";Subject"),
            "{got}"
        );
        assert_eq!(sha256_hex(b"abc").len(), 64);
        assert!(http::HeaderValue::from_str(&got).is_ok());
    }

    #[test]
    fn subject_dns_and_uri_are_as_envoy_writes_them() {
        let leaf = cert(
            &[
                (DnType::CountryName, "US"),
                (DnType::OrganizationName, "Acme, Inc."),
                (DnType::CommonName, " web+1 "),
            ],
            vec![
                uri("spiffe://td/ns/default/dc/dc1/svc/web"),
                SanType::DnsName("web.example".try_into().expect("ia5")),
                SanType::DnsName("web2.example".try_into().expect("ia5")),
            ],
        );
        let got = value("", std::slice::from_ref(&leaf));
        assert!(!got.starts_with("By="), "no local URI, no By: {got}");
        let tail = got.split_once(";Subject=").expect("a subject").1;
        assert_eq!(
            tail,
            "\"CN=\\ web\\+1\\ ,O=Acme\\, Inc.,C=US\";URI=spiffe://td/ns/default/dc/dc1/svc/web;DNS=web.example;DNS=web2.example"
        );
    }

    #[test]
    fn no_uri_san_is_an_empty_uri_field_and_odd_bytes_are_escaped() {
        let leaf = cert(&[(DnType::CommonName, "#é\u{1}")], vec![]);
        let got = value("spiffe://td/x", std::slice::from_ref(&leaf));
        assert!(
            got.ends_with(";Subject=\"CN=\\#\\C3\\A9\\01\";URI="),
            "{got}"
        );
        assert!(http::HeaderValue::from_str(&got).is_ok());
        assert_eq!(value("spiffe://td/x", &[]), "");
    }
}
