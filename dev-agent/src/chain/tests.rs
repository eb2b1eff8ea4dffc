//! The discovery chain as tables: entries in, compiled chain out (one row per feature,
//! checked at JSON pointers of the answer as a client sees it), and entries refused
//! with Consul's message.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use ferrule_control::api::chain::DiscoveryChainRequest;
use ferrule_control::api::defaults::{ProxyDefaultsEntry, ServiceDefaultsEntry};

use super::compile::{Request, compile};
use super::{ChainEntries, Config, Entry};

const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

/// Stored entries, written one after the other as `PUT /v1/config` writes them.
#[derive(Default)]
struct Store {
    chain: ChainEntries,
    service_defaults: BTreeMap<String, ServiceDefaultsEntry>,
    proxy_defaults: Option<ProxyDefaultsEntry>,
}

impl Store {
    fn config(&self) -> Config<'_> {
        Config {
            chain: &self.chain,
            service_defaults: &self.service_defaults,
            proxy_defaults: self.proxy_defaults.as_ref(),
        }
    }

    /// Writes one entry: decoded, validated, and every chain checked with it in place.
    fn write(&mut self, raw: Value) -> Result<(), String> {
        let kind = raw["Kind"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "service-defaults" => {
                let e: ServiceDefaultsEntry =
                    serde_json::from_value(raw).map_err(|e| e.to_string())?;
                self.service_defaults.insert(e.name.clone(), e);
                return self.config().check("dc1", TD, "").map_err(|e| e.message);
            }
            "proxy-defaults" => {
                self.proxy_defaults = Some(serde_json::from_value(raw).map_err(|e| e.to_string())?);
                return self.config().check("dc1", TD, "").map_err(|e| e.message);
            }
            _ => {}
        }
        let mut entry = Entry::decode(raw, &kind).map_err(|e| e.message)?;
        entry.validate().map_err(|e| e.message)?;
        let name = entry.name().to_owned();
        let mut proposed = self.chain.clone();
        entry.place(&mut proposed);
        let config = Config {
            chain: &proposed,
            ..self.config()
        };
        config.check("dc1", TD, &name).map_err(|e| e.message)?;
        self.chain = proposed;
        Ok(())
    }

    fn with(entries: &[Value]) -> Store {
        let mut store = Store::default();
        for entry in entries {
            if let Err(e) = store.write(entry.clone()) {
                panic!("{entry}: {e}");
            }
        }
        store
    }

    fn compile(
        &self,
        service: &str,
        dc: &str,
        overrides: &DiscoveryChainRequest,
    ) -> Result<Value, String> {
        let request = Request {
            service,
            datacenter: dc,
            trust_domain: TD,
            overrides,
        };
        let compiled = compile(&self.config(), &request)?;
        Ok(serde_json::to_value(&compiled.chain).expect("serializes"))
    }
}

fn http(name: &str) -> Value {
    json!({"Kind": "service-defaults", "Name": name, "Protocol": "http"})
}

fn sni(prefix: &str) -> String {
    format!("{prefix}.internal.{TD}")
}

/// One row: the entries, the chain compiled (service, datacenter, POST body), and the
/// values expected at JSON pointers of `{"Chain": ...}`'s chain (`None`: absent).
struct Row {
    name: &'static str,
    entries: Vec<Value>,
    service: &'static str,
    dc: &'static str,
    overrides: Value,
    expect: Vec<(&'static str, Option<Value>)>,
}

fn row(name: &'static str, entries: Vec<Value>, expect: Vec<(&'static str, Option<Value>)>) -> Row {
    Row {
        name,
        entries,
        service: "web",
        dc: "dc1",
        overrides: json!({}),
        expect,
    }
}

fn rows() -> Vec<Row> {
    let subsets = json!({"Kind": "service-resolver", "Name": "web", "Subsets": {
        "v1": {"Filter": "Service.Meta.version == v1", "OnlyPassing": true},
        "v2": {"Filter": "\"canary\" in Service.Tags"}}});
    let mut r = vec![
        row(
            "default chain",
            vec![],
            vec![
                ("/ServiceName", Some(json!("web"))),
                ("/Namespace", Some(json!("default"))),
                ("/Partition", Some(json!("default"))),
                ("/Datacenter", Some(json!("dc1"))),
                ("/Default", Some(json!(true))),
                ("/Protocol", Some(json!("tcp"))),
                ("/CustomizationHash", None),
                (
                    "/StartNode",
                    Some(json!("resolver:web.default.default.dc1")),
                ),
                (
                    "/Nodes",
                    Some(json!({"resolver:web.default.default.dc1": {
                "Type": "resolver", "Name": "web.default.default.dc1",
                "Resolver": {"Default": true, "ConnectTimeout": "5s", "Target": "web.default.default.dc1"}}})),
                ),
                (
                    "/Targets",
                    Some(json!({"web.default.default.dc1": {
                "ID": "web.default.default.dc1", "Service": "web", "Namespace": "default",
                "Partition": "default", "Datacenter": "dc1", "MeshGateway": {}, "Subset": {},
                "TransparentProxy": {}, "ConnectTimeout": "5s",
                "SNI": sni("web.default.dc1"), "Name": sni("web.default.dc1")}})),
                ),
            ],
        ),
        row(
            "DefaultSubset picks the subset",
            vec![{
                let mut r = subsets.clone();
                r["DefaultSubset"] = json!("v1");
                r
            }],
            vec![
                ("/Default", None),
                (
                    "/StartNode",
                    Some(json!("resolver:v1.web.default.default.dc1")),
                ),
                (
                    "/Targets/v1.web.default.default.dc1/ServiceSubset",
                    Some(json!("v1")),
                ),
                (
                    "/Targets/v1.web.default.default.dc1/SNI",
                    Some(json!(sni("v1.web.default.dc1"))),
                ),
                ("/Targets/web.default.default.dc1", None),
            ],
        ),
        row(
            "subsets carry their filter",
            vec![
                http("web"),
                subsets.clone(),
                json!({
            "Kind": "service-router", "Name": "web", "Routes": [
                {"Match": {"HTTP": {"PathPrefix": "/v2"}}, "Destination": {"ServiceSubset": "v2"}}]}),
            ],
            vec![
                ("/Targets/v1.web.default.default.dc1", None),
                (
                    "/Targets/v2.web.default.default.dc1/Subset",
                    Some(json!({"Filter": "\"canary\" in Service.Tags"})),
                ),
                (
                    "/Nodes/router:web.default.default/Routes/0/NextNode",
                    Some(json!("resolver:v2.web.default.default.dc1")),
                ),
            ],
        ),
        row(
            "redirect to another service",
            vec![json!({
            "Kind": "service-resolver", "Name": "web", "Redirect": {"Service": "web-next"}})],
            vec![
                ("/Default", None),
                (
                    "/StartNode",
                    Some(json!("resolver:web-next.default.default.dc1")),
                ),
                (
                    "/Nodes/resolver:web-next.default.default.dc1/Resolver/Default",
                    Some(json!(true)),
                ),
                ("/Targets/web.default.default.dc1", None),
                (
                    "/Targets/web-next.default.default.dc1/SNI",
                    Some(json!(sni("web-next.default.dc1"))),
                ),
            ],
        ),
        row(
            "redirect to a datacenter",
            vec![json!({
            "Kind": "service-resolver", "Name": "web", "Redirect": {"Datacenter": "dc2"}})],
            vec![
                (
                    "/StartNode",
                    Some(json!("resolver:web.default.default.dc2")),
                ),
                (
                    "/Targets/web.default.default.dc2/Datacenter",
                    Some(json!("dc2")),
                ),
                (
                    "/Targets/web.default.default.dc2/SNI",
                    Some(json!(sni("web.default.dc2"))),
                ),
            ],
        ),
        row(
            "failover to datacenters, never to itself",
            vec![json!({
            "Kind": "service-resolver", "Name": "web",
            "Failover": {"*": {"Datacenters": ["dc1", "dc2", "dc3"]}}})],
            vec![
                (
                    "/Nodes/resolver:web.default.default.dc1/Resolver/Failover",
                    Some(
                        json!({"Targets": ["web.default.default.dc2", "web.default.default.dc3"]}),
                    ),
                ),
                (
                    "/Targets/web.default.default.dc2/ConnectTimeout",
                    Some(json!("5s")),
                ),
                (
                    "/Targets/web.default.default.dc3/SNI",
                    Some(json!(sni("web.default.dc3"))),
                ),
                ("/Nodes/resolver:web.default.default.dc2", None),
            ],
        ),
        row(
            "failover targets: service, datacenter, peer; per subset",
            vec![json!({
            "Kind": "service-resolver", "Name": "web", "DefaultSubset": "v1",
            "Subsets": {"v1": {"Filter": "Service.Meta.v == \"1\""}},
            "Failover": {"v1": {"Targets": [{"Service": "web-backup"}, {"Datacenter": "dc2"}, {"Service": "web", "Peer": "east"}]}}})],
            vec![
                (
                    "/Nodes/resolver:v1.web.default.default.dc1/Resolver/Failover/Targets",
                    Some(json!([
                        "web-backup.default.default.dc1",
                        "v1.web.default.default.dc2",
                        "web.default.default.external.east"
                    ])),
                ),
                (
                    "/Targets/v1.web.default.default.dc2/Subset/Filter",
                    Some(json!("Service.Meta.v == \"1\"")),
                ),
                (
                    "/Targets/web.default.default.external.east/Peer",
                    Some(json!("east")),
                ),
                ("/Targets/web.default.default.external.east/SNI", None),
                (
                    "/Targets/web.default.default.external.east/Datacenter",
                    None,
                ),
            ],
        ),
        row(
            "splitter 90/10",
            vec![
                http("web"),
                subsets.clone(),
                json!({
            "Kind": "service-splitter", "Name": "web", "Splits": [
                {"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2"}]}),
            ],
            vec![
                ("/Protocol", Some(json!("http"))),
                ("/StartNode", Some(json!("splitter:web.default.default"))),
                (
                    "/Nodes/splitter:web.default.default/Splits",
                    Some(json!([
                {"Definition": {"Weight": 90, "ServiceSubset": "v1"}, "Weight": 90, "NextNode": "resolver:v1.web.default.default.dc1"},
                {"Definition": {"Weight": 10, "ServiceSubset": "v2"}, "Weight": 10, "NextNode": "resolver:v2.web.default.default.dc1"}])),
                ),
            ],
        ),
        row(
            "nested splitter flattened, headers merged",
            vec![
                http("web"),
                http("web-a"),
                subsets.clone(),
                json!({"Kind": "service-resolver", "Name": "web-a", "Subsets": {"blue": {}, "green": {}}}),
                json!({"Kind": "service-splitter", "Name": "web", "Splits": [
                {"Weight": 50, "Service": "web-a", "RequestHeaders": {"Set": {"x-outer": "1"}}},
                {"Weight": 50, "ServiceSubset": "v1"}]}),
                json!({"Kind": "service-splitter", "Name": "web-a", "Splits": [
                {"Weight": 20, "ServiceSubset": "blue", "RequestHeaders": {"Set": {"x-inner": "1"}}},
                {"Weight": 80, "ServiceSubset": "green"}]}),
            ],
            vec![
                ("/Nodes/splitter:web-a.default.default", None),
                (
                    "/Nodes/splitter:web.default.default/Splits",
                    Some(json!([
                {"Definition": {"Weight": 20, "ServiceSubset": "blue", "RequestHeaders": {"Set": {"x-inner": "1", "x-outer": "1"}}},
                 "Weight": 10, "NextNode": "resolver:blue.web-a.default.default.dc1"},
                {"Definition": {"Weight": 80, "ServiceSubset": "green", "RequestHeaders": {"Set": {"x-outer": "1"}}},
                 "Weight": 40, "NextNode": "resolver:green.web-a.default.default.dc1"},
                {"Definition": {"Weight": 50, "ServiceSubset": "v1"}, "Weight": 50, "NextNode": "resolver:v1.web.default.default.dc1"}])),
                ),
            ],
        ),
    ];
    r.extend(more_rows(&subsets));
    r
}

fn more_rows(subsets: &Value) -> Vec<Row> {
    let router = json!({"Kind": "service-router", "Name": "web", "Routes": [
        {"Match": {"HTTP": {"PathExact": "/exact"}}, "Destination": {"Service": "a"}},
        {"Match": {"HTTP": {"PathPrefix": "/prefix", "CaseInsensitive": true}}, "Destination": {"Service": "b", "PrefixRewrite": "/"}},
        {"Match": {"HTTP": {"PathRegex": "/re[0-9]+"}}, "Destination": {"ServiceSubset": "v2"}},
        {"Match": {"HTTP": {"Header": [{"Name": "x-a", "Present": true}, {"Name": "x-b", "Exact": "1", "Invert": true},
            {"Name": "x-c", "Prefix": "p"}, {"Name": "x-d", "Suffix": "s"}, {"Name": "x-e", "Regex": "e+"}]}},
         "Destination": {"Service": "a", "RequestTimeout": "2s", "NumRetries": 2}},
        {"Match": {"HTTP": {"QueryParam": [{"Name": "q", "Present": true}, {"Name": "r", "Exact": "1"}, {"Name": "s", "Regex": "s+"}]}},
         "Destination": {"Service": "b"}},
        {"Match": {"HTTP": {"Methods": ["get", "POST"]}}},
    ]});
    let mut tcp_override = row(
        "an L4 override drops the router",
        vec![
            http("web"),
            http("a"),
            http("b"),
            subsets.clone(),
            router.clone(),
        ],
        vec![
            ("/Protocol", Some(json!("tcp"))),
            (
                "/StartNode",
                Some(json!("resolver:web.default.default.dc1")),
            ),
            ("/Nodes/router:web.default.default", None),
            ("/CustomizationHash", Some(json!("SET"))),
        ],
    );
    tcp_override.overrides = json!({"OverrideProtocol": "tcp"});
    let mut timeout_override = row(
        "connect timeout override",
        vec![json!({
        "Kind": "service-resolver", "Name": "web", "ConnectTimeout": "2s", "RequestTimeout": "30s"})],
        vec![
            (
                "/Nodes/resolver:web.default.default.dc1/Resolver/ConnectTimeout",
                Some(json!("7s")),
            ),
            (
                "/Nodes/resolver:web.default.default.dc1/Resolver/RequestTimeout",
                Some(json!(30_000_000_000i64)),
            ),
            (
                "/Targets/web.default.default.dc1/ConnectTimeout",
                Some(json!("7s")),
            ),
            ("/CustomizationHash", Some(json!("SET"))),
        ],
    );
    timeout_override.overrides = json!({"override_connect_timeout": "7s"});
    let mut gateway_override = row(
        "mesh gateway override beats service-defaults",
        vec![json!({
        "Kind": "service-defaults", "Name": "web", "MeshGateway": {"Mode": "remote"}})],
        vec![
            (
                "/Targets/web.default.default.dc1/MeshGateway",
                Some(json!({"Mode": "local"})),
            ),
            ("/CustomizationHash", Some(json!("SET"))),
        ],
    );
    gateway_override.overrides = json!({"OverrideMeshGateway": {"Mode": "local"}});
    let mut compile_dc = row(
        "compile-dc",
        vec![],
        vec![
            ("/Datacenter", Some(json!("dc9"))),
            (
                "/StartNode",
                Some(json!("resolver:web.default.default.dc9")),
            ),
            (
                "/Targets/web.default.default.dc9/SNI",
                Some(json!(sni("web.default.dc9"))),
            ),
        ],
    );
    compile_dc.dc = "dc9";
    vec![
        row(
            "router: every match kind, then the catch-all",
            vec![http("web"), http("a"), http("b"), subsets.clone(), router],
            vec![
                ("/StartNode", Some(json!("router:web.default.default"))),
                (
                    "/Nodes/router:web.default.default/Routes/0/NextNode",
                    Some(json!("resolver:a.default.default.dc1")),
                ),
                (
                    "/Nodes/router:web.default.default/Routes/1/Definition/Match/HTTP/CaseInsensitive",
                    Some(json!(true)),
                ),
                (
                    "/Nodes/router:web.default.default/Routes/2/NextNode",
                    Some(json!("resolver:v2.web.default.default.dc1")),
                ),
                (
                    "/Nodes/router:web.default.default/Routes/3/Definition/Destination/RequestTimeout",
                    Some(json!("2s")),
                ),
                (
                    "/Nodes/router:web.default.default/Routes/4/NextNode",
                    Some(json!("resolver:b.default.default.dc1")),
                ),
                (
                    "/Nodes/router:web.default.default/Routes/5/Definition",
                    Some(json!({"Match": {"HTTP": {"Methods": ["GET", "POST"]}}})),
                ),
                (
                    "/Nodes/router:web.default.default/Routes/5/NextNode",
                    Some(json!("resolver:web.default.default.dc1")),
                ),
                (
                    "/Nodes/router:web.default.default/Routes/6",
                    Some(json!({
                "Definition": {"Match": {"HTTP": {"PathPrefix": "/"}},
                               "Destination": {"Service": "web", "Namespace": "default", "Partition": "default"}},
                "NextNode": "resolver:web.default.default.dc1"})),
                ),
                ("/Nodes/router:web.default.default/Routes/7", None),
            ],
        ),
        tcp_override,
        row(
            "connect timeout from the resolver",
            vec![json!({
            "Kind": "service-resolver", "Name": "web", "ConnectTimeout": "2s"})],
            vec![
                ("/Default", None),
                (
                    "/Nodes/resolver:web.default.default.dc1/Resolver",
                    Some(json!({
                "ConnectTimeout": "2s", "Target": "web.default.default.dc1"})),
                ),
                (
                    "/Targets/web.default.default.dc1/ConnectTimeout",
                    Some(json!("2s")),
                ),
            ],
        ),
        timeout_override,
        row(
            "load balancer on the resolver and its splitter",
            vec![
                http("web"),
                http("api"),
                json!({
            "Kind": "service-resolver", "Name": "api", "LoadBalancer": {"Policy": "ring_hash",
                "RingHashConfig": {"MinimumRingSize": 64}, "HashPolicies": [{"Field": "header", "FieldValue": "x-user"}]}}),
                json!({"Kind": "service-splitter", "Name": "web", "Splits": [{"Weight": 100, "Service": "api"}]}),
            ],
            vec![
                (
                    "/Nodes/resolver:api.default.default.dc1/LoadBalancer/Policy",
                    Some(json!("ring_hash")),
                ),
                (
                    "/Nodes/splitter:web.default.default/LoadBalancer/HashPolicies/0/FieldValue",
                    Some(json!("x-user")),
                ),
            ],
        ),
        row(
            "mesh gateway from proxy-defaults, then service-defaults",
            vec![
                json!({"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": "local"}}),
                json!({"Kind": "service-resolver", "Name": "web", "Failover": {"*": {"Service": "other"}}}),
                json!({"Kind": "service-defaults", "Name": "other", "MeshGateway": {"Mode": "remote"}}),
            ],
            vec![
                (
                    "/Targets/web.default.default.dc1/MeshGateway",
                    Some(json!({"Mode": "local"})),
                ),
                (
                    "/Targets/other.default.default.dc1/MeshGateway",
                    Some(json!({"Mode": "remote"})),
                ),
            ],
        ),
        gateway_override,
        compile_dc,
        row(
            "service meta",
            vec![json!({"Kind": "service-defaults", "Name": "web", "Meta": {"team": "shop"}})],
            vec![
                ("/ServiceMeta", Some(json!({"team": "shop"}))),
                ("/Protocol", Some(json!("tcp"))),
            ],
        ),
    ]
}

#[test]
fn entries_compile_as_consul_compiles_them() {
    for row in rows() {
        let store = Store::with(&row.entries);
        let overrides: DiscoveryChainRequest =
            serde_json::from_value(row.overrides.clone()).expect("overrides");
        let chain = store
            .compile(row.service, row.dc, &overrides)
            .unwrap_or_else(|e| panic!("{}: {e}", row.name));
        for (pointer, want) in &row.expect {
            let got = chain.pointer(pointer);
            match want {
                Some(v) if v == "SET" => assert!(
                    got.and_then(Value::as_str).is_some_and(|h| h.len() == 8),
                    "{}: {pointer} should be an 8-digit hash in {chain:#}",
                    row.name
                ),
                _ => assert_eq!(got, want.as_ref(), "{}: {pointer} in {chain:#}", row.name),
            }
        }
    }
}

/// Entries written first, then the one refused, and the start of Consul's message.
fn refusals() -> Vec<(&'static str, Vec<Value>, Value, &'static str)> {
    let resolver = |extra: Value| {
        let mut r =
            json!({"Kind": "service-resolver", "Name": "web", "Subsets": {"v1": {}, "v2": {}}});
        if let (Some(r), Some(extra)) = (r.as_object_mut(), extra.as_object()) {
            r.extend(extra.clone());
        }
        r
    };
    let route = |route: Value| json!({"Kind": "service-router", "Name": "web", "Routes": [route]});
    let split =
        |splits: Value| json!({"Kind": "service-splitter", "Name": "web", "Splits": splits});
    vec![
        (
            "weights that do not sum to 100",
            vec![http("web")],
            split(json!([{"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 5}])),
            "the sum of all split weights must be 100, not 95.000000",
        ),
        (
            "weights rounded to 0.01 first",
            vec![http("web")],
            split(json!([{"Weight": 50.004, "Service": "a"}, {"Weight": 49.994}])),
            "the sum of all split weights must be 100, not 99.989998",
        ),
        (
            "no splits",
            vec![http("web")],
            split(json!([])),
            "no splits configured",
        ),
        (
            "a destination twice",
            vec![http("web")],
            split(json!([{"Weight": 50, "Service": "web"}, {"Weight": 50}])),
            "split destination occurs more than once: service=\"web\", subset=\"\", namespace=\"\", partition=\"\"",
        ),
        (
            "a subset name that is no DNS label",
            vec![],
            json!({"Kind": "service-resolver", "Name": "web", "Subsets": {"V1": {}}}),
            "Subset \"V1\" is invalid: must be 63 characters or fewer, begin or end with lower case alphanumeric characters",
        ),
        (
            "a subset filter that does not parse",
            vec![],
            json!({"Kind": "service-resolver", "Name": "web", "Subsets": {"v1": {"Filter": "Service.Meta.v =="}}}),
            "Filter for subset \"v1\" is not a valid expression: ",
        ),
        (
            "a DefaultSubset that is no subset",
            vec![],
            resolver(json!({"DefaultSubset": "v3"})),
            "DefaultSubset \"v3\" is not a valid subset",
        ),
        (
            "a redirect loop",
            vec![json!({"Kind": "service-resolver", "Name": "a", "Redirect": {"Service": "b"}})],
            json!({"Kind": "service-resolver", "Name": "b", "Redirect": {"Service": "a"}}),
            "detected circular resolver redirect: [a.default.default.dc1 -> b.default.default.dc1 -> a.default.default.dc1]",
        ),
        (
            "redirect and failover",
            vec![],
            resolver(json!({"Redirect": {"Service": "x"}, "Failover": {"*": {"Service": "y"}}})),
            "Redirect and Failover cannot both be set",
        ),
        (
            "an empty redirect",
            vec![],
            resolver(json!({"Redirect": {}})),
            "Redirect is empty",
        ),
        (
            "an Enterprise redirect",
            vec![],
            resolver(json!({"Redirect": {"Service": "x", "Namespace": "ns"}})),
            "Redirect: Setting Namespace requires Consul Enterprise",
        ),
        (
            "an empty failover",
            vec![],
            resolver(json!({"Failover": {"v1": {}}})),
            "Bad Failover[\"v1\"]: one of Service, ServiceSubset, Namespace, Targets, or Datacenters is required",
        ),
        (
            "failover for no subset",
            vec![],
            resolver(json!({"Failover": {"v9": {"Service": "x"}}})),
            "Bad Failover[\"v9\"]: not a valid subset subset",
        ),
        (
            "failover targets with datacenters",
            vec![],
            resolver(
                json!({"Failover": {"*": {"Datacenters": ["dc2"], "Targets": [{"Service": "x"}]}}}),
            ),
            "Bad Failover[\"*\"]: Targets cannot be set with Datacenters",
        ),
        (
            "a failover policy (Enterprise)",
            vec![],
            resolver(
                json!({"Failover": {"*": {"Service": "x", "Policy": {"Mode": "order-by-locality"}}}}),
            ),
            "Bad Failover[\"*\"]: Setting failover policies requires Consul Enterprise",
        ),
        (
            "a negative connect timeout",
            vec![],
            resolver(json!({"ConnectTimeout": "-1s"})),
            "Bad ConnectTimeout '-1s', must be >= 0",
        ),
        (
            "hash policies on round robin",
            vec![],
            resolver(
                json!({"LoadBalancer": {"Policy": "round_robin", "HashPolicies": [{"SourceIP": true}]}}),
            ),
            "Bad LoadBalancer configuration: HashPolicies specified for non-hash-based Policy: \"round_robin\"",
        ),
        (
            "an unknown load balancer",
            vec![],
            resolver(json!({"LoadBalancer": {"Policy": "fastest"}})),
            "Bad LoadBalancer policy: \"fastest\" is not supported",
        ),
        (
            "a router on a tcp service",
            vec![],
            route(json!({"Match": {"HTTP": {"PathPrefix": "/"}}})),
            "discovery chain \"web\" uses a protocol \"tcp\" that does not permit advanced routing or splitting behavior",
        ),
        (
            "a splitter on a tcp service",
            vec![],
            split(json!([{"Weight": 100, "Service": "x"}])),
            "discovery chain \"web\" uses a protocol \"tcp\" that does not permit advanced routing or splitting behavior",
        ),
        (
            "a split to a service that is not http-like",
            vec![http("web")],
            split(json!([{"Weight": 50}, {"Weight": 50, "Service": "api"}])),
            "discovery chain \"web\" uses inconsistent protocols; service \"api\" has \"tcp\" which is not \"http\"",
        ),
        (
            "a route to a subset that does not exist",
            vec![http("web")],
            route(json!({"Destination": {"ServiceSubset": "v9"}})),
            "service \"web\" does not have a subset named \"v9\"",
        ),
        (
            "a header matched two ways",
            vec![http("web")],
            route(
                json!({"Match": {"HTTP": {"Header": [{"Name": "x", "Exact": "1", "Prefix": "2"}]}}}),
            ),
            "Route[0] Header[0] should only contain one of Present, Exact, Prefix, Suffix, or Regex",
        ),
        (
            "a path without a slash",
            vec![http("web")],
            route(json!({"Match": {"HTTP": {"PathExact": "x"}}})),
            "Route[0] PathExact doesn't start with '/': \"x\"",
        ),
        (
            "two path criteria",
            vec![http("web")],
            route(json!({"Match": {"HTTP": {"PathExact": "/x", "PathRegex": "y"}}})),
            "Route[0] should only contain at most one of PathExact, PathPrefix, or PathRegex",
        ),
        (
            "an unknown method",
            vec![http("web")],
            route(json!({"Match": {"HTTP": {"Methods": ["FETCH"]}}})),
            "Route[0] Methods contains an invalid method \"FETCH\"",
        ),
        (
            "a prefix rewrite without a path",
            vec![http("web")],
            route(json!({"Destination": {"PrefixRewrite": "/x"}})),
            "Route[0] cannot make use of PrefixRewrite without configuring either PathExact or PathPrefix",
        ),
        (
            "an unknown retry condition",
            vec![http("web")],
            route(json!({"Destination": {"RetryOn": ["sometimes"]}})),
            "Route[0] contains an invalid retry condition: \"sometimes\"",
        ),
        (
            "a protocol change under a router",
            vec![http("web"), route(json!({}))],
            json!({"Kind": "service-defaults", "Name": "web", "Protocol": "tcp"}),
            "discovery chain \"web\" uses a protocol \"tcp\"",
        ),
        (
            "an unknown key",
            vec![],
            resolver(json!({"Bogus": 1})),
            "Request decoding failed: 1 error occurred:\n\t* invalid config key \"Bogus\"\n\n",
        ),
        (
            "an Enterprise namespace",
            vec![],
            resolver(json!({"Namespace": "ns"})),
            "Request decoding failed: 1 error occurred:\n\t* invalid config key \"Namespace\", namespaces are a consul enterprise feature",
        ),
        (
            "a bad duration",
            vec![],
            resolver(json!({"ConnectTimeout": "soon"})),
            "Request decoding failed: time: invalid duration \"soon\"",
        ),
    ]
}

#[test]
fn refused_entries_get_consul_s_message() {
    for (name, before, entry, message) in refusals() {
        let mut store = Store::with(&before);
        let before_chain = store.chain.clone();
        match store.write(entry) {
            Ok(()) => panic!("{name}: accepted"),
            Err(e) => assert!(
                e.starts_with(message),
                "{name}: {e:?} should start with {message:?}"
            ),
        }
        assert_eq!(store.chain, before_chain, "{name}: nothing stored");
    }
}

#[test]
fn accepted_entries_are_normalized() {
    let store = Store::with(&[
        http("web"),
        http("a"),
        http("b"),
        json!({"Kind": "service-splitter", "Name": "web", "Splits": [
            {"Weight": 33.333, "Service": "a"}, {"Weight": 66.667, "Service": "b"}]}),
        json!({"Kind": "service-router", "Name": "web", "Routes": [
            {"Match": {"HTTP": {"Methods": ["get", "Post"]}}}]}),
    ]);
    let weights: Vec<f32> = store.chain.splitters["web"]
        .splits
        .iter()
        .map(|s| s.weight)
        .collect();
    assert_eq!(weights, vec![33.33, 66.67]);
    let methods = store.chain.routers["web"].routes[0]
        .route_match
        .as_ref()
        .and_then(|m| m.http.as_ref())
        .map(|h| h.methods.clone());
    assert_eq!(methods, Some(vec!["GET".to_owned(), "POST".to_owned()]));
}

#[test]
fn a_splitter_loop_is_a_circular_reference() {
    let mut store = Store::with(&[http("a"), http("b")]);
    store
        .write(json!({"Kind": "service-splitter", "Name": "a", "Splits": [{"Weight": 100, "Service": "b"}]}))
        .expect("a to b");
    let refused = store
        .write(json!({"Kind": "service-splitter", "Name": "b", "Splits": [{"Weight": 100, "Service": "a"}]}))
        .expect_err("a loop");
    assert_eq!(
        refused,
        "detected circular reference: [splitter:a.default.default -> splitter:b.default.default -> splitter:a.default.default]"
    );
}
