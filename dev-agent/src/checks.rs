//! Health checks of locally registered services: their definitions, the tasks that run
//! them for real, alias checks, and TTL updates (`PUT /v1/agent/check/pass|warn|fail`).
//!
//! A TCP check opens a connection to its address and closes it without sending a byte,
//! exactly like Consul's (the proxy counts that as a `probe`); an HTTP check sends one
//! request; a TTL check goes critical when not refreshed in time; an alias check mirrors
//! the worst status of the service it aliases (and of the node). Every check starts
//! critical, as in Consul, and only a change of status is a write (bumps the index, wakes
//! blocked health readers).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value, json};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use ferrule_control::api::agent::AgentServiceCheck;
use ferrule_control::api::health::{HealthCheck, PASSING};
use ferrule_control::duration;

use super::blocking::instant_after;
use super::http::{ApiError, Call, Reply};
use super::state::{Shared, State};

pub(super) const CRITICAL: &str = "critical";
pub(super) const WARNING: &str = "warning";
/// Consul refuses check intervals below a second (`checks.MinInterval`).
const MIN_USER_INTERVAL: Duration = Duration::from_secs(1);
/// Consul's default TCP and HTTP check timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an HTTP check's answer becomes its output (Consul keeps 4 KiB).
const MAX_OUTPUT: usize = 4096;

/// What a check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CheckKind {
    Tcp {
        addr: String,
        interval: Duration,
        timeout: Option<Duration>,
    },
    Http {
        url: String,
        method: String,
        header: BTreeMap<String, Vec<String>>,
        interval: Duration,
        timeout: Option<Duration>,
    },
    Ttl {
        ttl: Duration,
    },
    Alias {
        service_id: String,
    },
}

impl CheckKind {
    fn type_name(&self) -> &'static str {
        match self {
            CheckKind::Tcp { .. } => "tcp",
            CheckKind::Http { .. } => "http",
            CheckKind::Ttl { .. } => "ttl",
            CheckKind::Alias { .. } => "alias",
        }
    }

    /// `HealthCheck.Definition`: the definition's set fields, Go durations as strings.
    fn definition(&self) -> Map<String, Value> {
        let text = |d: &Duration| Value::String(duration::format(*d));
        let mut out = Map::new();
        match self {
            CheckKind::Tcp {
                addr,
                interval,
                timeout,
            } => {
                out.insert("TCP".into(), Value::String(addr.clone()));
                out.insert("Interval".into(), text(interval));
                if let Some(t) = timeout {
                    out.insert("Timeout".into(), text(t));
                }
            }
            CheckKind::Http {
                url,
                method,
                header,
                interval,
                timeout,
            } => {
                out.insert("HTTP".into(), Value::String(url.clone()));
                if !method.is_empty() {
                    out.insert("Method".into(), Value::String(method.clone()));
                }
                if !header.is_empty() {
                    out.insert("Header".into(), json!(header));
                }
                out.insert("Interval".into(), text(interval));
                if let Some(t) = timeout {
                    out.insert("Timeout".into(), text(t));
                }
            }
            CheckKind::Ttl { ttl } => {
                out.insert("TTL".into(), text(ttl));
            }
            CheckKind::Alias { service_id } => {
                out.insert("AliasService".into(), Value::String(service_id.clone()));
            }
        }
        out
    }
}

/// A check as registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CheckDef {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) notes: String,
    /// `Status` of the registration; critical when empty.
    pub(super) initial_status: String,
    pub(super) kind: CheckKind,
}

impl CheckDef {
    /// Reads a registration's check. `id`/`name` are the defaults Consul gives a check
    /// without them.
    pub(super) fn from_wire(
        check: &AgentServiceCheck,
        default_id: String,
        default_name: String,
    ) -> Result<CheckDef, ApiError> {
        refuse_unsupported(check)?;
        let kind = CheckKind::from_wire(check)?;
        if !check.status.is_empty()
            && ![PASSING, WARNING, CRITICAL].contains(&check.status.as_str())
        {
            return Err(ApiError::bad_request(format!(
                "Invalid check status {:?}",
                check.status
            )));
        }
        Ok(CheckDef {
            id: if check.check_id.is_empty() {
                default_id
            } else {
                check.check_id.clone()
            },
            name: if check.name.is_empty() {
                default_name
            } else {
                check.name.clone()
            },
            notes: check.notes.clone(),
            initial_status: check.status.clone(),
            kind,
        })
    }
}

/// The refusal of a check type the dev agent does not run.
fn unsupported(what: &str) -> ApiError {
    ApiError::bad_request(format!(
        "the dev agent runs TCP, HTTP, TTL and alias checks only, not {what} checks"
    ))
}

/// Refuses, by name, the check types Consul has and the dev agent does not run.
fn refuse_unsupported(check: &AgentServiceCheck) -> Result<(), ApiError> {
    if !check.script_args.is_empty() {
        return Err(unsupported("script"));
    }
    for (what, set) in [
        ("UDP", &check.udp),
        ("gRPC", &check.grpc),
        ("H2PING", &check.h2ping),
        ("node alias", &check.alias_node),
    ] {
        if !set.is_empty() {
            return Err(unsupported(what));
        }
    }
    Ok(())
}

/// One of the check's duration fields: unset when empty or not positive, as Consul reads
/// them; a 400 naming the field when it is not a Go duration.
fn duration_field(field: &str, text: &str) -> Result<Option<Duration>, ApiError> {
    if text.is_empty() {
        return Ok(None);
    }
    duration::parse(text)
        .map(duration::positive)
        .map_err(|_| ApiError::bad_request(format!("invalid {field} {text:?}")))
}

impl CheckKind {
    /// Which check a registration asks for, by the first of its fields that is set, in
    /// Consul's order: TCP, HTTP, TTL, alias.
    fn from_wire(check: &AgentServiceCheck) -> Result<CheckKind, ApiError> {
        let interval = duration_field("Interval", &check.interval)?;
        let check_timeout = duration_field("Timeout", &check.timeout)?;
        let ttl = duration_field("TTL", &check.ttl)?;
        let need_interval = || {
            interval.map(|i| i.max(MIN_USER_INTERVAL)).ok_or_else(|| {
                ApiError::bad_request(
                    "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or GRPC checks",
                )
            })
        };
        Ok(if !check.tcp.is_empty() {
            if check.tcp_use_tls {
                return Err(unsupported("TCP+TLS"));
            }
            CheckKind::Tcp {
                addr: check.tcp.clone(),
                interval: need_interval()?,
                timeout: check_timeout,
            }
        } else if !check.http.is_empty() {
            if !check.http.starts_with("http://") {
                return Err(unsupported("https"));
            }
            CheckKind::Http {
                url: check.http.clone(),
                method: check.method.clone(),
                header: check.header.clone(),
                interval: need_interval()?,
                timeout: check_timeout,
            }
        } else if let Some(ttl) = ttl {
            CheckKind::Ttl { ttl }
        } else if !check.alias_service.is_empty() {
            CheckKind::Alias {
                service_id: check.alias_service.clone(),
            }
        } else {
            return Err(ApiError::bad_request(
                "Check must be a TCP, HTTP, TTL or alias check",
            ));
        })
    }

    /// The interval and timeout of a check that runs on a schedule.
    fn schedule(&self) -> (Option<Duration>, Option<Duration>) {
        match self {
            CheckKind::Tcp {
                interval, timeout, ..
            }
            | CheckKind::Http {
                interval, timeout, ..
            } => (Some(*interval), *timeout),
            _ => (None, None),
        }
    }
}

/// A registered check and its current result.
pub(super) struct LocalCheck {
    pub(super) def: CheckDef,
    pub(super) health: HealthCheck,
    /// Stops the task that runs it.
    pub(super) cancel: CancellationToken,
    /// TTL checks: when the check goes critical unless refreshed.
    ttl_deadline: Option<Instant>,
}

impl LocalCheck {
    /// A new check of `service` at raft index `index`: critical unless the registration
    /// asked for another initial status.
    pub(super) fn new(
        def: CheckDef,
        node: &str,
        service_id: &str,
        service_name: &str,
        service_tags: &[String],
        index: u64,
        cancel: CancellationToken,
    ) -> LocalCheck {
        let (interval, check_timeout) = def.kind.schedule();
        let status = if def.initial_status.is_empty() {
            CRITICAL.to_owned()
        } else {
            def.initial_status.clone()
        };
        let health = HealthCheck {
            node: node.to_owned(),
            check_id: def.id.clone(),
            name: def.name.clone(),
            status,
            notes: def.notes.clone(),
            output: String::new(),
            service_id: service_id.to_owned(),
            service_name: service_name.to_owned(),
            service_tags: service_tags.to_vec(),
            r#type: def.kind.type_name().to_owned(),
            interval: interval.map(duration::format).unwrap_or_default(),
            timeout: check_timeout.map(duration::format).unwrap_or_default(),
            definition: def.kind.definition(),
            create_index: index,
            modify_index: index,
            ..HealthCheck::default()
        };
        let ttl_deadline = match &def.kind {
            CheckKind::Ttl { ttl } => Some(instant_after(*ttl)),
            _ => None,
        };
        LocalCheck {
            def,
            health,
            cancel,
            ttl_deadline,
        }
    }
}

impl State {
    /// Records a check result. Only a change of status is a write; the output of an
    /// unchanged status is refreshed without waking anyone (Consul defers those syncs).
    /// Returns `false` once the check is gone, which ends its task.
    pub(super) fn set_check(&mut self, id: &str, status: &str, output: String) -> bool {
        let Some(check) = self.checks.get(id) else {
            return false;
        };
        if check.health.status == status {
            if let Some(check) = self.checks.get_mut(id) {
                check.health.output = output;
            }
            return true;
        }
        let index = self.bump();
        if let Some(check) = self.checks.get_mut(id) {
            check.health.status = status.to_owned();
            check.health.output = output;
            check.health.modify_index = index;
        }
        self.refresh_aliases(index);
        true
    }

    /// Recomputes every alias check from the checks of the service it aliases and of
    /// the node (`agent/checks/alias.go`), at the index of the write in progress.
    pub(super) fn refresh_aliases(&mut self, index: u64) {
        let aliases: Vec<(String, String)> = self
            .checks
            .iter()
            .filter_map(|(id, c)| match &c.def.kind {
                CheckKind::Alias { service_id } => Some((id.clone(), service_id.clone())),
                _ => None,
            })
            .collect();
        for (id, target) in aliases {
            let (status, output) = self.alias_status(&target);
            if let Some(check) = self.checks.get_mut(&id)
                && (check.health.status != status || check.health.output != output)
            {
                check.health.status = status.to_owned();
                check.health.output = output;
                check.health.modify_index = index;
            }
        }
    }

    fn alias_status(&self, service_id: &str) -> (&'static str, String) {
        let Some(service) = self.services.get(service_id) else {
            return (
                CRITICAL,
                format!(
                    "Service {service_id} could not be found on node {}",
                    self.node.node.node
                ),
            );
        };
        let mut status = PASSING;
        let mut output = "No checks found.".to_owned();
        let checks = std::iter::once(&self.node.serf_check).chain(
            service
                .check_ids
                .iter()
                .filter_map(|id| self.checks.get(id))
                .map(|c| &c.health),
        );
        for check in checks {
            match check.status.as_str() {
                CRITICAL => {
                    return (
                        CRITICAL,
                        format!("Aliased check {:?} failing: {}", check.name, check.output),
                    );
                }
                WARNING => {
                    status = WARNING;
                    output = format!("Aliased check {:?} failing: {}", check.name, check.output);
                }
                _ if status == PASSING => output = "All checks passing.".to_owned(),
                _ => {}
            }
        }
        (status, output)
    }
}

/// Starts the task that runs a check; alias checks need none.
pub(super) fn spawn(shared: &Arc<Shared>, id: String, kind: CheckKind, cancel: CancellationToken) {
    let shared = Arc::clone(shared);
    match kind {
        CheckKind::Tcp {
            addr,
            interval,
            timeout: t,
        } => {
            tokio::spawn(run_periodic(shared, id, interval, cancel, move || {
                let addr = addr.clone();
                async move { tcp_probe(&addr, t.unwrap_or(DEFAULT_TIMEOUT)).await }
            }));
        }
        CheckKind::Http {
            url,
            method,
            header,
            interval,
            timeout: t,
        } => {
            let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
            tokio::spawn(run_periodic(shared, id, interval, cancel, move || {
                let (client, url, method, header) =
                    (client.clone(), url.clone(), method.clone(), header.clone());
                async move {
                    http_probe(
                        &client,
                        &url,
                        &method,
                        &header,
                        t.unwrap_or(DEFAULT_TIMEOUT),
                    )
                    .await
                }
            }));
        }
        CheckKind::Ttl { .. } => {
            tokio::spawn(run_ttl(shared, id, cancel));
        }
        CheckKind::Alias { .. } => {}
    }
}

/// Runs `probe` now and then every `interval` until the check is cancelled or removed.
async fn run_periodic<F, Fut>(
    shared: Arc<Shared>,
    id: String,
    interval: Duration,
    cancel: CancellationToken,
    probe: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = (&'static str, String)>,
{
    loop {
        let (status, output) = tokio::select! {
            result = probe() => result,
            () = cancel.cancelled() => return,
        };
        if !shared.with(|state| state.set_check(&id, status, output)) {
            return;
        }
        tokio::select! {
            () = sleep(interval) => {}
            () = cancel.cancelled() => return,
        }
    }
}

/// Connects and closes without sending anything, like Consul's TCP check.
async fn tcp_probe(addr: &str, limit: Duration) -> (&'static str, String) {
    match timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            drop(stream);
            (PASSING, format!("TCP connect {addr}: Success"))
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => (
            CRITICAL,
            format!("dial tcp {addr}: connect: connection refused"),
        ),
        Ok(Err(e)) => (CRITICAL, format!("dial tcp {addr}: {e}")),
        Err(_) => (CRITICAL, format!("dial tcp {addr}: i/o timeout")),
    }
}

/// One request; 2xx is passing, 429 warning, anything else critical (Consul's rules).
async fn http_probe(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    url: &str,
    method: &str,
    header: &BTreeMap<String, Vec<String>>,
    limit: Duration,
) -> (&'static str, String) {
    let method = if method.is_empty() { "GET" } else { method };
    let mut request = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET))
        .uri(url)
        .header("user-agent", "Consul Health Check")
        .header("accept", "text/plain, text/*, */*");
    for (name, values) in header {
        for value in values {
            request = request.header(name.as_str(), value.as_str());
        }
    }
    let request = match request.body(Empty::new()) {
        Ok(request) => request,
        Err(e) => return (CRITICAL, format!("request error: {e}")),
    };
    let answer = timeout(limit, async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_OUTPUT)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok::<_, String>((status, body))
    })
    .await;
    match answer {
        Err(_) => (CRITICAL, format!("{method} {url}: timeout")),
        Ok(Err(e)) => (CRITICAL, format!("{method} {url}: {e}")),
        Ok(Ok((status, body))) => {
            let output = format!(
                "HTTP {method} {url}: {status} Output: {}",
                String::from_utf8_lossy(&body)
            );
            (http_status(status), output)
        }
    }
}

/// What an HTTP check's answer means, as Consul reads it: 2xx passes, 429 warns.
fn http_status(status: StatusCode) -> &'static str {
    if status.is_success() {
        PASSING
    } else if status == StatusCode::TOO_MANY_REQUESTS {
        WARNING
    } else {
        CRITICAL
    }
}

/// Turns a TTL check critical when its deadline passes without an update. Updates
/// move the deadline; the task re-reads it after every write and whenever it fires.
async fn run_ttl(shared: Arc<Shared>, id: String, cancel: CancellationToken) {
    let mut changes = shared.subscribe();
    loop {
        changes.borrow_and_update();
        let Some(deadline) = shared.with(|state| state.checks.get(&id).map(|c| c.ttl_deadline))
        else {
            return;
        };
        let expiry = async {
            match deadline {
                Some(at) => sleep_until(at).await,
                // Expired already: armed again by the next update.
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = expiry => shared.with(|state| {
                let now = Instant::now();
                let expired = state
                    .checks
                    .get(&id)
                    .and_then(|c| c.ttl_deadline)
                    .is_some_and(|at| at <= now);
                if expired {
                    if let Some(check) = state.checks.get_mut(&id) {
                        check.ttl_deadline = None;
                    }
                    state.set_check(&id, CRITICAL, "TTL expired".to_owned());
                }
            }),
            changed = changes.changed() => if changed.is_err() { return },
            () = cancel.cancelled() => return,
        }
    }
}

/// `PUT /v1/agent/check/pass|warn|fail/:check_id?note=`: updates a TTL check.
pub(super) async fn update_ttl(
    shared: &Shared,
    call: &Call,
    status: &'static str,
    id: &str,
) -> Result<Reply, ApiError> {
    call.reject_enterprise()?;
    let note = call.query.get("note").unwrap_or_default().to_owned();
    shared.with(|state| {
        let Some(check) = state.checks.get_mut(id) else {
            return Err(ApiError::not_found(format!(
                "Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."
            )));
        };
        let CheckKind::Ttl { ttl } = check.def.kind else {
            return Err(ApiError::internal(format!(
                "CheckID {id:?} does not have associated TTL"
            )));
        };
        check.ttl_deadline = Some(instant_after(ttl));
        state.set_check(id, status, note);
        Ok(())
    })?;
    Ok(Reply::empty())
}
