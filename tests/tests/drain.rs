//! Graceful shutdown: SIGTERM turns `/ready` to 503 and closes the listeners at once,
//! lets what is in flight finish within `--drain-timeout`, and exits 0.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferrule_tests::backends::{HttpRecorder, TcpEcho};
use ferrule_tests::clients::curl;
use ferrule_tests::mesh::{API, L7Pair, Mesh, WEB};
use ferrule_tests::sidecar::Sidecar;
use serde_json::json;
use tokio::net::TcpStream;

/// Polls until `/ready` says 503 `draining`.
async fn wait_draining(sidecar: &Sidecar) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Ok((503, body)) = sidecar.ready().await {
            assert_eq!(body.trim(), "draining");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} is not draining",
            sidecar.service()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls until nothing accepts on `addr` any more.
async fn wait_refused(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "{addr} still accepts");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_every_request_in_flight_finish_then_exits_0() {
    const IN_FLIGHT: usize = 20;
    let backend = HttpRecorder::start().await;
    let allow = json!({ "Kind": "service-intentions", "Name": API,
        "Sources": [ { "Name": WEB, "Action": "allow" } ] });
    let mut mesh = L7Pair::start("http", backend.addr(), &allow).await;
    let url = mesh.url("/sleep/2000");
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let url = url.clone();
        calls.spawn(async move { curl(&url, &[]).await });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend.count() < IN_FLIGHT {
        assert!(
            Instant::now() < deadline,
            "{} requests in flight",
            backend.count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let signalled = Instant::now();
    mesh.api.terminate();
    mesh.web.terminate();
    wait_draining(&mesh.api).await;
    wait_draining(&mesh.web).await;
    wait_refused(mesh.api.inbound_addr()).await;
    wait_refused(mesh.web.upstream_addr(API)).await;

    let mut completed = 0;
    while let Some(call) = calls.join_next().await {
        let got = call.expect("join").expect("run curl");
        assert_eq!(got.http_code, 200, "a request in flight was cut: {got:?}");
        completed += 1;
    }
    println!("drain: {completed} of {IN_FLIGHT} requests in flight completed");
    assert_eq!(completed, IN_FLIGHT);
    for sidecar in [&mut mesh.api, &mut mesh.web] {
        let code = sidecar
            .wait_exit(Duration::from_secs(10))
            .await
            .expect("exits");
        assert_eq!(code, Some(0), "{} exit code", sidecar.service());
    }
    println!(
        "drain: both sidecars exited {:?} after SIGTERM",
        signalled.elapsed()
    );
    assert_eq!(backend.count(), IN_FLIGHT, "no request was sent twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l4_connection_keeps_flowing_while_draining_until_the_drain_timeout() {
    let backend = TcpEcho::start().await;
    let mut mesh = Mesh::builder(backend.addr())
        .allow(WEB)
        .drain_timeout("2s")
        .start()
        .await;
    let mut conn = mesh.call_as(WEB).await.expect("connect as web");
    conn.round_trip(b"before")
        .await
        .expect("echo before the drain");

    let signalled = Instant::now();
    mesh.api.terminate();
    wait_draining(&mesh.api).await;
    wait_refused(mesh.api.inbound_addr()).await;
    conn.round_trip(b"while draining")
        .await
        .expect("the open connection still flows");

    let code = mesh
        .api
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits");
    let took = signalled.elapsed();
    assert_eq!(code, Some(0));
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM with a 2 s drain timeout"
    );
    conn.closed_within(Duration::from_secs(2))
        .await
        .expect("the connection is closed once the process is gone");
}
