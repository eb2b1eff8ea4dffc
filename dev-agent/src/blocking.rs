//! Blocking queries (`docs/consul-semantics.md#blocking-queries`): the `index`/`wait`/`hash`
//! parameters, the wait Consul would apply (default 5 min, at most 10 min, plus up to 1/16
//! of random jitter), and the two waiting loops, one on a resource's index and one on a
//! content hash. `wait` is read with `ferrule_control::duration`, Go's syntax.
//!
//! Every write to the dev agent's state bumps one raft-like index and publishes it on a
//! `watch` channel. A blocked reader re-reads its resource after each publication and
//! answers as soon as that resource's own index passes the one the client holds (or its
//! hash differs); otherwise it answers with the unchanged resource when the wait ends.
//! Re-reading on every write is cheap at dev-agent scale and never misses a change: the
//! reader marks the channel seen *before* it reads.

use std::time::Duration;

use ferrule_control::duration;
use tokio::time::{Instant, sleep_until};

use super::http::{ApiError, Query};
use super::state::{Shared, State};

/// Consul's `default_query_time`.
pub(super) const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Consul's `max_query_time`; longer waits are clamped to it.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(600);
/// Consul adds up to `wait / 16` of random jitter (`structs.JitterFraction`).
const JITTER_FRACTION: u32 = 16;
/// The leaf endpoint's own default (`leafcert.DefaultQueryTimeout` in Consul): it holds
/// a blocked leaf read for ten minutes, twice the other endpoints' default.
pub(super) const LEAF_DEFAULT_WAIT: Duration = Duration::from_secs(600);

/// The blocking parameters of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Blocking {
    /// `0` when absent: the request answers at once.
    pub(super) index: u64,
    /// `None` when absent or not positive; the endpoint's default then applies.
    pub(super) wait: Option<Duration>,
    /// Only `/v1/agent/service/:id` reads it.
    pub(super) hash: Option<String>,
}

impl Blocking {
    /// Reads `wait`, `index` and `hash` with Consul's error texts (`agent/http.go`
    /// `parseWait`).
    pub(super) fn parse(query: &Query) -> Result<Blocking, ApiError> {
        let wait = match query.get("wait").filter(|w| !w.is_empty()) {
            None => None,
            Some(text) => duration::parse(text)
                .map(duration::positive)
                .map_err(|_| ApiError::bad_request("Invalid wait time"))?,
        };
        let index = match query.get("index").filter(|i| !i.is_empty()) {
            None => 0,
            Some(text) => text
                .parse::<u64>()
                .map_err(|_| ApiError::bad_request("Invalid index"))?,
        };
        let hash = query
            .get("hash")
            .filter(|h| !h.is_empty())
            .map(str::to_owned);
        Ok(Blocking { index, wait, hash })
    }

    /// How long this request may be held: the asked wait (or `default`), clamped to
    /// the maximum, plus random jitter of up to a sixteenth.
    pub(super) fn timeout(&self, default: Duration) -> Duration {
        let wait = self.wait.unwrap_or(default).min(MAX_WAIT);
        wait + jitter(wait)
    }
}

/// A random extra of at most `wait / 16`, as Consul's servers add so that many clients
/// blocked with the same wait do not all come back at once.
pub(super) fn jitter(wait: Duration) -> Duration {
    let max = u64::try_from((wait / JITTER_FRACTION).as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=max))
}

/// `now + after`, saturating far in the future instead of overflowing: TTLs come from
/// clients.
pub(super) fn instant_after(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// What a blocking read produced: the answer and the index the client should send next.
pub(super) struct Indexed<T> {
    pub(super) value: T,
    pub(super) index: u64,
    /// Whether the answer waited for a change (for `X-Cache`).
    pub(super) waited: bool,
}

/// Reads a resource, holding the request while its index is not above `opts.index`.
/// `read` may change state (the leaf endpoint issues certificates); it runs under the
/// state lock, so it must not block.
pub(super) async fn by_index<T>(
    shared: &Shared,
    opts: &Blocking,
    default_wait: Duration,
    mut read: impl FnMut(&mut State, bool) -> Result<(T, u64), ApiError>,
) -> Result<Indexed<T>, ApiError> {
    let mut changes = shared.subscribe();
    let deadline = Instant::now() + opts.timeout(default_wait);
    let blocking = opts.index > 0;
    let mut waited = false;
    loop {
        changes.borrow_and_update();
        let (value, index) = shared.with(|state| read(state, blocking))?;
        if !blocking || index > opts.index {
            return Ok(Indexed {
                value,
                index,
                waited,
            });
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return Ok(Indexed { value, index, waited });
                }
                waited = true;
            }
            () = sleep_until(deadline) => return Ok(Indexed { value, index, waited }),
            () = shared.shutdown.cancelled() => return Ok(Indexed { value, index, waited }),
        }
    }
}

/// Like [`by_index`] for a resource derived from part of a table (a compiled discovery
/// chain): it answers with the table's index, but once blocked it answers only when
/// `read`'s third value (what the resource was derived from) changes, or at the end of
/// the wait. So a write to an unrelated entry moves the index without waking it, as in
/// Consul, where the watch covers only the entries that were read.
pub(super) async fn by_index_of_parts<T, K: PartialEq>(
    shared: &Shared,
    opts: &Blocking,
    default_wait: Duration,
    mut read: impl FnMut(&mut State) -> Result<(T, u64, K), ApiError>,
) -> Result<Indexed<T>, ApiError> {
    let mut changes = shared.subscribe();
    let deadline = Instant::now() + opts.timeout(default_wait);
    changes.borrow_and_update();
    let (mut value, mut index, parts) = shared.with(&mut read)?;
    if opts.index == 0 || index > opts.index {
        return Ok(Indexed {
            value,
            index,
            waited: false,
        });
    }
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            () = sleep_until(deadline) => break,
            () = shared.shutdown.cancelled() => break,
        }
        changes.borrow_and_update();
        let (now, now_index, now_parts) = shared.with(&mut read)?;
        (value, index) = (now, now_index);
        if now_parts != parts {
            break;
        }
    }
    Ok(Indexed {
        value,
        index,
        waited: true,
    })
}

/// Reads a resource, holding the request while its content hash equals `opts.hash`
/// (the agent-local reads' hash blocking, `docs/consul-semantics.md#blocking-queries`).
/// Without a `hash` parameter it answers at once.
pub(super) async fn by_hash<T>(
    shared: &Shared,
    opts: &Blocking,
    mut read: impl FnMut(&mut State) -> Result<(T, String), ApiError>,
) -> Result<(T, String), ApiError> {
    let mut changes = shared.subscribe();
    let deadline = Instant::now() + opts.timeout(DEFAULT_WAIT);
    loop {
        changes.borrow_and_update();
        let (value, hash) = shared.with(&mut read)?;
        match &opts.hash {
            Some(held) if *held == hash => {}
            _ => return Ok((value, hash)),
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return Ok((value, hash));
                }
            }
            () = sleep_until(deadline) => return Ok((value, hash)),
            () = shared.shutdown.cancelled() => return Ok((value, hash)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_is_clamped_and_jitter_bounded() {
        let opts = |wait: Option<u64>| Blocking {
            index: 5,
            wait: wait.map(Duration::from_secs),
            hash: None,
        };
        for _ in 0..200 {
            let t = opts(None).timeout(DEFAULT_WAIT);
            assert!(t >= DEFAULT_WAIT && t <= DEFAULT_WAIT + DEFAULT_WAIT / 16);
            let t = opts(Some(3600)).timeout(DEFAULT_WAIT);
            assert!(t >= MAX_WAIT && t <= MAX_WAIT + MAX_WAIT / 16, "{t:?}");
            let t = opts(Some(16)).timeout(DEFAULT_WAIT);
            assert!(t >= Duration::from_secs(16) && t <= Duration::from_secs(17));
        }
    }
}
