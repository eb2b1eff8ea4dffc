//! Blocking queries (spec §2): the `index`/`wait`/`hash` parameters, the wait Consul would
//! apply (default 5 min, at most 10 min, plus up to 1/16 of random jitter), and the two
//! waiting loops, one on a resource's index and one on a content hash.
//!
//! Every write to the dev agent's state bumps one raft-like index and publishes it on a
//! `watch` channel. A blocked reader re-reads its resource after each publication and
//! answers as soon as that resource's own index passes the one the client holds (or its
//! hash differs); otherwise it answers with the unchanged resource when the wait ends.
//! Re-reading on every write is cheap at dev-agent scale and never misses a change: the
//! reader marks the channel seen *before* it reads.

use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use super::http::{ApiError, Query};
use super::state::{Shared, State};

/// Consul's `default_query_time`.
pub(super) const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Consul's `max_query_time`; longer waits are clamped to it.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(600);
/// Consul adds up to `wait / 16` of random jitter (`structs.JitterFraction`).
const JITTER_FRACTION: u32 = 16;
/// The leaf endpoint's own default (`leafcert.DefaultQueryTimeout`, spec §2.4).
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
            Some(text) => {
                let nanos = parse_go_duration(text)
                    .ok_or_else(|| ApiError::bad_request("Invalid wait time"))?;
                u64::try_from(nanos)
                    .ok()
                    .filter(|n| *n > 0)
                    .map(Duration::from_nanos)
            }
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

/// Reads a resource, holding the request while its content hash equals `opts.hash`
/// (spec §2.2). Without a `hash` parameter it answers at once.
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

/// Go's `time.ParseDuration`, in nanoseconds: `300ms`, `1.5h`, `2h45m`, `-10s`, `0`.
pub(super) fn parse_go_duration(text: &str) -> Option<i128> {
    let (negative, mut rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number = &rest[..digits];
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && fraction.is_empty())
            || !digits_only(whole)
            || !digits_only(fraction)
        {
            return None;
        }
        let whole: i128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let mut part = whole.checked_mul(scale)?;
        let mut unit_scale = scale;
        for digit in fraction.bytes() {
            unit_scale /= 10;
            part = part.checked_add(i128::from(digit.saturating_sub(b'0')) * unit_scale)?;
        }
        total = total.checked_add(part)?;
    }
    // Go refuses durations beyond ~292 years.
    if total > i128::from(i64::MAX) {
        return None;
    }
    Some(if negative { -total } else { total })
}

/// Go's `time.Duration.String()`: `0s`, `500ms`, `1.5s`, `1m30s`, `72h0m0s`.
pub(super) fn format_go_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000_000_000 {
        let (scale, unit) = if nanos < 1_000 {
            (1, "ns")
        } else if nanos < 1_000_000 {
            (1_000, "µs")
        } else {
            (1_000_000, "ms")
        };
        return format!("{}{unit}", fraction(nanos, scale));
    }
    let hours = nanos / 3_600_000_000_000;
    let minutes = (nanos / 60_000_000_000) % 60;
    let seconds = fraction(nanos % 60_000_000_000, 1_000_000_000);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// `value / scale` as a decimal without trailing zeros.
fn fraction(value: u128, scale: u128) -> String {
    let whole = value / scale;
    let rest = value % scale;
    if rest == 0 {
        return whole.to_string();
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{rest:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_like_go() {
        let s = 1_000_000_000i128;
        assert_eq!(parse_go_duration("10s"), Some(10 * s));
        assert_eq!(parse_go_duration("5m"), Some(300 * s));
        assert_eq!(parse_go_duration("300000ms"), Some(300 * s));
        assert_eq!(parse_go_duration("1h2m3s"), Some(3723 * s));
        assert_eq!(parse_go_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_go_duration(".5s"), Some(500_000_000));
        assert_eq!(parse_go_duration("2µs"), Some(2_000));
        assert_eq!(parse_go_duration("-10s"), Some(-10 * s));
        assert_eq!(parse_go_duration("0"), Some(0));
        for bad in ["", "10", "s", "10x", "1.2.3s", "ten seconds", "-", "."] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn go_durations_format_like_go() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(72 * 3600), "72h0m0s"),
        ];
        for (duration, text) in cases {
            assert_eq!(format_go_duration(duration), text);
            assert_eq!(
                parse_go_duration(text),
                Some(duration.as_nanos() as i128),
                "{text} round-trips"
            );
        }
    }

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
