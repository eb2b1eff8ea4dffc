//! Precedence and evaluation order: which intention governs when several match. The one
//! implementation, used by the model (`Intentions` sorts its rules with it) and by the dev
//! agent (the `Precedence` it stores on a write, the order of its intentions answers).
//! See `docs/consul-semantics.md#intentions` and
//! https://developer.hashicorp.com/consul/docs/connect/intentions#precedence-and-match-order.

use std::cmp::Reverse;
use std::collections::HashMap;

use super::{
    Action, Destination, Intention, Intentions, NamePattern, Rule, Source, Target, WILDCARD,
};
use crate::api::intentions as wire;

/// Consul's precedence, 1..=9, from the wildcard shape alone: the destination's exact
/// parts set the band (9, 6, 3), the source's missing exact parts lower it. Partitions,
/// peers and sameness groups do not count. Names are as on the wire, `*` meaning any;
/// an empty namespace is `default`, an exact one.
pub fn precedence_of(dest_ns: &str, dest_name: &str, src_ns: &str, src_name: &str) -> u32 {
    fn exact_parts(namespace: &str, name: &str) -> u32 {
        match (namespace, name) {
            (WILDCARD, _) => 0,
            (_, WILDCARD) => 1,
            _ => 2,
        }
    }
    let band = match exact_parts(dest_ns, dest_name) {
        2 => 9,
        1 => 6,
        _ => 3,
    };
    band - (2 - exact_parts(src_ns, src_name))
}

/// The model's precedence of a rule: [`precedence_of`] over its patterns.
pub(super) fn precedence(source: &Source, target: &Target) -> u32 {
    precedence_of(
        target.namespace.as_str(),
        target.name.as_str(),
        source.namespace.as_str(),
        source.name.as_str(),
    )
}

/// Where an intention sorts in evaluation order: precedence descending, then Consul's
/// lexicographic tie-break over the names (the source's sameness group, peer, partition,
/// namespace and name, then the destination's partition, namespace and name), then deny
/// before L7 before allow. A total order over valid (unique) intentions, so the order
/// the input came in never shows through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct OrderKey<'a> {
    precedence: Reverse<u32>,
    names: [&'a str; 8],
    rank: u8,
}

impl<'a> OrderKey<'a> {
    /// An intention of the intentions API (what the dev agent answers with). Its
    /// `Precedence` is recomputed from its names, not read.
    pub fn of_wire(ixn: &'a wire::Intention) -> Self {
        let action = ixn.action.parse::<Action>().ok();
        OrderKey {
            precedence: Reverse(precedence_of(
                &ixn.destination_ns,
                &ixn.destination_name,
                &ixn.source_ns,
                &ixn.source_name,
            )),
            names: [
                &ixn.source_sameness_group,
                &ixn.source_peer,
                &ixn.source_partition,
                &ixn.source_ns,
                &ixn.source_name,
                &ixn.destination_partition,
                &ixn.destination_ns,
                &ixn.destination_name,
            ],
            rank: rank(action.filter(|_| ixn.permissions.is_empty())),
        }
    }
}

/// `None`: an L7 rule, which sorts between the denies and the allows of its name.
fn rank(action: Option<Action>) -> u8 {
    match action {
        Some(Action::Deny) => 0,
        None => 1,
        Some(Action::Allow) => 2,
    }
}

impl Intention {
    /// This rule's place in evaluation order.
    pub fn order_key(&self) -> OrderKey<'_> {
        let action = match self.rule {
            Rule::Action(action) => Some(action),
            Rule::Permissions(_) => None,
        };
        OrderKey {
            precedence: Reverse(self.precedence),
            names: [
                &self.source.sameness_group,
                &self.source.peer,
                &self.source.partition,
                self.source.namespace.as_str(),
                self.source.name.as_str(),
                &self.target.partition,
                self.target.namespace.as_str(),
                self.target.name.as_str(),
            ],
            rank: rank(action),
        }
    }
}

impl Intentions {
    /// Sorts `rules` into evaluation order and indexes them by source name.
    pub(super) fn sorted(
        destination: Destination,
        default_action: Action,
        mut rules: Vec<Intention>,
    ) -> Self {
        rules.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        let mut any_name = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            match &rule.source.name {
                NamePattern::Exact(name) => by_name.entry(name.clone()).or_default().push(i),
                NamePattern::Any => any_name.push(i),
            }
        }
        Intentions {
            destination,
            default_action,
            rules,
            by_name,
            any_name,
        }
    }
}
