//! Moving bytes between two streams until both sides are done, or until told to stop.

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite};

/// How a splice ended.
#[derive(Debug, PartialEq, Eq)]
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
        result = tokio::io::copy_bidirectional(a, b) => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            Spliced::Done
        }
        stopped = stop => stopped,
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
    async fn a_stop_ends_the_copy_with_its_reason() {
        let (_client, mut proxy_a) = tokio::io::duplex(64);
        let (mut proxy_b, _server) = tokio::io::duplex(64);
        let outcome = splice(&mut proxy_a, &mut proxy_b, async { Spliced::Revoked }).await;
        assert_eq!(outcome, Spliced::Revoked);
    }
}
