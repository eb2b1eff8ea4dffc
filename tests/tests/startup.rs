//! Start-up: a bad config file stops the process with exit code 2 and a message naming
//! file, line and key; `/ready` is 503 (saying what is missing) until the identity is
//! complete, and turns 200 once the missing file appears.

use std::time::Duration;

use ferrule_tests::DevCa;
use ferrule_tests::backends::TcpEcho;
use ferrule_tests::clients::TlsCaller;
use ferrule_tests::mesh::{API, WEB, intentions_json, svid};
use ferrule_tests::sidecar::{KEY_FILE, Replace, Sidecar, SidecarConfig, ferrule_proxy_command};
use ferrule_tests::wait::{eventually, free_port};

/// Config files with one wrong-typed key each: (text, line, key as reported).
const BAD_CONFIGS: &[(&str, usize, &str)] = &[
    (
        r#"[identity]
cert = "cert.pem"
key = "key.pem"
bundle = "bundle.pem"

[inbound]
bind = "127.0.0.1:1"
local_app = "127.0.0.1:2"
handshake_timeout_ms = "soon"
"#,
        9,
        "inbound.handshake_timeout_ms",
    ),
    (
        r#"[identity]
cert = "cert.pem"
key = "key.pem"
bundle = "bundle.pem"

[[upstreams]]
name = "api"
bind = 9191
endpoints = ["127.0.0.1:3"]
"#,
        8,
        "upstreams[0].bind",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_exits_2_naming_file_line_and_key() {
    for (text, line, key) in BAD_CONFIGS {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = dir.path().join("ferrule.toml");
        std::fs::write(&config, text).expect("write the config");

        let mut command =
            tokio::process::Command::from(ferrule_proxy_command(&config, free_port()));
        command.kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(20), command.output())
            .await
            .expect("ferrule exits on a bad config instead of running")
            .expect("run ferrule");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{key}: exit status; stderr:\n{stderr}"
        );
        let location = format!("{}:{line}:", config.display());
        assert!(
            stderr.contains(&location),
            "{key}: stderr does not name {location}\n{stderr}"
        );
        assert!(
            stderr.contains(key),
            "{key}: stderr does not name the key\n{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_until_the_missing_key_file_appears() {
    let backend = TcpEcho::start().await;
    let ca = DevCa::generate(None).expect("generate a CA");
    let leaf = svid(&ca, API);
    let config = SidecarConfig::new(&ca, &leaf)
        .inbound(backend.addr(), intentions_json(API, &[(WEB, "allow")]))
        .without_key_file();
    let api = Sidecar::spawn(config);

    let (code, body) = eventually(
        "the admin listener answers /ready",
        Duration::from_secs(20),
        || api.ready(),
    )
    .await
    .expect("the admin listener starts even without a key");
    assert_eq!(code, 503, "/ready without a key: {body}");
    assert!(
        body.contains("leaf certificate"),
        "/ready does not say what is missing: {body}"
    );

    api.replace_file(KEY_FILE, &leaf.key_pem, Replace::InPlace);
    eventually("/ready is 200", Duration::from_secs(2), || async {
        let (code, body) = api.ready().await?;
        anyhow::ensure!(code == 200, "/ready is {code}: {body}");
        Ok(())
    })
    .await
    .expect("/ready turns 200 within 2 s of the key appearing");

    let mut web = TlsCaller::new(Some(&svid(&ca, WEB)))
        .connect(api.inbound_addr())
        .await
        .expect("a caller connects once the identity is complete");
    assert_eq!(web.peer_serial().expect("serial"), leaf.serial_hex);
    web.round_trip(b"ready")
        .await
        .expect("echo through the ready sidecar");
}
