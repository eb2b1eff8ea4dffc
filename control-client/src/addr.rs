//! Socket addresses as people type them: `127.0.0.1:8080`, `[::1]:8080`, and the two
//! short forms Consul's and Go's tools accept, `localhost:8080` and `:8080`. Every
//! address flag and every address in the config file goes through [`parse`], so an
//! address means the same thing wherever it is typed.
//!
//! Both short forms mean the loopback address `127.0.0.1`: a sidecar's listeners and its
//! admin endpoint belong to the host's own processes, so nothing is exposed on another
//! interface unless an address says so. `localhost` is not looked up in DNS or
//! `/etc/hosts`, so what is bound cannot change with the resolver's configuration.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Deserializer};

/// Why a text is not a socket address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address like 127.0.0.1:8080, localhost:8080 or :8080")]
pub struct AddrError(String);

/// Parses `IP:PORT`, `[IPv6]:PORT`, `localhost:PORT` or `:PORT` (the last two are
/// `127.0.0.1:PORT`).
pub fn parse(text: &str) -> Result<SocketAddr, AddrError> {
    let bad = || AddrError(text.to_owned());
    let trimmed = text.trim();
    if let Ok(addr) = trimmed.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let port = match trimmed.rsplit_once(':') {
        Some((host, port)) if host.is_empty() || host.eq_ignore_ascii_case("localhost") => port,
        _ => return Err(bad()),
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
}

/// [`parse`] for serde: a config file's address.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// [`parse`] for serde, for an optional address.
pub fn deserialize_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|text| parse(&text).map_err(serde::de::Error::custom))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_people_type() {
        let cases = [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("127.0.0.2:1", "127.0.0.2:1"),
            ("[::1]:8080", "[::1]:8080"),
            ("localhost:8080", "127.0.0.1:8080"),
            ("LOCALHOST:0", "127.0.0.1:0"),
            (":8080", "127.0.0.1:8080"),
            (" :9 ", "127.0.0.1:9"),
        ];
        for (text, want) in cases {
            assert_eq!(
                parse(text).map(|a| a.to_string()),
                Ok(want.to_owned()),
                "{text}"
            );
        }
    }

    #[test]
    fn what_is_not_an_address() {
        for text in [
            "",
            ":",
            "8080",
            "localhost",
            "localhost:",
            ":http",
            ":+80",
            ":65536",
            "example.com:80",
            "127.0.0.1",
            "localhost:80:80",
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.to_string().contains(&format!("{text:?}")), "{e}");
        }
    }
}
