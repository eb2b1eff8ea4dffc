//! Tests of `agent`.

use super::*;
use serde_json::json;

/// Shaped like the documented `/v1/agent/service/web-sidecar-proxy` example: `null`
/// tags and meta, lowercase tagged-address keys, no `MeshGateway`/`Expose`,
/// Enterprise `Namespace`.
const DOC_SHAPED: &str = r#"{
      "Kind": "connect-proxy",
      "ID": "orders-sidecar-proxy",
      "Service": "orders-sidecar-proxy",
      "Tags": null,
      "Meta": null,
      "Namespace": "default",
      "Port": 21000,
      "Address": "",
      "TaggedAddresses": {
        "lan": { "address": "10.0.0.7", "port": 21000 },
        "wan": { "address": "203.0.113.7", "port": 443 }
      },
      "Weights": { "Passing": 1, "Warning": 1 },
      "EnableTagOverride": false,
      "Datacenter": "east",
      "ContentHash": "0badc0ffee",
      "Proxy": {
        "DestinationServiceName": "orders",
        "DestinationServiceID": "orders-1",
        "LocalServiceAddress": "127.0.0.1",
        "LocalServicePort": 7070,
        "Mode": "transparent",
        "TransparentProxy": { "OutboundListenerPort": 15001 },
        "Config": { "team": "shop" },
        "Upstreams": [
          { "DestinationType": "service", "DestinationName": "ledger", "LocalBindPort": 9000 }
        ]
      }
    }"#;

/// Shaped like a real agent's answer: `[]`/`{}`, `Address`/`Port` keys, `MeshGateway`
/// and `Expose` always present, central config merged into `Proxy.Config`.
const REAL_SHAPED: &str = r#"{
      "Kind": "connect-proxy",
      "ID": "orders-1-sidecar-proxy",
      "Service": "orders-sidecar-proxy",
      "Tags": [],
      "Meta": {},
      "Port": 21002,
      "Address": "10.0.0.7",
      "TaggedAddresses": {
        "lan_ipv4": { "Address": "10.0.0.7", "Port": 21002 },
        "wan_ipv4": { "Address": "10.0.0.7", "Port": 21002 }
      },
      "Weights": { "Passing": 1, "Warning": 1 },
      "EnableTagOverride": false,
      "ContentHash": "ab12cd34ef56ab78",
      "Datacenter": "east",
      "Proxy": {
        "DestinationServiceName": "orders",
        "DestinationServiceID": "orders-1",
        "LocalServiceAddress": "127.0.0.1",
        "LocalServicePort": 7070,
        "Config": { "protocol": "http", "bind_port": 21002, "local_connect_timeout_ms": "250" },
        "Upstreams": [
          {
            "DestinationType": "service", "DestinationName": "ledger", "Datacenter": "west",
            "LocalBindAddress": "127.0.0.2", "LocalBindPort": 9000,
            "Config": { "connect_timeout_ms": 2500 }, "MeshGateway": {}
          },
          {
            "DestinationType": "service", "DestinationName": "audit",
            "MeshGateway": {}, "CentrallyConfigured": true
          }
        ],
        "MeshGateway": {},
        "Expose": {}
      }
    }"#;

#[test]
fn parses_the_documented_shape() {
    let svc: AgentService = serde_json::from_str(DOC_SHAPED).unwrap();
    assert!(svc.is_connect_proxy());
    assert!(svc.tags.is_empty() && svc.meta.is_empty());
    assert_eq!(svc.tagged_addresses["wan"].port, 443);
    assert_eq!(svc.namespace, "default");
    let proxy = svc.proxy.unwrap();
    assert_eq!(proxy.destination_service_name, "orders");
    assert_eq!(proxy.destination_service_id, "orders-1");
    assert_eq!(proxy.mode, "transparent");
    assert_eq!(
        proxy.transparent_proxy.unwrap().outbound_listener_port,
        15001
    );
    assert_eq!(proxy.upstreams[0].local_bind_port, 9000);
    assert_eq!(proxy.mesh_gateway, MeshGatewayConfig::default());
}

#[test]
fn parses_the_real_shape_and_round_trips() {
    let svc: AgentService = serde_json::from_str(REAL_SHAPED).unwrap();
    assert_eq!(svc.tagged_addresses["lan_ipv4"].address, "10.0.0.7");
    assert_eq!(svc.content_hash, "ab12cd34ef56ab78");
    let proxy = svc.proxy.as_ref().unwrap();
    assert_eq!(proxy.config["protocol"], "http");
    assert_eq!(proxy.upstreams[0].config["connect_timeout_ms"], 2500);
    assert!(proxy.upstreams[1].centrally_configured);
    assert_eq!(proxy.upstreams[1].local_bind_port, 0);

    let out = serde_json::to_value(&svc).unwrap();
    let original: serde_json::Value = serde_json::from_str(REAL_SHAPED).unwrap();
    assert_eq!(
        out, original,
        "a real agent's answer serializes back unchanged"
    );
}

#[test]
fn serializes_empty_parts_as_consul_does() {
    let svc = AgentService {
        id: "web".into(),
        service: "web".into(),
        port: 8080,
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_value(&svc).unwrap(),
        json!({
            "ID": "web", "Service": "web", "Tags": [], "Meta": {}, "Port": 8080,
            "Address": "", "Weights": { "Passing": 1, "Warning": 1 },
            "EnableTagOverride": false
        })
    );
    let proxy = serde_json::to_value(AgentServiceConnectProxyConfig::default()).unwrap();
    assert_eq!(proxy, json!({ "MeshGateway": {}, "Expose": {} }));
}

#[test]
fn a_services_map_parses() {
    let services: AgentServices = serde_json::from_value(json!({
        "orders-1": { "ID": "orders-1", "Service": "orders", "Tags": [], "Meta": {},
                      "Port": 7070, "Address": "", "Weights": { "Passing": 1, "Warning": 1 },
                      "EnableTagOverride": false, "Datacenter": "east" },
        "orders-1-sidecar-proxy": serde_json::from_str::<serde_json::Value>(REAL_SHAPED).unwrap()
    }))
    .unwrap();
    assert!(!services["orders-1"].is_connect_proxy());
    assert!(services["orders-1"].proxy.is_none());
    assert!(services["orders-1-sidecar-proxy"].is_connect_proxy());
}

#[test]
fn a_registration_decodes_in_pascal_case() {
    let reg: AgentServiceRegistration = serde_json::from_value(json!({
        "Name": "orders",
        "ID": "orders-1",
        "Port": 7070,
        "Check": { "CheckID": "orders-ttl", "TTL": "30s" },
        "Connect": {
            "SidecarService": {
                "Port": 21500,
                "Proxy": {
                    "Upstreams": [
                        { "DestinationName": "ledger", "LocalBindPort": 9000,
                          "Config": { "connect_timeout_ms": 1500 } }
                    ],
                    "Config": { "protocol": "http" }
                }
            }
        }
    }))
    .unwrap();
    assert_eq!(
        (reg.name.as_str(), reg.id.as_str(), reg.port),
        ("orders", "orders-1", 7070)
    );
    assert_eq!(reg.check.as_ref().unwrap().ttl, "30s");
    let sidecar = reg
        .connect
        .as_ref()
        .unwrap()
        .sidecar_service
        .as_ref()
        .unwrap();
    assert_eq!(sidecar.port, 21500);
    let proxy = sidecar.proxy.as_ref().unwrap();
    assert_eq!(proxy.upstreams[0].destination_name, "ledger");
    assert_eq!(proxy.config["protocol"], "http");
}

#[test]
fn a_registration_decodes_in_snake_case() {
    let reg: AgentServiceRegistration = serde_json::from_value(json!({
        "name": "orders",
        "id": "orders-1",
        "port": 7070,
        "enable_tag_override": true,
        "tagged_addresses": { "lan": { "address": "10.0.0.7", "port": 7070 } },
        "checks": [
            { "name": "alive", "tcp": "127.0.0.1:7070", "interval": "10s",
              "deregister_critical_service_after": 90000000000u64 }
        ],
        "connect": {
            "sidecar_service": {
                "proxy": {
                    "local_service_address": "127.0.0.9",
                    "local_service_port": 7071,
                    "config": { "local_connect_timeout_ms": 300 },
                    "upstreams": [
                        { "destination_name": "ledger", "local_bind_port": 9000,
                          "local_bind_address": "127.0.0.3", "datacenter": "west",
                          "destination_type": "service", "mesh_gateway": { "mode": "local" } }
                    ],
                    "expose": { "checks": true, "paths": [
                        { "path": "/health", "local_path_port": 7070, "listener_port": 21600,
                          "protocol": "http" }
                    ] }
                }
            }
        }
    }))
    .unwrap();
    assert!(reg.enable_tag_override);
    assert_eq!(reg.tagged_addresses["lan"].port, 7070);
    assert_eq!(reg.checks[0].tcp, "127.0.0.1:7070");
    assert_eq!(
        reg.checks[0].deregister_critical_service_after,
        "90000000000ns"
    );
    let sidecar = reg.connect.unwrap().sidecar_service.unwrap();
    let proxy = sidecar.proxy.unwrap();
    assert_eq!(proxy.local_service_address, "127.0.0.9");
    assert_eq!(proxy.local_service_port, 7071);
    assert_eq!(proxy.config["local_connect_timeout_ms"], 300);
    let up = &proxy.upstreams[0];
    assert_eq!(
        (up.local_bind_address.as_str(), up.local_bind_port),
        ("127.0.0.3", 9000)
    );
    assert_eq!(up.datacenter, "west");
    assert_eq!(up.mesh_gateway.mode, "local");
    assert!(proxy.expose.checks);
    assert_eq!(proxy.expose.paths[0].listener_port, 21600);
}

#[test]
fn an_empty_sidecar_service_is_a_request_for_defaults() {
    let reg: AgentServiceRegistration = serde_json::from_value(json!({
        "Name": "web", "Port": 8080, "Connect": { "SidecarService": {} }
    }))
    .unwrap();
    let sidecar = reg
        .connect
        .as_ref()
        .unwrap()
        .sidecar_service
        .as_ref()
        .unwrap();
    assert_eq!(**sidecar, AgentServiceRegistration::default());
    assert_eq!(
        serde_json::to_value(&reg).unwrap(),
        json!({ "Name": "web", "Port": 8080, "Connect": { "SidecarService": {} } })
    );
}
