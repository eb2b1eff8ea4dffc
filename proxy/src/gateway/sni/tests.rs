//! The ClientHello reader against real ClientHellos (rustls'), their every prefix and
//! fragmentation, hand-made hostile ones, and arbitrary bytes.

use std::sync::Arc;

use proptest::prelude::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use tokio::io::AsyncWriteExt;

use super::*;

const NAME: &str = "api.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul";

/// The first flight of a rustls client naming `server` (TLS 1.2 and 1.3 offered).
fn rustls_hello(server: &str) -> Vec<u8> {
    let config = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    let name = ServerName::try_from(server.to_owned()).expect("a server name");
    let mut conn = ClientConnection::new(Arc::new(config), name).expect("a client");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("the first flight");
    out
}

/// The handshake bytes of a one-record hello, cut into records of the given sizes (the
/// last takes the rest).
fn fragmented(hello: &[u8], sizes: &[usize]) -> Vec<u8> {
    let (header, body) = hello.split_at(5);
    let mut out = Vec::new();
    let mut rest = body;
    for &size in sizes {
        if rest.is_empty() {
            break;
        }
        let n = size.clamp(1, rest.len());
        let (piece, tail) = rest.split_at(n);
        out.extend_from_slice(&header[..3]);
        out.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
        out.extend_from_slice(piece);
        rest = tail;
    }
    if !rest.is_empty() {
        out.extend_from_slice(&header[..3]);
        out.extend_from_slice(&u16::try_from(rest.len()).unwrap().to_be_bytes());
        out.extend_from_slice(rest);
    }
    out
}

/// A record carrying one handshake message of type `kind` with `body`.
fn record(kind: u8, body: &[u8]) -> Vec<u8> {
    let len = body.len();
    let mut message = vec![kind, (len >> 16) as u8, (len >> 8) as u8, len as u8];
    message.extend_from_slice(body);
    let mut out = vec![HANDSHAKE, 3, 1];
    out.extend_from_slice(&u16::try_from(message.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&message);
    out
}

/// A ClientHello body with `extensions` (already encoded, with their length).
fn hello_body(extensions: &[u8]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(0); // no session ID
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(extensions);
    body
}

/// A `server_name` extension with the given entries, inside an extensions block.
fn sni_extensions(entries: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (kind, name) in entries {
        list.push(*kind);
        list.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
        list.extend_from_slice(name);
    }
    let mut data = u16::try_from(list.len()).unwrap().to_be_bytes().to_vec();
    data.extend_from_slice(&list);
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
    ext.extend_from_slice(&data);
    let mut block = u16::try_from(ext.len()).unwrap().to_be_bytes().to_vec();
    block.extend_from_slice(&ext);
    block
}

#[test]
fn a_real_client_hello_names_its_server_in_lower_case() {
    let hello = rustls_hello(NAME);
    assert_eq!(
        parse(&hello),
        Ok(Some(ClientHello {
            sni: Some(NAME.into())
        }))
    );
    let upper = rustls_hello("API.Default.DC1.internal.example.consul");
    let sni = parse(&upper).unwrap().unwrap().sni;
    assert_eq!(
        sni.as_deref(),
        Some("api.default.dc1.internal.example.consul")
    );
}

#[test]
fn a_client_hello_for_an_ip_address_has_no_server_name() {
    let hello = rustls_hello("127.0.0.1");
    assert_eq!(parse(&hello), Ok(Some(ClientHello { sni: None })));
    let no_extensions = record(CLIENT_HELLO, &hello_body(&[]));
    assert_eq!(parse(&no_extensions), Ok(Some(ClientHello { sni: None })));
}

#[test]
fn plaintext_and_other_records_are_not_tls_from_the_first_bytes() {
    assert_eq!(parse(b"G"), Err(HelloError::NotTls));
    assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HelloError::NotTls));
    assert_eq!(parse(&[HANDSHAKE, 2]), Err(HelloError::NotTls), "SSLv2-ish");
    assert_eq!(
        parse(&[21, 3, 3, 0, 2, 2, 40]),
        Err(HelloError::NotTls),
        "an alert"
    );
    assert_eq!(parse(&[]), Ok(None));
    assert_eq!(parse(&[HANDSHAKE, 3, 1, 0]), Ok(None));
}

#[test]
fn hostile_hellos_are_refused_with_a_reason() {
    let server_hello = record(2, &hello_body(&[]));
    assert!(matches!(
        parse(&server_hello),
        Err(HelloError::Malformed(_))
    ));
    let two = {
        let one = sni_extensions(&[(0, b"a.example")]);
        let ext = &one[2..];
        let mut block = u16::try_from(ext.len() * 2).unwrap().to_be_bytes().to_vec();
        block.extend_from_slice(ext);
        block.extend_from_slice(ext);
        record(CLIENT_HELLO, &hello_body(&block))
    };
    assert_eq!(
        parse(&two),
        Err(HelloError::Malformed("two server_name extensions"))
    );
    let bad_name = record(CLIENT_HELLO, &hello_body(&sni_extensions(&[(0, b"a b")])));
    assert!(matches!(parse(&bad_name), Err(HelloError::Malformed(_))));
    let empty_name = record(CLIENT_HELLO, &hello_body(&sni_extensions(&[(0, b"")])));
    assert!(matches!(parse(&empty_name), Err(HelloError::Malformed(_))));
    let mut trailing = hello_body(&sni_extensions(&[(0, b"a.example")]));
    trailing.push(0);
    assert!(matches!(
        parse(&record(CLIENT_HELLO, &trailing)),
        Err(HelloError::Malformed(_))
    ));
    let empty_record = [HANDSHAKE, 3, 1, 0, 0];
    assert!(matches!(
        parse(&empty_record),
        Err(HelloError::Malformed(_))
    ));
}

#[test]
fn only_a_host_name_entry_counts_and_the_first_one_wins() {
    let hello = hello_body(&sni_extensions(&[
        (7, b"\xff\xfe"),
        (0, b"B.example"),
        (0, b"c"),
    ]));
    let sni = parse(&record(CLIENT_HELLO, &hello)).unwrap().unwrap().sni;
    assert_eq!(sni.as_deref(), Some("b.example"));
}

#[test]
fn a_hello_beyond_the_bound_is_too_large_before_it_is_whole() {
    // The header alone announces more than the gateway reads.
    let announced = (MAX_HELLO + 1) as u32;
    let header = [
        HANDSHAKE,
        3,
        1,
        0x40,
        0,
        CLIENT_HELLO,
        (announced >> 16) as u8,
        (announced >> 8) as u8,
        announced as u8,
    ];
    assert_eq!(parse(&header), Err(HelloError::TooLarge));
    // Records past the buffer bound, whatever the hello says.
    let mut many = Vec::new();
    for _ in 0..4 {
        many.extend_from_slice(&[HANDSHAKE, 3, 1, 0x10, 0]);
        many.extend_from_slice(&[0; 0x1000]);
    }
    many[5] = CLIENT_HELLO;
    many[6..9].copy_from_slice(&[0, 0x3f, 0xff]);
    many.extend_from_slice(&[HANDSHAKE, 3, 1, 0x10, 0]);
    assert_eq!(parse(&many), Err(HelloError::TooLarge));
}

#[tokio::test]
async fn reading_returns_every_byte_read_and_tells_probes_from_cut_hellos() {
    let hello = rustls_hello(NAME);
    let (mut client, mut server) = tokio::io::duplex(64);
    let sent = hello.clone();
    let writer = tokio::spawn(async move {
        for piece in sent.chunks(7) {
            client.write_all(piece).await.unwrap();
        }
        client
    });
    let (bytes, result) = read_hello(&mut server, Duration::from_secs(5)).await;
    assert_eq!(result.unwrap().sni.as_deref(), Some(NAME));
    assert_eq!(bytes, hello, "the whole flight, to forward as is");
    drop(writer.await.unwrap());

    let (client, mut server) = tokio::io::duplex(64);
    drop(client);
    let (bytes, result) = read_hello(&mut server, Duration::from_secs(5)).await;
    assert_eq!((bytes.len(), result), (0, Err(HelloError::Closed)));

    let (mut client, mut server) = tokio::io::duplex(64);
    client.write_all(&hello[..20]).await.unwrap();
    drop(client);
    let (_, result) = read_hello(&mut server, Duration::from_secs(5)).await;
    assert_eq!(result, Err(HelloError::Truncated));
}

#[tokio::test(start_paused = true)]
async fn a_slow_hello_times_out() {
    let hello = rustls_hello(NAME);
    // Room for the whole hello: nobody reads until the gateway does.
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    client.write_all(&hello[..hello.len() - 1]).await.unwrap();
    let (bytes, result) = read_hello(&mut server, Duration::from_secs(10)).await;
    assert_eq!(result, Err(HelloError::Timeout));
    assert_eq!(bytes.len(), hello.len() - 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse(&bytes);
    }

    #[test]
    fn arbitrary_bytes_behind_a_record_header_never_panic(
        len in 0u16..600,
        body in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut bytes = vec![HANDSHAKE, 3, 3];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.push(CLIENT_HELLO);
        bytes.extend_from_slice(&body);
        let _ = parse(&bytes);
    }

    #[test]
    fn a_corrupted_real_hello_never_panics(at in 0usize..4096, value in any::<u8>()) {
        let mut hello = rustls_hello(NAME);
        let i = at % hello.len();
        hello[i] = value;
        let _ = parse(&hello);
    }

    #[test]
    fn every_prefix_of_a_hello_asks_for_more(cut in 0usize..4096) {
        let hello = rustls_hello(NAME);
        let cut = cut % hello.len();
        prop_assert_eq!(parse(&hello[..cut]), Ok(None));
    }

    #[test]
    fn any_fragmentation_into_records_finds_the_same_name(
        sizes in proptest::collection::vec(1usize..400, 1..12),
        label in "[a-z][a-z0-9]{0,20}",
    ) {
        let name = format!("{label}.default.dc1.internal.example.consul");
        let hello = rustls_hello(&name);
        let pieces = fragmented(&hello, &sizes);
        let found = parse(&pieces).map(|h| h.and_then(|h| h.sni));
        prop_assert_eq!(found, Ok(Some(name)));
    }
}
