//! Moving bytes between two streams until both sides are done, or until told to stop.
//!
//! A proxied connection spends most of its life idle, so it owns no copy buffer: each
//! read lands in a buffer on the stack of the poll (64 KiB, so bulk transfers move in
//! large reads and few syscalls) and is written straight on. Only bytes the writer
//! could not take yet are kept, on the heap, until they are written. An idle
//! connection costs its sockets, its TLS state and its task, not 2 × 8 KiB of buffers
//! as with `tokio::io::copy_bidirectional`.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest read one poll makes.
const READ_CHUNK: usize = 64 * 1024;

/// How a splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spliced {
    /// Both directions reached end of stream, or one side failed.
    Done,
    /// Intentions now deny the connection; the caller drops both streams, which closes
    /// them.
    Revoked,
    /// Nothing moved either way for the idle timeout.
    Idle,
}

/// Copies both ways, passing each half-close on as a shutdown of the other side's
/// write half, so protocols that signal "done" with a half-close keep working. If
/// `stop` resolves first, the copy ends with its answer.
pub async fn splice<A, B, R>(a: &mut A, b: &mut B, stop: R) -> Spliced
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
    R: Future<Output = Spliced>,
{
    tokio::select! {
        result = copy_both_ways(a, b) => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            Spliced::Done
        }
        stopped = stop => stopped,
    }
}

/// Copies a -> b and b -> a; done when both directions are, or on the first error.
async fn copy_both_ways<A, B>(a: &mut A, b: &mut B) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_to_b, mut b_to_a) = (Pump::default(), Pump::default());
    std::future::poll_fn(|cx| {
        let forward = a_to_b.poll(cx, &mut *a, &mut *b)?;
        let backward = b_to_a.poll(cx, &mut *b, &mut *a)?;
        if forward.is_ready() && backward.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// One direction of a splice.
#[derive(Default)]
struct Pump {
    /// Read but not yet written; empty (and unallocated) whenever the writer keeps up.
    pending: Vec<u8>,
    written: usize,
    /// Something was written since the last flush.
    need_flush: bool,
    read_done: bool,
    done: bool,
}

impl Pump {
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            while self.written < self.pending.len() {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.pending[self.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
                self.need_flush = true;
            }
            if !self.pending.is_empty() {
                // Caught up: give the memory back rather than keep it for an idle spell.
                self.pending = Vec::new();
                self.written = 0;
            }
            if self.read_done {
                ready!(Pin::new(&mut *w).poll_flush(cx))?;
                // The half-close goes on to the other side's write half.
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let mut storage = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut storage);
            match Pin::new(&mut *r).poll_read(cx, &mut buf) {
                Poll::Pending => {
                    if self.need_flush {
                        ready!(Pin::new(&mut *w).poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let data = buf.filled();
            if data.is_empty() {
                self.read_done = true;
                continue;
            }
            let mut off = 0;
            while off < data.len() {
                match Pin::new(&mut *w).poll_write(cx, &data[off..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        off += n;
                        self.need_flush = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // The writer is full: keep the rest until it drains.
                        self.pending.extend_from_slice(&data[off..]);
                        self.written = 0;
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn half_close_is_passed_on_and_replies_still_flow() {
        let (mut client, mut proxy_a) = tokio::io::duplex(64);
        let (mut proxy_b, mut server) = tokio::io::duplex(64);
        let task = tokio::spawn(async move {
            splice(&mut proxy_a, &mut proxy_b, std::future::pending()).await
        });
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        server.write_all(b"reply after half-close").await.unwrap();
        server.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply after half-close");
        assert_eq!(task.await.unwrap(), Spliced::Done);
    }

    #[tokio::test]
    async fn a_slow_writer_loses_no_bytes() {
        // Small duplex buffers force the pending path on every read.
        let (mut client, mut proxy_a) = tokio::io::duplex(1024);
        let (mut proxy_b, mut server) = tokio::io::duplex(512);
        let task = tokio::spawn(async move {
            splice(&mut proxy_a, &mut proxy_b, std::future::pending()).await
        });
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expected = sent.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert!(
            got == expected,
            "{} bytes arrived of {}",
            got.len(),
            expected.len()
        );
        drop(server);
        drop(writer.await.unwrap());
        assert_eq!(task.await.unwrap(), Spliced::Done);
    }

    #[tokio::test]
    async fn a_stop_ends_the_copy_with_its_reason() {
        let (_client, mut proxy_a) = tokio::io::duplex(64);
        let (mut proxy_b, _server) = tokio::io::duplex(64);
        let outcome = splice(&mut proxy_a, &mut proxy_b, async { Spliced::Revoked }).await;
        assert_eq!(outcome, Spliced::Revoked);
    }
}
