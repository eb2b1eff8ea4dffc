//! Where rendered records go without ever holding up traffic: a bounded queue that a
//! connection only pushes into (a full queue drops the record and counts it in
//! `ferrule_access_log_dropped_total`), emptied by one writer thread that does the
//! blocking writes to stdout, stderr or the file. Like Envoy's file logs, records are
//! written in batches: the writer wakes every [`FLUSH_EVERY`], or sooner when the queue
//! is a quarter full, and writes what came with one `write` per sink; pushing a record
//! costs no system call and no thread switch. A file is opened for appending when
//! first needed and opened again after SIGUSR1 (logrotate's `postrotate`), or when the
//! configured path changes. [`Writer::flush`] writes what is queued at shutdown.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferrule_control::access_log::{AccessLogs, Sink};

pub const DROPPED: &str = "ferrule_access_log_dropped_total";

/// How many records may wait for the writer; a hidden knob
/// (`FERRULE_ACCESS_LOG_QUEUE`) makes it smaller for tests of a slow sink.
const QUEUE: usize = 4096;
/// How long a record may wait before the writer writes it.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// One rendered record and the configuration that says where it goes (shared, so a
/// record costs no copy of the sink's path).
struct Line {
    logs: Arc<AccessLogs>,
    text: String,
}

impl Line {
    fn sink(&self) -> &Sink {
        &self.logs.sink
    }
}

struct Queue {
    lines: Vec<Line>,
    /// Flushes asked for, and flushes done: a flush is done when the writer has
    /// written everything queued when it was asked.
    asked: u64,
    done: u64,
}

struct Shared {
    queue: Mutex<Queue>,
    /// The writer waits on this (with a timeout); a quarter-full queue or a flush wakes it.
    wake: Condvar,
    /// Flushers wait on this.
    flushed: Condvar,
    capacity: usize,
    /// Bumped by SIGUSR1; the writer reopens its file when it sees a new value.
    generation: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock()
    }
}

/// The sending side: cheap to clone; the writer thread lives as long as the process.
#[derive(Clone)]
pub(super) struct Writer {
    shared: Arc<Shared>,
}

impl Writer {
    /// Starts the writer thread.
    pub(super) fn start() -> io::Result<Writer> {
        let capacity = std::env::var("FERRULE_ACCESS_LOG_QUEUE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(QUEUE)
            .max(1);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                lines: Vec::with_capacity(capacity.min(QUEUE)),
                asked: 0,
                done: 0,
            }),
            wake: Condvar::new(),
            flushed: Condvar::new(),
            capacity,
            generation: AtomicU64::new(0),
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || drain(&writer))?;
        metrics::counter!(DROPPED).absolute(0);
        Ok(Writer { shared })
    }

    /// Queues `text` for the sink of `logs`; never waits for the writer.
    pub(super) fn send(&self, logs: &Arc<AccessLogs>, text: String) {
        let mut queue = self.shared.lock();
        if queue.lines.len() >= self.shared.capacity {
            drop(queue);
            metrics::counter!(DROPPED).increment(1);
            return;
        }
        queue.lines.push(Line {
            logs: logs.clone(),
            text,
        });
        let wake = queue.lines.len() == (self.shared.capacity / 4).max(1);
        drop(queue);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// Asks the writer to open its file again before the next record.
    pub(super) fn reopen(&self) {
        self.shared.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Blocks until what is queued now has been written, or `within` has passed.
    pub(super) fn flush(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let mut queue = self.shared.lock();
        queue.asked += 1;
        let wanted = queue.asked;
        self.shared.wake.notify_one();
        while queue.done < wanted {
            if self
                .shared
                .flushed
                .wait_until(&mut queue, deadline)
                .timed_out()
            {
                return;
            }
        }
    }
}

/// The writer thread: every [`FLUSH_EVERY`] (or when woken), what has queued, one
/// write per run of lines for the same sink.
fn drain(shared: &Shared) {
    let mut file: Option<(PathBuf, File)> = None;
    let mut opened_at = shared.generation.load(Ordering::Relaxed);
    let mut warned = false;
    let mut batch: Vec<Line> = Vec::new();
    let mut buffer = String::new();
    loop {
        let asked = {
            let mut queue = shared.lock();
            if queue.asked == queue.done {
                let _ = shared.wake.wait_for(&mut queue, FLUSH_EVERY);
            }
            std::mem::swap(&mut batch, &mut queue.lines);
            queue.asked
        };
        let mut lines = batch.drain(..).peekable();
        while let Some(first) = lines.next() {
            buffer.clear();
            buffer.push_str(&first.text);
            while let Some(next) = lines.next_if(|l| l.sink() == first.sink()) {
                buffer.push_str(&next.text);
            }
            let result = match first.sink() {
                Sink::Stdout => io::stdout().lock().write_all(buffer.as_bytes()),
                Sink::Stderr => io::stderr().lock().write_all(buffer.as_bytes()),
                Sink::File(path) => {
                    let now = shared.generation.load(Ordering::Relaxed);
                    if now != opened_at || file.as_ref().is_none_or(|(p, _)| p != path) {
                        file = None;
                        opened_at = now;
                    }
                    write_file(&mut file, path, &buffer)
                }
            };
            match result {
                Ok(()) => warned = false,
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(sink = ?first.sink(), error = %e, "cannot write the access log; records are lost until it works again");
                }
                Err(_) => {}
            }
        }
        drop(lines);
        // Keep the batch's allocation, within reason, for the next swap.
        if batch.capacity() > shared.capacity.min(QUEUE) {
            batch = Vec::new();
        }
        if buffer.capacity() > 1 << 20 {
            buffer = String::new();
        }
        let mut queue = shared.lock();
        if queue.done < asked {
            queue.done = asked;
            shared.flushed.notify_all();
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
