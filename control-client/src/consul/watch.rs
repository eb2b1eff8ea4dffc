//! The one blocking-query watcher every Consul resource goes through (spec §2).
//!
//! It owns the loop of spec 2.5: the `index`/`wait` (or `hash`/`wait`) parameters, the
//! `X-Consul-Index` rules (missing reads as 0, going backwards resets to 0, a zero index is
//! clamped to 1 so the next call blocks), a request timeout longer than the agent's
//! longest hold, a reset to a fresh read after any error (a restarted agent has lower
//! indexes and would otherwise hold an old one for the whole wait) — also when the error
//! was another watcher's, since watchers sharing a client share the agent — capped exponential
//! backoff with jitter between failures, and a token bucket so that a flapping resource
//! cannot hammer the agent while a single change still goes through at once.
//!
//! What comes out is a typed stream: every answer says whether the body changed, so the
//! caller can tell "the agent answered" (staleness metric) from "something changed"
//! (new snapshot). All timing uses tokio's clock.

use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::http::{AgentClient, AgentError, Answer, DEFAULT_ACL_POLICY_HEADER, decode, header_str};

/// How an endpoint blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blocking {
    /// `index=` with `X-Consul-Index` (raft- and cache-backed endpoints).
    Index,
    /// `hash=` with `X-Consul-ContentHash` (`/v1/agent/service/:id`).
    Hash,
}

/// What to watch: one endpoint with its fixed query parameters.
#[derive(Debug, Clone)]
pub(crate) struct WatchSpec {
    /// Percent-encoded path, e.g. `/v1/agent/connect/ca/roots`.
    pub(crate) path: String,
    /// Parameters sent with every request (`by`, `name`, `passing`, `dc`).
    pub(crate) query: Vec<(String, String)>,
    pub(crate) blocking: Blocking,
}

/// The loop's timing. The defaults suit a real agent; tests shrink them.
#[derive(Debug, Clone)]
pub(crate) struct Tuning {
    /// The `wait` sent with every blocking call.
    pub(crate) wait: Duration,
    /// Added to `wait + wait/16` (the agent's jitter) for the request timeout, and the
    /// whole timeout of a non-blocking call: covers the agent's RPC to the servers
    /// (`rpc_hold_timeout` is 7 s) and the network.
    pub(crate) timeout_margin: Duration,
    /// First backoff after an error; doubles per consecutive error.
    pub(crate) backoff_base: Duration,
    /// Backoff ceiling. Low enough that every watcher is back in sync well within 30 s of
    /// the agent's return.
    pub(crate) backoff_cap: Duration,
    /// Requests allowed back to back before the bucket slows the loop down.
    pub(crate) burst: u32,
    /// One request's worth of tokens comes back after this.
    pub(crate) refill: Duration,
    /// After a forced fresh read (see [`Watcher::force_at`]) that brought nothing new, the
    /// next one waits this long.
    pub(crate) force_retry: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            wait: Duration::from_secs(300),
            timeout_margin: Duration::from_secs(30),
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(10),
            burst: 4,
            refill: Duration::from_secs(1),
            force_retry: Duration::from_secs(60),
        }
    }
}

impl Tuning {
    fn timeout(&self, blocking: bool) -> Duration {
        if blocking {
            self.wait + self.wait / 16 + self.timeout_margin
        } else {
            self.timeout_margin
        }
    }
}

/// One event of a watch.
#[derive(Debug)]
pub(crate) enum Update<T> {
    /// The agent answered with a body different from the last one delivered.
    Changed { value: T, meta: Meta },
    /// The agent answered with the same body as before (a wait expired, or an index moved
    /// for something else).
    Unchanged { meta: Meta },
    /// The request failed; the watcher backs off and starts again from a fresh read.
    Failed(AgentError),
}

/// Facts from the answer's headers that are not part of the resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    /// `X-Consul-Default-ACL-Policy`.
    pub(crate) default_acl_policy: Option<String>,
}

impl Meta {
    fn from_answer(answer: &Answer) -> Meta {
        Meta {
            default_acl_policy: header_str(&answer.headers, DEFAULT_ACL_POLICY_HEADER)
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty()),
        }
    }
}

/// Where the next request starts from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Cursor {
    index: u64,
    hash: Option<String>,
}

impl Cursor {
    fn is_blocking(&self) -> bool {
        self.index > 0 || self.hash.is_some()
    }

    /// Spec 2.5: missing index reads as 0; an index that went backwards resets to a fresh
    /// read; otherwise take it, clamped to at least 1 so the next call blocks instead of
    /// spinning.
    fn advance(&mut self, blocking: Blocking, answer: &Answer) {
        match blocking {
            Blocking::Index => {
                let new = answer.index();
                self.index = if new < self.index { 0 } else { new.max(1) };
            }
            Blocking::Hash => self.hash = answer.content_hash(),
        }
    }

    fn reset(&mut self) {
        *self = Cursor::default();
    }
}

/// A running watch; dropping it stops the loop.
pub(crate) struct Watcher {
    _task: AbortOnDropHandle<()>,
}

impl Watcher {
    /// Starts watching `spec`, sending every [`Update`] through `wrap` into `tx`. The
    /// loop ends when the receiver is dropped or the watcher is.
    pub(crate) fn spawn<T, U, F>(
        client: AgentClient,
        spec: WatchSpec,
        tuning: Tuning,
        tx: mpsc::Sender<U>,
        wrap: F,
    ) -> Watcher
    where
        T: DeserializeOwned + Send + 'static,
        U: Send + 'static,
        F: Fn(Update<T>) -> U + Send + 'static,
    {
        Self::spawn_forced(client, spec, tuning, None, tx, wrap)
    }

    /// Like [`Watcher::spawn`], and whenever the instant in `force_at` passes, the
    /// blocking call in flight is abandoned for a fresh, non-blocking read. The leaf watch
    /// uses it for spec 4.5's defensive rule.
    pub(crate) fn spawn_forced<T, U, F>(
        client: AgentClient,
        spec: WatchSpec,
        tuning: Tuning,
        force_at: Option<watch::Receiver<Option<Instant>>>,
        tx: mpsc::Sender<U>,
        wrap: F,
    ) -> Watcher
    where
        T: DeserializeOwned + Send + 'static,
        U: Send + 'static,
        F: Fn(Update<T>) -> U + Send + 'static,
    {
        let task = tokio::spawn(run(client, spec, tuning, force_at, tx, wrap));
        Watcher {
            _task: AbortOnDropHandle::new(task),
        }
    }
}

async fn run<T, U, F>(
    client: AgentClient,
    spec: WatchSpec,
    tuning: Tuning,
    mut force_rx: Option<watch::Receiver<Option<Instant>>>,
    tx: mpsc::Sender<U>,
    wrap: F,
) where
    T: DeserializeOwned,
    F: Fn(Update<T>) -> U,
{
    let mut cursor = Cursor::default();
    let mut last_body: Option<Bytes> = None;
    let mut failures: u32 = 0;
    let mut bucket = TokenBucket::new(tuning.burst, tuning.refill);
    let mut force_at: Option<Instant> = None;
    let wait = crate::duration::format_query(tuning.wait);
    // Another watcher failing to reach the agent means it may have restarted: an index
    // held from before would be held for the whole wait by a restarted agent, so any
    // blocking call is abandoned for a fresh read (spec 2.5).
    let mut outages = client.outages();
    outages.borrow_and_update();
    if let Some(rx) = &mut force_rx {
        force_at = *rx.borrow_and_update();
    }

    loop {
        tokio::select! {
            () = bucket.take() => {}
            () = tx.closed() => return,
        }
        // Only a new deadline replaces ours: after a forced read that brought nothing
        // new, our own later retry must stand, or a past deadline would force forever.
        if let Some(rx) = &mut force_rx
            && rx.has_changed().unwrap_or(false)
        {
            force_at = *rx.borrow_and_update();
        }
        if outages.has_changed().unwrap_or(false) {
            outages.borrow_and_update();
            cursor.reset();
        }
        let blocking = cursor.is_blocking();
        if !blocking && force_at.is_some_and(|at| at <= Instant::now()) {
            // This read is fresh anyway; count it as the forced one.
            force_at = Some(Instant::now() + tuning.force_retry);
        }

        let mut query: Vec<(&str, &str)> = spec
            .query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let index = cursor.index.to_string();
        let hash = cursor.hash.clone();
        match (&hash, spec.blocking) {
            (Some(hash), Blocking::Hash) => {
                query.extend([("hash", hash.as_str()), ("wait", &wait)])
            }
            (_, Blocking::Index) if cursor.index > 0 => {
                query.extend([("index", index.as_str()), ("wait", &wait)])
            }
            _ => {}
        }

        let request = client.get(&spec.path, &query, tuning.timeout(blocking));
        tokio::pin!(request);
        let result = loop {
            let deadline = force_at.filter(|_| blocking);
            tokio::select! {
                result = &mut request => break Ok(result),
                () = sleep_until_some(deadline) => break Err(Abandoned::Forced),
                changed = outages.changed(), if blocking => {
                    if changed.is_ok() {
                        outages.borrow_and_update();
                        break Err(Abandoned::Outage);
                    }
                }
                changed = changed_some(&mut force_rx) => {
                    if changed {
                        if let Some(rx) = &mut force_rx {
                            force_at = *rx.borrow_and_update();
                        }
                    } else {
                        // The owner of the deadline is gone; nothing will force again.
                        force_rx = None;
                    }
                }
                () = tx.closed() => return,
            }
        };
        let result = match result {
            Ok(result) => result,
            Err(Abandoned::Forced) => {
                tracing::debug!(path = %spec.path, "forcing a fresh read");
                cursor.reset();
                force_at = Some(Instant::now() + tuning.force_retry);
                continue;
            }
            Err(Abandoned::Outage) => {
                tracing::debug!(path = %spec.path, "the agent was unreachable meanwhile; reading afresh");
                cursor.reset();
                continue;
            }
        };

        let update = match result {
            Ok(answer) if last_body.as_ref() == Some(&answer.body) => {
                cursor.advance(spec.blocking, &answer);
                Ok(Update::Unchanged {
                    meta: Meta::from_answer(&answer),
                })
            }
            Ok(answer) => match decode::<T>(&spec.path, &answer.body) {
                Ok(value) => {
                    cursor.advance(spec.blocking, &answer);
                    let meta = Meta::from_answer(&answer);
                    last_body = Some(answer.body);
                    Ok(Update::Changed { value, meta })
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match update {
            Ok(update) => {
                failures = 0;
                if tx.send(wrap(update)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // Start again from a fresh read: the agent may have restarted with lower
                // indexes, and an old index would be held for the whole wait.
                cursor.reset();
                failures = failures.saturating_add(1);
                let delay = backoff(failures, tuning.backoff_base, tuning.backoff_cap);
                tracing::debug!(path = %spec.path, error = %e, retry_in = ?delay, "watch failed");
                if tx.send(wrap(Update::Failed(e))).await.is_err() {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = tx.closed() => return,
                }
            }
        }
    }
}

/// Why a blocking call was given up before the agent answered.
enum Abandoned {
    /// The caller's deadline (see [`Watcher::force_at`]) passed.
    Forced,
    /// A request of another watcher could not reach the agent.
    Outage,
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `true` when the deadline changed, `false` when its sender is gone; never resolves
/// without a receiver.
async fn changed_some(rx: &mut Option<watch::Receiver<Option<Instant>>>) -> bool {
    match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// Exponential backoff with jitter: the `failures`-th delay lies in `[d/2, d]` with
/// `d = min(cap, base × 2^(failures−1))`. The floor of `d/2` means retries never spin.
pub(crate) fn backoff(failures: u32, base: Duration, cap: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let d = base.saturating_mul(1u32 << exp).min(cap);
    let half = d / 2;
    let jitter = fastrand::u64(0..=u64::try_from(half.as_micros()).unwrap_or(u64::MAX));
    half + Duration::from_micros(jitter)
}

/// A token bucket on tokio's clock: `burst` requests go out back to back, then one per
/// `refill`. A quiet resource always has a full bucket, so one change is never delayed.
pub(crate) struct TokenBucket {
    capacity: f64,
    tokens: f64,
    refill: Duration,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(burst: u32, refill: Duration) -> TokenBucket {
        let capacity = f64::from(burst.max(1));
        TokenBucket {
            capacity,
            tokens: capacity,
            refill,
            last: Instant::now(),
        }
    }

    fn top_up(&mut self) {
        let now = Instant::now();
        if !self.refill.is_zero() {
            let earned = now.duration_since(self.last).as_secs_f64() / self.refill.as_secs_f64();
            self.tokens = (self.tokens + earned).min(self.capacity);
        } else {
            self.tokens = self.capacity;
        }
        self.last = now;
    }

    /// Waits for a token and takes it.
    pub(crate) async fn take(&mut self) {
        self.top_up();
        if self.tokens < 1.0 {
            let missing = 1.0 - self.tokens;
            tokio::time::sleep(self.refill.mul_f64(missing)).await;
            self.top_up();
        }
        self.tokens = (self.tokens - 1.0).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consul::http::{AgentAddr, AgentClientConfig};
    use crate::consul::testing::{Reply, ScriptedAgent};
    use std::sync::Arc;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Thing {
        #[serde(rename = "V")]
        v: u32,
    }

    fn fast() -> Tuning {
        Tuning {
            wait: Duration::from_secs(1),
            timeout_margin: Duration::from_millis(300),
            backoff_base: Duration::from_millis(5),
            backoff_cap: Duration::from_millis(20),
            burst: 100,
            refill: Duration::from_millis(1),
            force_retry: Duration::from_secs(60),
        }
    }

    fn client(addr: std::net::SocketAddr) -> AgentClient {
        let addr: AgentAddr = addr.to_string().parse().unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        AgentClient::new(&AgentClientConfig::new(addr), provider).unwrap()
    }

    fn spec(blocking: Blocking) -> WatchSpec {
        WatchSpec {
            path: "/v1/thing".into(),
            query: vec![("passing".into(), "1".into())],
            blocking,
        }
    }

    fn start(
        agent: &ScriptedAgent,
        blocking: Blocking,
        tuning: Tuning,
    ) -> (Watcher, mpsc::Receiver<Update<Thing>>) {
        let (tx, rx) = mpsc::channel(16);
        let w = Watcher::spawn(client(agent.addr()), spec(blocking), tuning, tx, |u| u);
        (w, rx)
    }

    async fn next(rx: &mut mpsc::Receiver<Update<Thing>>) -> Update<Thing> {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an update within 5 s")
            .expect("the watcher is running")
    }

    fn changed(u: Update<Thing>) -> u32 {
        match u {
            Update::Changed { value, .. } => value.v,
            other => panic!("expected a change, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn follows_the_index_and_resets_when_it_goes_backwards() {
        let agent = ScriptedAgent::start(vec![
            Reply::json(10, r#"{"V":1}"#),
            Reply::json(12, r#"{"V":2}"#),
            // The agent restarted: a lower index, same data.
            Reply::json(3, r#"{"V":2}"#),
            Reply::json(4, r#"{"V":3}"#),
        ])
        .await;
        let (_w, mut rx) = start(&agent, Blocking::Index, fast());
        assert_eq!(changed(next(&mut rx).await), 1);
        assert_eq!(changed(next(&mut rx).await), 2);
        assert!(matches!(next(&mut rx).await, Update::Unchanged { .. }));
        assert_eq!(changed(next(&mut rx).await), 3);
        let queries = agent.wait_queries(5).await;
        assert_eq!(queries[0], "passing=1");
        assert_eq!(queries[1], "passing=1&index=10&wait=1s");
        assert_eq!(queries[2], "passing=1&index=12&wait=1s");
        assert_eq!(queries[3], "passing=1", "went backwards: a fresh read");
        assert_eq!(queries[4], "passing=1&index=4&wait=1s");
    }

    #[tokio::test]
    async fn a_zero_or_missing_index_is_clamped_to_one() {
        let agent = ScriptedAgent::start(vec![
            Reply::json(0, r#"{"V":1}"#),
            Reply::json(0, r#"{"V":1}"#).without_index(),
            Reply::json(7, r#"{"V":2}"#),
        ])
        .await;
        let (_w, mut rx) = start(&agent, Blocking::Index, fast());
        assert_eq!(changed(next(&mut rx).await), 1);
        assert!(matches!(next(&mut rx).await, Update::Unchanged { .. }));
        assert_eq!(changed(next(&mut rx).await), 2);
        let queries = agent.wait_queries(4).await;
        assert_eq!(queries[0], "passing=1");
        assert_eq!(queries[1], "passing=1&index=1&wait=1s", "0 is clamped to 1");
        assert_eq!(
            queries[2], "passing=1",
            "a missing index reads as 0, which is lower: a fresh read"
        );
        assert_eq!(queries[3], "passing=1&index=7&wait=1s");
    }

    #[tokio::test]
    async fn server_errors_reset_the_index_and_back_off() {
        let agent = ScriptedAgent::start(vec![
            Reply::json(20, r#"{"V":1}"#),
            Reply::status(500, "rpc error: No cluster leader"),
            Reply::status(503, "unavailable"),
            Reply::json(21, r#"{"V":1}"#),
            Reply::json(22, r#"{"V":2}"#),
        ])
        .await;
        let (_w, mut rx) = start(&agent, Blocking::Index, fast());
        assert_eq!(changed(next(&mut rx).await), 1);
        match next(&mut rx).await {
            Update::Failed(AgentError::Status { status, text, .. }) => {
                assert_eq!(status, 500);
                assert_eq!(text, "rpc error: No cluster leader");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(next(&mut rx).await, Update::Failed(_)));
        assert!(
            matches!(next(&mut rx).await, Update::Unchanged { .. }),
            "the value after recovery is the one already delivered"
        );
        assert_eq!(changed(next(&mut rx).await), 2);
        let queries = agent.wait_queries(5).await;
        assert_eq!(queries[1], "passing=1&index=20&wait=1s");
        assert_eq!(queries[2], "passing=1", "reset to 0 after the 500");
        assert_eq!(queries[3], "passing=1", "and after the 503");
        assert_eq!(queries[4], "passing=1&index=21&wait=1s");
    }

    #[tokio::test]
    async fn malformed_json_is_an_error_and_the_last_good_value_stays() {
        let agent = ScriptedAgent::start(vec![
            Reply::json(5, r#"{"V":1}"#),
            Reply::json(6, r#"{"V": "one"}"#),
            Reply::json(7, r#"{"V":1"#),
            Reply::json(8, r#"{"V":1}"#),
        ])
        .await;
        let (_w, mut rx) = start(&agent, Blocking::Index, fast());
        assert_eq!(changed(next(&mut rx).await), 1);
        match next(&mut rx).await {
            Update::Failed(AgentError::Decode { at, path, .. }) => {
                assert_eq!(at, "V");
                assert_eq!(path, "/v1/thing");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            next(&mut rx).await,
            Update::Failed(AgentError::Decode { .. })
        ));
        assert!(matches!(next(&mut rx).await, Update::Unchanged { .. }));
        let queries = agent.wait_queries(4).await;
        assert_eq!(queries[2], "passing=1", "a bad body resets the index");
        assert_eq!(queries[3], "passing=1");
    }

    #[tokio::test]
    async fn a_response_slower_than_the_timeout_is_abandoned() {
        let mut tuning = fast();
        tuning.wait = Duration::from_millis(200);
        tuning.timeout_margin = Duration::from_millis(200);
        let agent = ScriptedAgent::start(vec![
            Reply::json(5, r#"{"V":1}"#),
            // Timeout of this blocking call: 200 + 12 + 200 ms.
            Reply::json(6, r#"{"V":2}"#).after(Duration::from_secs(3)),
            Reply::json(9, r#"{"V":3}"#),
        ])
        .await;
        let (_w, mut rx) = start(&agent, Blocking::Index, tuning);
        assert_eq!(changed(next(&mut rx).await), 1);
        let started = std::time::Instant::now();
        assert!(matches!(
            next(&mut rx).await,
            Update::Failed(AgentError::Timeout { .. })
        ));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(changed(next(&mut rx).await), 3);
        assert_eq!(agent.queries()[2], "passing=1");
    }

    #[tokio::test]
    async fn survives_the_agent_going_away_and_coming_back() {
        let agent = ScriptedAgent::start(vec![Reply::json(40, r#"{"V":1}"#)]).await;
        let addr = agent.addr();
        let (tx, mut rx) = mpsc::channel(16);
        let _w =
            Watcher::spawn::<Thing, _, _>(client(addr), spec(Blocking::Index), fast(), tx, |u| u);
        assert_eq!(changed(next(&mut rx).await), 1);
        // The blocking call in flight dies with the agent; later dials are refused.
        agent.stop().await;
        match next(&mut rx).await {
            Update::Failed(AgentError::Transport { .. }) => {}
            other => panic!("{other:?}"),
        }
        match next(&mut rx).await {
            Update::Failed(AgentError::Transport { message, .. }) => {
                assert!(message.to_lowercase().contains("refused"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // Back, with lower indexes.
        let again = ScriptedAgent::start_on(addr, vec![Reply::json(2, r#"{"V":5}"#)]).await;
        loop {
            match next(&mut rx).await {
                Update::Failed(_) => continue,
                Update::Changed { value, .. } => {
                    assert_eq!(value.v, 5);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            again.queries()[0],
            "passing=1",
            "first call to the new agent is fresh"
        );
    }

    #[tokio::test]
    async fn a_blocking_call_is_abandoned_when_another_request_cannot_reach_the_agent() {
        let agent = ScriptedAgent::start(vec![
            Reply::json(5, r#"{"V":1}"#),
            // The blocking call: a restarted agent holds an index from before.
            Reply::json(5, r#"{"V":1}"#).after(Duration::from_secs(30)),
            // Another request through the same client, which times out.
            Reply::json(9, "{}").after(Duration::from_secs(30)),
            Reply::json(2, r#"{"V":2}"#),
        ])
        .await;
        let shared = client(agent.addr());
        let (tx, mut rx) = mpsc::channel(16);
        let _w = Watcher::spawn(shared.clone(), spec(Blocking::Index), fast(), tx, |u| u);
        assert_eq!(changed(next(&mut rx).await), 1);
        agent.wait_queries(2).await;
        let probe = shared
            .get("/v1/other", &[], Duration::from_millis(50))
            .await;
        assert!(
            matches!(probe, Err(AgentError::Timeout { .. })),
            "{probe:?}"
        );
        assert_eq!(changed(next(&mut rx).await), 2);
        let queries = agent.queries();
        assert_eq!(queries[1], "passing=1&index=5&wait=1s");
        assert_eq!(
            queries[3], "passing=1",
            "a fresh read, without the old index"
        );
    }

    #[tokio::test]
    async fn hash_blocking_sends_the_content_hash_and_no_index() {
        let agent = ScriptedAgent::start(vec![
            Reply::json(0, r#"{"V":1}"#).without_index().hash("aaa"),
            Reply::json(0, r#"{"V":2}"#).without_index().hash("bbb"),
            Reply::status(404, "unknown service ID: x"),
            Reply::json(0, r#"{"V":2}"#).without_index().hash("bbb"),
        ])
        .await;
        let (_w, mut rx) = start(&agent, Blocking::Hash, fast());
        assert_eq!(changed(next(&mut rx).await), 1);
        assert_eq!(changed(next(&mut rx).await), 2);
        assert!(matches!(
            next(&mut rx).await,
            Update::Failed(AgentError::Status { .. })
        ));
        assert!(matches!(next(&mut rx).await, Update::Unchanged { .. }));
        let queries = agent.wait_queries(4).await;
        assert_eq!(queries[0], "passing=1");
        assert_eq!(queries[1], "passing=1&hash=aaa&wait=1s");
        assert_eq!(queries[2], "passing=1&hash=bbb&wait=1s");
        assert_eq!(
            queries[3], "passing=1",
            "restart without hash after an error"
        );
    }

    #[tokio::test]
    async fn a_forced_deadline_abandons_the_blocking_call_for_a_fresh_read() {
        let mut tuning = fast();
        tuning.wait = Duration::from_secs(30);
        let agent = ScriptedAgent::start(vec![
            Reply::json(5, r#"{"V":1}"#),
            Reply::json(6, r#"{"V":1}"#).after(Duration::from_secs(20)),
            Reply::json(6, r#"{"V":2}"#),
        ])
        .await;
        let (force_tx, force_rx) = watch::channel(None);
        let (tx, mut rx) = mpsc::channel(16);
        let _w = Watcher::spawn_forced::<Thing, _, _>(
            client(agent.addr()),
            spec(Blocking::Index),
            tuning,
            Some(force_rx),
            tx,
            |u| u,
        );
        assert_eq!(changed(next(&mut rx).await), 1);
        force_tx.send_replace(Some(Instant::now() + Duration::from_millis(200)));
        assert_eq!(changed(next(&mut rx).await), 2);
        let queries = agent.wait_queries(3).await;
        assert_eq!(queries[1], "passing=1&index=5&wait=30s");
        assert_eq!(queries[2], "passing=1", "the forced read is non-blocking");
    }

    #[tokio::test]
    async fn stops_when_the_receiver_is_dropped() {
        let agent = ScriptedAgent::start(vec![Reply::json(5, r#"{"V":1}"#)]).await;
        let (w, mut rx) = start(&agent, Blocking::Index, fast());
        assert_eq!(changed(next(&mut rx).await), 1);
        drop(rx);
        let started = std::time::Instant::now();
        // The task notices the closed channel even mid-request.
        while !w._task.is_finished() {
            assert!(started.elapsed() < Duration::from_secs(3));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn backoff_grows_to_the_cap_and_never_reaches_zero() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(10);
        for _ in 0..100 {
            let first = backoff(1, base, cap);
            assert!(
                first >= Duration::from_millis(50) && first <= base,
                "{first:?}"
            );
            let fourth = backoff(4, base, cap);
            assert!(fourth >= Duration::from_millis(400) && fourth <= Duration::from_millis(800));
            let late = backoff(1000, base, cap);
            assert!(late >= cap / 2 && late <= cap, "{late:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_lets_a_burst_through_then_paces() {
        let mut bucket = TokenBucket::new(2, Duration::from_secs(1));
        let t0 = Instant::now();
        bucket.take().await;
        bucket.take().await;
        assert_eq!(t0.elapsed(), Duration::ZERO, "a burst of two is immediate");
        bucket.take().await;
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
        bucket.take().await;
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
        // A quiet period refills it, so the next change is not delayed.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let t1 = Instant::now();
        bucket.take().await;
        bucket.take().await;
        assert_eq!(t1.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_flapping_resource_is_paced_by_the_bucket() {
        let mut tuning = fast();
        tuning.burst = 2;
        tuning.refill = Duration::from_millis(100);
        // Every answer changes, immediately: the loop must not spin.
        let agent = ScriptedAgent::flapping().await;
        let (_w, mut rx) = start(&agent, Blocking::Index, tuning);
        let t0 = Instant::now();
        for _ in 0..5 {
            let _ = next(&mut rx).await;
        }
        assert!(
            t0.elapsed() >= Duration::from_millis(250),
            "5 requests with a burst of 2 take at least 3 refills, took {:?}",
            t0.elapsed()
        );
        assert!(agent.queries().len() <= 6);
    }
}
