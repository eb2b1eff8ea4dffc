//! Any `:authority` on the Workload API sockets (`docs/consul-semantics.md#workload-api`).
//!
//! gRPC C-core (Python's `grpcio`, so PyPI `spiffe`), gRPC Java and others send the
//! socket's path, percent-encoded or not, as the `:authority` of a call on a unix
//! socket. That is not a valid HTTP authority, and the HTTP/2 server under tonic (the
//! `h2` crate) answers such a request with `RST_STREAM(PROTOCOL_ERROR)`, "malformed
//! authority", with no option to accept it. A SPIRE agent accepts these clients, so the
//! dev agent must too.
//!
//! The fix sits where the problem is, in the HTTP/2 byte stream from the client: each
//! accepted connection goes through [`shield`], which passes every frame through
//! unchanged except header blocks (`HEADERS` and its `CONTINUATION`s). Those are
//! decoded with the connection's HPACK state, an `:authority` that is not a valid
//! authority becomes `localhost` (what gRPC Go sends on a unix socket), and the block
//! is encoded again with literals only, so the server's HPACK table stays empty and in
//! step. The server's frames go back to the client untouched. A connection whose header
//! block cannot be decoded is closed: the server would have closed it too.

use std::io;

use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::UnixStream;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE a peer may set: always accepted.
const MAX_FRAME: usize = 16_384;
/// A header block larger than this (compressed) closes the connection; the server's
/// own header list limit is far below it.
const MAX_BLOCK: usize = 256 * 1024;
/// The HPACK table size the server advertises (the protocol's default, h2's too).
const TABLE_SIZE: usize = 4096;
/// What an invalid `:authority` becomes.
const LOCAL: &[u8] = b"localhost";

/// Hands the server a stream in which every `:authority` is a valid one; a task copies
/// between it and the client until either side closes.
pub(super) fn shield(client: UnixStream) -> DuplexStream {
    let (server_side, ours) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let (client_read, mut client_write) = client.into_split();
        let (ours_read, ours_write) = tokio::io::split(ours);
        let mut ours_read = ours_read;
        let up = forward_requests(client_read, ours_write);
        let down = tokio::io::copy(&mut ours_read, &mut client_write);
        tokio::select! {
            result = up => if let Err(e) = result {
                tracing::debug!(error = %e, "Workload API: client stream closed");
            },
            _ = down => {}
        }
    });
    server_side
}

/// One frame's header (RFC 9113 §4.1).
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

async fn read_frame(from: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<Frame>> {
    let mut head = [0u8; 9];
    match from.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    from.read_exact(&mut payload).await?;
    Ok(Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    }))
}

async fn write_frame(
    to: &mut (impl AsyncWrite + Unpin),
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "frame too large"))?;
    let mut head = [0u8; 9];
    head[..3].copy_from_slice(&len.to_be_bytes()[1..]);
    head[3] = kind;
    head[4] = flags;
    head[5..].copy_from_slice(&stream.to_be_bytes());
    to.write_all(&head).await?;
    to.write_all(payload).await
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_owned())
}

/// The header block fragment of a `HEADERS` frame, without padding and priority.
fn fragment(frame: &Frame) -> io::Result<&[u8]> {
    let mut body = frame.payload.as_slice();
    let mut pad = 0;
    if frame.flags & PADDED != 0 {
        let (&len, rest) = body.split_first().ok_or_else(|| invalid("short frame"))?;
        pad = usize::from(len);
        body = rest;
    }
    if frame.flags & PRIORITY != 0 {
        body = body.get(5..).ok_or_else(|| invalid("short frame"))?;
    }
    body.get(..body.len().saturating_sub(pad))
        .filter(|_| pad <= body.len())
        .ok_or_else(|| invalid("padding longer than the frame"))
}

/// Copies the client's frames to the server, re-encoding every header block.
async fn forward_requests(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
) -> io::Result<()> {
    let mut preface = [0u8; 24];
    from.read_exact(&mut preface).await?;
    to.write_all(&preface).await?;
    if &preface != PREFACE {
        // Not HTTP/2 with prior knowledge: the server says so.
        return tokio::io::copy(&mut from, &mut to).await.map(drop);
    }
    let mut decoder = Decoder::new();
    decoder.set_max_allowed_table_size(TABLE_SIZE);
    // A header block still waiting for its CONTINUATIONs: stream, END_STREAM, bytes.
    let mut pending: Option<(u32, u8, Vec<u8>)> = None;
    while let Some(frame) = read_frame(&mut from).await? {
        match (&mut pending, frame.kind) {
            (None, HEADERS) => {
                let block = fragment(&frame)?.to_vec();
                pending = Some((frame.stream, frame.flags & END_STREAM, block));
            }
            (Some((stream, _, block)), CONTINUATION) if *stream == frame.stream => {
                block.extend_from_slice(&frame.payload);
            }
            (Some(_), _) => return Err(invalid("a frame interleaved in a header block")),
            (None, _) => {
                write_frame(
                    &mut to,
                    frame.kind,
                    frame.flags,
                    frame.stream,
                    &frame.payload,
                )
                .await?;
                continue;
            }
        }
        if pending
            .as_ref()
            .is_some_and(|(_, _, b)| b.len() > MAX_BLOCK)
        {
            return Err(invalid("header block too large"));
        }
        if frame.flags & END_HEADERS != 0
            && let Some((stream, end_stream, block)) = pending.take()
        {
            let rewritten = rewrite(&mut decoder, &block)?;
            write_block(&mut to, stream, end_stream, &rewritten).await?;
        }
    }
    Ok(())
}

/// Decodes one header block and encodes it again, literals only, with any invalid
/// `:authority` replaced.
fn rewrite(decoder: &mut Decoder<'_>, block: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len() * 2);
    decoder
        .decode_with_cb(block, |name, value| {
            let value: &[u8] =
                if &*name == b":authority" && http::uri::Authority::try_from(&*value).is_err() {
                    LOCAL
                } else {
                    &value
                };
            // Literal header field without indexing, new name (RFC 7541 §6.2.2).
            out.push(0);
            put_string(&mut out, &name);
            put_string(&mut out, value);
        })
        .map_err(|e| invalid(&format!("HPACK: {e:?}")))?;
    Ok(out)
}

/// A string literal without Huffman coding (RFC 7541 §5.2).
fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    put_int(out, 0, 7, bytes.len());
    out.extend_from_slice(bytes);
}

/// An integer with an N-bit prefix (RFC 7541 §5.1); `high` holds the bits above it.
fn put_int(out: &mut Vec<u8>, high: u8, prefix: u32, value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        // Fits the prefix: below 2^prefix, so below 256.
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A header block as one `HEADERS` frame and as many `CONTINUATION`s as it needs.
async fn write_block(
    to: &mut (impl AsyncWrite + Unpin),
    stream: u32,
    end_stream: u8,
    block: &[u8],
) -> io::Result<()> {
    let chunks: Vec<&[u8]> = if block.is_empty() {
        vec![block]
    } else {
        block.chunks(MAX_FRAME).collect()
    };
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let (kind, mut flags) = if i == 0 {
            (HEADERS, end_stream)
        } else {
            (CONTINUATION, 0)
        };
        if i == last {
            flags |= END_HEADERS;
        }
        write_frame(to, kind, flags, stream, chunk).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(block: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut headers = Vec::new();
        Decoder::new()
            .decode_with_cb(block, |n, v| headers.push((n.to_vec(), v.to_vec())))
            .unwrap();
        headers
    }

    fn encoded(headers: &[(&[u8], &[u8])]) -> Vec<u8> {
        loona_hpack::Encoder::new().encode(headers.iter().copied())
    }

    #[test]
    fn an_invalid_authority_becomes_localhost_and_the_rest_stays() {
        let mut decoder = Decoder::new();
        let block = encoded(&[
            (b":method", b"POST"),
            (b":authority", b"%2Ftmp%2Fweb.sock"),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
            (b"workload.spiffe.io", b"true"),
        ]);
        let out = decode_all(&rewrite(&mut decoder, &block).unwrap());
        assert_eq!(out[1], (b":authority".to_vec(), b"localhost".to_vec()));
        assert_eq!(out[3].1, b"true");
        let path = encoded(&[(b":authority", b"/tmp/web.sock")]);
        let out = decode_all(&rewrite(&mut decoder, &path).unwrap());
        assert_eq!(out[0].1, b"localhost");
        let fine = encoded(&[(b":authority", b"localhost:1234")]);
        let out = decode_all(&rewrite(&mut decoder, &fine).unwrap());
        assert_eq!(out[0].1, b"localhost:1234", "a valid authority is kept");
    }

    #[test]
    fn long_values_use_multi_byte_integers() {
        let long = vec![b'a'; 300];
        let mut decoder = Decoder::new();
        let block = encoded(&[(b"x-long", &long)]);
        let out = decode_all(&rewrite(&mut decoder, &block).unwrap());
        assert_eq!(out[0].1, long);
    }

    #[tokio::test]
    async fn frames_pass_and_continuations_are_joined() {
        let block = encoded(&[(b":authority", b"/run/x.sock"), (b":path", b"/a")]);
        let (first, second) = block.split_at(3);
        let mut input = PREFACE.to_vec();
        let mut push = |kind: u8, flags: u8, payload: &[u8]| {
            input.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes()[1..]);
            input.extend_from_slice(&[kind, flags, 0, 0, 0, 1]);
            input.extend_from_slice(payload);
        };
        push(0x4, 0, &[]); // SETTINGS
        push(HEADERS, END_STREAM, first);
        push(CONTINUATION, END_HEADERS, second);
        let mut out = Vec::new();
        forward_requests(input.as_slice(), &mut out).await.unwrap();
        assert_eq!(&out[..24], PREFACE);
        assert_eq!(&out[24..33], &[0, 0, 0, 0x4, 0, 0, 0, 0, 1]);
        let headers = &out[33..];
        assert_eq!(headers[3], HEADERS);
        assert_eq!(headers[4], END_STREAM | END_HEADERS);
        let decoded = decode_all(&headers[9..]);
        assert_eq!(decoded[0].1, b"localhost");
        assert_eq!(decoded[1].1, b"/a");
    }

    #[tokio::test]
    async fn an_undecodable_block_closes_the_connection() {
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&[0, 0, 1, HEADERS, END_HEADERS, 0, 0, 0, 1, 0xff]);
        let mut out = Vec::new();
        assert!(forward_requests(input.as_slice(), &mut out).await.is_err());
    }
}
