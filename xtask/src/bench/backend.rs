//! The backend every peer forwards to: a tiny HTTP/1.1 server with a fixed 12-byte
//! body, and a bulk source on the same port.
//!
//! Hand-written rather than hyper so that it costs next to nothing on the load
//! generator's core: it finds the end of each request head, answers, and closes when the
//! request asked for it (`Connection: close`, or HTTP/1.0 without keep-alive). A
//! connection that starts with `BULK <n>\n` gets n bytes and a close instead, which is
//! the bulk-transfer scenario through an L4 pair; `GET <…>/bulk/<n>` gets one response
//! with an n-byte body, which is the same through an L7 pair.
//!
//! [`otlp_sink`] is the collector the traced pairs export to: OTLP over HTTP, each
//! `POST /v1/traces` read whole and answered with an empty `ExportTraceServiceResponse`
//! (all accepted).

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello, mesh\n";
/// Request heads larger than this are refused: nothing in the bench sends them.
const MAX_HEAD: usize = 16 * 1024;
const BULK_CHUNK: usize = 256 * 1024;

/// Serves until the task is dropped.
pub(crate) async fn serve(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(async move {
                    let _ = connection(stream).await;
                });
            }
            // Out of descriptors during the idle-connections scenario: let some go.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

async fn connection(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        // Answer every complete head already buffered (clients may pipeline).
        while let Some(end) = find_head_end(&buf) {
            if let Some(n) = bulk_request(&buf[..end]) {
                return bulk(&mut stream, n).await;
            }
            if let Some(n) = http_bulk_request(&buf[..end]) {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                     Content-Length: {n}\r\nConnection: close\r\n\r\n"
                );
                stream.write_all(head.as_bytes()).await?;
                return bulk(&mut stream, n).await;
            }
            let close = wants_close(&buf[..end]);
            buf.drain(..end);
            stream.write_all(RESPONSE).await?;
            if close {
                stream.shutdown().await?;
                return Ok(());
            }
        }
        if buf.len() > MAX_HEAD {
            return Ok(());
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Serves OTLP/HTTP exports until the task is dropped.
pub(crate) async fn otlp_sink(listener: TcpListener) {
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = export_connection(stream).await;
            });
        }
    }
}

const EXPORTED: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";

async fn export_connection(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Some(end) = find_head_end(&buf) {
            let body = content_length(&buf[..end]).unwrap_or(0);
            if buf.len() < end + body {
                break;
            }
            buf.drain(..end + body);
            stream.write_all(EXPORTED).await?;
        }
        if buf.len() > MAX_HEAD && find_head_end(&buf).is_none() {
            return Ok(());
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn content_length(head: &[u8]) -> Option<usize> {
    String::from_utf8_lossy(head).lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// The end of the first request head (or `BULK` line), if it has all arrived.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    if buf.starts_with(b"BULK ") {
        return buf.iter().position(|&b| b == b'\n').map(|i| i + 1);
    }
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn bulk_request(head: &[u8]) -> Option<u64> {
    let line = head.strip_prefix(b"BULK ")?;
    std::str::from_utf8(line).ok()?.trim().parse().ok()
}

/// `GET <anything>/bulk/<n> HTTP/1.1`: the body size asked for.
fn http_bulk_request(head: &[u8]) -> Option<u64> {
    let line = head.split(|&b| b == b'\r').next()?;
    let target = std::str::from_utf8(line).ok()?.split(' ').nth(1)?;
    target.rsplit_once("/bulk/")?.1.parse().ok()
}

fn wants_close(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let http10 = text.lines().next().is_some_and(|l| l.ends_with("http/1.0"));
    let header = |v: &str| {
        text.lines()
            .any(|l| l.starts_with("connection:") && l.contains(v))
    };
    header("close") || (http10 && !header("keep-alive"))
}

async fn bulk(stream: &mut TcpStream, mut remaining: u64) -> io::Result<()> {
    let block = vec![0x5au8; BULK_CHUNK];
    while remaining > 0 {
        let n = usize::try_from(remaining.min(BULK_CHUNK as u64)).unwrap_or(BULK_CHUNK);
        stream.write_all(&block[..n]).await?;
        remaining -= n as u64;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_split_and_close_is_recognized() {
        let two = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n";
        let end = find_head_end(two).unwrap_or(0);
        assert!(!wants_close(&two[..end]));
        assert!(wants_close(&two[end..]));
        assert!(wants_close(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(!wants_close(
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert_eq!(bulk_request(b"BULK 1024\n"), Some(1024));
        assert_eq!(
            http_bulk_request(b"GET /api/p19/bulk/2048 HTTP/1.1\r\nHost: api\r\n\r\n"),
            Some(2048)
        );
        assert_eq!(
            http_bulk_request(b"GET /api/p19/item HTTP/1.1\r\n\r\n"),
            None
        );
        assert_eq!(
            content_length(b"POST /v1/traces HTTP/1.1\r\ncontent-length: 517\r\n\r\n"),
            Some(517)
        );
        assert_eq!(content_length(b"POST / HTTP/1.1\r\n\r\n"), None);
    }
}
