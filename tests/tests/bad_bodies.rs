//! A malformed request body is the caller's mistake: an app that sends a bad chunk size
//! or breaks its body off gets 400 from its sidecar (when it is still there to read
//! it), counted as `ferrule_http_client_errors_total{reason="bad_body"}`, never "503
//! upstream connect error" with a warning that blames the other side. The same body
//! relayed through the mesh breaks on the peer's inbound side too, which does not blame
//! its app for it.

use std::net::SocketAddr;
use std::time::Duration;

use ferrule_tests::backends::HttpEcho;
use ferrule_tests::mesh::{API, L7Pair, WEB};
use ferrule_tests::wait::eventually;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const COUNTED_WITHIN: Duration = Duration::from_secs(10);

/// Sends `head` and `body` byte for byte, then (if `half_close`) shuts the write side;
/// the status of whatever answer comes, 0 for none.
async fn send(addr: SocketAddr, request: &[u8], half_close: bool) -> anyhow::Result<u16> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(request).await?;
    if half_close {
        tcp.shutdown().await?;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    Ok(text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

const BAD_CHUNK: &[u8] = b"POST /upload HTTP/1.1\r\nhost: api\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n";
const TRUNCATED: &[u8] =
    b"POST /upload HTTP/1.1\r\nhost: api\r\ncontent-length: 100\r\n\r\nonly ten b";

fn bad_bodies(metrics: &ferrule_tests::metrics::Metrics, direction: &str) -> f64 {
    metrics.get(
        "ferrule_http_client_errors_total",
        &[("direction", direction), ("reason", "bad_body")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_body_is_the_callers_error_on_both_sides() {
    // Reads a POST's body whole before answering, as most apps do.
    let app = HttpEcho::start().await;
    let allow = json!({ "Kind": "service-intentions", "Name": API,
        "Sources": [ { "Name": WEB, "Action": "allow" } ] });
    let mesh = L7Pair::start("http", app.addr(), &allow).await;
    let upstream = mesh.web.upstream_addr(API);
    assert_eq!(
        send(
            upstream,
            b"GET /ok HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n",
            false
        )
        .await
        .unwrap(),
        200
    );

    // A bad chunk size: the app is still there to hear that it was wrong.
    assert_eq!(send(upstream, BAD_CHUNK, false).await.unwrap(), 400);
    // A body cut short: counted the same, whether or not anyone reads the answer.
    let status = send(upstream, TRUNCATED, true).await.unwrap();
    assert!(matches!(status, 0 | 400), "{status}");

    let web = eventually(
        "web counts both as the app's mistakes",
        COUNTED_WITHIN,
        || async {
            let metrics = mesh.web.metrics().await?;
            anyhow::ensure!(
                bad_bodies(&metrics, "outbound") >= 2.0,
                "{}",
                metrics.show("ferrule_http_client_errors_total")
            );
            Ok(metrics)
        },
    )
    .await
    .expect("counted on web's outbound side");
    assert_eq!(
        web.get(
            "ferrule_http_requests_total",
            &[("direction", "outbound"), ("status", "5xx")]
        ),
        0.0,
        "a broken body answered as the upstream's failure"
    );
    // Relayed: the head and a first chunk go through to the app, then the body breaks.
    // web resets the stream to api, where the body breaks off too: api counts it as the
    // caller's mistake, not as its app's failure.
    let before = app.requests();
    let mut tcp = TcpStream::connect(upstream).await.unwrap();
    tcp.write_all(
        b"POST /relayed HTTP/1.1\r\nhost: api\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    eventually(
        "the app sees the relayed request",
        COUNTED_WITHIN,
        || async {
            anyhow::ensure!(app.requests() > before);
            Ok(())
        },
    )
    .await
    .expect("relayed");
    tcp.write_all(b"zz\r\nworld\r\n").await.unwrap();
    eventually("web counts the relayed break", COUNTED_WITHIN, || async {
        let metrics = mesh.web.metrics().await?;
        anyhow::ensure!(bad_bodies(&metrics, "outbound") >= 3.0);
        Ok(())
    })
    .await
    .expect("counted on web's outbound side");
    // api counts it too when its app was still reading the body as the reset came (an
    // HTTP/2 reset also cancels api's handler, so that is a race); what never happens
    // is the app being blamed.
    let api = mesh.api.metrics().await.expect("api's metrics");
    println!(
        "relayed break: api counted {} bad bodies inbound",
        bad_bodies(&api, "inbound")
    );
    assert_eq!(
        api.get(
            "ferrule_http_requests_total",
            &[("direction", "inbound"), ("status", "5xx")]
        ),
        0.0,
        "a broken body answered as the app's failure"
    );
    for (who, stderr) in [("web", mesh.web.stderr()), ("api", mesh.api.stderr())] {
        for blame in [
            "local app request failed",
            "no endpoint could be reached",
            "upstream connect error",
        ] {
            assert!(
                !stderr.contains(blame),
                "{who} blamed the other side: {stderr}"
            );
        }
    }

    // The mesh is none the worse for it.
    assert_eq!(
        send(
            upstream,
            b"GET /ok HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n",
            false
        )
        .await
        .unwrap(),
        200
    );
}
