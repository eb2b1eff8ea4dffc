//! What each pair negotiates on its mesh hop, read off the wire: the pair is started
//! with its client side dialing a relay in front of the server side; the relay copies
//! bytes both ways and reads the handshake messages sent in the clear (ClientHello,
//! ServerHello and, in TLS 1.2, the server's key exchange), so every peer is described
//! the same way whatever it logs.
//!
//! Three connections are opened one after the other through the entry (each a new mesh
//! connection at L4): the first shows the full handshake, the last whether the client
//! resumed and, if it did, whether a key exchange still ran (TLS 1.3 `psk_dhe_ke`) or
//! not (TLS 1.3 `psk_ke`, or a TLS 1.2 abbreviated handshake).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::load;
use super::peers::{self, Env, MESH, Mode, Peer};

/// Where the relay listens; the client side dials it instead of the server side.
const RELAY: &str = "127.0.0.1:18003";
/// Bytes of each direction the parser reads; the clear part of a handshake is smaller.
const WATCH: usize = 64 * 1024;

/// One mesh connection's handshake, as far as it could be read.
#[derive(Debug, Clone, Default)]
pub(crate) struct Seen {
    /// Groups the client sent key shares for (TLS 1.3).
    pub(crate) offered_shares: Vec<u16>,
    /// The client offered to resume (a PSK in TLS 1.3, a ticket or session ID in 1.2).
    pub(crate) offered_resumption: bool,
    pub(crate) version: Option<u16>,
    pub(crate) cipher: Option<u16>,
    /// The group of the key exchange that ran, if one did.
    pub(crate) group: Option<u16>,
    pub(crate) resumed: bool,
}

impl Seen {
    pub(crate) fn describe(&self) -> String {
        let Some(version) = self.version else {
            return "no ServerHello seen".to_owned();
        };
        let mut out = format!(
            "{}, {}, ",
            version_name(version),
            self.cipher.map_or("?".to_owned(), cipher_name)
        );
        out.push_str(&match (self.resumed, self.group) {
            (false, Some(g)) => format!("full, {}", group_name(g)),
            (false, None) => "full, no key exchange seen".to_owned(),
            (true, Some(g)) => format!("resumed with a key exchange ({})", group_name(g)),
            (true, None) => "resumed without a key exchange".to_owned(),
        });
        out
    }
}

/// The pair's handshakes on three successive L4 connections.
pub(crate) async fn probe(env: &Env, peer: Peer) -> Result<Vec<Seen>> {
    let relay = TcpListener::bind(RELAY)
        .await
        .with_context(|| format!("binding the handshake relay on {RELAY}"))?;
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let relaying = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = relay.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let _ = relay_one(client, seen).await;
                });
            }
        })
    };
    let result = async {
        let pair = peers::start_via(env, peer, Mode::L4, RELAY.parse()?, "handshake").await?;
        for _ in 0..3 {
            load::probe(pair.entry).await?;
            // The client side may still be storing the session ticket of the last one.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        pair.stop();
        // Each relayed connection records itself once both halves have closed.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while seen.lock().len() < 3 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::Ok(())
    }
    .await;
    relaying.abort();
    // Gone (and its listener closed) before the next probe binds the same address.
    let _ = relaying.await;
    result?;
    let seen = seen.lock().clone();
    Ok(seen)
}

async fn relay_one(mut client: TcpStream, seen: Arc<Mutex<Vec<Seen>>>) -> std::io::Result<()> {
    let mut server = TcpStream::connect(MESH).await?;
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let mut from_client = Vec::new();
    let mut from_server = Vec::new();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                return sw.shutdown().await;
            }
            if from_client.len() < WATCH {
                from_client.extend_from_slice(&buf[..n]);
            }
            sw.write_all(&buf[..n]).await?;
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = sr.read(&mut buf).await?;
            if n == 0 {
                return cw.shutdown().await;
            }
            if from_server.len() < WATCH {
                from_server.extend_from_slice(&buf[..n]);
            }
            cw.write_all(&buf[..n]).await?;
        }
    };
    let _ = tokio::join!(up, down);
    let mut one = Seen::default();
    read_client(&from_client, &mut one);
    read_server(&from_server, &mut one);
    seen.lock().push(one);
    Ok(())
}

/// The handshake messages at the start of a byte stream: the bodies of its leading
/// handshake records, joined, and the content type of the first other record.
fn handshake_bytes(stream: &[u8]) -> (Vec<u8>, Option<u8>) {
    let mut out = Vec::new();
    let mut rest = stream;
    while rest.len() >= 5 {
        let (kind, len) = (rest[0], usize::from(u16::from_be_bytes([rest[3], rest[4]])));
        if kind != 22 {
            return (out, Some(kind));
        }
        let Some(body) = rest.get(5..5 + len) else {
            break;
        };
        out.extend_from_slice(body);
        rest = &rest[5 + len..];
    }
    (out, None)
}

/// Handshake messages: (type, body).
fn messages(bytes: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 4 {
        let len = usize::from(rest[1]) << 16 | usize::from(rest[2]) << 8 | usize::from(rest[3]);
        let Some(body) = rest.get(4..4 + len) else {
            break;
        };
        out.push((rest[0], body));
        rest = &rest[4 + len..];
    }
    out
}

/// A cursor over a message body that yields `None` past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u8()?);
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
    /// (type, data) of each extension in an extensions block.
    fn extensions(&mut self) -> Vec<(u16, &'a [u8])> {
        let mut out = Vec::new();
        if let Some(block) = self.vec16() {
            let mut r = Reader(block);
            while let (Some(kind), Some(data)) = (r.u16(), r.vec16()) {
                out.push((kind, data));
            }
        }
        out
    }
}

const EXT_SESSION_TICKET: u16 = 35;
const EXT_PRE_SHARED_KEY: u16 = 41;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_KEY_SHARE: u16 = 51;

fn read_client(stream: &[u8], seen: &mut Seen) {
    let (bytes, _) = handshake_bytes(stream);
    let Some((1, body)) = messages(&bytes).into_iter().next() else {
        return;
    };
    let mut r = Reader(body);
    let parsed = (|| {
        r.take(2 + 32)?;
        let session_id = r.vec8()?;
        r.vec16()?;
        r.vec8()?;
        Some(session_id.len())
    })();
    let Some(session_id_len) = parsed else { return };
    let mut ticket = false;
    for (kind, data) in r.extensions() {
        match kind {
            EXT_KEY_SHARE => {
                let mut shares = Reader(data);
                if let Some(list) = shares.vec16() {
                    let mut l = Reader(list);
                    while let (Some(group), Some(_)) = (l.u16(), l.vec16()) {
                        seen.offered_shares.push(group);
                    }
                }
            }
            EXT_PRE_SHARED_KEY => seen.offered_resumption = true,
            EXT_SESSION_TICKET if !data.is_empty() => ticket = true,
            _ => {}
        }
    }
    // TLS 1.2 resumption offers a ticket, or a session ID without the 1.3 middlebox
    // dance (a 1.3 client sends a random 32-byte ID too, so only a ticket counts there).
    if ticket || (session_id_len > 0 && seen.offered_shares.is_empty()) {
        seen.offered_resumption = true;
    }
}

fn read_server(stream: &[u8], seen: &mut Seen) {
    let (bytes, next_record) = handshake_bytes(stream);
    let msgs = messages(&bytes);
    let Some(&(2, hello)) = msgs.first() else {
        return;
    };
    let mut r = Reader(hello);
    let Some(legacy) = r.u16() else { return };
    let parsed = (|| {
        r.take(32)?;
        r.vec8()?;
        let cipher = r.u16()?;
        r.u8()?;
        Some(cipher)
    })();
    let Some(cipher) = parsed else { return };
    seen.cipher = Some(cipher);
    seen.version = Some(legacy);
    let mut psk = false;
    for (kind, data) in r.extensions() {
        let mut d = Reader(data);
        match kind {
            EXT_SUPPORTED_VERSIONS => seen.version = d.u16().or(seen.version),
            EXT_KEY_SHARE => seen.group = d.u16(),
            EXT_PRE_SHARED_KEY => psk = true,
            _ => {}
        }
    }
    if seen.version == Some(0x0304) {
        seen.resumed = psk;
        return;
    }
    // TLS 1.2: a full handshake goes on with the certificate and, for ECDHE, the
    // server's key exchange; an abbreviated one goes straight to ChangeCipherSpec.
    match msgs.get(1) {
        None => seen.resumed = next_record == Some(20),
        Some(_) => {
            for &(kind, body) in &msgs[1..] {
                if kind == 12 {
                    // ECParameters: curve_type 3 (named_curve), then the group.
                    let mut k = Reader(body);
                    if k.u8() == Some(3) {
                        seen.group = k.u16();
                    }
                }
            }
        }
    }
}

fn version_name(v: u16) -> String {
    match v {
        0x0304 => "TLS 1.3".to_owned(),
        0x0303 => "TLS 1.2".to_owned(),
        other => format!("version {other:#06x}"),
    }
}

fn cipher_name(c: u16) -> String {
    match c {
        0x1301 => "TLS_AES_128_GCM_SHA256".to_owned(),
        0x1302 => "TLS_AES_256_GCM_SHA384".to_owned(),
        0x1303 => "TLS_CHACHA20_POLY1305_SHA256".to_owned(),
        0xc02b => "ECDHE-ECDSA-AES128-GCM-SHA256".to_owned(),
        0xc02c => "ECDHE-ECDSA-AES256-GCM-SHA384".to_owned(),
        0xcca9 => "ECDHE-ECDSA-CHACHA20-POLY1305".to_owned(),
        0xc02f => "ECDHE-RSA-AES128-GCM-SHA256".to_owned(),
        0xc030 => "ECDHE-RSA-AES256-GCM-SHA384".to_owned(),
        other => format!("cipher {other:#06x}"),
    }
}

fn group_name(g: u16) -> String {
    match g {
        0x001d => "X25519".to_owned(),
        0x0017 => "P-256".to_owned(),
        0x0018 => "P-384".to_owned(),
        0x0019 => "P-521".to_owned(),
        0x11ec => "X25519MLKEM768".to_owned(),
        0x11eb => "SecP256r1MLKEM768".to_owned(),
        0x6399 => "X25519Kyber768Draft00".to_owned(),
        other => format!("group {other:#06x}"),
    }
}

/// The report's table: one row per peer, first and last handshake.
pub(crate) fn render(rows: &[(Peer, Vec<Seen>)]) -> String {
    let mut out = String::from(
        "\n#### Negotiated on the mesh hop (L4, three connections in a row, read off the wire)\n\n\
         | peer | first connection | third connection | key shares the client offered |\n|---|---|---|---|\n",
    );
    for (peer, seen) in rows {
        let first = seen.first().map_or("-".to_owned(), Seen::describe);
        let last = seen
            .get(2)
            .or(seen.last())
            .map_or("-".to_owned(), Seen::describe);
        let offered = seen
            .first()
            .map(|s| {
                s.offered_shares
                    .iter()
                    .map(|&g| group_name(g))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "none (TLS 1.2 client)".to_owned());
        let _ = writeln!(out, "| {} | {first} | {last} | {offered} |", peer.name());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut r = vec![kind, 3, 3];
        r.extend_from_slice(&u16::try_from(body.len()).unwrap_or(0).to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let len = body.len();
        let mut m = vec![kind, (len >> 16) as u8, (len >> 8) as u8, len as u8];
        m.extend_from_slice(body);
        m
    }

    fn ext(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut e = kind.to_be_bytes().to_vec();
        e.extend_from_slice(&u16::try_from(data.len()).unwrap_or(0).to_be_bytes());
        e.extend_from_slice(data);
        e
    }

    fn server_hello(cipher: u16, exts: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![3, 3];
        b.extend_from_slice(&[0u8; 32]);
        b.push(0);
        b.extend_from_slice(&cipher.to_be_bytes());
        b.push(0);
        let all: Vec<u8> = exts.concat();
        b.extend_from_slice(&u16::try_from(all.len()).unwrap_or(0).to_be_bytes());
        b.extend_from_slice(&all);
        message(2, &b)
    }

    #[test]
    fn tls13_full_and_resumed_with_and_without_a_key_exchange() {
        let full = record(
            22,
            &server_hello(
                0x1301,
                &[
                    ext(EXT_SUPPORTED_VERSIONS, &[3, 4]),
                    ext(EXT_KEY_SHARE, &[0x11, 0xec, 0, 1, 0]),
                ],
            ),
        );
        let mut seen = Seen::default();
        read_server(&full, &mut seen);
        assert_eq!(
            seen.describe(),
            "TLS 1.3, TLS_AES_128_GCM_SHA256, full, X25519MLKEM768"
        );

        let psk_dhe = record(
            22,
            &server_hello(
                0x1302,
                &[
                    ext(EXT_SUPPORTED_VERSIONS, &[3, 4]),
                    ext(EXT_KEY_SHARE, &[0, 0x1d, 0, 1, 0]),
                    ext(EXT_PRE_SHARED_KEY, &[0, 0]),
                ],
            ),
        );
        let mut seen = Seen::default();
        read_server(&psk_dhe, &mut seen);
        assert!(seen.resumed);
        assert_eq!(seen.group, Some(0x001d));

        let psk_only = record(
            22,
            &server_hello(
                0x1301,
                &[
                    ext(EXT_SUPPORTED_VERSIONS, &[3, 4]),
                    ext(EXT_PRE_SHARED_KEY, &[0, 0]),
                ],
            ),
        );
        let mut seen = Seen::default();
        read_server(&psk_only, &mut seen);
        assert_eq!(
            seen.describe(),
            "TLS 1.3, TLS_AES_128_GCM_SHA256, resumed without a key exchange"
        );
    }

    #[test]
    fn tls12_full_shows_the_curve_and_abbreviated_shows_none() {
        let mut flight = server_hello(0xc02b, &[]);
        flight.extend_from_slice(&message(11, &[0, 0, 0]));
        flight.extend_from_slice(&message(12, &[3, 0, 0x1d, 0]));
        let mut seen = Seen::default();
        read_server(&record(22, &flight), &mut seen);
        assert_eq!(
            seen.describe(),
            "TLS 1.2, ECDHE-ECDSA-AES128-GCM-SHA256, full, X25519"
        );

        let mut abbreviated = record(22, &server_hello(0xc02b, &[]));
        abbreviated.extend_from_slice(&record(20, &[1]));
        let mut seen = Seen::default();
        read_server(&abbreviated, &mut seen);
        assert_eq!(
            seen.describe(),
            "TLS 1.2, ECDHE-ECDSA-AES128-GCM-SHA256, resumed without a key exchange"
        );
    }

    #[test]
    fn garbage_and_truncation_describe_nothing() {
        for bytes in [
            &b""[..],
            b"GET / HTTP/1.1\r\n\r\n",
            &[22, 3, 3, 0, 40, 2, 0],
        ] {
            let mut seen = Seen::default();
            read_server(bytes, &mut seen);
            read_client(bytes, &mut seen);
            assert_eq!(seen.describe(), "no ServerHello seen");
        }
    }
}
