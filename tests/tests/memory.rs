//! Memory comes back after a burst: api's sidecar takes thousands of mTLS connections
//! held open (each with its backend connection), then stalled handshakes and garbage,
//! and all of them close; within 60 s its resident set must be back to at most 1.5×
//! the level before the burst. The levels (before, peak, after) are printed.

use std::time::Duration;

use ferrule_tests::backends::TcpEcho;
use ferrule_tests::clients::TlsCaller;
use ferrule_tests::mesh::{Mesh, WEB};
use ferrule_tests::wait::eventually;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// mTLS connections held open at once: each is two sockets in the sidecar and two here.
const HELD: usize = 3_000;
/// Connections that stall mid-handshake or send garbage.
const HOSTILE: usize = 1_000;
const PARALLEL: usize = 64;
const COMES_BACK_WITHIN: Duration = Duration::from_secs(60);

/// VmRSS of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resident_memory_comes_back_after_a_burst_of_connections() {
    let backend = TcpEcho::start().await;
    let mesh = Mesh::builder(backend.addr())
        .allow(WEB)
        .handshake_timeout_ms(2_000)
        .start()
        .await;
    let inbound = mesh.api.inbound_addr();
    let pid = mesh.api.pid();
    let caller = std::sync::Arc::new(TlsCaller::new(Some(&mesh.svid(WEB))));

    // Warm up: a few calls, so the level before counts what a serving sidecar holds.
    for _ in 0..20 {
        let mut conn = caller.connect(inbound).await.expect("a good connection");
        conn.round_trip(b"warm\n").await.expect("a round trip");
    }
    let before = rss_kib(pid);
    assert!(before > 0, "read the sidecar's RSS");

    // The burst: HELD connections open at once, proven end to end.
    let limit = std::sync::Arc::new(Semaphore::new(PARALLEL));
    let mut tasks = JoinSet::new();
    for _ in 0..HELD {
        let (caller, limit) = (caller.clone(), limit.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.ok()?;
            let mut conn = caller.connect(inbound).await.ok()?;
            conn.round_trip(b"hold\n").await.ok()?;
            Some(conn)
        });
    }
    let mut held = Vec::with_capacity(HELD);
    while let Some(done) = tasks.join_next().await {
        if let Ok(Some(conn)) = done {
            held.push(conn);
        }
    }
    assert!(
        held.len() >= HELD * 9 / 10,
        "only {} of {HELD} connections opened",
        held.len()
    );
    let mut hostile = JoinSet::new();
    for i in 0..HOSTILE {
        let limit = limit.clone();
        hostile.spawn(async move {
            let _permit = limit.acquire_owned().await.ok()?;
            let mut tcp = TcpStream::connect(inbound).await.ok()?;
            let bytes: Vec<u8> = if i % 2 == 0 {
                vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]
            } else {
                (0..64).map(|_| fastrand::u8(..)).collect()
            };
            tcp.write_all(&bytes).await.ok()?;
            Some(tcp)
        });
    }
    let mut stalled = Vec::new();
    while let Some(done) = hostile.join_next().await {
        if let Ok(Some(tcp)) = done {
            stalled.push(tcp);
        }
    }
    let peak = rss_kib(pid);
    let opened = held.len();
    drop(held);
    drop(stalled);

    let wanted = before + before / 2;
    let closed = tokio::time::Instant::now();
    let after = eventually(
        "the sidecar's RSS comes back to 1.5x its level before the burst",
        COMES_BACK_WITHIN,
        || async {
            let now = rss_kib(pid);
            anyhow::ensure!(
                now <= wanted,
                "{now} KiB, want <= {wanted} KiB (before: {before} KiB, peak: {peak} KiB)"
            );
            Ok(now)
        },
    )
    .await;
    eprintln!(
        "FIGURES RSS before {before} KiB, peak {peak} KiB with {opened} mTLS connections \
         held and {HOSTILE} hostile ones, after {:?} {:?} after they closed",
        after.as_ref().map(|kib| format!("{kib} KiB")),
        closed.elapsed(),
    );
    after.expect("resident memory comes back");

    // Still serving.
    let mut conn = caller
        .connect(inbound)
        .await
        .expect("a good connection after");
    conn.round_trip(b"after\n")
        .await
        .expect("a round trip after");
}
