//! SIGHUP reads the static config file again: an upstream moved there is rebound and
//! its old port closed; a config that does not parse, or that names another identity
//! than the leaf's, changes nothing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferrule_tests::backends::TcpEcho;
use ferrule_tests::mesh::{API, Mesh, WEB};
use ferrule_tests::sidecar::{CONFIG_FILE, Replace};
use ferrule_tests::wait::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WITHIN: Duration = Duration::from_secs(5);

async fn echoes(addr: SocketAddr) -> bool {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(b"hup\n").await?;
        let mut got = [0u8; 4];
        tcp.read_exact(&mut got).await?;
        anyhow::ensure!(&got == b"hup\n", "wrong echo");
        anyhow::Ok(())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), exchange).await,
        Ok(Ok(()))
    )
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WITHIN;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {WITHIN:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_config_and_ignores_a_broken_one() {
    let backend = TcpEcho::start().await;
    let mesh = Mesh::builder(backend.addr()).allow(WEB).start().await;
    let mut web = mesh.caller_sidecar(WEB, &[mesh.api.inbound_addr()]).await;
    let first = web.upstream_addr(API);
    assert!(echoes(first).await);

    // The upstream moves to another port.
    let original = std::fs::read_to_string(web.dir().join(CONFIG_FILE)).expect("the config");
    let second = free_port();
    let moved = original.replacen(
        &format!("bind = \"{first}\""),
        &format!("bind = \"{second}\""),
        1,
    );
    assert_ne!(moved, original, "the upstream's bind is in the config");
    web.replace_file(CONFIG_FILE, &moved, Replace::AtomicRename);
    web.hangup();
    wait_until("the upstream answers on its new port", async || {
        echoes(second).await
    })
    .await;
    wait_until("the old port is closed", async || {
        TcpStream::connect(first).await.is_err()
    })
    .await;

    // A config that does not parse: logged, and everything stays as it was.
    web.replace_file(
        CONFIG_FILE,
        "[[upstreams]\nthis is not toml",
        Replace::InPlace,
    );
    web.hangup();
    wait_until("the refusal is logged", async || {
        web.stderr().contains("config not reloaded")
    })
    .await;
    assert!(web.is_running());
    assert!(echoes(second).await, "the config in force still serves");

    // One naming another identity than the leaf's is refused as well.
    let other = moved.replacen("[identity]", "[identity]\nservice = \"billing\"", 1);
    web.replace_file(CONFIG_FILE, &other, Replace::AtomicRename);
    web.hangup();
    wait_until("the identity change is refused", async || {
        web.stderr().contains("identity.service")
    })
    .await;
    assert!(echoes(second).await);
}
