//! The server name of a TLS ClientHello, read without terminating TLS: the gateway
//! buffers the first handshake record(s) of a connection, finds the `server_name`
//! extension (RFC 6066) in the ClientHello (RFC 8446 section 4.1.2, the same layout
//! as TLS 1.2's), and forwards every byte it read, untouched, to wherever the name
//! routes.
//!
//! Bounded on every side: at most [`MAX_HELLO`] bytes of ClientHello and
//! [`MAX_BUFFERED`] bytes in all, within the caller's timeout. The parser checks every
//! length against what is there and never indexes past it: any byte string is either a
//! ClientHello, "need more", or refused with a reason (the property tests feed it
//! arbitrary bytes).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest ClientHello read (the handshake message, without its 4-byte header):
/// a TLS record's largest plaintext, which even a hello with post-quantum key shares
/// fits in many times over.
pub const MAX_HELLO: usize = 16 * 1024;

/// The most bytes buffered before the ClientHello is whole: the hello and the headers
/// of the records carrying it, fragmented reasonably.
pub const MAX_BUFFERED: usize = MAX_HELLO + 1024;

/// TLS record content type of a handshake record.
const HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// The `server_name` extension.
const SERVER_NAME: u16 = 0;
/// A `server_name` entry holding a host name.
const HOST_NAME: u8 = 0;
/// The largest record plaintext (2^14).
const MAX_RECORD: usize = 16 * 1024;

/// What a ClientHello says that the gateway routes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The host name, lower case; `None` when the hello names none.
    pub sni: Option<String>,
}

/// Why the bytes are no ClientHello the gateway can route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("not a TLS handshake")]
    NotTls,
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    #[error("ClientHello larger than {MAX_HELLO} bytes")]
    TooLarge,
    #[error("no whole ClientHello within the timeout")]
    Timeout,
    /// The peer closed before sending a byte (a TCP health check).
    #[error("closed before any byte")]
    Closed,
    #[error("closed in the middle of the ClientHello")]
    Truncated,
}

/// Parses what has arrived so far: `Ok(None)` while the ClientHello is not whole yet.
pub fn parse(buf: &[u8]) -> Result<Option<ClientHello>, HelloError> {
    let Some(message) = handshake_message(buf)? else {
        return Ok(None);
    };
    client_hello(&message).map(Some)
}

/// The first handshake message, reassembled from the records carrying it, once whole.
fn handshake_message(buf: &[u8]) -> Result<Option<Vec<u8>>, HelloError> {
    let mut message = Vec::new();
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        // The first bytes tell plaintext from TLS at once: no need to wait for more.
        if let Some(&kind) = rest.first()
            && kind != HANDSHAKE
        {
            return Err(if at == 0 {
                HelloError::NotTls
            } else {
                HelloError::Malformed("a record of another type inside the ClientHello")
            });
        }
        if let Some(&major) = rest.get(1)
            && major != 3
        {
            return Err(if at == 0 {
                HelloError::NotTls
            } else {
                HelloError::Malformed("a record of another protocol version")
            });
        }
        let Some(header) = rest.get(..5) else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 {
            return Err(HelloError::Malformed("an empty handshake record"));
        }
        if len > MAX_RECORD {
            return Err(HelloError::Malformed("a record longer than TLS allows"));
        }
        if at + 5 + len > MAX_BUFFERED {
            return Err(HelloError::TooLarge);
        }
        // What has arrived of the record already tells a wrong message type or size.
        let end = rest.len().min(5 + len);
        message.extend_from_slice(&rest[5..end]);
        if let Some(whole) = whole_message(&message)? {
            return Ok(Some(whole.to_vec()));
        }
        if end < 5 + len {
            return Ok(None);
        }
        at += 5 + len;
    }
}

/// The message, header included, once `message` holds all of it (trailing bytes are
/// another message's).
fn whole_message(message: &[u8]) -> Result<Option<&[u8]>, HelloError> {
    let Some(header) = message.get(..4) else {
        return Ok(None);
    };
    if header[0] != CLIENT_HELLO {
        return Err(HelloError::Malformed(
            "the first handshake message is no ClientHello",
        ));
    }
    let len =
        (usize::from(header[1]) << 16) | (usize::from(header[2]) << 8) | usize::from(header[3]);
    if len > MAX_HELLO {
        return Err(HelloError::TooLarge);
    }
    Ok(message.get(..4 + len))
}

/// A cursor over a byte string that refuses to read past its end.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        if n > self.buf.len() {
            return Err(HelloError::Malformed(what));
        }
        let (taken, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(taken)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, HelloError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, HelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let len = usize::from(self.u8(what)?);
        self.take(len, what)
    }

    /// A vector with a two-byte length.
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let len = usize::from(self.u16(what)?);
        self.take(len, what)
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// The ClientHello's body: version, random, session ID, cipher suites, compression
/// methods, and the extensions (which TLS 1.2 allows to be absent).
fn client_hello(message: &[u8]) -> Result<ClientHello, HelloError> {
    let mut r = Reader {
        buf: message.get(4..).unwrap_or_default(),
    };
    r.take(2 + 32, "no version and random")?;
    if r.vec8("a short session ID")?.len() > 32 {
        return Err(HelloError::Malformed("a session ID longer than 32 bytes"));
    }
    let suites = r.vec16("short cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(HelloError::Malformed("an odd or empty cipher suite list"));
    }
    if r.vec8("short compression methods")?.is_empty() {
        return Err(HelloError::Malformed("no compression method"));
    }
    if r.is_empty() {
        return Ok(ClientHello { sni: None });
    }
    let mut extensions = Reader {
        buf: r.vec16("short extensions")?,
    };
    if !r.is_empty() {
        return Err(HelloError::Malformed("bytes after the extensions"));
    }
    let mut sni = None;
    let mut seen = false;
    while !extensions.is_empty() {
        let kind = extensions.u16("a short extension")?;
        let data = extensions.vec16("a short extension")?;
        if kind == SERVER_NAME {
            if seen {
                return Err(HelloError::Malformed("two server_name extensions"));
            }
            seen = true;
            sni = server_name(data)?;
        }
    }
    Ok(ClientHello { sni })
}

/// The first host name of a `server_name` extension, checked and lower-cased.
fn server_name(data: &[u8]) -> Result<Option<String>, HelloError> {
    let mut ext = Reader { buf: data };
    let mut list = Reader {
        buf: ext.vec16("a short server name list")?,
    };
    if !ext.is_empty() || list.is_empty() {
        return Err(HelloError::Malformed("a bad server name list"));
    }
    let mut host = None;
    while !list.is_empty() {
        let kind = list.u8("a short server name")?;
        let name = list.vec16("a short server name")?;
        if kind == HOST_NAME && host.is_none() {
            host = Some(host_name(name)?);
        }
    }
    Ok(host)
}

/// A DNS host name: letters, digits, `-`, `_` and dots, up to 253 characters.
fn host_name(name: &[u8]) -> Result<String, HelloError> {
    let ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if name.is_empty() || name.len() > 253 || !name.iter().all(ok) {
        return Err(HelloError::Malformed("a server name that is no host name"));
    }
    Ok(name
        .iter()
        .map(|b| char::from(b.to_ascii_lowercase()))
        .collect())
}

/// Reads from `stream` until the ClientHello is whole, within `timeout`: the hello and
/// every byte read (to be forwarded as is), or why not.
pub async fn read_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> (Vec<u8>, Result<ClientHello, HelloError>) {
    let mut buf = Vec::with_capacity(2048);
    let read = tokio::time::timeout(timeout, read_until_whole(stream, &mut buf)).await;
    let result = read.unwrap_or(Err(HelloError::Timeout));
    (buf, result)
}

async fn read_until_whole<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<ClientHello, HelloError> {
    let mut chunk = [0u8; 4096];
    loop {
        let room = (MAX_BUFFERED - buf.len()).min(chunk.len());
        if room == 0 {
            return Err(HelloError::TooLarge);
        }
        // A reset counts as a close: before any byte, a health check's way to end.
        let n: usize = stream.read(&mut chunk[..room]).await.unwrap_or_default();
        if n == 0 {
            return Err(if buf.is_empty() {
                HelloError::Closed
            } else {
                HelloError::Truncated
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(hello) = parse(buf)? {
            return Ok(hello);
        }
    }
}

#[cfg(test)]
mod tests;
