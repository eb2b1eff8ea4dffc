//! Warnings that can repeat once per connection (an accept failing at the descriptor
//! limit, a dial to a black-holed upstream under load), rate-limited per kind: at most
//! one line per kind every [`EVERY`], and the next line says how many similar ones were
//! held back (dial failures use 10 s). Everything held back is still logged at debug
//! and counted by the
//! metrics; the limit only keeps the warning level readable. Time is tokio's clock, so
//! tests can pause it.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// At most one warning per kind per this long, unless a family says otherwise.
pub const EVERY: Duration = Duration::from_secs(5);

/// One limiter per family of warnings; its keys are the kinds (an upstream, a
/// listener).
pub struct Limiter {
    every: Duration,
    /// Per kind: when the last line was written, and how many were held back since.
    last: Mutex<Option<HashMap<String, (Instant, u64)>>>,
}

impl Limiter {
    pub const fn new(every: Duration) -> Limiter {
        Limiter {
            every,
            last: Mutex::new(None),
        }
    }

    /// Whether to write a line for `kind` now, and if so how many similar ones were
    /// held back since the last one.
    pub fn admit(&self, kind: &str) -> Option<u64> {
        self.admit_at(kind, Instant::now())
    }

    fn admit_at(&self, kind: &str, now: Instant) -> Option<u64> {
        let mut last = self.last.lock();
        let map = last.get_or_insert_with(HashMap::new);
        match map.get_mut(kind) {
            Some((at, held)) if now.saturating_duration_since(*at) < self.every => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let suppressed = *held;
                (*at, *held) = (now, 0);
                Some(suppressed)
            }
            None => {
                // Bounded by the listeners and upstreams configured; a removed one's
                // entry is tiny.
                map.insert(kind.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

/// What a line adds about the ones held back before it: nothing, or
/// ` (N similar suppressed)`.
pub fn suppressed(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} similar suppressed)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_per_kind_per_period_then_the_count_of_what_was_held_back() {
        let limiter = Limiter::new(EVERY);
        assert_eq!(limiter.admit("inbound"), Some(0));
        for _ in 0..1000 {
            assert_eq!(limiter.admit("inbound"), None);
        }
        // Another kind has its own budget.
        assert_eq!(limiter.admit("upstream api"), Some(0));
        tokio::time::advance(Duration::from_millis(4999)).await;
        assert_eq!(limiter.admit("inbound"), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(limiter.admit("inbound"), Some(1001));
        assert_eq!(suppressed(1001), " (1001 similar suppressed)");
        assert_eq!(limiter.admit("inbound"), None);
        tokio::time::advance(EVERY).await;
        assert_eq!(limiter.admit("inbound"), Some(1));
        assert_eq!(limiter.admit("upstream api"), Some(0));
        assert_eq!(suppressed(0), "");
    }
}
