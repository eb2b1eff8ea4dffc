//! Least request: the requests in flight to each instance of a target, and the choice
//! among a few random instances of the one with the fewest (Envoy's "power of N
//! choices", N = `choice_count`, 2 when unset).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

/// How many random instances are compared when the configuration says nothing.
pub const DEFAULT_CHOICES: u32 = 2;

/// Requests in flight per instance address.
#[derive(Default)]
pub struct InFlight {
    counts: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

/// One request in flight to one instance, until dropped (with its response's body).
pub struct Started(Arc<AtomicUsize>);

impl Drop for Started {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl InFlight {
    /// Counts a request to `addr` until the returned token is dropped.
    pub fn start(&self, addr: &str) -> Started {
        let count = self.counter(addr);
        count.fetch_add(1, Ordering::Relaxed);
        Started(count)
    }

    fn counter(&self, addr: &str) -> Arc<AtomicUsize> {
        let mut counts = self.counts.lock();
        if let Some(count) = counts.get(addr) {
            return count.clone();
        }
        // Instances come and go: forget the idle ones of the past before the map
        // grows much beyond the instances there are.
        if counts.len() >= 64 {
            counts.retain(|_, c| c.load(Ordering::Relaxed) > 0);
        }
        counts.entry(addr.to_owned()).or_default().clone()
    }

    /// Requests in flight to `addr` now.
    pub fn load(&self, addr: &str) -> usize {
        self.counts
            .lock()
            .get(addr)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Among `candidates` (addresses with their index), `choices` drawn at random (with
    /// replacement, as Envoy draws them), the one with the fewest requests in flight;
    /// the first drawn on a tie.
    pub fn choose(
        &self,
        candidates: &[(usize, &str)],
        choices: u32,
        mut random: impl FnMut(usize) -> usize,
    ) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let choices = if choices == 0 {
            DEFAULT_CHOICES
        } else {
            choices
        };
        let mut best: Option<(usize, usize)> = None;
        for _ in 0..choices {
            let (index, addr) = candidates[random(candidates.len())];
            let load = self.load(addr);
            if best.is_none_or(|(_, least)| load < least) {
                best = Some((index, load));
            }
        }
        best.map(|(index, _)| index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_count_until_their_token_drops() {
        let inflight = InFlight::default();
        let a = inflight.start("a");
        let b = inflight.start("a");
        assert_eq!(inflight.load("a"), 2);
        drop(a);
        assert_eq!(inflight.load("a"), 1);
        drop(b);
        assert_eq!(inflight.load("a"), 0);
        assert_eq!(inflight.load("never"), 0);
    }

    #[test]
    fn of_the_instances_drawn_the_least_loaded_wins() {
        let inflight = InFlight::default();
        let _busy: Vec<Started> = (0..3).map(|_| inflight.start("busy")).collect();
        let _one = inflight.start("one");
        let candidates = [(0, "busy"), (1, "one"), (2, "idle")];
        // Draws are scripted: busy then idle, busy then one, busy then busy.
        let pick = |draws: [usize; 2]| {
            let mut draws = draws.into_iter();
            inflight.choose(&candidates, 2, |_| draws.next().unwrap())
        };
        assert_eq!(pick([0, 2]), Some(2));
        assert_eq!(pick([0, 1]), Some(1));
        assert_eq!(pick([0, 0]), Some(0));
        assert_eq!(inflight.choose(&[], 2, |_| 0), None);
    }

    #[test]
    fn with_random_draws_the_idle_instance_takes_most_requests() {
        let inflight = InFlight::default();
        let _busy: Vec<Started> = (0..5).map(|_| inflight.start("busy")).collect();
        let candidates = [(0, "busy"), (1, "idle")];
        let idle = (0..1000)
            .filter(|_| inflight.choose(&candidates, 0, |n| fastrand::usize(..n)) == Some(1))
            .count();
        // P(both draws are "busy") = 1/4: about 750 of 1000 go to the idle one.
        assert!((650..=850).contains(&idle), "{idle}");
    }
}
