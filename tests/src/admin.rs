//! A sidecar's admin listener: `/ready`, `/metrics` and `/config`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::http;
use crate::metrics::{Metrics, Selector};
use crate::wait::eventually;

/// The admin endpoints of one sidecar, named for error messages.
#[derive(Debug, Clone)]
pub struct Admin {
    pub addr: SocketAddr,
    pub name: String,
}

impl Admin {
    /// `GET /ready`: the status code and body.
    pub async fn ready(&self) -> anyhow::Result<(u16, String)> {
        let answer = http::get(self.addr, "/ready").await?;
        Ok((answer.status, answer.body))
    }

    /// One scrape of `/metrics`.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        let answer = http::get(self.addr, "/metrics").await?;
        anyhow::ensure!(
            answer.status == 200,
            "/metrics answered {}: {}",
            answer.status,
            answer.body
        );
        Ok(Metrics::parse(&answer.body))
    }

    /// The current value of one metric (see `Metrics::get`).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        Ok(self.metrics().await?.get(name, labels))
    }

    /// Scrapes until the metric's value satisfies `expected`, for at most `within`;
    /// returns that value. The error shows every sample of the metric.
    pub async fn wait_for_metric(
        &self,
        metric: Selector<'_>,
        expected: impl Fn(f64) -> bool,
        within: Duration,
    ) -> anyhow::Result<f64> {
        eventually(&format!("{metric} on {}", self.name), within, || async {
            let metrics = self.metrics().await?;
            let value = metrics.get(metric.name, metric.labels);
            anyhow::ensure!(
                expected(value),
                "{metric} is {value}; all samples:\n{}",
                metrics.show(metric.name)
            );
            Ok(value)
        })
        .await
    }

    /// Polls `/ready` until it is 200, for at most `within`; fails early if `child`
    /// exits. Errors carry `log()`, the process's stderr.
    pub async fn wait_ready(
        &self,
        child: &mut std::process::Child,
        within: Duration,
        log: impl Fn() -> String,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!(
                    "ferrule exited with {status} before it was ready; stderr:\n{}",
                    log()
                );
            }
            let last = match self.ready().await {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => format!("{code} {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "/ready was not 200 within {within:?} (last: {last}); stderr:\n{}",
                    log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /config`: the snapshot in force, as JSON.
    pub async fn config(&self) -> anyhow::Result<serde_json::Value> {
        http::get(self.addr, "/config").await?.json()
    }
}
