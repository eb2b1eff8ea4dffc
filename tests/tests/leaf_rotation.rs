//! The leaf certificate and key files are replaced while the proxy runs: new handshakes
//! present the new certificate within 2 s, open connections carry on, and a certificate
//! whose key has not arrived yet is never served.

use std::time::Duration;

use ferrule_tests::backends::TcpEcho;
use ferrule_tests::clients::TlsCaller;
use ferrule_tests::mesh::{API, Mesh, WEB};
use ferrule_tests::metrics::Selector;
use ferrule_tests::names::CONTROL_UPDATES;
use ferrule_tests::sidecar::{CERT_FILE, KEY_FILE, Replace};
use ferrule_tests::wait::eventually;

/// The contract: a change applies within this long.
const APPLIES_WITHIN: Duration = Duration::from_secs(2);

const LEAF_ERRORS: Selector = Selector {
    name: CONTROL_UPDATES,
    labels: &[("resource", "leaf"), ("result", "error")],
};

async fn mesh_with_web_caller() -> (TcpEcho, Mesh, TlsCaller) {
    let backend = TcpEcho::start().await;
    let mesh = Mesh::builder(backend.addr()).allow(WEB).start().await;
    let web = TlsCaller::new(Some(&mesh.svid(WEB)));
    (backend, mesh, web)
}

/// The serial `api` presents to a new connection.
async fn serial_presented(mesh: &Mesh, caller: &TlsCaller) -> anyhow::Result<String> {
    caller.connect(mesh.api.inbound_addr()).await?.peer_serial()
}

/// Polls new handshakes until `api` presents `serial`, for at most 2 s.
async fn wait_for_serial(mesh: &Mesh, caller: &TlsCaller, serial: &str) {
    eventually(
        &format!("api presents serial {serial}"),
        APPLIES_WITHIN,
        || async {
            let presented = serial_presented(mesh, caller).await?;
            anyhow::ensure!(presented == serial, "api presents {presented}");
            Ok(())
        },
    )
    .await
    .expect("new handshakes present the new leaf within 2 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_leaf_is_presented_to_new_connections_and_open_ones_carry_on() {
    let (_backend, mesh, web) = mesh_with_web_caller().await;
    let mut open = web.connect(mesh.api.inbound_addr()).await.expect("connect");
    assert_eq!(
        open.peer_serial().expect("serial"),
        mesh.api_leaf.serial_hex
    );
    open.round_trip(b"before the rotation").await.expect("echo");

    let rotated = mesh.svid(API);
    assert_ne!(rotated.serial_hex, mesh.api_leaf.serial_hex);
    mesh.api
        .replace_file(KEY_FILE, &rotated.key_pem, Replace::AtomicRename);
    mesh.api
        .replace_file(CERT_FILE, &rotated.cert_pem, Replace::AtomicRename);
    wait_for_serial(&mesh, &web, &rotated.serial_hex).await;

    open.round_trip(b"after the rotation")
        .await
        .expect("a connection opened before the rotation keeps working");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_without_its_key_is_not_used_until_the_key_arrives() {
    let (backend, mesh, web) = mesh_with_web_caller().await;
    let old = &mesh.api_leaf.serial_hex;
    let next = mesh.svid(API);

    // The certificate lands first, whole; its key is not there yet.
    mesh.api
        .replace_file(CERT_FILE, &next.cert_pem, Replace::AtomicRename);
    mesh.api
        .wait_for_metric(LEAF_ERRORS, |v| v >= 1.0, Duration::from_secs(5))
        .await
        .expect("the sidecar reads the new certificate and refuses it without its key");
    for i in 1..=5 {
        let mut conn = web
            .connect(mesh.api.inbound_addr())
            .await
            .unwrap_or_else(|e| panic!("handshake {i} during the half-written rotation: {e:#}"));
        assert_eq!(&conn.peer_serial().expect("serial"), old, "handshake {i}");
        conn.round_trip(b"mid-rotation")
            .await
            .expect("echo mid-rotation");
    }
    assert_eq!(backend.accepted(), 5);

    mesh.api
        .replace_file(KEY_FILE, &next.key_pem, Replace::InPlace);
    wait_for_serial(&mesh, &web, &next.serial_hex).await;
}
