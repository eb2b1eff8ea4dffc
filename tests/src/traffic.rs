//! Steady traffic for the duration of a change: `curl` in a loop, each request on a new
//! connection (so every request is a new mesh connection and a fresh handshake and
//! authorization), counting what succeeded and keeping what failed.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clients::curl;

/// What a traffic loop saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub ok: u64,
    /// One line per failed request: curl's exit code, HTTP status and stderr.
    pub failures: Vec<String>,
}

impl Tally {
    /// Prints the tally under `what` (shown with the test's output) and fails if any
    /// request failed.
    pub fn assert_none_failed(&self, what: &str) {
        eprintln!(
            "{what}: {} requests ok, {} failed",
            self.ok,
            self.failures.len()
        );
        assert!(
            self.failures.is_empty(),
            "{what}: {} of {} requests failed: {:#?}",
            self.failures.len(),
            self.ok + self.failures.len() as u64,
            self.failures
        );
    }
}

pub struct CurlLoop {
    tally: Arc<Mutex<Tally>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl CurlLoop {
    /// Starts requesting `url` back to back; a request succeeds when it gets 200 and
    /// `expected_body`.
    pub fn start(url: String, expected_body: &'static str) -> CurlLoop {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let tally = tally.clone();
            let stop = stop.clone();
            async move {
                while !stop.is_cancelled() {
                    let outcome = match curl(&url, &["--max-time", "5"]).await {
                        Ok(r) if r.is_ok() && r.body == expected_body.as_bytes() => Ok(()),
                        Ok(r) => Err(format!(
                            "curl exit {:?}, HTTP {}, {} body bytes: {}",
                            r.exit_code,
                            r.http_code,
                            r.body.len(),
                            r.stderr.trim()
                        )),
                        Err(e) => Err(format!("curl did not run: {e:#}")),
                    };
                    let mut tally = tally.lock();
                    match outcome {
                        Ok(()) => tally.ok += 1,
                        Err(line) => tally.failures.push(line),
                    }
                }
            }
        });
        CurlLoop { tally, stop, task }
    }

    /// The tally so far.
    pub fn tally(&self) -> Tally {
        self.tally.lock().clone()
    }

    /// Waits until at least `more` further requests succeeded (proof that traffic was
    /// really flowing through a period), for at most `within`.
    pub async fn wait_for_more(&self, more: u64, within: Duration) -> anyhow::Result<()> {
        let target = self.tally().ok + more;
        crate::wait::eventually("traffic flows", within, || async {
            let tally = self.tally();
            anyhow::ensure!(
                tally.ok >= target,
                "{} ok so far, waiting for {target}; failures: {:?}",
                tally.ok,
                tally.failures
            );
            Ok(())
        })
        .await
    }

    /// Stops after the request in flight and returns the final tally.
    pub async fn stop(mut self) -> Tally {
        self.stop.cancel();
        let _ = (&mut self.task).await;
        self.tally()
    }
}

impl Drop for CurlLoop {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Steady load from inside the test process, for rates curl cannot reach: `workers`
/// loops, each opening a connection, sending `per_connection` keep-alive GETs on it
/// (every answer checked: 200 and the expected body), then opening the next, so new
/// mesh handshakes keep happening too.
pub struct Load {
    tally: Arc<Mutex<Tally>>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    started: tokio::time::Instant,
}

impl Load {
    pub fn start(
        addr: std::net::SocketAddr,
        workers: usize,
        per_connection: usize,
        expected_body: &'static [u8],
    ) -> Load {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = CancellationToken::new();
        let tasks = (0..workers)
            .map(|_| {
                let (tally, stop) = (tally.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.is_cancelled() {
                        let mut conn = match crate::clients::KeepAlive::open(addr).await {
                            Ok(conn) => conn,
                            Err(e) => {
                                tally.lock().failures.push(format!("connect: {e:#}"));
                                continue;
                            }
                        };
                        for _ in 0..per_connection {
                            if stop.is_cancelled() {
                                break;
                            }
                            let outcome = conn.get("/").await;
                            let mut tally = tally.lock();
                            match outcome {
                                Ok((200, body)) if body == expected_body => tally.ok += 1,
                                Ok((status, body)) => {
                                    tally
                                        .failures
                                        .push(format!("HTTP {status}, {} body bytes", body.len()));
                                    break;
                                }
                                Err(e) => {
                                    tally.failures.push(format!("{e:#}"));
                                    break;
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            tally,
            stop,
            tasks,
            started: tokio::time::Instant::now(),
        }
    }

    /// The tally so far.
    pub fn tally(&self) -> Tally {
        self.tally.lock().clone()
    }

    /// Stops after the requests in flight; the final tally and requests per second.
    pub async fn stop(mut self) -> (Tally, f64) {
        self.stop.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        let tally = self.tally();
        let rate = tally.ok as f64 / self.started.elapsed().as_secs_f64();
        (tally, rate)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
