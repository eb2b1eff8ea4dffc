//! A real OTLP trace receiver for the tracing tests: a small Python server built on the
//! official OpenTelemetry protos (PyPI `opentelemetry-proto`, with `grpcio` for the gRPC
//! `TraceService`), written into a temporary directory and run with the venv's Python.
//! It speaks OTLP/gRPC or OTLP/HTTP with protobuf bodies (`POST /v1/traces`), and
//! appends every span it receives to a file as one JSON line (IDs in hex, attributes
//! as a flat object, the resource's `service.name`), which the test reads with a
//! bounded poll.
//!
//! `.ci/run` installs both packages into `target/ci-venv`. Without them a test fails in
//! CI (`CI` set) and elsewhere prints why and returns early ([`Receiver::start`] gives
//! `None`). The receiver binds 127.0.0.1 on a port the kernel picks and tells it through
//! a file; it is killed by PID when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::wait::eventually;

/// How the receiver takes spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    /// The value of `OTEL_EXPORTER_OTLP_PROTOCOL` / `--otlp-protocol`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

const SCRIPT: &str = r#"
import json, os, sys, threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

mode, port_file, out = sys.argv[1], sys.argv[2], sys.argv[3]
lock = threading.Lock()


def value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def dump(request):
    lines = []
    for rs in request.resource_spans:
        resource = {kv.key: value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                lines.append(json.dumps({
                    "service": resource.get("service.name"),
                    "scope": ss.scope.name,
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "name": s.name,
                    "kind": trace_pb2.Span.SpanKind.Name(s.kind),
                    "start_time_unix_nano": s.start_time_unix_nano,
                    "end_time_unix_nano": s.end_time_unix_nano,
                    "status": trace_pb2.Status.StatusCode.Name(s.status.code),
                    "attributes": {kv.key: value(kv.value) for kv in s.attributes},
                }))
    with lock:
        with open(out, "a") as f:
            for line in lines:
                f.write(line + "\n")


def announce(port):
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.rename(tmp, port_file)


if mode == "grpc":
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            dump(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    announce(port)
    server.wait_for_termination()
else:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path != "/v1/traces":
                self.send_response(404)
                self.end_headers()
                return
            if self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_response(415)
                self.end_headers()
                return
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            dump(request)
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    announce(server.server_address[1])
    server.serve_forever()
"#;

/// A running receiver.
pub struct Receiver {
    protocol: Protocol,
    addr: SocketAddr,
    child: Child,
    // Declared last: removed after the process is gone.
    dir: tempfile::TempDir,
}

fn python() -> Result<PathBuf, String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let python = workspace.join("target/ci-venv/bin/python");
    let ok = Command::new(&python)
        .args([
            "-c",
            "import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(python)
    } else {
        Err(format!(
            "{} with opentelemetry-proto and grpcio is needed (run .ci/run, or python3 -m venv \
             target/ci-venv && target/ci-venv/bin/pip install opentelemetry-proto grpcio)",
            python.display()
        ))
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

impl Receiver {
    /// Starts a receiver and waits until it listens; `None` (with a note) when its
    /// Python packages are missing outside CI.
    pub async fn start(protocol: Protocol) -> Option<Receiver> {
        let python = match python() {
            Ok(python) => python,
            Err(e) if in_ci() => panic!("{e}"),
            Err(e) => {
                eprintln!("SKIPPED (not in CI): {e}");
                println!("SKIPPED (not in CI): no OTLP receiver");
                return None;
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("otlp-receiver-")
            .tempdir()
            .expect("create a temporary directory for the receiver");
        let script = dir.path().join("receiver.py");
        std::fs::write(&script, SCRIPT).expect("write receiver.py");
        let port_file = dir.path().join("port");
        let mode = match protocol {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http",
        };
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr.log");
        let child = Command::new(python)
            .arg(&script)
            .arg(mode)
            .arg(&port_file)
            .arg(dir.path().join("spans.jsonl"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn the OTLP receiver");
        let mut receiver = Receiver {
            protocol,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            dir,
        };
        let port = eventually("the OTLP receiver listens", Duration::from_secs(30), || {
            let port = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|p| p.trim().parse::<u16>().ok());
            async move { port.ok_or_else(|| anyhow::anyhow!("no port yet")) }
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nreceiver stderr: {}", receiver.stderr()));
        receiver.addr.set_port(port);
        Some(receiver)
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The collector's address as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("spans.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    /// The spans of one trace (hex ID).
    pub fn trace(&self, trace_id: &str) -> Vec<Value> {
        self.spans()
            .into_iter()
            .filter(|s| s["trace_id"] == trace_id)
            .collect()
    }

    /// Waits, at most `within`, until trace `trace_id` has `count` spans, and returns them.
    pub async fn wait_for_trace(
        &self,
        trace_id: &str,
        count: usize,
        within: Duration,
    ) -> Vec<Value> {
        eventually(
            &format!("{count} spans of trace {trace_id}"),
            within,
            || {
                let spans = self.trace(trace_id);
                async move {
                    if spans.len() >= count {
                        Ok(spans)
                    } else {
                        Err(anyhow::anyhow!("{} so far", spans.len()))
                    }
                }
            },
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}; all spans: {:?}\nreceiver stderr: {}",
                self.spans(),
                self.stderr()
            )
        })
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
