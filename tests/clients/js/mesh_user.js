// What a mesh user does through npm `consul` against `ferrule dev`, each answer checked
// against the shape Consul documents (https://developer.hashicorp.com/consul/api-docs).
// The library has no config-entry, intention or CA calls; those go through its
// generic request path as a user of it would send them.
//
// Usage: node mesh_user.js HOST PORT. Exits non-zero with the failed step.
"use strict";

const assert = require("node:assert/strict");
const Consul = require("consul");

const [host, port] = process.argv.slice(2);
const consul = new Consul({ host, port: Number(port) });

function hasKeys(value, names, what) {
  const missing = names.filter((n) => !(n in value));
  assert.deepEqual(missing, [], `${what}: missing ${missing} in ${JSON.stringify(value).slice(0, 600)}`);
}

async function registerWithSidecar() {
  await consul.agent.service.register({
    name: "api",
    id: "api",
    port: 9090,
    tags: ["v2"],
    connect: { sidecarService: { proxy: { destinationServiceName: "api" } } },
  });
  const services = await consul.agent.service.list();
  hasKeys(services, ["api", "api-sidecar-proxy"], "agent services");
  const sidecar = services["api-sidecar-proxy"];
  assert.equal(sidecar.Kind, "connect-proxy");
  assert.ok(sidecar.Port >= 21000 && sidecar.Port <= 21255, `sidecar port ${sidecar.Port}`);
  assert.equal(sidecar.Proxy.DestinationServiceName, "api");
  assert.equal(sidecar.Proxy.LocalServicePort, 9090);
  const proxies = await consul.agent.service.list({ filter: 'Kind == "connect-proxy"' });
  assert.deepEqual(Object.keys(proxies), ["api-sidecar-proxy"]);
}

async function catalogAndHealth() {
  const services = await consul.catalog.service.list();
  assert.deepEqual(services.api, ["v2"]);
  const nodes = await consul.catalog.service.nodes("api");
  assert.equal(nodes.length, 1);
  hasKeys(nodes[0], ["ID", "Node", "Address", "Datacenter", "ServiceID", "ServiceName",
    "ServiceTags", "ServicePort", "ServiceProxy", "ServiceConnect", "CreateIndex", "ModifyIndex"],
    "catalog service node");
  assert.equal(nodes[0].ServicePort, 9090);
  const proxies = await consul.catalog.connect.nodes("api");
  assert.equal(proxies[0].ServiceKind, "connect-proxy");
  const all = await consul.catalog.node.list();
  assert.equal(all.length, 1);
  const node = await consul.catalog.node.services(all[0].Node);
  hasKeys(node, ["Node", "Services"], "catalog node");
  assert.ok("api-sidecar-proxy" in node.Services);
  const health = await consul.health.service("api");
  hasKeys(health[0], ["Node", "Service", "Checks"], "health entry");
  const filtered = await consul.health.service({ service: "api", filter: '"v1" in Service.Tags' });
  assert.deepEqual(filtered, []);
}

async function configEntriesWithCas() {
  const entry = { Kind: "service-defaults", Name: "api", Protocol: "grpc" };
  // The answer is a bare `true`/`false`; wrapped, since the library drops a falsy result.
  const put = async (query, body) => (await consul._put(
    { name: "config.set", path: "/config", query, type: "json", body },
    (request, next) => next(false, undefined, { answer: request.res.body }))).answer;
  assert.equal(await put({ cas: 0 }, entry), true, "cas=0 creates");
  assert.equal(await put({ cas: 0 }, entry), false, "cas=0 only creates");
  const stored = await consul._get({ name: "config.get", path: "/config/service-defaults/api" },
    (request, next) => next(false, undefined, request.res.body));
  assert.equal(await put({ cas: stored.ModifyIndex + 1000 }, entry), false, "stale");
  assert.equal(await put({ cas: stored.ModifyIndex }, { ...entry, LocalConnectTimeoutMs: 300 }), true);
  const sidecar = (await consul.agent.service.list())["api-sidecar-proxy"];
  assert.equal(sidecar.Proxy.Config.protocol, "grpc");
  assert.equal(sidecar.Proxy.Config.local_connect_timeout_ms, 300);
}

// The library's watch: a blocking query loop on the index; the second change must come
// from the registration, well before the wait ends.
function blockingQueryWoken() {
  return new Promise((resolve, reject) => {
    const watch = consul.watch({ method: consul.catalog.service.list, options: { wait: "20s" } });
    let first = null;
    let written = 0;
    const fail = (e) => { watch.end(); reject(e); };
    watch.on("error", fail);
    watch.on("change", (services, res) => {
      try {
        const index = BigInt(res.headers["x-consul-index"]);
        if (first === null) {
          first = index;
          assert.ok(!("cache" in services));
          written = Date.now();
          consul.agent.service.register({ name: "cache", port: 6379 }).catch(fail);
          return;
        }
        const waited = Date.now() - written;
        assert.ok("cache" in services, `woken with ${JSON.stringify(services)}`);
        assert.ok(index > first, `index moved: ${first} -> ${index}`);
        assert.ok(waited < 10000, `woken by the write after ${waited} ms`);
        watch.end();
        resolve();
      } catch (e) {
        fail(e);
      }
    });
  });
}

async function deregister() {
  await consul.agent.service.deregister("api");
  await consul.agent.service.deregister("cache");
  assert.deepEqual(await consul.agent.service.list(), {});
  assert.deepEqual(await consul.health.service("api"), []);
}

async function main() {
  for (const [name, step] of [
    ["register with a sidecar and read back", registerWithSidecar],
    ["catalog and health reads", catalogAndHealth],
    ["config entries with CAS", configEntriesWithCas],
    ["a blocking query woken by a change", blockingQueryWoken],
    ["deregister", deregister],
  ]) {
    await step();
    console.log(`ok: ${name}`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
