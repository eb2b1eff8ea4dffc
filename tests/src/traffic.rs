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
