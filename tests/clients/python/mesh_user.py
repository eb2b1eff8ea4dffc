"""What a mesh user does through PyPI `py-consul` against `ferrule dev`, each answer
checked against the shape Consul documents (https://developer.hashicorp.com/consul/api-docs).

Usage: mesh_user.py HOST PORT. Exits non-zero with the failed step on the first mismatch.
"""

import json
import sys
import threading
import time

import consul
from consul.callback import CB
from consul.exceptions import ClientError


def expect(condition, what):
    if not condition:
        raise AssertionError(what)


def keys(value, names, what):
    missing = [n for n in names if n not in value]
    expect(not missing, f"{what}: missing {missing} in {json.dumps(value)[:600]}")


def register_with_sidecar(c):
    ok = c.agent.service.register(
        "web", service_id="web", port=8080, tags=["v1"], meta={"env": "prod"},
        connect={"sidecar_service": {}},
    )
    expect(ok is True, f"register answered {ok!r}")
    services = c.agent.services()
    keys(services, ["web", "web-sidecar-proxy"], "agent services")
    web = services["web"]
    keys(web, ["ID", "Service", "Tags", "Meta", "Port", "Address", "Weights",
               "EnableTagOverride", "Datacenter"], "agent service web")
    expect(web["Port"] == 8080 and web["Tags"] == ["v1"], f"web read back: {web}")
    sidecar = c.agent.service_definition("web-sidecar-proxy")
    expect(sidecar["Kind"] == "connect-proxy", f"sidecar kind: {sidecar}")
    expect(21000 <= sidecar["Port"] <= 21255, f"sidecar port from the range: {sidecar}")
    proxy = sidecar["Proxy"]
    expect(proxy["DestinationServiceName"] == "web" and proxy["DestinationServiceID"] == "web",
           f"sidecar proxy: {proxy}")
    expect(proxy["LocalServicePort"] == 8080, f"local service port: {proxy}")
    only = c.agent.services(filter_expr='Kind == "connect-proxy"')
    expect(list(only) == ["web-sidecar-proxy"], f"filtered agent services: {list(only)}")


def catalog_and_health(c):
    index, services = c.catalog.services()
    expect(int(index) > 0, "catalog services index")
    expect(services.get("web") == ["v1"], f"catalog services: {services}")
    expect(services.get("consul") == [], f"the server's own consul service: {services}")
    _, nodes = c.catalog.service("web")
    expect(len(nodes) == 1, f"catalog service web: {nodes}")
    keys(nodes[0], ["ID", "Node", "Address", "Datacenter", "TaggedAddresses", "NodeMeta",
                    "ServiceKind", "ServiceID", "ServiceName", "ServiceTags", "ServiceAddress",
                    "ServiceMeta", "ServicePort", "ServiceWeights", "ServiceEnableTagOverride",
                    "ServiceProxy", "ServiceConnect", "CreateIndex", "ModifyIndex"],
         "catalog service node")
    expect(nodes[0]["ServiceID"] == "web" and nodes[0]["ServicePort"] == 8080, nodes[0])
    _, proxies = c.catalog.connect("web")
    expect([p["ServiceKind"] for p in proxies] == ["connect-proxy"], f"catalog connect: {proxies}")
    _, filtered = c.catalog.service("web", filter_expr='ServiceMeta.env == "staging"')
    expect(filtered == [], f"filtered catalog service: {filtered}")
    _, all_nodes = c.catalog.nodes()
    expect(len(all_nodes) == 1, f"catalog nodes: {all_nodes}")
    keys(all_nodes[0], ["ID", "Node", "Address", "Datacenter", "TaggedAddresses", "Meta"], "node")
    _, node = c.catalog.node(all_nodes[0]["Node"])
    keys(node, ["Node", "Services"], "catalog node")
    expect("web-sidecar-proxy" in node["Services"], f"node services: {list(node['Services'])}")
    _, entries = c.health.service("web")
    expect(len(entries) == 1, f"health service: {entries}")
    keys(entries[0], ["Node", "Service", "Checks"], "health entry")
    _, connect = c.health.connect("web")
    expect(connect[0]["Service"]["Kind"] == "connect-proxy", f"health connect: {connect}")


def config_entries_with_cas(c):
    entry = {"Protocol": "http"}
    expect(c.config.set("service-defaults", "web", entry, cas=0) is True, "cas=0 creates")
    expect(c.config.set("service-defaults", "web", entry, cas=0) is False, "cas=0 only creates")
    stored = c.config.get("service-defaults", "web")
    keys(stored, ["Kind", "Name", "Protocol", "CreateIndex", "ModifyIndex"], "service-defaults")
    index = stored["ModifyIndex"]
    newer = {"Protocol": "http", "LocalConnectTimeoutMs": 250, "MaxInboundConnections": 50,
             "MeshGateway": {"Mode": "local"},
             "UpstreamConfig": {"Defaults": {"ConnectTimeoutMs": 2000}}}
    expect(c.config.set("service-defaults", "web", newer, cas=index + 1000) is False, "stale cas")
    expect(c.config.get("service-defaults", "web")["ModifyIndex"] == index, "left alone")
    expect(c.config.set("service-defaults", "web", newer, cas=index) is True, "current cas")
    sidecar = c.agent.service_definition("web-sidecar-proxy")
    cfg = sidecar["Proxy"]["Config"]
    expect(cfg.get("protocol") == "http" and cfg.get("local_connect_timeout_ms") == 250
           and cfg.get("max_inbound_connections") == 50, f"merged into the sidecar: {cfg}")
    expect(sidecar["Proxy"]["MeshGateway"] == {"Mode": "local"}, f"mesh gateway: {sidecar}")
    listed = c.config.list("service-defaults", filter_expr='Name == "web"')
    expect([e["Name"] for e in listed] == ["web"], f"config list: {listed}")
    current = c.config.get("service-defaults", "web")["ModifyIndex"]
    expect(c.config.delete("service-defaults", "web", cas=current + 1000) is False, "stale delete")
    expect(c.config.get("service-defaults", "web") is not None, "still there")
    expect(c.config.delete("service-defaults", "web", cas=current) is True, "cas delete")
    expect(c.config.get("service-defaults", "web") is None, "deleted")
    try:
        c.http.post(CB.json(), "/v1/config", data=json.dumps({"Kind": "service-defaults", "Name": "x"}))
        raise AssertionError("POST /v1/config was accepted; Consul answers 405")
    except ClientError as e:
        expect("405" in str(e), f"POST /v1/config: {e}")


def intentions(c, trust_domain):
    expect(c.connect.intentions.upsert("api", "web", action="allow") is True, "upsert")
    read = c.connect.intentions.read("api", "web")
    keys(read, ["SourceName", "DestinationName", "Action", "Precedence", "CreateIndex",
                "ModifyIndex"], "intention")
    expect(read["Action"] == "allow" and read["Precedence"] == 9, f"intention: {read}")
    expect(c.connect.intentions.upsert("bad", "web", action="deny") is True, "upsert deny")
    denies = c.connect.intentions.list(filter_expr='Action == "deny"')
    expect([i["SourceName"] for i in denies] == ["bad"], f"filtered intentions: {denies}")
    expect(c.connect.intentions.check("api", "web") is True, "check allows")
    expect(c.connect.intentions.check("bad", "web") is False, "check denies")
    matched = c.connect.intentions.match("destination", "web")
    expect([i["SourceName"] for i in matched["web"]] == ["api", "bad"], f"match: {matched}")
    # py-consul sends PUT, which Consul refuses (POST only); the same call over POST.
    try:
        c.agent.connect.authorize("web", f"spiffe://{trust_domain}/ns/default/dc/dc1/svc/api", "01")
        raise AssertionError("PUT /v1/agent/connect/authorize was accepted; Consul answers 405")
    except ClientError as e:
        expect("405" in str(e), f"PUT authorize: {e}")
    body = {"Target": "web", "ClientCertURI": f"spiffe://{trust_domain}/ns/default/dc/dc1/svc/bad",
            "ClientCertSerial": "01"}
    decision = c.http.post(CB.json(), "/v1/agent/connect/authorize",
                           data=json.dumps(body))
    keys(decision, ["Authorized", "Reason"], "authorize")
    expect(decision["Authorized"] is False and "Action: DENY" in decision["Reason"],
           f"authorize: {decision}")
    expect(c.connect.intentions.delete("bad", "web") is True, "delete intention")


def ca_roots_and_leaf(c):
    roots = c.connect.ca.roots()
    keys(roots, ["ActiveRootID", "TrustDomain", "Roots"], "CA roots")
    root = roots["Roots"][0]
    keys(root, ["ID", "Name", "SerialNumber", "SigningKeyID", "NotBefore", "NotAfter",
                "RootCert", "Active", "CreateIndex", "ModifyIndex"], "CA root")
    expect(root["Active"] and root["ID"] == roots["ActiveRootID"], f"root: {root}")
    expect(isinstance(root["SerialNumber"], int), "a root's serial is a JSON number")
    expect(c.agent.connect.ca.roots()["ActiveRootID"] == roots["ActiveRootID"], "agent roots")
    leaf = c.agent.connect.ca.leaf("web")
    keys(leaf, ["SerialNumber", "CertPEM", "PrivateKeyPEM", "Service", "ServiceURI",
                "ValidAfter", "ValidBefore", "CreateIndex", "ModifyIndex"], "leaf")
    expect(leaf["Service"] == "web", f"leaf service: {leaf['Service']}")
    expect(leaf["ServiceURI"] == f"spiffe://{roots['TrustDomain']}/ns/default/dc/dc1/svc/web",
           f"leaf URI: {leaf['ServiceURI']}")
    expect(":" in leaf["SerialNumber"], "a leaf's serial is colon-hex")
    config = c.connect.ca.configuration()
    expect(config["Provider"] == "consul", f"CA configuration: {config}")
    expect(c.connect.ca.update_configuration("consul", {"LeafCertTTL": "24h"}) is True,
           "CA configuration update")
    after = c.connect.ca.roots()
    expect(after["ActiveRootID"] == roots["ActiveRootID"] and len(after["Roots"]) == 1,
           "a LeafCertTTL change keeps the root")
    return roots["TrustDomain"]


def blocking_query_woken(c):
    index, services = c.catalog.services()
    expect("db" not in services, "db not registered yet")

    def write():
        time.sleep(0.3)
        c.agent.service.register("db", service_id="db", port=5432)

    writer = threading.Thread(target=write)
    started = time.monotonic()
    writer.start()
    new_index, services = c.catalog.services(index=index, wait="20s")
    writer.join()
    waited = time.monotonic() - started
    expect("db" in services, f"the blocked read saw the change: {services}")
    expect(int(new_index) > int(index), f"index moved: {index} -> {new_index}")
    expect(0.2 < waited < 10, f"woken by the write, not the wait: {waited:.2f}s")


def deregister(c):
    expect(c.agent.service.deregister("web") is True, "deregister")
    expect(c.agent.service.deregister("db") is True, "deregister db")
    left = c.agent.services()
    expect(left == {}, f"the sidecar went with its service: {list(left)}")
    _, entries = c.health.service("web")
    expect(entries == [], f"health after deregister: {entries}")


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    c = consul.Consul(host=host, port=port)
    steps = [
        ("register with a sidecar and read back", lambda: register_with_sidecar(c)),
        ("catalog and health reads", lambda: catalog_and_health(c)),
        ("config entries with CAS", lambda: config_entries_with_cas(c)),
    ]
    for name, step in steps:
        step()
        print(f"ok: {name}")
    trust_domain = ca_roots_and_leaf(c)
    print("ok: CA roots, leaf and configuration")
    intentions(c, trust_domain)
    print("ok: intentions and authorize")
    blocking_query_woken(c)
    print("ok: a blocking query woken by a change")
    deregister(c)
    print("ok: deregister")


if __name__ == "__main__":
    main()
