//! Routing by name, table by table, against views made by hand.

use std::collections::BTreeMap;

use ferrule_control::gateway::{LocalService, RemoteDatacenter};

use super::*;

const TD: &str = "11111111-2222.consul";

fn addrs(list: &[&str]) -> Option<Vec<String>> {
    Some(list.iter().map(|s| (*s).to_owned()).collect())
}

fn view() -> GatewayView {
    let api = LocalService {
        name: "API".into(),
        instances: addrs(&["10.0.0.1:21000", "10.0.0.2:21000"]),
        subsets: BTreeMap::from([
            ("v1".into(), addrs(&["10.0.0.1:21000"])),
            ("v2".into(), addrs(&[])),
            ("v3".into(), None),
        ]),
    };
    let cold = LocalService {
        name: "cold".into(),
        instances: None,
        subsets: BTreeMap::new(),
    };
    GatewayView {
        datacenter: Some("dc1".into()),
        trust_domain: Some(TD.into()),
        services: Some(BTreeMap::from([("api".into(), api), ("cold".into(), cold)])),
        remote: Some(BTreeMap::from([
            (
                "dc2".into(),
                RemoteDatacenter {
                    gateways: addrs(&["127.0.0.2:8443"]),
                },
            ),
            (
                "dc3".into(),
                RemoteDatacenter {
                    gateways: addrs(&[]),
                },
            ),
            ("dc4".into(), RemoteDatacenter { gateways: None }),
        ])),
        ..GatewayView::default()
    }
}

fn sni(prefix: &str) -> String {
    format!("{prefix}.internal.{TD}")
}

#[test]
fn names_in_this_datacenter_reach_the_service_or_its_subset() {
    let view = view();
    let got = route(&view, &sni("api.default.dc1")).unwrap();
    assert_eq!(
        got,
        Route::Local {
            service: "API",
            subset: None,
            instances: &view.services.as_ref().unwrap()["api"]
                .instances
                .as_ref()
                .unwrap()[..],
        }
    );
    match route(&view, &sni("v1.api.default.dc1")).unwrap() {
        Route::Local {
            subset, instances, ..
        } => {
            assert_eq!(subset, Some("v1"));
            assert_eq!(instances, ["10.0.0.1:21000"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        route(&view, &sni("api.default.DC1")).map(|r| r.addresses().len()),
        Ok(2)
    );
}

#[test]
fn names_the_gateway_cannot_serve_are_unknown() {
    let view = view();
    let unknown = [
        sni("web.default.dc1"),
        sni("v9.api.default.dc1"),
        sni("api.team.dc1"),
        sni("x.v1.api.default.dc1"),
        sni("default.dc1"),
        sni(".api.default.dc1"),
        sni("dc1"),
        "api.default.dc1.internal.other.consul".to_owned(),
        format!("api.default.default.dc1.internal-v1.{TD}"),
        format!("api.default.dc1.query.{TD}"),
        format!("api.default.peer1.external.{TD}"),
        format!("api.default.dc2.internal.{TD}.evil"),
        sni("api.default.dc9"),
        "localhost".to_owned(),
        String::new(),
    ];
    for name in unknown {
        assert_eq!(route(&view, &name), Err(Miss::Unknown), "{name:?}");
    }
}

#[test]
fn other_datacenters_go_to_their_gateways_whatever_the_name_before() {
    let view = view();
    for prefix in [
        "api.default.dc2",
        "v1.web.default.dc2",
        "anything.at.all.dc2",
    ] {
        assert_eq!(
            route(&view, &sni(prefix)),
            Ok(Route::Remote {
                datacenter: "dc2",
                gateways: &["127.0.0.2:8443".to_owned()],
            }),
            "{prefix}"
        );
    }
    assert_eq!(
        route(&view, &sni("api.default.dc3")),
        Err(Miss::NoEndpoints)
    );
    assert_eq!(route(&view, &sni("api.default.dc4")), Err(Miss::NotYet));
}

#[test]
fn what_the_agent_has_not_answered_is_waited_for_and_nothing_healthy_is_said() {
    let view = view();
    assert_eq!(route(&view, &sni("cold.default.dc1")), Err(Miss::NotYet));
    assert_eq!(route(&view, &sni("v3.api.default.dc1")), Err(Miss::NotYet));
    assert_eq!(
        route(&view, &sni("v2.api.default.dc1")),
        Err(Miss::NoEndpoints)
    );
    let mut early = view.clone();
    early.services = None;
    early.remote = None;
    assert_eq!(route(&early, &sni("api.default.dc1")), Err(Miss::NotYet));
    assert_eq!(route(&early, &sni("api.default.dc2")), Err(Miss::NotYet));
    let mut earlier = view;
    earlier.trust_domain = None;
    assert_eq!(route(&earlier, &sni("api.default.dc1")), Err(Miss::NotYet));
}

#[test]
fn round_robin_turns_per_route_and_tries_every_address_once() {
    let view = view();
    let rotation = Rotation::default();
    let api = route(&view, &sni("api.default.dc1")).unwrap();
    let v1 = route(&view, &sni("v1.api.default.dc1")).unwrap();
    assert_eq!(rotation.order(&api), [0, 1]);
    assert_eq!(rotation.order(&v1), [0], "its own turn");
    assert_eq!(rotation.order(&api), [1, 0]);
    assert_eq!(rotation.order(&api), [0, 1]);
}
