//! HTTP/2 abuse against the inbound L7 listener and the outbound mesh pool, while good
//! requests flow. `api`'s sidecar serves `http` (HTTP/1.1 or HTTP/2 by ALPN) in front of
//! a local app; `web`'s sidecar carries its app's HTTP/1.1 requests to it over its pooled
//! HTTP/2 mesh connection. An abuser holding a valid `web` SVID speaks HTTP/2 to api's
//! listener itself, frame by frame (a small encoder below: HPACK literals, no Huffman):
//!
//! 1. rapid reset: thousands of streams opened and reset at once (CVE-2023-44487);
//! 2. CONTINUATION flood: a header block that never ends;
//! 3. SETTINGS flood and PING flood, the ACKs never read;
//! 4. HPACK bomb: one large dynamic-table entry referenced until the decoded list is far
//!    beyond the header list limit;
//! 5. zero-window slow reader: `SETTINGS_INITIAL_WINDOW_SIZE` 0, large responses asked
//!    for on many streams of many connections, no WINDOW_UPDATE ever; and its opposite,
//!    every window opened wide and nothing read, so each response is buffered as far as
//!    the sidecar lets it.
//!
//! For each, every good request through web's sidecar succeeds, the abuser's connection
//! is closed (GOAWAY or reset) within a bound, and api's sidecar's resident memory
//! (`/proc/<pid>/status`) and CPU time (`/proc/<pid>/stat`) stay within generous bounds;
//! the figures are printed as `FIGURES` lines.
//!
//! Then the other direction: an abusive callee behind web's sidecar (a fake `api`
//! sidecar presenting api's SVID, speaking HTTP/2 itself) that advertises a zero window
//! and never answers, or floods PINGs and SETTINGS without reading; web's app requests
//! fail fast (within the request timeout) or succeed through the other, real, endpoint,
//! and web's sidecar's memory stays bounded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ferrule_tests::backends::accept_loop;
use ferrule_tests::clients::{KeepAlive, TlsCaller};
use ferrule_tests::mesh::{API, L7Pair, WEB};
use ferrule_tests::sidecar::{Sidecar, SidecarConfig};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the app answers on `/big`: enough that no response fits in the windows and
/// socket buffers between it and a reader that does not read.
const BIG: usize = 1024 * 1024;
/// The bounds every attack is held to (generous: the tests run on a busy machine).
const RSS_GROWTH_MAX_KIB: u64 = 64 * 1024;
const CUT_OFF_WITHIN: Duration = Duration::from_secs(10);
/// A peer that stops reading is cut off once the sidecar's writes to it have waited
/// 20 s (or by the HTTP/2 keep-alive: 10 s without a read, then 10 s for a PING ACK
/// that never comes); filling the socket buffers before that takes a few seconds more.
const STALLED_CUT_OFF_WITHIN: Duration = Duration::from_secs(60);
/// Good requests flow at least this long, attack or not.
const GOOD_FOR: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------
// HTTP/2 frames, written by hand.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in pairs {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &payload)
}

fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// An HPACK integer with an `n`-bit prefix, the pattern's high bits in `first`.
fn hpack_int(out: &mut Vec<u8>, n: u8, first: u8, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 7, 0x00, s.len());
    out.extend_from_slice(s);
}

/// A field by its static-table name index, not indexed.
fn literal_indexed_name(out: &mut Vec<u8>, index: usize, value: &[u8]) {
    hpack_int(out, 4, 0x00, index);
    hpack_string(out, value);
}

/// A field with a new name, added to the dynamic table.
fn literal_incremental(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x40);
    hpack_string(out, name);
    hpack_string(out, value);
}

fn indexed(out: &mut Vec<u8>, index: usize) {
    hpack_int(out, 7, 0x80, index);
}

/// `GET https://api<path>`: `:method GET` (static 2), `:scheme https` (static 7),
/// `:path` (static name 4), `:authority` (static name 1).
fn request_block(path: &str) -> Vec<u8> {
    let mut block = Vec::new();
    indexed(&mut block, 2);
    indexed(&mut block, 7);
    literal_indexed_name(&mut block, 4, path.as_bytes());
    literal_indexed_name(&mut block, 1, b"api");
    block
}

fn get(stream: u32, path: &str) -> Vec<u8> {
    frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        stream,
        &request_block(path),
    )
}

/// What the sidecar sent back, read frame by frame.
#[derive(Debug, Default, Clone)]
struct Seen {
    goaway: Option<u32>,
    resets: u64,
    responses: u64,
    data_bytes: u64,
    pings: u64,
}

/// Reads frames until the connection ends (closed, reset or broken).
async fn read_frames<R: AsyncRead + Unpin>(mut read: R, seen: Arc<Mutex<Seen>>) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match read.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        let mut at = 0;
        while buf.len() - at >= 9 {
            let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
            if buf.len() - at < 9 + len {
                break;
            }
            let kind = buf[at + 3];
            let payload = &buf[at + 9..at + 9 + len];
            let mut seen = seen.lock();
            match kind {
                GOAWAY if len >= 8 => {
                    seen.goaway.get_or_insert(u32::from_be_bytes([
                        payload[4], payload[5], payload[6], payload[7],
                    ]));
                }
                RST_STREAM => seen.resets += 1,
                HEADERS => seen.responses += 1,
                DATA => seen.data_bytes += len as u64,
                PING => seen.pings += 1,
                _ => {}
            }
            at += 9 + len;
        }
        buf.drain(..at);
    }
}

// ---------------------------------------------------------------------------------
// The scene: the app, the two sidecars, the good traffic, the measurements.

/// The local app behind api's sidecar: `/big` is `BIG` bytes, anything else its own
/// path; counts what it was asked.
struct App {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl App {
    async fn start() -> App {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the app");
        let addr = listener.local_addr().expect("app address");
        let requests = Arc::new(AtomicUsize::new(0));
        let big = Bytes::from(vec![b'x'; BIG]);
        let counter = requests.clone();
        let task = tokio::spawn(accept_loop(listener, move |tcp| {
            let (big, counter) = (big.clone(), counter.clone());
            async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let body = if req.uri().path() == "/big" {
                        big.clone()
                    } else {
                        Bytes::from(req.uri().path().to_owned())
                    };
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            }
        }));
        App {
            addr,
            requests,
            task,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Scene {
    app: App,
    mesh: L7Pair,
}

impl Scene {
    async fn start() -> Scene {
        let app = App::start().await;
        let allow = json!({ "Kind": "service-intentions", "Name": API,
            "Sources": [ { "Name": WEB, "Action": "allow" } ] });
        let mesh = L7Pair::start("http", app.addr, &allow).await;
        Scene { app, mesh }
    }

    fn abuser(&self) -> Abuser {
        Abuser {
            caller: Arc::new(TlsCaller::with_alpn(Some(&self.mesh.web_leaf), &[b"h2"])),
            addr: self.mesh.api.inbound_addr(),
        }
    }
}

/// Opens abusive connections to api's listener as `web` (a valid SVID, ALPN `h2`).
#[derive(Clone)]
struct Abuser {
    caller: Arc<TlsCaller>,
    addr: SocketAddr,
}

type H2Stream = tokio_rustls::client::TlsStream<TcpStream>;

impl Abuser {
    /// A new connection, the preface and our SETTINGS written.
    async fn open(&self, ours: &[(u16, u32)]) -> anyhow::Result<H2Stream> {
        // A small receive buffer, as an abuser that wants the sidecar's writes to back
        // up soon would pick.
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(4096)?;
        let tcp = socket.connect(self.addr).await?;
        let mut stream = self.caller.handshake(tcp, self.addr).await?.into_stream();
        anyhow::ensure!(
            stream.get_ref().1.alpn_protocol() == Some(b"h2"),
            "api's listener did not choose h2"
        );
        let mut hello = PREFACE.to_vec();
        hello.extend(settings(ours));
        stream.write_all(&hello).await?;
        stream.flush().await?;
        Ok(stream)
    }
}

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

/// utime + stime of a process, in seconds (clock ticks of `getconf CLK_TCK`).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    ticks as f64 / clock_ticks() as f64
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

/// A process's resident set sampled every 50 ms, and its CPU time, over an attack.
struct Meter {
    pid: u32,
    before_kib: u64,
    cpu_before: f64,
    started: Instant,
    peak: Arc<AtomicU64>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

struct Measured {
    before_kib: u64,
    peak_kib: u64,
    cpu: f64,
    wall: Duration,
}

impl Measured {
    fn growth_kib(&self) -> u64 {
        self.peak_kib.saturating_sub(self.before_kib)
    }
}

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RSS before {} KiB, peak {} KiB (+{} KiB), CPU {:.2} s over {:.1} s",
            self.before_kib,
            self.peak_kib,
            self.growth_kib(),
            self.cpu,
            self.wall.as_secs_f64()
        )
    }
}

impl Meter {
    fn start(pid: u32) -> Meter {
        let before_kib = rss_kib(pid);
        assert!(before_kib > 0, "read the sidecar's RSS");
        let peak = Arc::new(AtomicU64::new(before_kib));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (peak, stop) = (peak.clone(), stop.clone());
            async move {
                while !stop.is_cancelled() {
                    peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Meter {
            pid,
            before_kib,
            cpu_before: cpu_seconds(pid),
            started: Instant::now(),
            peak,
            stop,
            task,
        }
    }

    async fn stop(self) -> Measured {
        self.stop.cancel();
        let _ = self.task.await;
        Measured {
            before_kib: self.before_kib,
            peak_kib: self.peak.load(Ordering::Relaxed).max(rss_kib(self.pid)),
            cpu: cpu_seconds(self.pid) - self.cpu_before,
            wall: self.started.elapsed(),
        }
    }
}

/// Good requests through web's sidecar (HTTP/1.1 keep-alive from the app's side, one
/// HTTP/2 connection on the mesh hop to api's listener), each checked end to end.
struct Good {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<(Vec<Duration>, Vec<String>)>>,
}

impl Good {
    fn start(upstream: SocketAddr, workers: usize) -> Good {
        let stop = CancellationToken::new();
        let tasks = (0..workers)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut failures = Vec::new();
                    let mut conn = None;
                    while !stop.is_cancelled() {
                        if conn.is_none() {
                            match KeepAlive::open(upstream).await {
                                Ok(c) => conn = Some(c),
                                Err(e) => {
                                    failures.push(format!("connect: {e:#}"));
                                    continue;
                                }
                            }
                        }
                        let Some(c) = conn.as_mut() else { continue };
                        let started = Instant::now();
                        match c.get("/good").await {
                            Ok((200, body)) if body == b"/good" => {
                                latencies.push(started.elapsed())
                            }
                            Ok((status, body)) => failures
                                .push(format!("{status}: {}", String::from_utf8_lossy(&body))),
                            Err(e) => {
                                failures.push(format!("{e:#}"));
                                conn = None;
                            }
                        }
                    }
                    (latencies, failures)
                })
            })
            .collect();
        Good { stop, tasks }
    }

    /// Stops and returns "n ok (p50, p99)"; fails the test if any request failed.
    async fn stop(self, what: &str) -> String {
        self.stop.cancel();
        let mut latencies = Vec::new();
        let mut failures = Vec::new();
        for task in self.tasks {
            let (l, f) = task.await.expect("join a good worker");
            latencies.extend(l);
            failures.extend(f);
        }
        latencies.sort();
        let pct = |p: f64| {
            latencies
                .get(((latencies.len().max(1) - 1) as f64 * p).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        let summary = format!(
            "good requests {} ok, {} failed (p50 {:?}, p99 {:?})",
            latencies.len(),
            failures.len(),
            pct(0.5),
            pct(0.99)
        );
        assert!(
            failures.is_empty(),
            "{what}: good requests failed ({summary}): {failures:?}"
        );
        assert!(
            !latencies.is_empty(),
            "{what}: no good request went through"
        );
        summary
    }
}

/// How one abusive connection ended.
#[derive(Debug)]
struct Ended {
    frames: u64,
    /// From the first abusive frame to the connection's end; `None` if still open at
    /// the limit.
    after: Option<Duration>,
    seen: Seen,
}

/// Writes what `next` gives (each call a batch and its frame count) until a write fails
/// or the sidecar ends the connection, reading what comes back when `reading` (a
/// flooder that does not read gets its ACKs backed up instead). At most `limit`.
async fn flood(
    stream: H2Stream,
    reading: bool,
    limit: Duration,
    mut next: impl FnMut() -> Option<(Vec<u8>, u64)> + Send,
) -> Ended {
    let (read, mut write) = tokio::io::split(stream);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let started = Instant::now();
    let mut frames = 0;
    let reader = read_frames(read, seen.clone());
    tokio::pin!(reader);
    let run = async {
        loop {
            let Some((batch, n)) = next() else {
                // Nothing more to send: wait for the sidecar to end it.
                if reading {
                    (&mut reader).await;
                } else {
                    // Not reading: only a failing write tells the connection ended.
                    loop {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if write.write_all(&frame(PING, 0, 0, &[0; 8])).await.is_err() {
                            break;
                        }
                        if write.flush().await.is_err() {
                            break;
                        }
                    }
                }
                return;
            };
            let wrote = if reading {
                tokio::select! {
                    w = write.write_all(&batch) => w.is_ok(),
                    () = &mut reader => false,
                }
            } else {
                write.write_all(&batch).await.is_ok()
            };
            if !wrote {
                return;
            }
            frames += n;
        }
    };
    let after = tokio::time::timeout(limit, run)
        .await
        .ok()
        .map(|()| started.elapsed());
    // Whatever was already on its way (a GOAWAY), if the connection is still readable.
    if after.is_some() && !reading {
        let _ = tokio::time::timeout(Duration::from_millis(500), reader).await;
    }
    let seen = seen.lock().clone();
    Ended {
        frames,
        after,
        seen,
    }
}

/// The slowest cut-off, asserted within `limit`; printed as "max ... (p50 ...)".
fn cut_offs(what: &str, ended: &[Ended], limit: Duration) -> String {
    let mut times: Vec<Duration> = Vec::new();
    for (i, e) in ended.iter().enumerate() {
        let after = e
            .after
            .unwrap_or_else(|| panic!("{what}: abuser {i} still connected after {limit:?}: {e:?}"));
        assert!(after <= limit, "{what}: abuser {i} cut off after {after:?}");
        times.push(after);
    }
    times.sort();
    let goaways = ended.iter().filter(|e| e.seen.goaway.is_some()).count();
    let calm = ended
        .iter()
        .filter(|e| e.seen.goaway == Some(ENHANCE_YOUR_CALM))
        .count();
    format!(
        "{} connections cut off within {:?} (p50 {:?}), {goaways} with GOAWAY ({calm} ENHANCE_YOUR_CALM), {} frames sent",
        ended.len(),
        times.last().copied().unwrap_or_default(),
        times.get(times.len() / 2).copied().unwrap_or_default(),
        ended.iter().map(|e| e.frames).sum::<u64>(),
    )
}

/// Runs `attack` on `connections` abusive connections at once, each opened with our
/// SETTINGS `ours` and opened again after it ended, `rounds` times, while good requests
/// flow (for at least `GOOD_FOR`) and api's sidecar is measured; checks the bounds
/// (good requests all succeed, every abusive connection cut off within `limit`, RSS
/// growth) and prints the figures.
async fn under_attack<F, Fut>(
    what: &str,
    scene: &Scene,
    ours: &'static [(u16, u32)],
    (connections, rounds): (usize, usize),
    (limit, rss_max_kib): (Duration, u64),
    attack: F,
) -> (Vec<Ended>, Measured)
where
    F: Fn(H2Stream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Ended> + Send + 'static,
{
    let upstream = scene.mesh.web.upstream_addr(API);
    // Warm: the good path's connections are open before the level is read.
    let mut warm = KeepAlive::open(upstream).await.expect("a good connection");
    for _ in 0..20 {
        let (status, _) = warm.get("/good").await.expect("a good request");
        assert_eq!(status, 200);
    }
    drop(warm);
    let app_before = scene.app.requests();
    let meter = Meter::start(scene.mesh.api.pid());
    let good = Good::start(upstream, 2);
    let good_until = Instant::now() + GOOD_FOR;
    let attack = Arc::new(attack);
    let mut abusers = JoinSet::new();
    for _ in 0..connections {
        let (abuser, attack) = (scene.abuser(), attack.clone());
        abusers.spawn(async move {
            let mut ended = Vec::new();
            for _ in 0..rounds {
                let stream = abuser
                    .open(ours)
                    .await
                    .expect("an abusive HTTP/2 connection");
                ended.push(attack(stream).await);
            }
            ended
        });
    }
    let mut ended = Vec::new();
    while let Some(e) = abusers.join_next().await {
        ended.extend(e.expect("join an abuser"));
    }
    let measured = meter.stop().await;
    tokio::time::sleep_until(good_until).await;
    let good = good.stop(what).await;
    let cut = cut_offs(what, &ended, limit);
    println!(
        "FIGURES h2 {what}: {cut}; api's sidecar {measured}; {good}; app requests {} (good ones included)",
        scene.app.requests() - app_before
    );
    assert!(
        measured.growth_kib() < rss_max_kib,
        "{what}: api's sidecar grew by {} KiB",
        measured.growth_kib()
    );
    (ended, measured)
}

// ---------------------------------------------------------------------------------
// The attacks on api's inbound L7 listener.

/// Every GOAWAY the abusers read says ENHANCE_YOUR_CALM, and some did read one (the
/// others' connections were reset before they got to it: a socket closed with unread
/// data is reset, and the reset discards what was on its way).
fn calmed(what: &str, ended: &[Ended]) {
    for e in ended {
        assert!(
            e.seen.goaway.is_none_or(|code| code == ENHANCE_YOUR_CALM),
            "{what}: {e:?}"
        );
    }
    assert!(
        ended
            .iter()
            .any(|e| e.seen.goaway == Some(ENHANCE_YOUR_CALM)),
        "{what}: no abuser was told ENHANCE_YOUR_CALM"
    );
}

/// Streams per rapid-reset connection, at most: far beyond any reset limit.
const RAPID_RESET_STREAMS: u32 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off() {
    let scene = Scene::start().await;
    let (ended, _) = under_attack(
        "rapid reset",
        &scene,
        &[],
        (8, 25),
        (CUT_OFF_WITHIN, RSS_GROWTH_MAX_KIB),
        |stream| {
            let mut next_stream = 1u32;
            flood(stream, true, CUT_OFF_WITHIN, move || {
                if next_stream > 2 * RAPID_RESET_STREAMS {
                    return None;
                }
                let mut batch = Vec::new();
                for _ in 0..100 {
                    batch.extend(get(next_stream, "/reset"));
                    batch.extend(rst_stream(next_stream, CANCEL));
                    next_stream += 2;
                }
                Some((batch, 200))
            })
        },
    )
    .await;
    calmed("rapid reset", &ended);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off() {
    let scene = Scene::start().await;
    let filler = Arc::new(vec![b'a'; 16 * 1024 - 1]);
    let (ended, _) = under_attack(
        "CONTINUATION flood",
        &scene,
        &[],
        (20, 25),
        (CUT_OFF_WITHIN, RSS_GROWTH_MAX_KIB),
        move |stream| {
            let mut first = true;
            let mut sent = 0u64;
            let filler = filler.clone();
            flood(stream, true, CUT_OFF_WITHIN, move || {
                if sent > 100_000 {
                    return None;
                }
                let mut batch = Vec::new();
                if first {
                    first = false;
                    batch.extend(frame(HEADERS, END_STREAM, 1, &request_block("/cont")));
                }
                for _ in 0..8 {
                    batch.extend(frame(CONTINUATION, 0, 1, &filler));
                }
                sent += 8;
                Some((batch, 8))
            })
        },
    )
    .await;
    calmed("CONTINUATION flood", &ended);
}

/// A flood of `one` frames, never reading what comes back.
fn unread_flood(stream: H2Stream, one: &[u8]) -> impl Future<Output = Ended> + Send + use<> {
    let batch: Vec<u8> = one.repeat(512);
    flood(stream, false, STALLED_CUT_OFF_WITHIN, move || {
        Some((batch.clone(), 512))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_flood_that_reads_nothing_is_cut_off() {
    let scene = Scene::start().await;
    let one = settings(&[(SETTINGS_HEADER_TABLE_SIZE, 4096)]);
    under_attack(
        "SETTINGS flood",
        &scene,
        &[],
        (10, 1),
        (STALLED_CUT_OFF_WITHIN, RSS_GROWTH_MAX_KIB),
        move |stream| unread_flood(stream, &one),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_that_reads_nothing_is_cut_off() {
    let scene = Scene::start().await;
    let one = frame(PING, 0, 0, b"abusive!");
    under_attack(
        "PING flood",
        &scene,
        &[],
        (10, 1),
        (STALLED_CUT_OFF_WITHIN, RSS_GROWTH_MAX_KIB),
        move |stream| unread_flood(stream, &one),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hpack_bomb_is_refused() {
    let scene = Scene::start().await;
    // One 4,000-byte entry in the dynamic table (index 62), then referenced with one
    // byte each: a 16 KiB frame decodes to some 60 MB of headers.
    let value = Arc::new(vec![b'b'; 4000]);
    let (ended, _) = under_attack(
        "HPACK bomb",
        &scene,
        &[],
        (20, 25),
        (CUT_OFF_WITHIN, RSS_GROWTH_MAX_KIB),
        move |stream| {
            let mut next_stream = 1u32;
            let value = value.clone();
            flood(stream, true, CUT_OFF_WITHIN, move || {
                if next_stream > 2_000 {
                    return None;
                }
                let mut block = request_block("/bomb");
                if next_stream == 1 {
                    literal_incremental(&mut block, b"x-bomb", &value);
                }
                while block.len() < 16 * 1024 - 1 {
                    indexed(&mut block, 62);
                }
                let batch = frame(HEADERS, END_STREAM | END_HEADERS, next_stream, &block);
                next_stream += 2;
                Some((batch, 1))
            })
        },
    )
    .await;
    calmed("HPACK bomb", &ended);
    for e in &ended {
        assert_eq!(e.seen.responses, 0, "a bomb was answered: {e:?}");
    }
}

/// Streams per slow-reader connection: below the concurrent-stream limit.
const SLOW_READER_STREAMS: u32 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_readers_cost_bounded_memory_and_are_cut_off() {
    let scene = Scene::start().await;
    let (ended, _) = under_attack(
        "zero-window readers",
        &scene,
        &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)],
        (8, 1),
        (STALLED_CUT_OFF_WITHIN, RSS_GROWTH_MAX_KIB),
        |stream| {
            let mut sent = false;
            flood(stream, true, STALLED_CUT_OFF_WITHIN, move || {
                if std::mem::replace(&mut sent, true) {
                    return None;
                }
                let mut batch = Vec::new();
                for i in 0..SLOW_READER_STREAMS {
                    batch.extend(get(1 + 2 * i, "/big"));
                }
                Some((batch, u64::from(SLOW_READER_STREAMS)))
            })
        },
    )
    .await;
    for e in &ended {
        assert_eq!(e.seen.data_bytes, 0, "data sent past a zero window: {e:?}");
    }
}

/// What one stream of a reader that opens every window but reads nothing may cost:
/// the chunk read from the app, the HTTP/2 send buffer and the TLS records in front of
/// the socket (64 KiB each, `ferrule::http::h2`), with room for the allocator.
const OPEN_WINDOW_STREAM_MAX_KIB: u64 = 384;

/// A reader that opens every window but reads nothing: each response is as large as
/// the sidecar will buffer for it. That costs more than a zero window (bounded per
/// stream, not per connection: `OPEN_WINDOW_STREAM_MAX_KIB`), until the stalled writes
/// cut the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_window_readers_that_read_nothing_cost_bounded_memory() {
    let scene = Scene::start().await;
    under_attack(
        "open-window non-readers",
        &scene,
        &[(SETTINGS_INITIAL_WINDOW_SIZE, 0x7fff_ffff)],
        (8, 1),
        (
            STALLED_CUT_OFF_WITHIN,
            8 * u64::from(SLOW_READER_STREAMS) * OPEN_WINDOW_STREAM_MAX_KIB,
        ),
        |stream| {
            let mut sent = false;
            flood(stream, false, STALLED_CUT_OFF_WITHIN, move || {
                if std::mem::replace(&mut sent, true) {
                    return None;
                }
                let mut batch = window_update(0, 0x7fff_ffff - 65_535);
                for i in 0..SLOW_READER_STREAMS {
                    batch.extend(get(1 + 2 * i, "/big"));
                }
                Some((batch, u64::from(SLOW_READER_STREAMS) + 1))
            })
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------
// The other direction: an abusive callee behind web's sidecar.

/// How the fake `api` sidecar misbehaves once TLS is up.
#[derive(Clone, Copy, Debug)]
enum Callee {
    /// `SETTINGS_INITIAL_WINDOW_SIZE` 0, PINGs and SETTINGS acknowledged (it looks
    /// alive), requests never answered.
    ZeroWindow,
    /// PING and SETTINGS frames without end, nothing read.
    Flood,
}

/// A fake `api` sidecar: presents api's SVID, chooses `h2`, then misbehaves.
struct FakeApi {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FakeApi {
    async fn start(leaf: &ferrule_tests::IssuedLeaf, how: Callee) -> FakeApi {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("leaf PEM");
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key PEM");
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("api's certificate");
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake");
        let addr = listener.local_addr().expect("fake's address");
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(accept_loop(listener, move |tcp| {
            counter.fetch_add(1, Ordering::Relaxed);
            let acceptor = acceptor.clone();
            async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp)).await
                else {
                    return;
                };
                match how {
                    Callee::ZeroWindow => zero_window_callee(tls).await,
                    Callee::Flood => flood_callee(tls).await,
                }
            }
        }));
        FakeApi {
            addr,
            connections,
            task,
        }
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn zero_window_callee<S: AsyncRead + AsyncWrite + Unpin>(mut tls: S) {
    if tls
        .write_all(&settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]))
        .await
        .is_err()
    {
        return;
    }
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut preface = true;
    loop {
        match tls.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if preface {
            if buf.len() < PREFACE.len() {
                continue;
            }
            buf.drain(..PREFACE.len());
            preface = false;
        }
        let mut answers = Vec::new();
        let mut at = 0;
        while buf.len() - at >= 9 {
            let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
            if buf.len() - at < 9 + len {
                break;
            }
            let (kind, flags) = (buf[at + 3], buf[at + 4]);
            match kind {
                PING if flags & ACK == 0 => {
                    answers.extend(frame(PING, ACK, 0, &buf[at + 9..at + 9 + len]))
                }
                SETTINGS if flags & ACK == 0 => answers.extend(frame(SETTINGS, ACK, 0, &[])),
                _ => {}
            }
            at += 9 + len;
        }
        buf.drain(..at);
        if !answers.is_empty() && tls.write_all(&answers).await.is_err() {
            return;
        }
    }
}

async fn flood_callee<S: AsyncWrite + Unpin>(mut tls: S) {
    let mut batch = settings(&[]);
    for _ in 0..256 {
        batch.extend(frame(PING, 0, 0, b"abusive!"));
        batch.extend(settings(&[(SETTINGS_HEADER_TABLE_SIZE, 4096)]));
    }
    while tls.write_all(&batch).await.is_ok() {}
}

/// The request timeout of web's upstream in these tests: how fast "fail fast" is.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// web's app calls api for `FOR`, 8 requests at a time, while one of api's two
/// endpoints is the abusive `how`: every request succeeds (the real endpoint) or fails
/// within the request timeout (the abusive one), some succeed, and web's sidecar's
/// memory stays bounded.
async fn an_abusive_callee(how: Callee) {
    const FOR: Duration = Duration::from_secs(12);
    let app = App::start().await;
    let allow = json!({ "Kind": "service-intentions", "Name": API,
        "Sources": [ { "Name": WEB, "Action": "allow" } ] });
    let mesh = L7Pair::start("http", app.addr, &allow).await;
    let fake = FakeApi::start(&mesh.api_leaf, how).await;
    let web = Sidecar::start(
        SidecarConfig::new(&mesh.ca, &mesh.web_leaf)
            .upstream_of(API, "http", &[fake.addr, mesh.api.inbound_addr()])
            .request_timeout_ms(REQUEST_TIMEOUT.as_millis() as u64),
    )
    .await;
    let upstream = web.upstream_addr(API);
    let meter = Meter::start(web.pid());
    let until = Instant::now() + FOR;
    let mut workers = JoinSet::new();
    for _ in 0..8 {
        workers.spawn(async move {
            let (mut ok, mut fast, mut slowest) = (0u64, 0u64, Duration::ZERO);
            let mut failures = Vec::new();
            while Instant::now() < until {
                let started = Instant::now();
                let answer = async {
                    let mut conn = KeepAlive::open(upstream).await?;
                    conn.get("/good").await
                }
                .await;
                let took = started.elapsed();
                slowest = slowest.max(took);
                match answer {
                    Ok((200, body)) if body == b"/good" => ok += 1,
                    Ok((status, _))
                        if status >= 500
                            && took < REQUEST_TIMEOUT + Duration::from_millis(1500) =>
                    {
                        fast += 1
                    }
                    Ok((status, body)) => failures.push(format!(
                        "{status} after {took:?}: {}",
                        String::from_utf8_lossy(&body)
                    )),
                    Err(e) => failures.push(format!("after {took:?}: {e:#}")),
                }
            }
            (ok, fast, slowest, failures)
        });
    }
    let (mut ok, mut fast, mut slowest, mut failures) = (0, 0, Duration::ZERO, Vec::new());
    while let Some(w) = workers.join_next().await {
        let (o, f, s, fs) = w.expect("join a worker");
        ok += o;
        fast += f;
        slowest = slowest.max(s);
        failures.extend(fs);
    }
    let measured = meter.stop().await;
    println!(
        "FIGURES h2 abusive callee {how:?}: web's app requests {ok} ok, {fast} failed within the {REQUEST_TIMEOUT:?} request timeout, {} otherwise, slowest {slowest:?}; the callee saw {} connections; web's sidecar {measured}",
        failures.len(),
        fake.connections.load(Ordering::Relaxed)
    );
    assert!(failures.is_empty(), "{how:?}: {failures:?}");
    assert!(ok > 0, "{how:?}: nothing went through the real endpoint");
    assert!(
        measured.growth_kib() < RSS_GROWTH_MAX_KIB,
        "{how:?}: web's sidecar grew by {} KiB",
        measured.growth_kib()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_window_callee_fails_fast_and_costs_bounded_memory() {
    an_abusive_callee(Callee::ZeroWindow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_callee_fails_fast_and_costs_bounded_memory() {
    an_abusive_callee(Callee::Flood).await;
}

/// The listener takes DATA frames as large as a stream's send buffer (64 KiB,
/// `ferrule::http::h2::MAX_FRAME`), so a ferrule caller sends a chunk as one frame: its
/// SETTINGS say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_takes_64_kib_frames() {
    const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
    let scene = Scene::start().await;
    let mut stream = scene
        .abuser()
        .open(&[])
        .await
        .expect("an HTTP/2 connection");
    // The server's first frame is its SETTINGS (RFC 9113, 3.4).
    let mut head = [0u8; 9];
    tokio::time::timeout(CUT_OFF_WITHIN, stream.read_exact(&mut head))
        .await
        .expect("the server's preface in time")
        .expect("the server's preface");
    assert_eq!(head[3], SETTINGS, "the first frame: {head:?}");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    tokio::time::timeout(CUT_OFF_WITHIN, stream.read_exact(&mut payload))
        .await
        .expect("the SETTINGS payload in time")
        .expect("the SETTINGS payload");
    let max_frame = payload.chunks_exact(6).find_map(|p| {
        (u16::from_be_bytes([p[0], p[1]]) == SETTINGS_MAX_FRAME_SIZE)
            .then(|| u32::from_be_bytes([p[2], p[3], p[4], p[5]]))
    });
    assert_eq!(max_frame, Some(64 * 1024), "SETTINGS {payload:?}");
}
