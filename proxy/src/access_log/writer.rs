//! Where rendered records go without ever holding up traffic: a bounded queue that a
//! connection only tries to push into (a full queue drops the record and counts it in
//! `ferrule_access_log_dropped_total`), drained by one writer thread that does the
//! blocking writes to stdout, stderr or the file. A file is opened for appending when
//! first needed and opened again after SIGUSR1 (logrotate's `postrotate`), or when
//! the configured path changes.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use ferrule_control::access_log::Sink;

pub const DROPPED: &str = "ferrule_access_log_dropped_total";

/// How many records may wait for the writer; a hidden knob
/// (`FERRULE_ACCESS_LOG_QUEUE`) makes it smaller for tests of a slow sink.
const QUEUE: usize = 4096;

/// One rendered record and where it goes.
struct Line {
    sink: Sink,
    text: String,
}

/// The sending side: cheap to clone; the writer thread ends when every clone is gone.
#[derive(Clone)]
pub(super) struct Writer {
    tx: SyncSender<Line>,
    /// Bumped by SIGUSR1; the writer reopens its file when it sees a new value.
    generation: Arc<AtomicU64>,
}

impl Writer {
    /// Starts the writer thread.
    pub(super) fn start() -> io::Result<Writer> {
        let capacity = std::env::var("FERRULE_ACCESS_LOG_QUEUE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(QUEUE);
        let (tx, rx) = sync_channel(capacity);
        let generation = Arc::new(AtomicU64::new(0));
        let seen = generation.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || drain(&rx, &seen))?;
        metrics::counter!(DROPPED).absolute(0);
        Ok(Writer { tx, generation })
    }

    /// Queues `text` for `sink`; never waits.
    pub(super) fn send(&self, sink: &Sink, text: String) {
        let line = Line {
            sink: sink.clone(),
            text,
        };
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => metrics::counter!(DROPPED).increment(1),
            // The writer thread died (it cannot, short of a panic): nothing to log to.
            Err(TrySendError::Disconnected(_)) => metrics::counter!(DROPPED).increment(1),
        }
    }

    /// Asks the writer to open its file again before the next record.
    pub(super) fn reopen(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }
}

/// The writer thread: one line at a time, to wherever it goes.
fn drain(rx: &Receiver<Line>, generation: &AtomicU64) {
    let mut file: Option<(PathBuf, File)> = None;
    let mut opened_at = generation.load(Ordering::Relaxed);
    let mut warned = false;
    while let Ok(line) = rx.recv() {
        let result = match &line.sink {
            Sink::Stdout => io::stdout().lock().write_all(line.text.as_bytes()),
            Sink::Stderr => io::stderr().lock().write_all(line.text.as_bytes()),
            Sink::File(path) => {
                let now = generation.load(Ordering::Relaxed);
                if now != opened_at || file.as_ref().is_none_or(|(p, _)| p != path) {
                    file = None;
                    opened_at = now;
                }
                write_file(&mut file, path, &line.text)
            }
        };
        match result {
            Ok(()) => warned = false,
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(sink = ?line.sink, error = %e, "cannot write the access log; records are lost until it works again");
            }
            Err(_) => {}
        }
    }
}

fn write_file(file: &mut Option<(PathBuf, File)>, path: &Path, text: &str) -> io::Result<()> {
    if file.is_none() {
        let opened = OpenOptions::new().create(true).append(true).open(path)?;
        *file = Some((path.to_owned(), opened));
    }
    let written = match file {
        Some((_, f)) => f.write_all(text.as_bytes()),
        None => Ok(()),
    };
    if written.is_err() {
        // Opened again for the next record: the file may have been replaced.
        *file = None;
    }
    written
}
