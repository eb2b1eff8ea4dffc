//! Request normalization on the inbound L7 side, with a deny on `/admin`: by default
//! `//admin` and `/%2Fadmin` are not `/admin` and reach the app (a backend that merges
//! slashes or decodes `%2F` would serve its admin page); with `MergeSlashes` and a
//! `PathWithEscapedSlashesAction` they are denied, refused or redirected, set by the
//! static config's `[request_normalization]` and by the dev agent's `mesh` entry. And
//! headers with underscores, dropped or refused.

use std::net::SocketAddr;
use std::time::Duration;

use ferrule_dev::ca::DevCa;
use ferrule_tests::agent::{AgentOptions, DevAgent, ServiceRegistration};
use ferrule_tests::backends::HttpRecorder;
use ferrule_tests::consul::ConsulSidecar;
use ferrule_tests::mesh::{API, WEB, svid};
use ferrule_tests::sidecar::{Sidecar, SidecarConfig};
use ferrule_tests::wait::{eventually, free_port};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SETUP: Duration = Duration::from_secs(20);
const APPLIES_WITHIN: Duration = Duration::from_secs(10);

fn deny_admin() -> serde_json::Value {
    json!({
        "Kind": "service-intentions",
        "Name": API,
        "Sources": [ { "Name": WEB, "Permissions": [
            { "Action": "deny", "HTTP": { "PathPrefix": "/admin" } },
            { "Action": "allow", "HTTP": { "PathPrefix": "/" } }
        ] } ]
    })
}

/// The status line's code and the whole head of the answer to one HTTP/1.1 request
/// sent byte for byte (no client rewrites the path on the way).
async fn raw(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let mut tcp = TcpStream::connect(addr).await?;
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: api\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await??;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status line in {text:?}"))?;
    Ok((status, text))
}

/// `web` calling `api` over L7 in static mode, api's sidecar with `table` added.
struct Pair {
    api: Sidecar,
    web: Sidecar,
}

impl Pair {
    async fn start(ca: &DevCa, app: SocketAddr, table: Option<&str>) -> Pair {
        let mut config = SidecarConfig::new(ca, &svid(ca, API))
            .inbound(app, deny_admin().to_string())
            .inbound_protocol("http");
        if let Some(table) = table {
            config = config.table(table);
        }
        let api = Sidecar::start(config).await;
        let web = Sidecar::start(SidecarConfig::new(ca, &svid(ca, WEB)).upstream_of(
            API,
            "http",
            &[api.inbound_addr()],
        ))
        .await;
        Pair { api, web }
    }

    fn upstream(&self) -> SocketAddr {
        self.web.upstream_addr(API)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_request_normalization_closes_the_slash_detours_around_a_deny() {
    let ca = DevCa::generate(None).expect("a development CA");
    let app = HttpRecorder::start().await;

    // Today's defaults: the detours reach the app, under paths it may read as /admin.
    let plain = Pair::start(&ca, app.addr(), None).await;
    assert_eq!(raw(plain.upstream(), "/admin", &[]).await.unwrap().0, 403);
    for detour in ["//admin", "/%2Fadmin"] {
        let (status, head) = raw(plain.upstream(), detour, &[]).await.unwrap();
        assert_eq!(status, 200, "{detour}: {head}");
    }
    let seen: Vec<String> = app.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(seen, ["//admin", "/%2Fadmin"]);
    drop(plain);

    // Merged slashes and escaped slashes unescaped: both are /admin, and denied.
    let forward = Pair::start(
        &ca,
        app.addr(),
        Some("[request_normalization]\nmerge_slashes = true\npath_with_escaped_slashes_action = \"UNESCAPE_AND_FORWARD\""),
    )
    .await;
    for detour in ["//admin", "/%2Fadmin", "/%2fadmin", "/x/..%2F/admin"] {
        let (status, head) = raw(forward.upstream(), detour, &[]).await.unwrap();
        assert_eq!(status, 403, "{detour}: {head}");
        assert!(head.ends_with("RBAC: access denied"), "{head}");
    }
    let (status, _) = raw(forward.upstream(), "/%2Fdocs", &[]).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(app.seen().last().map(|s| s.path.as_str()), Some("/docs"));
    let before = app.count();
    drop(forward);

    // Refused outright, and counted as the caller's error.
    let reject = Pair::start(
        &ca,
        app.addr(),
        Some("[request_normalization]\nmerge_slashes = true\npath_with_escaped_slashes_action = \"REJECT_REQUEST\""),
    )
    .await;
    let (status, head) = raw(reject.upstream(), "/%2Fadmin", &[]).await.unwrap();
    assert_eq!(status, 400, "{head}");
    assert_eq!(raw(reject.upstream(), "//admin", &[]).await.unwrap().0, 403);
    let metrics = reject.api.metrics().await.expect("api's metrics");
    assert_eq!(
        metrics.get(
            "ferrule_http_client_errors_total",
            &[("direction", "inbound"), ("reason", "escaped_slash")]
        ),
        1.0
    );
    drop(reject);

    // Redirected to the unescaped, merged path.
    let redirect = Pair::start(
        &ca,
        app.addr(),
        Some("[request_normalization]\nmerge_slashes = true\npath_with_escaped_slashes_action = \"UNESCAPE_AND_REDIRECT\""),
    )
    .await;
    let (status, head) = raw(redirect.upstream(), "/%2Fadmin?x=1", &[])
        .await
        .unwrap();
    assert_eq!(status, 307, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\nlocation: /admin?x=1\r\n"),
        "{head}"
    );
    assert_eq!(
        app.count(),
        before,
        "a refused or redirected request reached the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_with_underscores_are_dropped_or_refused() {
    let ca = DevCa::generate(None).expect("a development CA");
    let app = HttpRecorder::start().await;
    let headers = [("x_user", "admin"), ("x-user", "guest")];

    let allow = Pair::start(&ca, app.addr(), None).await;
    assert_eq!(raw(allow.upstream(), "/a", &headers).await.unwrap().0, 200);
    let seen = app.seen().pop().expect("the app got it");
    assert_eq!(seen.headers["x_user"], "admin");
    drop(allow);

    let drop_header = Pair::start(
        &ca,
        app.addr(),
        Some("[request_normalization]\nheaders_with_underscores_action = \"DROP_HEADER\""),
    )
    .await;
    assert_eq!(
        raw(drop_header.upstream(), "/b", &headers).await.unwrap().0,
        200
    );
    let seen = app.seen().pop().expect("the app got it");
    assert!(seen.headers.get("x_user").is_none(), "{:?}", seen.headers);
    assert_eq!(seen.headers["x-user"], "guest");
    drop(drop_header);

    let reject = Pair::start(
        &ca,
        app.addr(),
        Some("[request_normalization]\nheaders_with_underscores_action = \"REJECT_REQUEST\""),
    )
    .await;
    let before = app.count();
    let (status, head) = raw(reject.upstream(), "/c", &headers).await.unwrap();
    assert_eq!(status, 400, "{head}");
    assert_eq!(
        raw(reject.upstream(), "/d", &headers[1..]).await.unwrap().0,
        200
    );
    assert_eq!(app.count(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_entry_of_the_dev_agent_applies_to_open_sidecars() {
    let agent = DevAgent::start(AgentOptions::default()).await;
    let app = HttpRecorder::start().await;
    let api = ServiceRegistration::new(API, app.addr().port());
    let web = ServiceRegistration::new(WEB, free_port().port()).with_upstream(API);
    agent.register(&api).await;
    agent.register(&web).await;
    agent
        .put(
            "/v1/config",
            &json!({ "Kind": "service-defaults", "Name": API, "Protocol": "http" }),
        )
        .await
        .expect("make api an http service");
    agent
        .put("/v1/config", &deny_admin())
        .await
        .expect("write the L7 intentions");
    let api_proxy = ConsulSidecar::start(&agent, &api.id).await;
    let web_proxy = ConsulSidecar::start(&agent, &web.id).await;
    agent.wait_passing(API, &[api.sidecar_port], SETUP).await;
    let upstream = web.upstream_addr(API);
    eventually("web reaches api", SETUP, || async {
        let (status, head) = raw(upstream, "/hello", &[]).await?;
        anyhow::ensure!(status == 200, "{head}");
        Ok(())
    })
    .await
    .expect("web reaches api");
    assert_eq!(raw(upstream, "//admin", &[]).await.unwrap().0, 200);
    assert_eq!(raw(upstream, "/%2Fadmin", &[]).await.unwrap().0, 200);

    let mesh = |action: &str| {
        json!({ "Kind": "mesh", "HTTP": { "Incoming": { "RequestNormalization": {
            "MergeSlashes": true, "PathWithEscapedSlashesAction": action } } } })
    };
    agent
        .put("/v1/config", &mesh("UNESCAPE_AND_FORWARD"))
        .await
        .expect("write the mesh entry");
    eventually("the mesh entry applies", APPLIES_WITHIN, || async {
        for detour in ["//admin", "/%2Fadmin"] {
            let (status, head) = raw(upstream, detour, &[]).await?;
            anyhow::ensure!(status == 403, "{detour}: {head}");
        }
        Ok(())
    })
    .await
    .expect("denied once the mesh entry is in force");
    let config = api_proxy.admin().config().await.expect("api's /config");
    assert_eq!(
        config["request_normalization"]["path_with_escaped_slashes_action"], "UNESCAPE_AND_FORWARD",
        "{config}"
    );

    agent
        .put("/v1/config", &mesh("REJECT_REQUEST"))
        .await
        .expect("change the mesh entry");
    eventually("escaped slashes are refused", APPLIES_WITHIN, || async {
        let (status, head) = raw(upstream, "/%2Fadmin", &[]).await?;
        anyhow::ensure!(status == 400, "{head}");
        Ok(())
    })
    .await
    .expect("refused");

    agent
        .delete_config("mesh", "mesh")
        .await
        .expect("delete the mesh entry");
    eventually("the defaults are back", APPLIES_WITHIN, || async {
        let (status, head) = raw(upstream, "//admin", &[]).await?;
        anyhow::ensure!(status == 200, "{head}");
        Ok(())
    })
    .await
    .expect("defaults again");
    drop(web_proxy);
    drop(api_proxy);
}
