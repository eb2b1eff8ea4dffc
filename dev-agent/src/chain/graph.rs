//! What is done to a chain's graph once it is assembled, as Consul's compiler does it:
//! loops through routers and splitters are refused, a split that leads to another
//! splitter is replaced by that splitter's splits (their weights scaled by the share
//! that reaches them, their header changes merged with the outer split's), and the
//! nodes no path reaches any more are dropped. Also split weights, which Consul keeps
//! as `float32` rounded to 0.01.

use std::collections::{BTreeMap, BTreeSet};

use ferrule_control::api::chain::{
    DiscoveryGraphNode, DiscoverySplit, HttpHeaderModifiers, NODE_SPLITTER, ServiceSplit,
};

type Nodes = BTreeMap<String, DiscoveryGraphNode>;

/// A loop through routers and splitters (`[a -> b -> a]`), from `key` on.
pub(super) fn detect_circular_references(
    nodes: &Nodes,
    key: &str,
    path: &mut Vec<String>,
) -> Result<(), String> {
    if path.iter().any(|k| k == key) {
        path.push(key.to_owned());
        return Err(format!(
            "detected circular reference: [{}]",
            path.join(" -> ")
        ));
    }
    path.push(key.to_owned());
    for next in successors(nodes, key) {
        detect_circular_references(nodes, &next, path)?;
    }
    path.pop();
    Ok(())
}

fn successors(nodes: &Nodes, key: &str) -> Vec<String> {
    let Some(node) = nodes.get(key) else {
        return Vec::new();
    };
    let routes = node.routes.iter().map(|r| r.next_node.clone());
    let splits = node.splits.iter().map(|s| s.next_node.clone());
    routes.chain(splits).collect()
}

/// Replaces every split that leads to another splitter by that splitter's splits,
/// until no splitter leads to another (loops were refused before).
pub(super) fn flatten_splitters(nodes: &mut Nodes) {
    loop {
        let mut changed = false;
        let keys: Vec<String> = nodes.keys().cloned().collect();
        for key in keys {
            if let Some(flat) = flattened(nodes, &key) {
                changed = true;
                if let Some(node) = nodes.get_mut(&key) {
                    node.splits = flat;
                }
            }
        }
        if !changed {
            return;
        }
    }
}

/// The splits of splitter `key` with one level of nesting undone; `None` when it has
/// none (or is no splitter).
fn flattened(nodes: &Nodes, key: &str) -> Option<Vec<DiscoverySplit>> {
    let node = nodes.get(key).filter(|n| n.node_type == NODE_SPLITTER)?;
    let mut flat = Vec::with_capacity(node.splits.len());
    let mut changed = false;
    for split in &node.splits {
        match nodes.get(&split.next_node) {
            Some(next) if next.node_type == NODE_SPLITTER && next.name != node.name => {
                changed = true;
                flat.extend(next.splits.iter().map(|inner| nested_split(split, inner)));
            }
            _ => flat.push(split.clone()),
        }
    }
    changed.then_some(flat)
}

/// Drops the nodes no path from `start` reaches (flattened splitters).
pub(super) fn remove_unused_nodes(nodes: &mut Nodes, start: &str) {
    let mut seen = BTreeSet::new();
    let mut todo = vec![start.to_owned()];
    while let Some(key) = todo.pop() {
        if seen.insert(key.clone()) {
            todo.extend(successors(nodes, &key));
        }
    }
    nodes.retain(|key, _| seen.contains(key));
}

/// A split of a nested splitter as seen from the outer one: its share of the outer
/// share, and header changes that act as if the request passed the outer split first.
fn nested_split(outer: &DiscoverySplit, inner: &DiscoverySplit) -> DiscoverySplit {
    DiscoverySplit {
        definition: merge_parent(inner.definition.as_ref(), outer.definition.as_ref()),
        weight: normalize_weight(outer.weight * inner.weight / 100.0),
        next_node: inner.next_node.clone(),
    }
}

/// Consul's `ServiceSplit.MergeParent`: the child's definition with the parent's
/// request header changes under its own, and its response changes under the parent's.
fn merge_parent(
    child: Option<&ServiceSplit>,
    parent: Option<&ServiceSplit>,
) -> Option<ServiceSplit> {
    let Some(child) = child else {
        return parent.cloned();
    };
    let mut merged = child.clone();
    let parent_request = parent.and_then(|p| p.request_headers.as_ref());
    let parent_response = parent.and_then(|p| p.response_headers.as_ref());
    merged.request_headers = merge_headers(parent_request, child.request_headers.as_ref());
    merged.response_headers = merge_headers(child.response_headers.as_ref(), parent_response);
    Some(merged)
}

/// `base` with `overrides` applied over it (`MergeHTTPHeaderModifiers`).
fn merge_headers(
    base: Option<&HttpHeaderModifiers>,
    overrides: Option<&HttpHeaderModifiers>,
) -> Option<HttpHeaderModifiers> {
    let Some(base) = base.filter(|b| !b.is_empty()) else {
        return overrides.cloned();
    };
    let mut merged = base.clone();
    let Some(overrides) = overrides.filter(|o| !o.is_empty()) else {
        return Some(merged);
    };
    merged.add.extend(overrides.add.clone());
    merged.set.extend(overrides.set.clone());
    for name in &overrides.remove {
        if !merged.remove.contains(name) {
            merged.remove.push(name.clone());
        }
    }
    Some(merged)
}

/// A weight rounded to Consul's 0.01 granularity, in `float32` as Consul keeps it.
pub(super) fn normalize_weight(weight: f32) -> f32 {
    scale_weight(weight) as f32 / 100.0
}

/// A weight in hundredths of a percent (Consul's `scaleWeight`).
pub(super) fn scale_weight(weight: f32) -> i64 {
    (f64::from(weight * 100.0)).round() as i64
}
