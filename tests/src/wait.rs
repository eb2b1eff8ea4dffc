//! Deadlines instead of sleeps: poll a condition until it holds or time runs out, and
//! wait for a peer to close a connection.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// How often a condition is re-checked.
const POLL: Duration = Duration::from_millis(50);

/// Runs `attempt` until it returns `Ok`, every 50 ms, for at most `within`. The error
/// names `what` and carries the last attempt's error.
pub async fn eventually<T, F, Fut>(
    what: &str,
    within: Duration,
    mut attempt: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + within;
    let mut previous: Option<anyhow::Error> = None;
    loop {
        let error = match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => e,
            // Cut short by the deadline: the attempt before says more.
            Err(_) => match previous.take() {
                Some(e) => e.context("the last attempt was still running; the one before"),
                None => anyhow::anyhow!("the last attempt was still running"),
            },
        };
        if Instant::now() + POLL > deadline {
            return Err(error.context(format!("{what}: not within {within:?}")));
        }
        previous = Some(error);
        tokio::time::sleep(POLL).await;
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bound, read, released), for a
/// process the test starts to bind.
///
/// It is taken below the kernel's ephemeral range (`ip_local_port_range`), at random:
/// a port the kernel picked would be handed out again as the local port of some
/// outgoing connection (another test's, or a sidecar's), which can take it between
/// this release and the child's bind. Below that range only explicit binds compete.
pub fn free_port() -> SocketAddr {
    free_port_on(Ipv4Addr::LOCALHOST)
}

/// Like [`free_port`], on another loopback address (127.0.0.2 for a second
/// datacenter, say: Linux routes all of 127.0.0.0/8 to loopback).
pub fn free_port_on(ip: Ipv4Addr) -> SocketAddr {
    let low = ephemeral_low().unwrap_or(32768);
    if low > 11_000 {
        for _ in 0..200 {
            let port = fastrand::u16(10_000..low);
            if let Ok(listener) = TcpListener::bind((ip, port)) {
                return listener
                    .local_addr()
                    .expect("local address of a just-bound listener");
            }
        }
    }
    let listener = TcpListener::bind((ip, 0)).expect("bind port 0 for a free port");
    listener
        .local_addr()
        .expect("local address of a just-bound listener")
}

/// A port on 127.0.0.1 where nothing listens and nothing else can until the returned
/// descriptor is dropped: a connect to it is refused. [`free_port`] only says a port
/// was free a moment ago, and another test's process may bind it next (a sidecar's
/// admin listener answering where a test wanted a dead app, say). This socket is bound
/// without `SO_REUSEADDR` and never listens, so every later bind of the port fails
/// and every connect is reset.
pub fn refused_port() -> (SocketAddr, rustix::fd::OwnedFd) {
    use rustix::net::{AddressFamily, SocketType, bind, getsockname, socket};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).expect("a TCP socket");
    bind(&fd, &std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    let bound = getsockname(&fd).expect("the bound address");
    let addr = std::net::SocketAddrV4::try_from(bound).expect("an IPv4 address");
    (SocketAddr::V4(addr), fd)
}

/// The first port of the kernel's ephemeral range, where Linux says.
fn ephemeral_low() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

/// Reads (and discards) until the peer closes the stream or resets it, for at most
/// `within`. Fails if the stream is still open then.
pub async fn closed_within<S: AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> anyhow::Result<()> {
    let drain = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, drain)
        .await
        .map_err(|_| anyhow::anyhow!("the connection was still open after {within:?}"))
}

/// Waits for `child` to exit, for at most `within`: its exit code (`None` if killed by
/// a signal), or an error if it is still running.
pub async fn exit_within(
    child: &mut std::process::Child,
    within: Duration,
) -> anyhow::Result<Option<i32>> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.code());
        }
        anyhow::ensure!(Instant::now() < deadline, "still running {within:?} later");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
