//! Two datacenters with a `ferrule gateway` in each: dc1 (the primary, 127.0.0.1) and
//! dc2 (127.0.0.2), `web` in dc1 calling `api` in dc2 through ferrule sidecars.
//!
//! - Each mesh gateway mode of web's upstream takes its own path, told apart by the
//!   gateways' counters: `local` through dc1's gateway (LAN) and dc2's (WAN), `remote`
//!   through dc2's alone, `none` straight to api's sidecar at its WAN address. api's app
//!   sees web's dc1 identity, and web accepts api's dc2 leaf with its intermediate.
//! - An intention written in dc1 denying web → api applies in dc2 within 2 s: the open
//!   connection is closed and new ones are refused.
//! - dc1's gateway closes (and counts) a name of no known datacenter or of another
//!   trust domain, and keeps routing dc2's names.
//! - Throughput of 64 MiB exchanges through both gateways next to direct ones and to
//!   the app alone, taking turns in one run (printed, for the closing note).

use std::net::SocketAddr;
use std::time::Duration;

use ferrule_tests::backends::{NamedHttp, TcpEcho};
use ferrule_tests::chain::{wait_streak, who};
use ferrule_tests::clients::TlsCaller;
use ferrule_tests::consul::ConsulSidecar;
use ferrule_tests::envoy::app::payload;
use ferrule_tests::gateway::SniCaller;
use ferrule_tests::multi_dc::{
    APPLIES_WITHIN, DC1, DC2, Hops, MeshService, SETUP, TwoDcs, service_defaults, wait_dials,
};
use ferrule_tests::names::{AUTHZ_TERMINATIONS, GATEWAY_CONNECTIONS, INBOUND};
use ferrule_tests::wait::{eventually, free_port};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const API: &str = "api";
const WEB: &str = "web";
/// How long one 64 MiB echo may take (debug builds, both cores busy).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(120);
/// api's app in dc2 names itself so.
const API_DC2: &str = "api-dc2";

/// api in dc2 (its sidecar with a `wan` address) in front of `app_port`.
fn api_in_dc2(dcs: &TwoDcs, app_port: u16) -> MeshService {
    MeshService::new(API, dcs.dc2.ip, app_port).with_wan()
}

/// web in dc1 with an upstream to api in dc2 in gateway mode `mode`.
fn web_in_dc1(dcs: &TwoDcs, mode: &str) -> MeshService {
    MeshService::new(WEB, dcs.dc1.ip, free_port().port()).with_upstream(json!({
        "DestinationName": API,
        "Datacenter": DC2,
        "MeshGateway": {"Mode": mode},
    }))
}

/// Where web's sidecar dials api in each mode, as a real sidecar would: dc1's gateway
/// on its LAN address, dc2's on its WAN address, or api's sidecar at its WAN address.
fn dialled(dcs: &TwoDcs, api: &MeshService, mode: &str) -> SocketAddr {
    match mode {
        "local" => dcs.dc1.gateway().lan,
        "remote" => dcs.dc2.gateway().wan,
        _ => api.sidecar_addr(),
    }
}

/// Re-registers web with `mode` and waits until its sidecar dials where that mode says.
async fn switch_mode(
    dcs: &TwoDcs,
    web: &mut MeshService,
    web_proxy: &ConsulSidecar,
    api: &MeshService,
    mode: &str,
) {
    web.set_upstream(API, "MeshGateway", json!({"Mode": mode}));
    dcs.dc1.register(web).await;
    let others: Vec<SocketAddr> = ["local", "remote", "none"]
        .into_iter()
        .filter(|m| *m != mode)
        .map(|m| dialled(dcs, api, m))
        .collect();
    wait_dials(web_proxy, dialled(dcs, api, mode), &others, SETUP).await;
}

/// The hops that carried a mode's calls: `local` both gateways, `remote` dc2's alone
/// (on its WAN side), `none` neither; api's sidecar every time.
fn assert_path(mode: &str, moved: &Hops) {
    assert!(
        moved.callee > 0.0,
        "{mode}: api's sidecar saw no handshake: {moved:?}"
    );
    let (dc1, dc2) = (moved.through_dc1_gateway(), moved.through_dc2_gateway());
    match mode {
        "local" => assert!(dc1 && dc2, "local: not through both gateways: {moved:?}"),
        "remote" => assert!(
            moved.dc1_lan == 0.0 && moved.dc1_to_dc2 == 0.0 && dc2,
            "remote: not through dc2's gateway alone: {moved:?}"
        ),
        _ => assert!(
            moved.bypassed_gateways(),
            "none: a gateway carried it: {moved:?}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_in_dc1_reaches_api_in_dc2_by_the_path_each_gateway_mode_gives() {
    let dcs = TwoDcs::with_ferrule_gateways().await;
    dcs.write(&service_defaults(API, "http", None)).await;
    let app = NamedHttp::start(API_DC2).await;
    let mut api = api_in_dc2(&dcs, app.addr().port());
    let api_proxy = dcs.dc2.start_service(&mut api).await;
    dcs.dc2.wait_passing(&[&api]).await;
    let mut web = web_in_dc1(&dcs, "local");
    let web_proxy = dcs.dc1.start_service(&mut web).await;
    let upstream = web.upstream_addr(API);

    for mode in ["local", "remote", "none"] {
        switch_mode(&dcs, &mut web, &web_proxy, &api, mode).await;
        let before = Hops::read(&dcs, API, Some(&api_proxy)).await;
        let path = format!("/{mode}");
        let what = format!("web reaches api in {mode} mode");
        let reached = wait_streak(&what, SETUP, API_DC2, 3, || who(upstream, &path)).await;
        if let Err(e) = reached {
            panic!("{e:#}\n{}", web_proxy.stderr());
        }
        let moved = Hops::read(&dcs, API, Some(&api_proxy)).await.since(before);
        eprintln!("mode {mode}: {moved:?}");
        assert_path(mode, &moved);
    }
    assert_saw_web_of_dc1(&dcs, &app);
    assert_presents_dc2_chain(&dcs, &api).await;
}

/// api's app saw every request come from dc1's web, through api's dc2 sidecar.
fn assert_saw_web_of_dc1(dcs: &TwoDcs, app: &NamedHttp) {
    let web_id = dcs.spiffe_id(WEB, DC1);
    let api_id = dcs.spiffe_id(API, DC2);
    let seen = app.seen();
    assert!(!seen.is_empty());
    for request in &seen {
        let xfcc = request
            .headers
            .get("x-forwarded-client-cert")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            xfcc.starts_with(&format!("By={api_id};")) && xfcc.ends_with(&format!(";URI={web_id}")),
            "{} got X-Forwarded-Client-Cert {xfcc:?}",
            request.path
        );
    }
}

/// What web accepted: api's sidecar presents its dc2 leaf followed by dc2's
/// intermediate, the one dc2's roots show under dc1's root.
async fn assert_presents_dc2_chain(dcs: &TwoDcs, api: &MeshService) {
    let roots = dcs
        .dc2
        .agent
        .get_json("/v1/agent/connect/ca/roots")
        .await
        .expect("dc2's roots");
    let intermediates = roots["Roots"][0]["IntermediateCerts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let intermediate = intermediates
        .last()
        .and_then(|pem| pem.as_str())
        .expect("dc2's roots show its intermediate");
    let web_leaf = dcs.dc1.agent.leaf(WEB).await.expect("web's leaf in dc1");
    let caller = TlsCaller::from_pem(
        web_leaf["CertPEM"].as_str().expect("CertPEM"),
        web_leaf["PrivateKeyPEM"].as_str().expect("PrivateKeyPEM"),
    );
    let conn = caller
        .connect(api.sidecar_addr())
        .await
        .expect("a handshake with api's sidecar");
    let stream = conn.into_stream();
    let presented = stream
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .to_vec();
    let expected = ferrule_control::model::parse_certificates(intermediate.as_bytes())
        .expect("dc2's intermediate parses");
    assert_eq!(
        presented.len(),
        2,
        "api's sidecar presents its leaf and dc2's intermediate"
    );
    assert_eq!(presented[1], expected[0], "the intermediate is dc2's");
}

/// api (a TCP echo) in dc2 and web in dc1 calling it in `mode`; web's sidecar dialling
/// as that mode says.
struct TcpWorld {
    web_proxy: ConsulSidecar,
    web: MeshService,
    api_proxy: ConsulSidecar,
    api: MeshService,
    app: TcpEcho,
    // Last: the sidecars stop before the agents.
    dcs: TwoDcs,
}

impl TcpWorld {
    async fn start(mode: &str) -> TcpWorld {
        let dcs = TwoDcs::with_ferrule_gateways().await;
        let app = TcpEcho::start().await;
        let mut api = api_in_dc2(&dcs, app.addr().port());
        let api_proxy = dcs.dc2.start_service(&mut api).await;
        dcs.dc2.wait_passing(&[&api]).await;
        let mut web = web_in_dc1(&dcs, mode);
        let web_proxy = dcs.dc1.start_service(&mut web).await;
        switch_mode(&dcs, &mut web, &web_proxy, &api, mode).await;
        TcpWorld {
            web_proxy,
            web,
            api_proxy,
            api,
            app,
            dcs,
        }
    }

    /// A connection through web's upstream that echoed a first line.
    async fn echoing(&self) -> anyhow::Result<TcpStream> {
        echoes(self.web.upstream_addr(API)).await
    }
}

/// A connection to `addr` (an upstream listener) that echoed a first line.
async fn echoes(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(b"ping\n").await?;
    let mut back = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut back)).await??;
    anyhow::ensure!(&back == b"ping\n", "echoed {back:?}");
    Ok(tcp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intention_written_in_dc1_denying_web_closes_and_refuses_it_in_dc2_within_2s() {
    let world = TcpWorld::start("local").await;
    let mut open = eventually("web reaches api through the gateways", SETUP, || {
        world.echoing()
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", world.web_proxy.stderr()));

    world
        .dcs
        .dc1
        .agent
        .set_intentions(API, &[(WEB, "deny")])
        .await;
    let written = Instant::now();
    let closed = async {
        let mut buf = [0u8; 64];
        loop {
            match open.read(&mut buf).await {
                Ok(0) | Err(_) => return written.elapsed(),
                Ok(_) => {}
            }
        }
    };
    let closed_after = tokio::time::timeout(APPLIES_WITHIN, closed)
        .await
        .unwrap_or_else(|_| {
            panic!("the open connection was still open {APPLIES_WITHIN:?} after the deny in dc1")
        });
    let refused = eventually("new connections refused", APPLIES_WITHIN, || async {
        match world.echoing().await {
            Ok(_) => anyhow::bail!("a new connection still echoes"),
            Err(_) => Ok(written.elapsed()),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    // Refused for good: a few more tries, none echoing.
    for _ in 0..5 {
        assert!(
            world.echoing().await.is_err(),
            "a new connection echoed after the deny"
        );
    }
    // api's sidecar in dc2 is who closed and refused them, for the intention.
    let admin = world.api_proxy.admin();
    let terminated = admin
        .metric(AUTHZ_TERMINATIONS, &[("source", WEB)])
        .await
        .unwrap();
    let denied = admin
        .metric(INBOUND, &[("result", "denied")])
        .await
        .unwrap();
    assert!(
        terminated >= 1.0 && denied >= 6.0,
        "api's sidecar terminated {terminated} and denied {denied} connections of web"
    );
    eprintln!(
        "FIGURES intention deny written in dc1: the open connection in dc2 closed after \
         {closed_after:?}, new connections refused from {refused:?}"
    );
    assert!(refused <= APPLIES_WITHIN + Duration::from_millis(100));
}

/// Sends `size` bytes through `addr` to the echo while reading them back, on one
/// connection; the rate in MB/s of the bytes sent (each also came back).
async fn echo_rate(addr: SocketAddr, size: usize) -> f64 {
    let data = payload(size);
    let started = Instant::now();
    let exchange = async {
        let tcp = TcpStream::connect(addr).await?;
        let (mut reader, mut writer) = tcp.into_split();
        let send = async {
            writer.write_all(&data).await?;
            writer.shutdown().await
        };
        let mut back = Vec::with_capacity(size);
        let (sent, received) = tokio::join!(send, reader.read_to_end(&mut back));
        sent?;
        received?;
        anyhow::Ok(back)
    };
    let back = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{size} bytes via {addr} took over {EXCHANGE_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{size} bytes via {addr}: {e:#}"));
    let elapsed = started.elapsed();
    assert!(
        back == data,
        "{} of {size} bytes came back intact",
        back.len()
    );
    size as f64 / 1e6 / elapsed.as_secs_f64()
}

/// The median of `rates`.
fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates.get(rates.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_through_both_gateways_next_to_a_direct_connection() {
    const SIZE: usize = 64 * 1024 * 1024;
    const ROUNDS: usize = 3;
    // web dials api's sidecar directly (mode none); web-gw, its twin, through both
    // gateways (mode local). Their exchanges take turns, so both see the same machine.
    let world = TcpWorld::start("none").await;
    let dcs = &world.dcs;
    let mut twin = MeshService::new("web-gw", dcs.dc1.ip, free_port().port()).with_upstream(
        json!({"DestinationName": API, "Datacenter": DC2, "MeshGateway": {"Mode": "local"}}),
    );
    let twin_proxy = dcs.dc1.start_service(&mut twin).await;
    let api_addr = world.api.sidecar_addr();
    wait_dials(&twin_proxy, dcs.dc1.gateway().lan, &[api_addr], SETUP).await;
    let (direct_addr, gateways_addr) = (world.web.upstream_addr(API), twin.upstream_addr(API));
    for addr in [direct_addr, gateways_addr] {
        eventually("both callers reach api", SETUP, || echoes(addr))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    let before = Hops::read(dcs, API, Some(&world.api_proxy)).await;
    let (mut app, mut direct, mut gateways) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        app.push(echo_rate(world.app.addr(), SIZE).await);
        direct.push(echo_rate(direct_addr, SIZE).await);
        gateways.push(echo_rate(gateways_addr, SIZE).await);
    }
    let moved = Hops::read(dcs, API, Some(&world.api_proxy))
        .await
        .since(before);
    assert!(
        moved.dc1_lan >= ROUNDS as f64 && moved.dc2_to_callee >= ROUNDS as f64,
        "an exchange per round through the gateways: {moved:?}"
    );
    let (app, direct, gateways) = (median(app), median(direct), median(gateways));
    eprintln!(
        "FIGURES 64 MiB echoed (sent and received at once), median of {ROUNDS} rounds, MB/s \
         of the bytes sent: app alone {app:.0}, web -> api sidecar to sidecar {direct:.0}, \
         through both ferrule gateways {gateways:.0} ({:.0}% of direct)",
        gateways / direct * 100.0
    );
}

/// A caller with web's dc1 leaf that accepts only api's dc2 identity.
async fn caller_of_api_in_dc2(dcs: &TwoDcs) -> SniCaller {
    let leaf = dcs.dc1.agent.leaf(WEB).await.expect("web's leaf in dc1");
    let roots = dcs
        .dc1
        .agent
        .get_json("/v1/agent/connect/ca/roots")
        .await
        .expect("dc1's roots");
    let roots: Vec<String> = roots["Roots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["RootCert"].as_str().map(str::to_owned))
        .collect();
    SniCaller::new(
        leaf["CertPEM"].as_str().expect("CertPEM"),
        leaf["PrivateKeyPEM"].as_str().expect("PrivateKeyPEM"),
        &roots,
        &dcs.spiffe_id(API, DC2),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_closes_names_of_no_known_datacenter_and_keeps_routing_the_others() {
    let world = TcpWorld::start("local").await;
    let dcs = &world.dcs;
    let caller = caller_of_api_in_dc2(dcs).await;
    let lan = dcs.dc1.gateway().lan;
    let unknown = [
        format!("api.default.dc3.internal.{}", dcs.trust_domain),
        "api.default.dc2.internal.other-domain.consul".to_owned(),
    ];
    for name in &unknown {
        assert!(
            caller.connect(lan, name).await.is_err(),
            "a connection naming {name} got through dc1's gateway"
        );
    }
    let mut good = caller
        .connect(lan, &dcs.sni(API, DC2))
        .await
        .expect("api in dc2 through both gateways, its identity checked");
    good.round_trip(b"still routing")
        .await
        .expect("an echo from api's app in dc2");
    let gateway = dcs.dc1.ferrule_gateway().admin();
    let refused = gateway
        .metric(GATEWAY_CONNECTIONS, &[("result", "unknown_sni")])
        .await
        .expect("dc1's gateway metrics");
    assert_eq!(refused, unknown.len() as f64, "unknown names counted");
}
