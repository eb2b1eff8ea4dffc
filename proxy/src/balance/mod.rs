//! Which instance of a target a connection or request goes to first, and in what
//! order the others are tried when a dial fails.
//!
//! Each target of an upstream has its own state (`Balancers`). The cluster's policy
//! picks the first instance: round robin, random, least request (`least`), or ring hash
//! and Maglev over the request's hash (`hash`; a random instance when the request has
//! none). The others follow in rotation after it. See Envoy's load balancers,
//! <https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/load_balancing/load_balancers>.
//!
//! A dead instance (a host gone, SYNs black-holed) costs a whole connect timeout each
//! time it is tried. After a failed dial it is ejected for a second, doubling with
//! each failure in a row up to 30 s; while ejected it is tried only after every other
//! instance, so traffic does not pay for it while a healthy one is there, and it is
//! back in turn once its ejection has run out. A successful dial clears it. A retried
//! request tries the instances it has not been to before those it has.

pub mod hash;
pub mod least;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ferrule_control::model::Endpoint;
use ferrule_control::routing::{LbPolicy, LoadBalancer, Routing};
use parking_lot::Mutex;

use self::hash::{Maglev, Ring};
use self::least::{InFlight, Started};

const FIRST_EJECTION: Duration = Duration::from_secs(1);
const LONGEST_EJECTION: Duration = Duration::from_secs(30);

struct Ejection {
    until: Instant,
    failures: u32,
}

/// The round-robin turn and the ejections of one target's instances.
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
        let out = self.ejected(endpoints);
        let rotation = (0..len).map(|i| (first + i) % len);
        let mut order: Vec<usize> = rotation.clone().filter(|i| !out[*i]).collect();
        order.extend(rotation.filter(|i| out[*i]));
        Order::Listed(order.into_iter())
    }

    /// Whether each of `endpoints` is in ejection now.
    fn ejected(&self, endpoints: &[Endpoint]) -> Vec<bool> {
        if !self.any_ejected.load(Ordering::Relaxed) {
            return vec![false; endpoints.len()];
        }
        let now = Instant::now();
        let ejected = self.ejected.lock();
        endpoints
            .iter()
            .map(|e| ejected.get(&e.addr).is_some_and(|e| e.until > now))
            .collect()
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

/// What a pick goes by: the cluster's policy, the request's hash (ring hash and Maglev
/// only), and the instances a retried request has been to already.
pub struct Pick<'a> {
    pub lb: &'a LoadBalancer,
    pub hash: Option<u64>,
    pub tried: &'a [String],
}

impl<'a> Pick<'a> {
    /// A pick with nothing but the policy to go by: a new connection or request.
    pub fn new(lb: &'a LoadBalancer) -> Pick<'a> {
        Pick {
            lb,
            hash: None,
            tried: &[],
        }
    }
}

/// The balancing state of one target: ejections and the round-robin turn, requests in
/// flight per instance, and the hash table of its current instances.
#[derive(Default)]
pub struct TargetBalancer {
    pub ejections: Balancer,
    in_flight: InFlight,
    table: Mutex<Option<Arc<Table>>>,
}

impl TargetBalancer {
    /// The indexes into `endpoints` to try, each once: the policy's choice first, then
    /// the others in rotation after it; instances a retry has been to come after the
    /// others, ejected ones last.
    pub fn order(&self, endpoints: &[Endpoint], pick: &Pick<'_>) -> Order {
        let n = endpoints.len();
        if pick.lb.policy == LbPolicy::RoundRobin && pick.tried.is_empty() {
            return self.ejections.order(endpoints);
        }
        let ejected = self.ejections.ejected(endpoints);
        let class = |i: usize| -> u8 {
            if ejected[i] {
                2
            } else if pick.tried.contains(&endpoints[i].addr) {
                1
            } else {
                0
            }
        };
        let best = (0..n).map(class).min().unwrap_or(0);
        let candidates: Vec<usize> = (0..n).filter(|i| class(*i) == best).collect();
        let Some(first) = self.first(endpoints, &candidates, pick) else {
            return Order::Listed(Vec::new().into_iter());
        };
        let mut order: Vec<usize> = (0..n).map(|i| (first + i) % n).collect();
        // Stable: the first stays first, being of the best class.
        order.sort_by_key(|i| class(*i));
        Order::Listed(order.into_iter())
    }

    /// The policy's choice among `candidates` (indexes into `endpoints`, ascending).
    fn first(
        &self,
        endpoints: &[Endpoint],
        candidates: &[usize],
        pick: &Pick<'_>,
    ) -> Option<usize> {
        let random = || {
            candidates
                .get(fastrand::usize(..candidates.len().max(1)))
                .copied()
        };
        match &pick.lb.policy {
            LbPolicy::RoundRobin => {
                let turn = self.ejections.next.fetch_add(1, Ordering::Relaxed);
                candidates.get(turn % candidates.len().max(1)).copied()
            }
            LbPolicy::Random => random(),
            LbPolicy::LeastRequest { choice_count } => {
                let addrs: Vec<(usize, &str)> = candidates
                    .iter()
                    .map(|i| (*i, endpoints[*i].addr.as_str()))
                    .collect();
                let draw = |n: usize| fastrand::usize(..n);
                self.in_flight.choose(&addrs, *choice_count, draw)
            }
            LbPolicy::RingHash { .. } | LbPolicy::Maglev => {
                let Some(hash) = pick.hash else {
                    return random();
                };
                let chosen = self.table(endpoints, &pick.lb.policy).pick(hash)?;
                // Not a candidate (ejected, or tried already): the next one after it.
                let at = candidates.partition_point(|c| *c < chosen);
                candidates.get(at).or_else(|| candidates.first()).copied()
            }
        }
    }

    /// Counts a request to `addr` in flight (least request) until the token drops.
    pub fn start(&self, addr: &str) -> Started {
        self.in_flight.start(addr)
    }

    /// The ring or Maglev table of `endpoints`, built once per set of instances.
    fn table(&self, endpoints: &[Endpoint], policy: &LbPolicy) -> Arc<Table> {
        if let Some(table) = self.table.lock().as_ref()
            && table.fits(endpoints, policy)
        {
            return table.clone();
        }
        // Built outside the lock: a Maglev table takes a millisecond or so.
        let table = Arc::new(Table::new(endpoints, policy));
        *self.table.lock() = Some(table.clone());
        table
    }
}

/// A hash table and what it was built from.
struct Table {
    policy: LbPolicy,
    addrs: Vec<String>,
    kind: TableKind,
}

enum TableKind {
    Ring(Ring),
    Maglev(Maglev),
}

impl Table {
    fn new(endpoints: &[Endpoint], policy: &LbPolicy) -> Table {
        let addrs: Vec<String> = endpoints.iter().map(|e| e.addr.clone()).collect();
        let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        let kind = match policy {
            LbPolicy::RingHash {
                minimum_ring_size,
                maximum_ring_size,
            } => TableKind::Ring(Ring::new(&refs, *minimum_ring_size, *maximum_ring_size)),
            _ => TableKind::Maglev(Maglev::new(&refs)),
        };
        Table {
            policy: policy.clone(),
            addrs,
            kind,
        }
    }

    fn fits(&self, endpoints: &[Endpoint], policy: &LbPolicy) -> bool {
        self.policy == *policy
            && self.addrs.len() == endpoints.len()
            && self.addrs.iter().zip(endpoints).all(|(a, e)| *a == e.addr)
    }

    fn pick(&self, hash: u64) -> Option<usize> {
        match &self.kind {
            TableKind::Ring(ring) => ring.pick(hash),
            TableKind::Maglev(maglev) => maglev.pick(hash),
        }
    }
}

/// The balancing state of every target of one upstream, by target ID.
#[derive(Default)]
pub struct Balancers {
    targets: Mutex<HashMap<String, Arc<TargetBalancer>>>,
}

impl Balancers {
    /// The state of target `id` of `routing`. A new target's arrival also forgets the
    /// targets `routing` no longer has, so the map stays as large as the routing.
    pub fn target(&self, routing: &Routing, id: &str) -> Arc<TargetBalancer> {
        let mut targets = self.targets.lock();
        if let Some(target) = targets.get(id) {
            return target.clone();
        }
        targets.retain(|known, _| routing.targets().any(|t| t.id == *known));
        targets.entry(id.to_owned()).or_default().clone()
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
    use std::collections::HashSet;

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
        let lb = LoadBalancer {
            policy: LbPolicy::Random,
            hash_policies: Vec::new(),
        };
        assert_eq!(
            TargetBalancer::default()
                .order(&[], &Pick::new(&lb))
                .count(),
            0
        );
    }

    fn lb(policy: LbPolicy) -> LoadBalancer {
        LoadBalancer {
            policy,
            hash_policies: Vec::new(),
        }
    }

    /// The first index of each of `n` orders, and that each order has every index once.
    fn firsts(b: &TargetBalancer, eps: &[Endpoint], pick: &Pick<'_>, n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| {
                let mut order: Vec<usize> = b.order(eps, pick).collect();
                let first = order[0];
                order.sort_unstable();
                assert_eq!(order, (0..eps.len()).collect::<Vec<_>>());
                first
            })
            .collect()
    }

    #[test]
    fn a_hash_picks_one_instance_until_it_is_ejected_or_tried() {
        let eps = endpoints(4);
        let b = TargetBalancer::default();
        for policy in [
            LbPolicy::Maglev,
            LbPolicy::RingHash {
                minimum_ring_size: 0,
                maximum_ring_size: 0,
            },
        ] {
            let lb = lb(policy);
            let pick = Pick {
                lb: &lb,
                hash: Some(0xfeed),
                tried: &[],
            };
            let chosen = firsts(&b, &eps, &pick, 20);
            assert!(chosen.iter().all(|c| *c == chosen[0]), "{chosen:?}");
            let tried = [eps[chosen[0]].addr.clone()];
            let retry = Pick {
                tried: &tried,
                ..pick
            };
            let order: Vec<usize> = b.order(&eps, &retry).collect();
            assert_ne!(order[0], chosen[0], "a retry goes elsewhere");
            assert_eq!(order[3], chosen[0], "and comes back to it last");
            b.ejections.failed(&eps[chosen[0]].addr);
            assert_ne!(b.order(&eps, &pick).next(), Some(chosen[0]));
            b.ejections.succeeded(&eps[chosen[0]].addr);
            // Without a hash: a random instance.
            let random = Pick { hash: None, ..pick };
            let spread: HashSet<usize> = firsts(&b, &eps, &random, 200).into_iter().collect();
            assert_eq!(spread.len(), 4);
        }
    }

    #[test]
    fn random_reaches_every_instance_and_least_request_avoids_the_busy_one() {
        let eps = endpoints(3);
        let b = TargetBalancer::default();
        let random = lb(LbPolicy::Random);
        let spread: HashSet<usize> = firsts(&b, &eps, &Pick::new(&random), 200)
            .into_iter()
            .collect();
        assert_eq!(spread.len(), 3);
        let least = lb(LbPolicy::LeastRequest { choice_count: 0 });
        let busy: Vec<Started> = (0..10).map(|_| b.start(&eps[0].addr)).collect();
        let picks = firsts(&b, &eps, &Pick::new(&least), 900);
        // Two draws: the busy one wins only when both land on it (1 in 9).
        let on_busy = picks.iter().filter(|p| **p == 0).count();
        assert!(on_busy < 200, "{on_busy} of 900");
        drop(busy);
        let all = lb(LbPolicy::LeastRequest { choice_count: 3 });
        let on_first = firsts(&b, &eps, &Pick::new(&all), 300)
            .iter()
            .filter(|p| **p == 0)
            .count();
        assert!(on_first > 30, "idle again: {on_first} of 300");
    }

    #[test]
    fn round_robin_retries_skip_the_instances_tried() {
        let eps = endpoints(3);
        let b = TargetBalancer::default();
        let rr = lb(LbPolicy::RoundRobin);
        let tried = [eps[0].addr.clone(), eps[1].addr.clone()];
        let pick = Pick {
            lb: &rr,
            hash: None,
            tried: &tried,
        };
        for _ in 0..5 {
            assert_eq!(b.order(&eps, &pick).next(), Some(2));
        }
    }

    #[test]
    fn targets_are_kept_per_id_and_forgotten_with_the_routing() {
        use ferrule_control::identity::ServiceId;
        use ferrule_control::routing::Target;
        use std::time::Duration;
        let id = ServiceId::new("td.consul", "default", "dc1", "api");
        let routing = |subsets: &[&str]| {
            let targets = subsets
                .iter()
                .map(|s| Target::new(id.clone(), Some(s), Vec::new()))
                .collect();
            let mut r = Routing::direct(
                Target::new(id.clone(), None, Vec::new()),
                Duration::from_secs(1),
            );
            r.clusters[0].targets = targets;
            r
        };
        let balancers = Balancers::default();
        let both = routing(&["v1", "v2"]);
        let v1 = balancers.target(&both, &both.clusters[0].targets[0].id);
        assert!(Arc::ptr_eq(
            &v1,
            &balancers.target(&both, &both.clusters[0].targets[0].id)
        ));
        balancers.target(&both, &both.clusters[0].targets[1].id);
        let only_v3 = routing(&["v3"]);
        balancers.target(&only_v3, &only_v3.clusters[0].targets[0].id);
        assert_eq!(balancers.targets.lock().len(), 1);
    }
}
