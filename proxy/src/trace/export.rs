//! Finished spans off the data path: the span processor only offers each span to a
//! bounded queue (never waits; a full queue drops the span and counts it), and one task
//! takes them off in batches (`max_batch`, or whatever came within `delay`) and sends
//! each batch with the OTLP exporter, one export at a time, each within its timeout.
//! A batch that could not be sent is dropped and counted too: a collector that is down
//! or slow costs the data path nothing but the offer.

use std::fmt;
use std::time::{Duration, Instant};

use metrics::counter;
use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::{mpsc, oneshot};

use super::config::Batch;
use crate::metrics::{TRACE_SPANS_DROPPED, TRACE_SPANS_EXPORTED};

/// Why a span was not exported: the `reason` label of `ferrule_trace_spans_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dropped {
    /// The queue was full: spans end faster than the collector takes them.
    QueueFull,
    /// Its batch could not be sent (the collector down, refusing, or too slow).
    ExportFailed,
}

impl Dropped {
    pub(super) fn label(self) -> &'static str {
        match self {
            Dropped::QueueFull => "queue_full",
            Dropped::ExportFailed => "export_failed",
        }
    }
}

fn count_dropped(reason: Dropped, n: u64) {
    counter!(TRACE_SPANS_DROPPED, "reason" => reason.label()).increment(n);
}

/// How often a failing export is warned about.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The provider's span processor: offers finished spans to the export task.
pub(super) struct Queue {
    spans: mpsc::Sender<SpanData>,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("capacity", &self.spans.max_capacity())
            .finish()
    }
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        match self.spans.try_send(span) {
            Ok(()) => {}
            // Closed: the export task is gone (shutting down); the span goes nowhere.
            Err(_) => count_dropped(Dropped::QueueFull, 1),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Asks the export task to send what it holds now.
#[derive(Clone)]
pub(super) struct Flusher {
    requests: mpsc::Sender<oneshot::Sender<()>>,
}

impl Flusher {
    /// Waits until every span queued before the call was sent (or dropped), at most
    /// `within`.
    pub(super) async fn flush(&self, within: Duration) {
        let (done, wait) = oneshot::channel();
        if self.requests.send(done).await.is_ok() {
            let _ = tokio::time::timeout(within, wait).await;
        }
    }
}

/// Starts the export task on the current runtime; the processor to give the provider,
/// and the handle that flushes.
pub(super) fn spawn<E>(exporter: E, batch: Batch) -> (Queue, Flusher)
where
    E: SpanExporter + 'static,
{
    counter!(TRACE_SPANS_EXPORTED).absolute(0);
    for reason in [Dropped::QueueFull, Dropped::ExportFailed] {
        counter!(TRACE_SPANS_DROPPED, "reason" => reason.label()).absolute(0);
    }
    // A batch never holds more than the queue: what waits is at most twice `max_queue`
    // (the queue, and the batch taken off it while the previous one is being sent).
    let batch = Batch {
        max_batch: batch.max_batch.min(batch.max_queue),
        ..batch
    };
    let (spans, rx) = mpsc::channel(batch.max_queue);
    let (requests, flushes) = mpsc::channel(4);
    tokio::spawn(run(exporter, rx, flushes, batch));
    (Queue { spans }, Flusher { requests })
}

async fn run<E: SpanExporter>(
    exporter: E,
    mut spans: mpsc::Receiver<SpanData>,
    mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
    batch: Batch,
) {
    let mut sender = Sender {
        exporter,
        timeout: batch.export_timeout,
        warned: None,
    };
    let mut pending: Vec<SpanData> = Vec::with_capacity(batch.max_batch);
    let mut tick = tokio::time::interval(batch.delay);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            span = spans.recv() => match span {
                Some(span) => {
                    pending.push(span);
                    if pending.len() >= batch.max_batch {
                        sender.send(std::mem::take(&mut pending)).await;
                    }
                }
                None => {
                    sender.send(std::mem::take(&mut pending)).await;
                    return;
                }
            },
            _ = tick.tick() => {
                if !pending.is_empty() {
                    sender.send(std::mem::take(&mut pending)).await;
                }
            }
            Some(done) = flushes.recv() => {
                while let Ok(span) = spans.try_recv() {
                    pending.push(span);
                    if pending.len() >= batch.max_batch {
                        sender.send(std::mem::take(&mut pending)).await;
                    }
                }
                sender.send(std::mem::take(&mut pending)).await;
                let _ = done.send(());
            }
        }
    }
}

struct Sender<E> {
    exporter: E,
    timeout: Duration,
    warned: Option<Instant>,
}

impl<E: SpanExporter> Sender<E> {
    async fn send(&mut self, batch: Vec<SpanData>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let failure = match tokio::time::timeout(self.timeout, self.exporter.export(batch)).await {
            Ok(Ok(())) => {
                counter!(TRACE_SPANS_EXPORTED).increment(n);
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        count_dropped(Dropped::ExportFailed, n);
        if self.warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            self.warned = Some(Instant::now());
            tracing::warn!(spans = n, error = %failure, "span export failed; spans dropped (ferrule_trace_spans_dropped_total)");
        }
    }
}
