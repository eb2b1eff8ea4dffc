#!/usr/bin/env bash
# The static-mode tour in one command: a dev CA, the "api" app (a static web page),
# its sidecar, the "web" sidecar, a call from web to api over mutual TLS, then the
# intention flipped to deny and the same call refused. Everything binds 127.0.0.1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."

cargo build --release --quiet -p ferrule
bin="${CARGO_TARGET_DIR:-target}/release/ferrule"
cargo xtask certs "$here/certs" --services web,api

# Work on a copy, so flipping the intention leaves the example as it was.
work=$(mktemp -d)
cp -r "$here/web.toml" "$here/api.toml" "$here/intentions.json" "$here/certs" "$work/"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

python3 -m http.server 8080 --bind 127.0.0.1 --directory "$here/site" >"$work/app.log" 2>&1 &
pids+=($!)
"$bin" proxy --config "$work/api.toml" 2>"$work/api-sidecar.log" &
pids+=($!)
"$bin" proxy --config "$work/web.toml" 2>"$work/web-sidecar.log" &
pids+=($!)

for _ in $(seq 100); do
    curl -s -o /dev/null http://127.0.0.1:8080/ && break
    sleep 0.1
done
for admin in 19100 19101; do
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$admin/ready" >/dev/null && break
        sleep 0.1
    done
    curl -sf "http://127.0.0.1:$admin/ready" >/dev/null || {
        echo "sidecar on admin port $admin did not become ready:"; cat "$work"/*-sidecar.log; exit 1; }
done

echo "== web calls api through its sidecar (127.0.0.1:9191 -> mTLS -> 127.0.0.1:21001 -> app)"
curl -sS http://127.0.0.1:9191/
echo
echo "== api's sidecar counted it"
curl -s http://127.0.0.1:19101/metrics | grep -E '^ferrule_(inbound_connections_total|authz_decisions_total)'

echo
echo "== the intention now denies web; the same call is refused as soon as the sidecar sees the file"
sed 's/"Name": "web", "Action": "allow"/"Name": "web", "Action": "deny"/' "$here/intentions.json" >"$work/intentions.json.new"
mv "$work/intentions.json.new" "$work/intentions.json"
start=$(date +%s%N)
for _ in $(seq 50); do
    curl -s --max-time 5 -o /dev/null http://127.0.0.1:9191/ || break
    sleep 0.1
done
if curl -sS --max-time 5 http://127.0.0.1:9191/; then
    echo "unexpected: the call still goes through"; exit 1
fi
echo "(refused, $(( ($(date +%s%N) - start) / 1000000 )) ms after the file changed)"
curl -s http://127.0.0.1:19101/metrics | grep -E '^ferrule_authz_decisions_total'
