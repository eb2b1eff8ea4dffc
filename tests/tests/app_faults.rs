//! The local app goes away and comes back: while it is down, callers are closed (the
//! fault forces that) and counted; once it listens again, the very next connections get
//! through. Nothing else is lost, and the sidecar never needs a restart.

use std::time::Duration;

use ferrule_tests::backends::TcpEcho;
use ferrule_tests::mesh::{Mesh, WEB};
use ferrule_tests::wait::eventually;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_app_refusing_and_coming_back() {
    let backend = TcpEcho::start().await;
    let app = backend.addr();
    let mesh = Mesh::builder(app).allow(WEB).start().await;
    let mut open = mesh.call_as(WEB).await.expect("connect as web");
    open.round_trip(b"before").await.expect("the app answers");

    drop(backend);
    // The app is gone: a new caller is let in by the mesh but cannot be forwarded.
    eventually(
        "callers are closed while the app is down",
        Duration::from_secs(5),
        || async {
            let mut conn = mesh.call_as(WEB).await?;
            anyhow::ensure!(
                conn.round_trip(b"anyone?").await.is_err(),
                "got an echo with the app down"
            );
            Ok(())
        },
    )
    .await
    .expect("a caller is closed when the app refuses");

    let backend = TcpEcho::start_on(app)
        .await
        .expect("the app listens on its port again");
    let back = Instant::now();
    let first_ok = eventually(
        "calls get through again",
        Duration::from_secs(2),
        || async {
            let mut conn = mesh.call_as(WEB).await?;
            conn.round_trip(b"back?").await?;
            Ok(back.elapsed())
        },
    )
    .await
    .expect("the next connections reach the app as soon as it listens");
    eprintln!("first call through {first_ok:?} after the app came back");
    for i in 0..20 {
        let mut conn = mesh.call_as(WEB).await.expect("connect as web");
        conn.round_trip(format!("call {i}").as_bytes())
            .await
            .expect("every call after the recovery gets through");
    }
    assert!(backend.accepted() >= 21);
    let unreachable = mesh
        .api
        .metric(
            ferrule_tests::names::INBOUND,
            &[("result", "app_unreachable")],
        )
        .await
        .expect("scrape api's sidecar");
    assert!(unreachable >= 1.0, "callers refused by the app are counted");
    eprintln!("callers the app refused, counted as app_unreachable: {unreachable}");
}
