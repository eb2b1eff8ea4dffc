//! The app behind ferrule reads the same `x-forwarded-client-cert` as the app behind
//! Envoy: one caller identity calls two `api` sidecars that present the same leaf, one
//! Envoy and one ferrule, and the two apps must see the same fields with the same
//! values (By, Hash, Cert, Chain, Subject, URI, DNS as Envoy sets them).

use ferrule_tests::envoy::app::{AppClient, EchoApp};
use ferrule_tests::envoy::hop::{Callee, Caller, Kind, Proxy, Svid, intentions};
use ferrule_tests::envoy::{self, Protocol};
use ferrule_tests::mesh::{API, WEB};
use ferrule_tests::{DevCa, LeafSpec};

/// The XFCC value as `(key, value)` pairs in order; `;` inside quotes does not split.
fn fields(xfcc: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in xfcc.chars().chain(std::iter::once(';')) {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ';' if !quoted => {
                let (key, value) = current.split_once('=').unwrap_or((&current, ""));
                out.push((key.to_owned(), value.to_owned()));
                current.clear();
            }
            _ => current.push(c),
        }
    }
    out
}

/// What the app behind `callee` saw as XFCC for one call from a `web` sidecar of
/// `caller_kind`, presenting `web`.
async fn xfcc_behind(
    callee_kind: Kind,
    caller_kind: Kind,
    protocol: Protocol,
    api: &Svid,
    web: &Svid,
) -> String {
    let app = EchoApp::start().await;
    let callee = Callee {
        kind: callee_kind,
        protocol,
        local_app: app.addr(),
        intentions: intentions(&[(WEB, "allow")]),
        svid: api.clone(),
    }
    .start()
    .await;
    let caller: Proxy = Caller {
        kind: caller_kind,
        service: WEB.to_owned(),
        protocol,
        destination: API.to_owned(),
        datacenter: "dc1".to_owned(),
        endpoint: callee.public_addr(),
        svid: web.clone(),
    }
    .start()
    .await;
    let mut client = AppClient::connect(caller.upstream_addr(API), protocol == Protocol::Http2)
        .await
        .expect("connect to web's upstream");
    let answer = client.get("/whoami").await.expect("GET /whoami");
    assert_eq!(answer.status, 200, "{answer:?}");
    let seen = app.seen();
    let request = seen.first().expect("the request reached the app");
    let values: Vec<&str> = request
        .headers
        .get_all("x-forwarded-client-cert")
        .iter()
        .map(|v| v.to_str().unwrap_or("(not UTF-8)"))
        .collect();
    assert_eq!(
        values.len(),
        1,
        "one XFCC header behind {callee_kind:?}: {values:?}"
    );
    values[0].to_owned()
}

async fn same_xfcc_behind_both(caller: Kind, protocol: Protocol) {
    if !envoy::available() {
        return;
    }
    let ca = DevCa::generate(None).expect("a CA");
    let web = Svid::issue(&ca, WEB);
    same_xfcc_for(caller, protocol, &ca, &web).await;
}

/// `web` presents `web` (a leaf of `ca`'s trust domain, maybe under an intermediate).
async fn same_xfcc_for(caller: Kind, protocol: Protocol, ca: &DevCa, web: &Svid) {
    let api = Svid::issue(ca, API);
    let from_envoy = xfcc_behind(Kind::Envoy, caller, protocol, &api, web).await;
    let from_ferrule = xfcc_behind(Kind::Ferrule, caller, protocol, &api, web).await;
    println!("XFCC behind Envoy:   {from_envoy}\nXFCC behind ferrule: {from_ferrule}");
    let keys: Vec<String> = fields(&from_envoy).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        ["By", "Hash", "Cert", "Chain", "Subject", "URI"],
        "what Envoy sets for a Consul leaf (no DNS SAN, so no DNS field)"
    );
    let chain = fields(&from_envoy)
        .into_iter()
        .find(|(k, _)| k == "Chain")
        .map(|(_, v)| v)
        .unwrap_or_default();
    assert_eq!(
        chain.matches("BEGIN%20CERTIFICATE").count(),
        web.leaf.cert_pem.matches("BEGIN CERTIFICATE").count(),
        "Envoy's Chain holds the caller's whole chain: {chain}"
    );
    assert_eq!(
        fields(&from_ferrule),
        fields(&from_envoy),
        "XFCC behind ferrule (left) and behind Envoy (right), {} caller {caller:?}",
        protocol.name()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_from_an_envoy_caller() {
    same_xfcc_behind_both(Kind::Envoy, Protocol::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_from_a_ferrule_caller() {
    same_xfcc_behind_both(Kind::Ferrule, Protocol::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_from_a_ferrule_caller() {
    same_xfcc_behind_both(Kind::Ferrule, Protocol::Http2).await;
}

/// A caller from a secondary datacenter: `Chain` holds its leaf and the intermediate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_from_an_envoy_caller_with_a_secondary_dc_chain() {
    if !envoy::available() {
        return;
    }
    let root = DevCa::generate(None).expect("a CA");
    let dc2 = root.intermediate().expect("an intermediate");
    let mut spec = LeafSpec::service(WEB);
    spec.datacenter = "dc2".into();
    let web = Svid::under(&root, &dc2, &spec);
    same_xfcc_for(Kind::Envoy, Protocol::Http, &root, &web).await;
}
