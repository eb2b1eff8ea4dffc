//! Access logs: one record per L4 connection (when it ends) and per L7 request, in both
//! directions, and a listener record for a connection refused before any request (a
//! failed TLS handshake, an L4 denial) unless `DisableListenerLogs`. What a record
//! looks like and where it goes is the snapshot's (`ferrule_control::access_log`),
//! read when the connection or request starts, so a change applies to new records.
//! `record` holds a record's facts and renders them, `time` formats `%START_TIME%`,
//! `writer` takes rendered lines off the data path. See
//! `docs/consul-semantics.md#access-logs`.

pub mod record;
mod time;
mod writer;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use ferrule_control::access_log::AccessLogs;
use ferrule_control::model::Snapshot;

pub use self::record::{Record, RequestFacts};
pub use self::writer::DROPPED;
use self::writer::Writer;

/// The process's one writer (each line carries its sink, so sidecars sharing a process,
/// as in `ferrule demo`, share it too), started with the first record.
static WRITER: OnceLock<Option<Writer>> = OnceLock::new();

fn writer() -> Option<&'static Writer> {
    WRITER
        .get_or_init(|| match Writer::start() {
            Ok(writer) => Some(writer),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the access-log writer; no access logs");
                None
            }
        })
        .as_ref()
}

/// Renders `record` and queues it; never waits.
fn write(logs: &Arc<AccessLogs>, record: &Record) {
    if let Some(writer) = writer() {
        writer.send(logs, record::render(&logs.format, record));
    }
}

/// Writes what is queued (at shutdown, once requests are drained), waiting at most
/// `within`.
pub async fn flush(within: Duration) {
    let Some(writer) = WRITER.get().and_then(Option::as_ref) else {
        return;
    };
    let _ = tokio::task::spawn_blocking(move || writer.flush(within)).await;
}

/// Reopens file logs on every SIGUSR1, for as long as the returned task runs.
pub async fn reopen_on_sigusr1() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
            return std::future::pending().await;
        };
        while usr1.recv().await.is_some() {
            tracing::info!("SIGUSR1: reopening access log files");
            if let Some(writer) = writer() {
                writer.reopen();
            }
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await;
}

/// What kind of record a finished connection makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// None: an L7 connection (its requests have the records), or a probe.
    Quiet,
    /// One record for the whole (L4) connection.
    L4,
    /// One record for an L7 request.
    Request,
    /// Refused before any request.
    Listener,
}

/// A connection's or request's record while it is open: written when dropped. Free
/// when logging is off (nothing is collected).
pub struct Pending {
    open: Option<Box<Open>>,
}

struct Open {
    logs: Arc<AccessLogs>,
    record: Record,
    started: Instant,
    kind: Kind,
    bytes: Option<crate::metrics::Bytes>,
    /// The counters were taken on the upstream side: what they call received was sent
    /// by the downstream.
    swapped: bool,
}

impl Pending {
    /// Starts a record if `snapshot` says access logs are on.
    pub fn start(snapshot: &Snapshot, kind: Kind) -> Pending {
        let open = snapshot.access_logs.as_ref().map(|logs| {
            Box::new(Open {
                logs: logs.clone(),
                record: Record::new(SystemTime::now()),
                started: Instant::now(),
                kind,
                bytes: None,
                swapped: false,
            })
        });
        Pending { open }
    }

    /// A record that is never written.
    pub fn off() -> Pending {
        Pending { open: None }
    }

    /// The record's facts, to fill in; `None` when logging is off.
    pub fn record(&mut self) -> Option<&mut Record> {
        self.open.as_mut().map(|o| &mut o.record)
    }

    pub fn is_on(&self) -> bool {
        self.open.is_some()
    }

    pub fn set_kind(&mut self, kind: Kind) {
        if let Some(open) = &mut self.open {
            open.kind = kind;
        }
    }

    /// The connection's byte counters, read when the record is written.
    pub fn count_bytes(&mut self, bytes: &crate::metrics::Bytes) {
        if let Some(open) = &mut self.open {
            open.bytes = Some(bytes.clone());
        }
    }

    /// As [`Pending::count_bytes`], with counters of the upstream side of the
    /// connection (outbound: what is read from the mesh is sent to the app).
    pub fn count_upstream_bytes(&mut self, bytes: &crate::metrics::Bytes) {
        if let Some(open) = &mut self.open {
            open.bytes = Some(bytes.clone());
            open.swapped = true;
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(mut open) = self.open.take() else {
            return;
        };
        match open.kind {
            Kind::Quiet => return,
            Kind::Listener if open.logs.disable_listener_logs => return,
            Kind::L4 | Kind::Request | Kind::Listener => {}
        }
        open.record.duration = open.started.elapsed();
        if let Some(bytes) = &open.bytes {
            let (rx, tx) = bytes.totals();
            let (received, sent) = if open.swapped { (tx, rx) } else { (rx, tx) };
            open.record.bytes_received = received;
            open.record.bytes_sent = sent;
        }
        write(&open.logs, &open.record);
    }
}
