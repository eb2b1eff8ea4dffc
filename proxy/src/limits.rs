//! What one peer can hold on to: a listener serves a bounded number of connections at
//! once, and a connection that carries nothing for its idle timeout is closed.
//!
//! Past its limit a listener stops accepting, so new connections wait in the kernel's
//! backlog (and are refused by the kernel once that is full) instead of costing
//! memory; every time that happens it is counted. Idleness is seen through a flag each
//! read or write sets, checked four times per timeout: a connection is closed between
//! one and one and a quarter timeouts after its last byte, and the data path pays one
//! relaxed store per I/O call for it.
//!
//! A peer that stops taking our bytes is a different case: nothing moves, but the
//! connection is not idle, it is stuck, and a graceful close (a GOAWAY to write) would
//! wait on it forever. `WriteStall` bounds that wait on the HTTP connections, whose
//! protocol makes us write whatever the peer does (PING and SETTINGS ACKs).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics;

/// At most `max` connections of one listener at a time.
#[derive(Clone)]
pub struct ConnectionLimit {
    listener: String,
    permits: Arc<Semaphore>,
    warned: Arc<AtomicBool>,
}

impl ConnectionLimit {
    pub fn new(listener: String, max: usize) -> ConnectionLimit {
        ConnectionLimit {
            listener,
            permits: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            warned: Arc::default(),
        }
    }

    /// Room for one more connection, waiting (and counting the wait) when the
    /// listener is full. The permit goes back when the connection's task drops it.
    pub async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Some(permit);
        }
        metrics::connections_limited(&self.listener);
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(listener = %self.listener, "connection limit reached; new connections wait in the backlog (logged once)");
        }
        // The semaphore is never closed, so this only fails if it were.
        self.permits.clone().acquire_owned().await.ok()
    }
}

/// Whether a connection carried a byte since the watchdog last looked.
#[derive(Clone, Default)]
pub struct Activity(Arc<AtomicBool>);

impl Activity {
    fn touch(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Resolves once `activity` has seen nothing for `timeout` (never for `None`).
pub async fn idle(activity: Activity, timeout: Option<Duration>) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    let tick = (timeout / 4).max(Duration::from_millis(1));
    let mut quiet = 0;
    loop {
        tokio::time::sleep(tick).await;
        if activity.0.swap(false, Ordering::Relaxed) {
            quiet = 0;
        } else {
            quiet += 1;
            if quiet >= 4 {
                return;
            }
        }
    }
}

/// A stream that marks its `Activity` on every read and write that moves bytes.
pub struct Watched<S> {
    inner: S,
    activity: Activity,
}

impl<S> Watched<S> {
    pub fn new(inner: S) -> Watched<S> {
        Watched {
            inner,
            activity: Activity::default(),
        }
    }

    pub fn activity(&self) -> Activity {
        self.activity.clone()
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if poll.is_ready() {
            self.activity.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        if poll.is_ready() {
            self.activity.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How long a write may wait for a peer that takes none of our bytes before the
/// connection fails. A sidecar (or any HTTP client) that is alive reads: HTTP/2 flow
/// control stops one slow stream long before it fills the socket, so a socket that
/// takes nothing for this long belongs to a peer that stopped reading altogether (a
/// PING or SETTINGS flood whose ACKs back up, a reader that reads nothing).
pub const WRITE_STALL: Duration = Duration::from_secs(20);

/// A stream whose writes fail with `TimedOut` once one has waited `limit` without the
/// peer taking a byte. Any write or flush that completes starts the count afresh.
pub struct WriteStall<S> {
    inner: S,
    limit: Duration,
    blocked: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteStall<S> {
    pub fn new(inner: S, limit: Duration) -> WriteStall<S> {
        WriteStall {
            inner,
            limit,
            blocked: None,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// After a write came back pending: pending still, or the error once the peer has
    /// taken nothing for `limit`. The timer wakes the task, which writes again.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let blocked = self
            .blocked
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match blocked.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer took none of our bytes for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn moved<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Pending => self.stalled(cx),
            ready => {
                self.blocked = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteStall<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteStall<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        self.moved(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.moved(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.moved(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.moved(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn idle_fires_after_the_timeout_of_silence_and_not_before() {
        let (a, _b) = tokio::io::duplex(64);
        let mut watched = Watched::new(a);
        let timeout = Duration::from_secs(8);
        let watchdog = tokio::spawn(idle(watched.activity(), Some(timeout)));
        // Traffic every 3 s keeps it alive for a minute.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            watched.write_all(b"x").await.unwrap();
            assert!(!watchdog.is_finished());
        }
        let quiet_from = tokio::time::Instant::now();
        watchdog.await.unwrap();
        let quiet = quiet_from.elapsed();
        assert!(
            quiet >= timeout && quiet <= timeout * 5 / 4 + timeout / 4,
            "{quiet:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_timeout_never_fires() {
        let watchdog = tokio::spawn(idle(Activity::default(), None));
        tokio::time::sleep(Duration::from_secs(86_400)).await;
        assert!(!watchdog.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_takes_fails_after_the_limit_and_not_before() {
        let (a, mut b) = tokio::io::duplex(16);
        let limit = Duration::from_secs(20);
        let mut stalled = WriteStall::new(a, limit);
        // A peer that reads, slowly, keeps it going well past the limit.
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 16];
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_secs(15)).await;
                let _ = b.read(&mut buf).await;
            }
            b
        });
        stalled.write_all(&[0u8; 16 * 8]).await.unwrap();
        let _b = reader.await.unwrap();
        // Then it stops reading: the next full buffer fails at the limit.
        let started = tokio::time::Instant::now();
        let error = stalled.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), limit);
    }

    #[tokio::test]
    async fn a_full_listener_makes_the_next_connection_wait_for_a_permit() {
        let limit = ConnectionLimit::new("test".into(), 2);
        let first = limit.acquire().await.unwrap();
        let _second = limit.acquire().await.unwrap();
        let waiting = tokio::spawn({
            let limit = limit.clone();
            async move { limit.acquire().await.is_some() }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        assert!(waiting.await.unwrap());
    }
}
