//! The one blocking-query watcher every Consul resource goes through
//! (docs/consul-semantics.md#blocking-queries).
//!
//! It owns the blocking loop: the `index`/`wait` (or `hash`/`wait`) parameters, the
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
    /// Not at all (a prepared query's execution): read again every `Tuning::poll`.
    Poll,
}

/// What to watch: one endpoint with its fixed query parameters.
#[derive(Debug, Clone)]
pub(crate) struct WatchSpec {
    /// Percent-encoded path, e.g. `/v1/agent/connect/ca/roots`.
    pub(crate) path: String,
    /// Parameters sent with every request (`by`, `name`, `dc`, `filter`).
    pub(crate) query: Vec<(String, String)>,
    pub(crate) blocking: Blocking,
    /// A JSON body sent with every request, which makes it a `POST` (the discovery
    /// chain's overrides); `None`: a `GET`.
    pub(crate) body: Option<Bytes>,
}

impl WatchSpec {
    /// A `GET` of `path` with `query`.
    pub(crate) fn get(path: String, query: Vec<(String, String)>, blocking: Blocking) -> Self {
        WatchSpec {
            path,
            query,
            blocking,
            body: None,
        }
    }
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
    /// How long an endpoint the agent does not have (an older agent's 404) is left alone
    /// before it is asked again.
    pub(crate) unsupported_retry: Duration,
    /// Between two reads of an endpoint that cannot block ([`Blocking::Poll`]).
    pub(crate) poll: Duration,
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
            unsupported_retry: Duration::from_secs(300),
            poll: Duration::from_secs(1),
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

    /// Consul's rules for `X-Consul-Index` (docs/consul-semantics.md#blocking-queries):
    /// missing reads as 0; an index that went backwards resets to a fresh read; otherwise take it, clamped to at least 1 so the next call blocks instead of
    /// spinning.
    fn advance(&mut self, blocking: Blocking, answer: &Answer) {
        match blocking {
            Blocking::Index => {
                let new = answer.index();
                self.index = if new < self.index { 0 } else { new.max(1) };
            }
            Blocking::Hash => self.hash = answer.content_hash(),
            Blocking::Poll => {}
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
    /// uses it to fetch afresh when a leaf nears its end and no renewal has come
    /// (docs/consul-semantics.md#identity).
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
    force_rx: Option<watch::Receiver<Option<Instant>>>,
    tx: mpsc::Sender<U>,
    wrap: F,
) where
    T: DeserializeOwned,
    F: Fn(Update<T>) -> U,
{
    let mut watch = Loop::new(client, spec, tuning, force_rx, tx, wrap);
    while watch.turn::<T>().await.is_some() {}
}

/// One watch's state between requests.
struct Loop<U, F> {
    client: AgentClient,
    spec: WatchSpec,
    tuning: Tuning,
    /// `tuning.wait` as the `wait` parameter.
    wait: String,
    tx: mpsc::Sender<U>,
    wrap: F,
    cursor: Cursor,
    /// The last body delivered as [`Update::Changed`].
    last_body: Option<Bytes>,
    /// Consecutive failures, for the backoff.
    failures: u32,
    bucket: TokenBucket,
    force_rx: Option<watch::Receiver<Option<Instant>>>,
    /// When the blocking call in flight is to be abandoned for a fresh read.
    force_at: Option<Instant>,
    /// Another watcher failing to reach the agent means it may have restarted: an index
    /// held from before would be held for the whole wait by a restarted agent, so any
    /// blocking call is abandoned for a fresh read.
    outages: watch::Receiver<u64>,
}

/// `None` ends the loop: the receiver of the updates is gone.
type Turn = Option<()>;

impl<U, F> Loop<U, F> {
    fn new(
        client: AgentClient,
        spec: WatchSpec,
        tuning: Tuning,
        mut force_rx: Option<watch::Receiver<Option<Instant>>>,
        tx: mpsc::Sender<U>,
        wrap: F,
    ) -> Self {
        let mut outages = client.outages();
        outages.borrow_and_update();
        let force_at = force_rx.as_mut().and_then(|rx| *rx.borrow_and_update());
        Loop {
            wait: crate::duration::format_query(tuning.wait),
            bucket: TokenBucket::new(tuning.burst, tuning.refill),
            client,
            spec,
            tuning,
            tx,
            wrap,
            cursor: Cursor::default(),
            last_body: None,
            failures: 0,
            force_rx,
            force_at,
            outages,
        }
    }

    /// One request and what follows from its answer.
    async fn turn<T>(&mut self) -> Turn
    where
        T: DeserializeOwned,
        F: Fn(Update<T>) -> U,
    {
        tokio::select! {
            () = self.bucket.take() => {}
            () = self.tx.closed() => return None,
        }
        self.take_signals();
        let blocking = self.cursor.is_blocking();
        if !blocking && self.force_at.is_some_and(|at| at <= Instant::now()) {
            // This read is fresh anyway; count it as the forced one.
            self.force_at = Some(Instant::now() + self.tuning.force_retry);
        }
        match self.request(blocking).await? {
            Ok(result) => {
                let update = self.interpret::<T>(result);
                let ok = update.is_ok();
                self.deliver(update).await?;
                if ok && self.spec.blocking == Blocking::Poll {
                    tokio::select! {
                        () = tokio::time::sleep(self.tuning.poll) => {}
                        () = self.tx.closed() => return None,
                    }
                }
                Some(())
            }
            Err(Abandoned::Forced) => {
                tracing::debug!(path = %self.spec.path, "forcing a fresh read");
                self.cursor.reset();
                self.force_at = Some(Instant::now() + self.tuning.force_retry);
                Some(())
            }
            Err(Abandoned::Outage) => {
                tracing::debug!(path = %self.spec.path, "the agent was unreachable meanwhile; reading afresh");
                self.cursor.reset();
                Some(())
            }
        }
    }

    /// Takes what changed since the last turn: a new forced-read deadline (only a new
    /// one replaces ours: after a forced read that brought nothing new, our own later
    /// retry must stand, or a past deadline would force forever) and outages.
    fn take_signals(&mut self) {
        if let Some(rx) = &mut self.force_rx
            && rx.has_changed().unwrap_or(false)
        {
            self.force_at = *rx.borrow_and_update();
        }
        if self.outages.has_changed().unwrap_or(false) {
            self.outages.borrow_and_update();
            self.cursor.reset();
        }
    }

    /// Sends the request and waits for its answer, unless a forced read or an outage
    /// abandons a blocking call first. `None`: the receiver is gone.
    async fn request(
        &mut self,
        blocking: bool,
    ) -> Option<Result<Result<Answer, AgentError>, Abandoned>> {
        let query = query(&self.spec, &self.cursor, &self.wait);
        let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let request = self.client.read(
            &self.spec.path,
            &query,
            self.spec.body.clone(),
            self.tuning.timeout(blocking),
        );
        tokio::pin!(request);
        loop {
            let deadline = self.force_at.filter(|_| blocking);
            tokio::select! {
                result = &mut request => return Some(Ok(result)),
                () = sleep_until_some(deadline) => return Some(Err(Abandoned::Forced)),
                changed = self.outages.changed(), if blocking => {
                    if changed.is_ok() {
                        self.outages.borrow_and_update();
                        return Some(Err(Abandoned::Outage));
                    }
                }
                changed = changed_some(&mut self.force_rx) => {
                    if changed {
                        if let Some(rx) = &mut self.force_rx {
                            self.force_at = *rx.borrow_and_update();
                        }
                    } else {
                        // The owner of the deadline is gone; nothing will force again.
                        self.force_rx = None;
                    }
                }
                () = self.tx.closed() => return None,
            }
        }
    }

    /// What an answer means: unchanged, changed (decoded), or a failure.
    fn interpret<T: DeserializeOwned>(
        &mut self,
        result: Result<Answer, AgentError>,
    ) -> Result<Update<T>, AgentError> {
        let answer = result?;
        if self.last_body.as_ref() == Some(&answer.body) {
            self.cursor.advance(self.spec.blocking, &answer);
            return Ok(Update::Unchanged {
                meta: Meta::from_answer(&answer),
            });
        }
        let value = decode::<T>(&self.spec.path, &answer.body)?;
        self.cursor.advance(self.spec.blocking, &answer);
        let meta = Meta::from_answer(&answer);
        self.last_body = Some(answer.body);
        Ok(Update::Changed { value, meta })
    }

    /// Sends the update; after a failure, starts again from a fresh read (the agent may
    /// have restarted with lower indexes, and an old index would be held for the whole
    /// wait) once the backoff has passed.
    async fn deliver<T>(&mut self, update: Result<Update<T>, AgentError>) -> Turn
    where
        F: Fn(Update<T>) -> U,
    {
        match update {
            Ok(update) => {
                self.failures = 0;
                self.tx.send((self.wrap)(update)).await.ok()
            }
            Err(e) => {
                self.cursor.reset();
                self.failures = self.failures.saturating_add(1);
                let tuning = &self.tuning;
                let delay = backoff(self.failures, tuning.backoff_base, tuning.backoff_cap);
                tracing::debug!(path = %self.spec.path, error = %e, retry_in = ?delay, "watch failed");
                self.tx.send((self.wrap)(Update::Failed(e))).await.ok()?;
                tokio::select! {
                    () = tokio::time::sleep(delay) => Some(()),
                    () = self.tx.closed() => None,
                }
            }
        }
    }
}

/// The query of the next request: the spec's fixed parameters, then the cursor's.
fn query<'a>(spec: &'a WatchSpec, cursor: &Cursor, wait: &str) -> Vec<(&'a str, String)> {
    let mut query: Vec<(&str, String)> = spec
        .query
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    match (&cursor.hash, spec.blocking) {
        (Some(hash), Blocking::Hash) => {
            query.extend([("hash", hash.clone()), ("wait", wait.to_owned())])
        }
        (_, Blocking::Index) if cursor.index > 0 => query.extend([
            ("index", cursor.index.to_string()),
            ("wait", wait.to_owned()),
        ]),
        _ => {}
    }
    query
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
mod tests;
