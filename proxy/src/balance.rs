//! Which endpoint of an upstream to dial: round robin, with endpoints that failed to
//! dial lately put last.
//!
//! A dead endpoint (a host gone, SYNs black-holed) costs a whole connect timeout each
//! time it is tried. After a failed dial it is ejected for a second, doubling with
//! each failure in a row up to 30 s; while ejected it is tried only after every other
//! endpoint, so traffic does not pay for it while a healthy endpoint is there, and it
//! is back in turn once its ejection has run out. A successful dial clears it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ferrule_control::model::Endpoint;
use parking_lot::Mutex;

const FIRST_EJECTION: Duration = Duration::from_secs(1);
const LONGEST_EJECTION: Duration = Duration::from_secs(30);

struct Ejection {
    until: Instant,
    failures: u32,
}

/// The balancing state of one upstream listener.
#[derive(Default)]
pub struct Balancer {
    next: AtomicUsize,
    /// Whether `ejected` has entries: the common case (none) takes no lock.
    any_ejected: AtomicBool,
    ejected: Mutex<HashMap<String, Ejection>>,
}

impl Balancer {
    /// The indexes into `endpoints` to try for one connection or request, each once:
    /// the next in round robin first, endpoints in ejection last.
    pub fn order(&self, endpoints: &[Endpoint]) -> Order {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let len = endpoints.len();
        if !self.any_ejected.load(Ordering::Relaxed) {
            return Order::Rotation { first, len, i: 0 };
        }
        let now = Instant::now();
        let ejected = self.ejected.lock();
        let is_out = |i: usize| {
            ejected
                .get(&endpoints[i].addr)
                .is_some_and(|e| e.until > now)
        };
        let rotation = (0..len).map(|i| (first + i) % len);
        let mut order: Vec<usize> = rotation.clone().filter(|i| !is_out(*i)).collect();
        order.extend(rotation.filter(|i| is_out(*i)));
        Order::Listed(order.into_iter())
    }

    /// A dial to `addr` failed: eject it for longer each time in a row.
    pub fn failed(&self, addr: &str) {
        let mut ejected = self.ejected.lock();
        let entry = ejected.entry(addr.to_owned()).or_insert(Ejection {
            until: Instant::now(),
            failures: 0,
        });
        entry.failures = entry.failures.saturating_add(1);
        let doublings = entry.failures.saturating_sub(1).min(5);
        let ejection = (FIRST_EJECTION * 2u32.pow(doublings)).min(LONGEST_EJECTION);
        entry.until = Instant::now() + ejection;
        self.any_ejected.store(true, Ordering::Relaxed);
    }

    /// A dial to `addr` worked: it is healthy again.
    pub fn succeeded(&self, addr: &str) {
        if !self.any_ejected.load(Ordering::Relaxed) {
            return;
        }
        let mut ejected = self.ejected.lock();
        ejected.remove(addr);
        self.any_ejected
            .store(!ejected.is_empty(), Ordering::Relaxed);
    }
}

/// Endpoint indexes in the order to try them.
pub enum Order {
    Rotation { first: usize, len: usize, i: usize },
    Listed(std::vec::IntoIter<usize>),
}

impl Iterator for Order {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Order::Rotation { first, len, i } => {
                if *i >= *len {
                    return None;
                }
                let index = (*first + *i) % *len;
                *i += 1;
                Some(index)
            }
            Order::Listed(indexes) => indexes.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrule_control::identity::ServiceId;

    fn endpoints(n: usize) -> Vec<Endpoint> {
        (0..n)
            .map(|i| Endpoint {
                addr: format!("10.0.0.{i}:21000"),
                identity: ServiceId::new("td.consul", "default", "dc1", "api"),
            })
            .collect()
    }

    #[test]
    fn round_robin_tries_each_endpoint_once_starting_one_further_each_time() {
        let b = Balancer::default();
        let eps = endpoints(3);
        let orders: Vec<Vec<usize>> = (0..4).map(|_| b.order(&eps).collect()).collect();
        assert_eq!(orders, [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]);
    }

    #[test]
    fn a_failed_endpoint_goes_last_until_it_succeeds() {
        let b = Balancer::default();
        let eps = endpoints(3);
        b.failed(&eps[0].addr);
        for _ in 0..6 {
            let order: Vec<usize> = b.order(&eps).collect();
            assert_eq!(order.len(), 3);
            assert_eq!(order[2], 0, "{order:?}");
        }
        b.succeeded(&eps[0].addr);
        let starts: Vec<usize> = (0..3).map(|_| b.order(&eps).next().unwrap()).collect();
        assert!(starts.contains(&0), "{starts:?}");
    }

    #[test]
    fn ejections_grow_with_failures_in_a_row_up_to_the_longest() {
        let b = Balancer::default();
        for _ in 0..10 {
            b.failed("a");
        }
        let left = b.ejected.lock()["a"].until - Instant::now();
        assert!(
            left > Duration::from_secs(29) && left <= LONGEST_EJECTION,
            "{left:?}"
        );
    }

    #[test]
    fn no_endpoints_no_order() {
        assert_eq!(Balancer::default().order(&[]).count(), 0);
    }
}
