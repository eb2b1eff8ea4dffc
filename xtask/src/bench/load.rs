//! The load generator: closed-loop keep-alive and connection-per-request HTTP/1.1,
//! an open-loop paced run with a latency record, bulk download, and idle connections.
//!
//! It speaks just enough HTTP/1.1 for the bench's own backend behind any of the peers
//! (a status line, `Content-Length`, or a body up to the close), so one core can drive a
//! pair of proxies on the other without becoming the bottleneck; the direct run (no
//! proxies) shows its ceiling, and the report flags a run where it is near.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The path every request asks for: it matches only the last of the 20 permissions of
/// the L7 scenario, so a proxy evaluates all of them.
pub(crate) const PATH: &str = "/api/p19/item";

fn request(close: bool) -> Vec<u8> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!("GET {PATH} HTTP/1.1\r\nHost: api\r\nUser-Agent: ferrule-bench\r\n{connection}\r\n")
        .into_bytes()
}

/// What a closed-loop run achieved.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tally {
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
}

impl Tally {
    pub(crate) fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A connection with its read buffer: responses are parsed out of it one by one.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub(crate) async fn open(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(2048),
        })
    }

    /// Sends one request and reads its response; the status code.
    pub(crate) async fn call(&mut self, req: &[u8]) -> io::Result<u16> {
        self.stream.write_all(req).await?;
        self.read_response().await
    }

    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    async fn read_response(&mut self) -> io::Result<u16> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))?;
        let length = head.lines().find_map(|l| {
            l.strip_prefix("content-length:")
                .and_then(|v| v.trim().parse::<usize>().ok())
        });
        match length {
            Some(len) => {
                while self.buf.len() < head_end + len {
                    if self.fill().await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                self.buf.drain(..head_end + len);
            }
            // No length: the body runs to the close.
            None => {
                while self.fill().await? > 0 {}
                self.buf.clear();
            }
        }
        Ok(status)
    }

    /// Waits for the server's close (after a `Connection: close` response), so the
    /// TIME_WAIT lands on the server side and the run does not exhaust ephemeral ports.
    async fn drain_to_close(&mut self) {
        while matches!(self.fill().await, Ok(n) if n > 0) {}
    }
}

/// `conns` keep-alive connections, each sending its next request when the last
/// response arrived, for `duration`.
pub(crate) async fn keepalive(addr: SocketAddr, conns: usize, duration: Duration) -> Tally {
    closed_loop(addr, conns, duration, false).await
}

/// `conns` workers, each opening a new connection per request (`Connection: close`).
pub(crate) async fn per_connection(addr: SocketAddr, conns: usize, duration: Duration) -> Tally {
    closed_loop(addr, conns, duration, true).await
}

async fn closed_loop(addr: SocketAddr, conns: usize, duration: Duration, close: bool) -> Tally {
    let started = Instant::now();
    let deadline = started + duration;
    let req: Arc<[u8]> = request(close).into();
    let mut tasks = JoinSet::new();
    for _ in 0..conns {
        let req = req.clone();
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let mut conn: Option<Conn> = None;
            while Instant::now() < deadline {
                if conn.is_none() {
                    match Conn::open(addr).await {
                        Ok(c) => conn = Some(c),
                        Err(_) => {
                            tally.errors += 1;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            continue;
                        }
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                match c.call(&req).await {
                    Ok(200) => tally.ok += 1,
                    Ok(_) | Err(_) => {
                        tally.errors += 1;
                        conn = None;
                        continue;
                    }
                }
                if close {
                    c.drain_to_close().await;
                    conn = None;
                }
            }
            tally
        });
    }
    let mut total = Tally::default();
    while let Some(done) = tasks.join_next().await {
        if let Ok(t) = done {
            total.ok += t.ok;
            total.errors += t.errors;
        }
    }
    total.elapsed = started.elapsed();
    total
}

/// An open-loop run: requests are due at a fixed `rate` whether or not earlier ones
/// finished, and each latency is measured from when it was due (no coordinated
/// omission). Latencies in microseconds, sorted.
pub(crate) async fn paced(
    addr: SocketAddr,
    rate: u32,
    duration: Duration,
    conns: usize,
) -> (Tally, Vec<u64>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Instant>(100_000);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let started = Instant::now();
    let producer = tokio::spawn(async move {
        let period = Duration::from_secs(1) / rate.max(1);
        let total = (duration.as_secs_f64() * f64::from(rate)) as u32;
        let mut ticker = tokio::time::interval(Duration::from_millis(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut sent = 0u32;
        while sent < total {
            ticker.tick().await;
            let due_by_now =
                ((started.elapsed().as_secs_f64() * f64::from(rate)) as u32).min(total);
            while sent < due_by_now {
                if tx.send(started + period * sent).await.is_err() {
                    return;
                }
                sent += 1;
            }
        }
    });
    let errors = Arc::new(AtomicU64::new(0));
    let req: Arc<[u8]> = request(false).into();
    let mut tasks = JoinSet::new();
    for _ in 0..conns {
        let (rx, req, errors) = (rx.clone(), req.clone(), errors.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut conn: Option<Conn> = None;
            loop {
                let Some(due) = rx.lock().await.recv().await else {
                    return latencies;
                };
                if conn.is_none() {
                    conn = Conn::open(addr).await.ok();
                }
                let result = match conn.as_mut() {
                    Some(c) => c.call(&req).await,
                    None => Err(io::ErrorKind::NotConnected.into()),
                };
                match result {
                    Ok(200) => latencies.push(due.elapsed().as_micros() as u64),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        conn = None;
                    }
                }
            }
        });
    }
    let _ = producer.await;
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(mut l) = done {
            all.append(&mut l);
        }
    }
    all.sort_unstable();
    let tally = Tally {
        ok: all.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    };
    (tally, all)
}

/// The value at quantile `q` of sorted samples.
pub(crate) fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Downloads `bytes` from the backend's bulk source: as a raw `BULK` line (L4), or as
/// one HTTP response (`http`, what an L7 pair can forward); body bytes received and the
/// time.
pub(crate) async fn bulk(addr: SocketAddr, bytes: u64, http: bool) -> io::Result<(u64, Duration)> {
    let mut stream = TcpStream::connect(addr).await?;
    let started = Instant::now();
    let ask = if http {
        format!(
            "GET {}/bulk/{bytes} HTTP/1.1\r\nHost: api\r\nUser-Agent: ferrule-bench\r\n\
             Connection: close\r\n\r\n",
            PATH.rsplit_once('/').map_or(PATH, |(dir, _)| dir)
        )
    } else {
        format!("BULK {bytes}\n")
    };
    stream.write_all(ask.as_bytes()).await?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    // Through an L7 pair the body follows a response head, which is not counted.
    let mut head: Option<Vec<u8>> = http.then(Vec::new);
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        match head.as_mut() {
            Some(seen) => {
                seen.extend_from_slice(&buf[..n]);
                if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                    got += (seen.len() - end - 4) as u64;
                    head = None;
                } else if seen.len() > 64 * 1024 {
                    return Err(io::Error::other("no response head in 64 KiB"));
                }
            }
            None => got += n as u64,
        }
    }
    Ok((got, started.elapsed()))
}

/// Opens `n` connections, each proven end to end by one request, and returns them
/// open. Those that fail are counted, not retried.
pub(crate) async fn idle(addr: SocketAddr, n: usize, parallel: usize) -> (Vec<Conn>, u64) {
    let limit = Arc::new(Semaphore::new(parallel));
    let req: Arc<[u8]> = request(false).into();
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        let (limit, req) = (limit.clone(), req.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.ok()?;
            let mut conn = Conn::open(addr).await.ok()?;
            match tokio::time::timeout(Duration::from_secs(10), conn.call(&req)).await {
                Ok(Ok(200)) => Some(conn),
                _ => None,
            }
        });
    }
    let mut open = Vec::with_capacity(n);
    let mut failed = 0;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Some(conn)) => open.push(conn),
            _ => failed += 1,
        }
    }
    (open, failed)
}

/// One request on a new connection: `Ok(true)` if allowed (200), `Ok(false)` if the
/// proxy refused it (403, or a close before any response, as an L4 deny looks).
pub(crate) async fn probe(addr: SocketAddr) -> io::Result<bool> {
    let mut conn = Conn::open(addr).await?;
    Ok(conn.probe().await)
}

impl Conn {
    /// One request on this connection: whether it got a 200.
    pub(crate) async fn probe(&mut self) -> bool {
        let req = request(false);
        matches!(
            tokio::time::timeout(Duration::from_secs(2), self.call(&req)).await,
            Ok(Ok(200))
        )
    }
}
