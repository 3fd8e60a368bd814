//! The embedded broker's subscriptions: a tree over topic levels, so that a PUBLISH is matched
//! in time proportional to its topic's levels, and memory depends only on the filters
//! subscribed (no state per topic published).

use std::collections::HashMap;

/// A connection's number in the broker.
pub(crate) type ConnId = u64;

/// Subscribers (connection and granted QoS) at one place in the tree.
type Subscribers = HashMap<ConnId, u8>;

/// Topic filters and who holds them, with MQTT 3.1.1 matching (`+`, `#`, and the rule that a
/// filter starting with a wildcard does not match a topic starting with `$`).
#[derive(Debug, Default)]
pub(crate) struct SubscriptionTree {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    /// The next level, by name.
    children: HashMap<Box<str>, Node>,
    /// The next level is `+`.
    plus: Option<Box<Node>>,
    /// Filters that end at this node.
    exact: Subscribers,
    /// Filters that end with `/#` after this node (`#` alone at the root).
    hash: Subscribers,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.exact.is_empty()
            && self.hash.is_empty()
    }
}

impl SubscriptionTree {
    /// Adds (or updates the QoS of) `conn`'s subscription to a valid `filter`.
    pub(crate) fn insert(&mut self, filter: &str, conn: ConnId, qos: u8) {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = match level {
                "#" => {
                    node.hash.insert(conn, qos);
                    return;
                }
                "+" => node.plus.get_or_insert_with(Box::default),
                name => node.children.entry(name.into()).or_default(),
            };
        }
        node.exact.insert(conn, qos);
    }

    /// Removes `conn`'s subscription to `filter`, and the parts of the tree left empty.
    pub(crate) fn remove(&mut self, filter: &str, conn: ConnId) {
        let levels: Vec<&str> = filter.split('/').collect();
        remove_at(&mut self.root, &levels, conn);
    }

    /// Adds every subscriber whose filter matches `topic` to `out`, with the highest QoS it
    /// was granted among its matching filters.
    pub(crate) fn matches(&self, topic: &str, out: &mut Subscribers) {
        let levels: Vec<&str> = topic.split('/').collect();
        walk(&self.root, &levels, topic.starts_with('$'), out);
    }

    /// Whether no filter is subscribed.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.root.is_empty()
    }
}

fn add(out: &mut Subscribers, from: &Subscribers) {
    for (&conn, &qos) in from {
        let granted = out.entry(conn).or_insert(qos);
        *granted = (*granted).max(qos);
    }
}

/// `levels` are the topic levels still to match below `node`; `dollar_root` is set at the root
/// for a topic starting with `$`, where wildcards do not match.
fn walk(node: &Node, levels: &[&str], dollar_root: bool, out: &mut Subscribers) {
    if !dollar_root {
        // `a/#` matches `a` itself and everything below it.
        add(out, &node.hash);
    }
    let Some((level, rest)) = levels.split_first() else {
        add(out, &node.exact);
        return;
    };
    if let Some(child) = node.children.get(*level) {
        walk(child, rest, false, out);
    }
    if !dollar_root && let Some(plus) = &node.plus {
        walk(plus, rest, false, out);
    }
}

/// Removes `conn` from the filter `levels` below `node`; returns whether `node` is now empty.
fn remove_at(node: &mut Node, levels: &[&str], conn: ConnId) -> bool {
    match levels.split_first() {
        None => {
            node.exact.remove(&conn);
        }
        Some((&"#", _)) => {
            node.hash.remove(&conn);
        }
        Some((&"+", rest)) => {
            if let Some(plus) = &mut node.plus
                && remove_at(plus, rest, conn)
            {
                node.plus = None;
            }
        }
        Some((name, rest)) => {
            if let Some(child) = node.children.get_mut(*name)
                && remove_at(child, rest, conn)
            {
                node.children.remove(*name);
            }
        }
    }
    node.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::topic_matches;

    const FILTERS: &[&str] = &[
        "#",
        "+",
        "+/+",
        "a",
        "a/#",
        "a/+",
        "a/b",
        "a/+/c",
        "+/b/#",
        "$hw/#",
        "$hw/+/x",
        "/",
        "/+",
        "a//b",
        "a/+/+",
        "$share/g/a",
        "+/#",
    ];
    const TOPICS: &[&str] = &[
        "a",
        "a/b",
        "a/b/c",
        "a/x/c",
        "b",
        "$hw",
        "$hw/events/x",
        "$hw/y/x",
        "/",
        "/a",
        "a//b",
        "$SYS/x",
        "a/b/c/d",
        "$share/g/a",
    ];

    /// The tree agrees with the plain matcher, for every filter and topic.
    #[test]
    fn agrees_with_topic_matches() {
        let mut tree = SubscriptionTree::default();
        for (conn, filter) in FILTERS.iter().enumerate() {
            tree.insert(filter, conn as ConnId, 1);
        }
        for topic in TOPICS {
            let mut got = Subscribers::new();
            tree.matches(topic, &mut got);
            let mut got: Vec<_> = got.keys().map(|c| FILTERS[*c as usize]).collect();
            got.sort_unstable();
            let mut want: Vec<_> = FILTERS
                .iter()
                .copied()
                .filter(|f| topic_matches(f, topic))
                .collect();
            want.sort_unstable();
            assert_eq!(got, want, "topic {topic}");
        }
        for (conn, filter) in FILTERS.iter().enumerate() {
            tree.remove(filter, conn as ConnId);
        }
        assert!(tree.is_empty());
    }

    #[test]
    fn highest_qos_wins_and_removal_is_per_connection() {
        let mut tree = SubscriptionTree::default();
        tree.insert("a/#", 1, 0);
        tree.insert("a/b", 1, 1);
        tree.insert("a/b", 2, 0);
        let mut got = Subscribers::new();
        tree.matches("a/b", &mut got);
        assert_eq!(got, HashMap::from([(1, 1), (2, 0)]));
        tree.remove("a/b", 1);
        got.clear();
        tree.matches("a/b", &mut got);
        assert_eq!(got, HashMap::from([(1, 0), (2, 0)]));
    }
}
