//! Plaintext HTTP, random bytes, a client that connects and says nothing, and one that
//! connects and hangs up: each is closed promptly and counted, and a good caller gets
//! through before, during and after them.

use std::time::Duration;

use ferrule_tests::backends::TcpEcho;
use ferrule_tests::clients::curl;
use ferrule_tests::mesh::{Mesh, WEB};
use ferrule_tests::metrics::Selector;
use ferrule_tests::names::INBOUND;
use ferrule_tests::wait::closed_within;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long past the handshake timeout a stalled client may stay open.
const SLACK: Duration = Duration::from_millis(1500);

const TLS_ERROR: Selector = Selector {
    name: INBOUND,
    labels: &[("result", "tls_error")],
};
const PROBE: Selector = Selector {
    name: INBOUND,
    labels: &[("result", "probe")],
};

/// 4 KiB that are not TLS: the first byte is no TLS record type.
fn random_bytes() -> Vec<u8> {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut bytes: Vec<u8> = (0..512)
        .flat_map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed.to_le_bytes()
        })
        .collect();
    bytes[0] = 0xa7;
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_tls_clients_are_closed_and_good_callers_still_get_through() {
    let backend = TcpEcho::start().await;
    let mesh = Mesh::builder(backend.addr())
        .allow(WEB)
        .handshake_timeout_ms(HANDSHAKE_TIMEOUT.as_millis() as u64)
        .start()
        .await;
    let inbound = mesh.api.inbound_addr();
    let within = Duration::from_secs(5);

    // A client that connects and stalls; a good caller gets through meanwhile.
    let silent_since = Instant::now();
    let mut silent = TcpStream::connect(inbound).await.expect("connect");
    let mut good = mesh
        .call_as(WEB)
        .await
        .expect("a good caller connects while one stalls");
    good.round_trip(b"during")
        .await
        .expect("echo while a client stalls");
    closed_within(&mut silent, HANDSHAKE_TIMEOUT + SLACK)
        .await
        .expect("a client that sends nothing is closed at the handshake timeout");
    let stalled_for = silent_since.elapsed();
    assert!(
        stalled_for >= HANDSHAKE_TIMEOUT / 2,
        "the silent client was closed after {stalled_for:?}, long before the handshake timeout"
    );
    mesh.api
        .wait_for_metric(TLS_ERROR, |v| v == 1.0, within)
        .await
        .expect("a stalled handshake counts as a tls_error");

    let started = Instant::now();
    let plaintext = curl(&format!("http://{inbound}/"), &[])
        .await
        .expect("run curl");
    assert!(
        !plaintext.is_ok(),
        "plain HTTP got an answer: {plaintext:?}"
    );
    assert!(
        started.elapsed() < within,
        "plain HTTP was not turned away within {within:?}: {plaintext:?}"
    );
    mesh.api
        .wait_for_metric(TLS_ERROR, |v| v == 2.0, within)
        .await
        .expect("plain HTTP counts as a tls_error");

    let mut garbage = TcpStream::connect(inbound).await.expect("connect");
    // The proxy may close before all of it is written; that is fine.
    let _ = garbage.write_all(&random_bytes()).await;
    closed_within(&mut garbage, within)
        .await
        .expect("random bytes get the connection closed");
    mesh.api
        .wait_for_metric(TLS_ERROR, |v| v == 3.0, within)
        .await
        .expect("random bytes count as a tls_error");

    // Connect and hang up without a byte, as a TCP health check does.
    drop(TcpStream::connect(inbound).await.expect("connect"));
    mesh.api
        .wait_for_metric(PROBE, |v| v == 1.0, within)
        .await
        .expect("a connection closed before any byte counts as a probe");

    good.round_trip(b"after")
        .await
        .expect("the earlier good connection still works");
    let mut later = mesh
        .call_as(WEB)
        .await
        .expect("a good caller connects afterwards");
    later
        .round_trip(b"afterwards")
        .await
        .expect("echo afterwards");
    assert_eq!(
        backend.accepted(),
        2,
        "only the good callers reached the app"
    );
}
