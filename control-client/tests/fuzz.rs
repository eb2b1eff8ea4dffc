//! Fuzzing on stable Rust, with proptest: every parser that reads what a peer, a file
//! or the agent sends is fed arbitrary and mutated input. None may panic; the ones with
//! a well-formed inverse must round-trip; none may accept what is not valid.
//!
//! CI runs a short pass (proptest's default case count, or `PROPTEST_CASES`). A longer
//! run by hand: `PROPTEST_CASES=200000 cargo test -p ferrule-control --test fuzz
//! --release`. Failing inputs are kept by proptest under `tests/fuzz.proptest-regressions`
//! and replayed first on every run; commit that file with the fix.

use std::io::Write as _;
use std::sync::{Arc, OnceLock};

use ferrule_control::api;
use ferrule_control::file::StaticConfig;
use ferrule_control::identity::ServiceId;
use ferrule_control::intentions::{Action, Destination, Intentions, validate_config_entries};
use ferrule_control::model::{parse_bundle, parse_certificates, parse_leaf};
use ferrule_dev::ca::{DevCa, LeafSpec};
use proptest::prelude::*;
use rustls::crypto::CryptoProvider;

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// One CA and one leaf, made once: the seeds that mutations start from.
struct Seeds {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    trust_domain: String,
}

fn seeds() -> &'static Seeds {
    static SEEDS: OnceLock<Seeds> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let ca = DevCa::generate(None).expect("generate a CA");
        let leaf = ca.issue(&LeafSpec::service("web")).expect("issue a leaf");
        Seeds {
            ca_pem: ca.cert_pem().to_owned(),
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
            trust_domain: ca.trust_domain(),
        }
    })
}

/// `seed` with a few bytes overwritten, inserted or cut: mostly still shaped like the
/// input, which reaches deeper than random bytes do.
fn mutated(seed: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    let len = seed.len().max(1);
    prop::collection::vec((0..len, any::<u8>(), 0u8..3), 1..8).prop_map(move |edits| {
        let mut bytes = seed.to_vec();
        for (at, byte, kind) in edits {
            let at = at.min(bytes.len());
            match kind {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ => {
                    bytes.truncate(at.max(1));
                }
            }
        }
        bytes
    })
}

/// Arbitrary JSON, up to a few levels deep, with Consul-looking keys now and then.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let key = prop_oneof![
        Just("Name".to_owned()),
        Just("Kind".to_owned()),
        Just("Sources".to_owned()),
        Just("Action".to_owned()),
        Just("Permissions".to_owned()),
        Just("HTTP".to_owned()),
        Just("PathRegex".to_owned()),
        Just("Header".to_owned()),
        Just("Service".to_owned()),
        Just("Proxy".to_owned()),
        Just("Upstreams".to_owned()),
        Just("Roots".to_owned()),
        Just("CertPEM".to_owned()),
        Just("Port".to_owned()),
        "[A-Za-z]{1,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        Just(Value::String("allow".into())),
        Just(Value::String("*".into())),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A `service-intentions` entry shaped like a real one, with arbitrary names, actions,
/// permissions and matchers (regexes included): most validate, many do not.
fn intentions_entry() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    let name = prop_oneof![
        Just("api".to_owned()),
        Just("web".to_owned()),
        Just("*".to_owned()),
        "[a-z*]{0,4}",
    ];
    let header = ("[A-Za-z-]{0,8}", 0u8..6, ".{0,6}", any::<bool>()).prop_map(
        |(name, kind, value, invert)| {
            let mut h = json!({"Name": name, "Invert": invert});
            let key = ["Present", "Exact", "Prefix", "Suffix", "Regex", "Contains"][kind as usize];
            h[key] = if key == "Present" {
                json!(true)
            } else {
                json!(value)
            };
            h
        },
    );
    let http = (
        proptest::option::of("/?.{0,8}"),
        proptest::option::of("/?.{0,8}"),
        proptest::option::of(".{0,10}"),
        prop::collection::vec("[A-Za-z]{0,7}", 0..3),
        prop::collection::vec(header, 0..3),
    )
        .prop_map(|(exact, prefix, regex, methods, headers)| {
            let mut m = json!({"Methods": methods, "Header": headers});
            if let Some(p) = exact {
                m["PathExact"] = json!(p);
            }
            if let Some(p) = prefix {
                m["PathPrefix"] = json!(p);
            }
            if let Some(p) = regex {
                m["PathRegex"] = json!(p);
            }
            m
        });
    let permission = (
        prop_oneof![Just("allow"), Just("deny"), Just("maybe")],
        http,
    )
        .prop_map(|(action, http)| json!({"Action": action, "HTTP": http}));
    let source = (
        name.clone(),
        prop_oneof![
            Just(Some("allow")),
            Just(Some("deny")),
            Just(None),
            Just(Some(""))
        ],
        prop::collection::vec(permission, 0..3),
        proptest::option::of(0u32..10),
    )
        .prop_map(|(name, action, permissions, precedence)| {
            let mut s = json!({"Name": name});
            if let Some(a) = action {
                s["Action"] = json!(a);
            }
            if !permissions.is_empty() {
                s["Permissions"] = json!(permissions);
            }
            if let Some(p) = precedence {
                s["Precedence"] = json!(p);
            }
            s
        });
    (name, prop::collection::vec(source, 0..4)).prop_map(
        |(name, sources)| json!({"Kind": "service-intentions", "Name": name, "Sources": sources}),
    )
}

/// Decodes `bytes` as `T` the way the client does; only a panic fails.
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) {
    let _ = serde_json::from_slice::<T>(bytes);
}

fn decode_every_consul_type(bytes: &[u8]) {
    decode::<api::agent::AgentService>(bytes);
    decode::<api::agent::AgentServiceRegistration>(bytes);
    decode::<api::agent_self::AgentSelf>(bytes);
    decode::<api::ca::IndexedCARoots>(bytes);
    decode::<api::ca::IssuedCert>(bytes);
    decode::<Vec<api::health::ServiceEntry>>(bytes);
    decode::<Vec<api::health::HealthCheck>>(bytes);
    decode::<api::intentions::ServiceIntentionsEntry>(bytes);
    decode::<Vec<api::intentions::Intention>>(bytes);
    decode::<std::collections::HashMap<String, Vec<api::intentions::Intention>>>(bytes);
}

proptest! {

    #[test]
    fn spiffe_id_parsing_never_panics(text in ".{0,80}") {
        let _ = ServiceId::parse(&text);
    }

    #[test]
    fn spiffe_ids_shaped_like_consuls_round_trip(
        td in "[a-z0-9]{1,8}(\\.[a-z0-9]{1,8}){0,2}",
        ns in "[a-z0-9_-]{1,10}",
        dc in "[a-z0-9_-]{1,10}",
        svc in "[a-z0-9_.-]{1,12}",
        partition in proptest::option::of("[a-z0-9-]{1,8}"),
    ) {
        let uri = match &partition {
            Some(ap) => format!("spiffe://{td}/ap/{ap}/ns/{ns}/dc/{dc}/svc/{svc}"),
            None => format!("spiffe://{td}/ns/{ns}/dc/{dc}/svc/{svc}"),
        };
        // "." and ".." are not valid path segments of a SPIFFE ID.
        prop_assume!(svc != "." && svc != "..");
        let id = ServiceId::parse(&uri).expect("a well-formed Consul service ID parses");
        prop_assert_eq!(id.to_uri(), uri.clone());
        prop_assert_eq!(ServiceId::parse(&id.to_uri()), Ok(id));
    }

    #[test]
    fn pem_parsing_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_certificates(&bytes);
        let _ = parse_bundle(&bytes, "example.consul");
        let _ = parse_leaf(&bytes, &bytes, &provider());
    }

    #[test]
    fn mutated_certificates_and_keys_are_refused_or_parse_cleanly(
        cert in mutated(seeds().cert_pem.as_bytes()),
        key in mutated(seeds().key_pem.as_bytes()),
        bundle in mutated(seeds().ca_pem.as_bytes()),
    ) {
        let _ = parse_bundle(&bundle, &seeds().trust_domain);
        if let Ok(leaf) = parse_leaf(&cert, &key, &provider()) {
            // Whatever parsed is a Consul service identity of some trust domain.
            prop_assert!(!leaf.id.service.is_empty());
        }
    }

    #[test]
    fn every_consul_json_type_survives_arbitrary_json(value in json_value()) {
        decode_every_consul_type(value.to_string().as_bytes());
    }

    #[test]
    fn every_consul_json_type_survives_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        decode_every_consul_type(&bytes);
    }

    #[test]
    fn intention_entries_validate_or_are_refused_without_panicking(
        entries in prop::collection::vec(json_value(), 0..4),
    ) {
        let parsed: Vec<api::intentions::ServiceIntentionsEntry> = entries
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect();
        if validate_config_entries(&parsed).is_ok() {
            let built = Intentions::from_config_entries(
                &parsed,
                Destination::new("default", "default", "api"),
                Action::Deny,
            );
            prop_assert!(built.is_ok(), "validated entries must build: {:?}", built.err());
        }
    }

    #[test]
    fn realistic_intention_entries_validate_and_build_or_are_refused(
        entries in prop::collection::vec(intentions_entry(), 1..4),
    ) {
        let parsed: Vec<api::intentions::ServiceIntentionsEntry> = entries
            .into_iter()
            .map(|v| serde_json::from_value(v).expect("the generator writes the wire shape"))
            .collect();
        let valid = validate_config_entries(&parsed).is_ok();
        let built = Intentions::from_config_entries(
            &parsed,
            Destination::new("default", "default", "api"),
            Action::Deny,
        );
        prop_assert_eq!(valid, built.is_ok(), "validation and building disagree: {:?}", built.err());
    }

    #[test]
    fn the_static_config_parser_never_panics(text in mutated(STATIC_CONFIG.as_bytes())) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("ferrule.toml");
        let mut file = std::fs::File::create(&path).expect("create the config");
        file.write_all(&text).expect("write the config");
        drop(file);
        if let Err(e) = StaticConfig::load(&path) {
            // Errors name the file, so a user knows which one is wrong.
            prop_assert!(e.to_string().contains("ferrule.toml"), "{e}");
        }
    }
}

const STATIC_CONFIG: &str = r#"admin_addr = "127.0.0.1:19100"
default_action = "deny"
[identity]
cert = "api.pem"
key = "api-key.pem"
bundle = "ca.pem"
[inbound]
bind = "127.0.0.1:21000"
local_app = "127.0.0.1:8080"
protocol = "tcp"
intentions = "intentions.json"
[[upstreams]]
name = "db"
bind = "127.0.0.1:9191"
endpoints = ["127.0.0.1:21001"]
"#;
