//! HTTP/2's limits, in one place for both ends ferrule speaks it on: the server of every
//! HTTP-family listener (the mesh side of an inbound L7 listener, the app side of an
//! upstream listener) and the client of the outbound mesh pools. Each is set explicitly
//! here, even where it equals hyper's or h2's default, so that what a hostile peer can
//! hold on to is written down and cannot change under a dependency upgrade.
//!
//! What h2 (0.4) enforces whatever we set, and why these values
//! (`docs/architecture.md#http2-limits` has the table and the figures): a CONTINUATION
//! flood is cut with GOAWAY `ENHANCE_YOUR_CALM` once a header block takes more
//! CONTINUATION frames than the header list limit could need; an HPACK block that
//! decodes to far more than that limit is refused before it is held; only one PING ACK
//! and one SETTINGS ACK are ever pending, and h2 reads no further frame until they are
//! written, so a peer that floods them without reading stalls its own connection (and
//! `crate::limits::WriteStall` then closes it) rather than growing a queue.

use std::time::Duration;

use hyper::client::conn::http2 as client;
use hyper_util::rt::TokioTimer;
use hyper_util::server::conn::auto::Http2Builder;

use super::MAX_HEADER_BYTES;

/// Streams one connection may have open at once. The mesh hop carries all of one caller
/// sidecar's requests on one connection, so this is generous; what a stream can make
/// us hold is bounded by the flow-control windows and `MAX_SEND_BUF`, not by this.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;

/// Streams the peer may reset before we got to accept them (the "rapid reset" attack,
/// CVE-2023-44487): past this the connection gets GOAWAY `ENHANCE_YOUR_CALM`. h2's own
/// default, made explicit.
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;

/// Streams we may reset because of the peer's stream errors (the "MadeYouReset"
/// attack, CVE-2025-8671) before the connection gets GOAWAY `ENHANCE_YOUR_CALM`.
pub const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// The most response (or request) body a stream buffers for a peer whose window is open
/// but whose socket is not read, beyond the one chunk the body handed over (at most
/// `APP_READ_BUF` from the local app). With 256 KiB here and hyper's 400 KiB read
/// buffer to the app, 400 such streams held 290 MB; with 64 KiB each, 106 MB
/// (`tests/tests/h2_abuse.rs`). hyper's defaults are 400 KiB (server) and 1 MiB
/// (client). The kernel's socket buffer carries what is in flight, this is only the
/// hand-over between the body and the socket, so throughput does not need more.
pub const MAX_SEND_BUF: usize = 64 * 1024;

/// The largest DATA frame we accept (`SETTINGS_MAX_FRAME_SIZE`): as large as what a
/// stream may buffer for sending, so a ferrule peer sends a buffered chunk as one frame
/// instead of four of HTTP/2's default 16 KiB. A frame is read whole before it is
/// handed on, so this is also the most a peer's one frame makes us hold.
pub const MAX_FRAME: u32 = 64 * 1024;

/// The largest read buffer of an HTTP/1.1 connection to the local app, and so the
/// largest chunk of a response body a stream holds on top of `MAX_SEND_BUF`.
pub const APP_READ_BUF: usize = 64 * 1024;

/// A connection on which nothing has been read for this long is pinged, and closed if
/// the ACK does not come within `KEEPALIVE_TIMEOUT`: a peer that went away, or one that
/// holds streams open and answers nothing (a zero-window reader), is cut off 20 s after
/// its last request. A peer that stops reading altogether is not: the GOAWAY of this
/// close could never be written, and `crate::limits::WriteStall` is what ends it. A
/// peer that is alive answers a PING every 10 s, 17 bytes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server side's HTTP/2 settings (see the module's notes). Windows stay adaptive
/// (hyper's BDP estimate, from 1 MiB up to at most 16 MiB per connection), so a fast
/// peer is not throttled by a fixed window and a slow one cannot make us buffer more
/// than the window it was granted.
pub fn server<E>(builder: &mut Http2Builder<'_, E>) {
    builder
        .timer(TokioTimer::new())
        .adaptive_window(true)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_frame_size(MAX_FRAME)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS)
        .max_send_buf_size(MAX_SEND_BUF)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
}

/// The mesh pools' HTTP/2 settings: the same limits from the other side, so a hostile
/// callee (one that floods PINGs or SETTINGS, advertises a zero window, or answers with
/// an HPACK bomb) costs a bounded amount and its connection is closed by the keep-alive
/// once it stops answering. Pings go out only while requests are in flight: an idle
/// pooled connection costs nothing.
pub fn client<E: Clone>(builder: &mut client::Builder<E>) {
    builder
        .timer(TokioTimer::new())
        .adaptive_window(true)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_frame_size(MAX_FRAME)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS)
        .max_send_buf_size(MAX_SEND_BUF)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
}
