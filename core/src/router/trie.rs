//! A topic-filter index: which subscribers want a message on this topic?
//!
//! Every subscriber registers one or more MQTT topic filters, and for every
//! incoming message the router has to find all values whose filter matches the
//! message's topic. Testing each filter in turn costs time proportional to the
//! number of filters for every message. [`FilterTrie`] instead stores filters
//! level by level in a tree, so one walk per message finds every match, and its
//! cost depends on the topic's depth and on how many branches actually match,
//! not on how many filters are registered.
//!
//! Each node stands for a filter prefix and holds:
//!
//! * `children`: one child per literal next level (`"a"` in `"x/a/..."`);
//! * `plus`: the child reached through a `+` level;
//! * `hash`: values whose filter ends with `#` right after this prefix;
//! * `exact`: values whose filter ends exactly at this prefix.
//!
//! Matching a topic walks its levels from the root. At every node it reports
//! the `hash` values (`#` matches any remainder, including none, so `"a/#"`
//! matches `"a"`), follows `plus` and the literal child for the next level, and
//! reports `exact` once the topic's levels run out. The `$` rule of MQTT is
//! applied at the root only: a topic whose first level starts with `$` skips the
//! root's `+` and `#` branches. The semantics are those of
//! [`crate::topic::matches()`], which the tests use as the reference.
//!
//! Removing a pair prunes the nodes it leaves empty, so memory is returned as
//! clients unsubscribe.

use std::collections::HashMap;

/// An index from MQTT topic filters to values (typically subscriber ids).
///
/// The same value may be registered under several filters, and the same
/// filter may carry several values; each distinct `(filter, value)` pair is
/// stored once.
#[derive(Debug)]
pub struct FilterTrie<T> {
    root: Node<T>,
    len: usize,
}

/// One filter prefix; see the module documentation.
#[derive(Debug)]
struct Node<T> {
    children: HashMap<Box<str>, Node<T>>,
    plus: Option<Box<Node<T>>>,
    hash: Vec<T>,
    exact: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            plus: None,
            hash: Vec::new(),
            exact: Vec::new(),
        }
    }
}

/// Dropped a level at a time in a loop: the default drop recurses once per
/// level, and a filter with thousands of levels would overflow the stack.
impl<T> Drop for Node<T> {
    fn drop(&mut self) {
        let mut below: Vec<Node<T>> = self.children.drain().map(|(_, n)| n).collect();
        below.extend(self.plus.take().map(|n| *n));
        while let Some(mut node) = below.pop() {
            below.extend(node.children.drain().map(|(_, n)| n));
            below.extend(node.plus.take().map(|n| *n));
            // `node` goes here with nothing below it.
        }
    }
}

impl<T> Default for FilterTrie<T> {
    fn default() -> Self {
        FilterTrie {
            root: Node::default(),
            len: 0,
        }
    }
}

/// Adds `value` to `values` unless it is already there; returns whether it was added.
fn push_unique<T: Copy + Eq>(values: &mut Vec<T>, value: T) -> bool {
    if values.contains(&value) {
        return false;
    }
    values.push(value);
    true
}

/// Removes `value` from `values` if present; returns whether it was there.
fn remove_value<T: Copy + Eq>(values: &mut Vec<T>, value: T) -> bool {
    let Some(index) = values.iter().position(|v| *v == value) else {
        return false;
    };
    values.swap_remove(index);
    if values.is_empty() {
        // Give the allocation back, not just the element.
        *values = Vec::new();
    }
    true
}

impl<T: Copy + Eq> Node<T> {
    /// Whether this node holds nothing but the one way down, `child`, so
    /// that it is empty once that child is cut.
    fn only_leads_to_one_child(&self) -> bool {
        self.hash.is_empty()
            && self.exact.is_empty()
            && self.children.len() + usize::from(self.plus.is_some()) == 1
    }

    /// The child for one filter level, if there is one.
    fn child(&self, level: &str) -> Option<&Node<T>> {
        match level {
            "+" => self.plus.as_deref(),
            _ => self.children.get(level),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<T>> {
        match level {
            "+" => self.plus.as_deref_mut(),
            _ => self.children.get_mut(level),
        }
    }

    /// Cuts the child for one filter level, with everything below it.
    fn cut(&mut self, level: &str) {
        match level {
            "+" => self.plus = None,
            _ => {
                self.children.remove(level);
            }
        }
    }

    #[cfg(test)]
    fn node_count(&self) -> usize {
        1 + self.children.values().map(Node::node_count).sum::<usize>()
            + self.plus.as_ref().map_or(0, |p| p.node_count())
    }
}

impl<T: Copy + Eq> FilterTrie<T> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `value` under `filter`, which must already be a valid topic
    /// filter (see [`crate::topic::validate_filter`]).
    ///
    /// Returns `false`, and changes nothing, if this exact pair is present.
    pub fn insert(&mut self, filter: &str, value: T) -> bool {
        // A loop, not recursion: a filter may have thousands of levels
        // (`a////…`), and each level would be a stack frame.
        let mut node = &mut self.root;
        let mut levels = filter.split('/');
        let inserted = loop {
            match levels.next() {
                None => break push_unique(&mut node.exact, value),
                // A valid filter has nothing after '#'; anything that does is ignored.
                Some("#") => break push_unique(&mut node.hash, value),
                Some("+") => node = node.plus.get_or_insert_with(Box::default),
                Some(level) => node = node.children.entry(level.into()).or_default(),
            }
        };
        if inserted {
            self.len += 1;
        }
        inserted
    }

    /// Unregisters `value` from `filter`; returns whether the pair was present.
    ///
    /// Nodes left empty are removed, so memory is returned after unsubscribes.
    pub fn remove(&mut self, filter: &str, value: T) -> bool {
        // Two walks, both loops: the first finds the pair and the highest
        // node that is left empty without it (everything below it on the
        // path holds only the way down), the second removes the value or
        // cuts that node off.
        let levels: Vec<&str> = filter.split('/').collect();
        let end = levels
            .iter()
            .position(|l| *l == "#")
            .map_or(levels.len(), |i| i + 1);
        let path = &levels[..end];
        let mut node = &self.root;
        // The depth of the node to cut from its parent, if any.
        let mut cut_from: Option<usize> = None;
        for (depth, level) in path.iter().enumerate() {
            if *level == "#" {
                break;
            }
            let Some(child) = node.child(level) else {
                return false;
            };
            if !node.only_leads_to_one_child() || depth == 0 {
                cut_from = Some(depth);
            }
            node = child;
        }
        let hash = path.last() == Some(&"#");
        let (values, others) = if hash {
            (&node.hash, &node.exact)
        } else {
            (&node.exact, &node.hash)
        };
        if !values.contains(&value) {
            return false;
        }
        let leaf_empties = values.len() == 1
            && others.is_empty()
            && node.children.is_empty()
            && node.plus.is_none();
        let steps = path.len() - usize::from(hash);
        let mut node = &mut self.root;
        match cut_from.filter(|_| leaf_empties && steps > 0) {
            Some(depth) => {
                for level in &path[..depth] {
                    let Some(child) = node.child_mut(level) else {
                        return false; // found by the first walk
                    };
                    node = child;
                }
                node.cut(path[depth]);
            }
            None => {
                for level in &path[..steps] {
                    let Some(child) = node.child_mut(level) else {
                        return false; // found by the first walk
                    };
                    node = child;
                }
                let values = if hash {
                    &mut node.hash
                } else {
                    &mut node.exact
                };
                remove_value(values, value);
            }
        }
        self.len -= 1;
        true
    }

    /// Calls `f` once for every `(filter, value)` pair whose filter matches
    /// the topic name `topic`.
    ///
    /// A value registered under two matching filters is reported twice; the
    /// caller deduplicates if it needs to. The order is unspecified. Nothing
    /// is allocated.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(T)) {
        // An explicit stack instead of recursion (see `insert`): a node and
        // the topic's levels still to match below it. It holds at most one
        // `+` branch per level walked, so it stays small.
        let mut pending = vec![(&self.root, topic.split('/'), topic.starts_with('$'))];
        while let Some((node, mut levels, at_dollar_root)) = pending.pop() {
            let Some(level) = levels.next() else {
                // The topic ends here: filters ending here, or with a '#'
                // that matches the parent level itself.
                node.exact.iter().chain(&node.hash).for_each(|v| f(*v));
                continue;
            };
            // The `$` rule: wildcards at the root do not match `$` topics.
            if !at_dollar_root {
                node.hash.iter().for_each(|v| f(*v));
                if let Some(plus) = &node.plus {
                    pending.push((plus, levels.clone(), false));
                }
            }
            if let Some(child) = node.children.get(level) {
                pending.push((child, levels, false));
            }
        }
    }

    /// The number of `(filter, value)` pairs stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no pair is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Nodes in the tree, the root included (so 1 when empty).
    #[cfg(test)]
    fn node_count(&self) -> usize {
        self.root.node_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::{matches, validate_filter, validate_topic, MAX_TOPIC_BYTES};
    use proptest::prelude::*;

    /// All values matching `topic`, sorted so they can be compared as a multiset.
    fn matched<T: Copy + Eq + Ord>(trie: &FilterTrie<T>, topic: &str) -> Vec<T> {
        let mut out = Vec::new();
        trie.for_each_match(topic, |v| out.push(v));
        out.sort();
        out
    }

    /// Brute force over `pairs` with the reference matcher, sorted.
    fn reference(pairs: &[(String, u8)], topic: &str) -> Vec<u8> {
        let mut out: Vec<u8> = pairs
            .iter()
            .filter(|(filter, _)| matches(filter, topic))
            .map(|(_, v)| *v)
            .collect();
        out.sort();
        out
    }

    /// Examples from MQTT 3.1.1 section 4.7 and MQTT 5.0 section 4.7: (filter, topic, matches).
    const SPEC_CASES: &[(&str, &str, bool)] = &[
        ("sport/tennis/player1/#", "sport/tennis/player1", true),
        (
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking",
            true,
        ),
        (
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon",
            true,
        ),
        ("sport/tennis/player1/#", "sport/tennis/player2", false),
        ("sport/#", "sport", true),
        ("sport/#", "sports", false),
        ("#", "sport/tennis", true),
        ("#", "/finance", true),
        ("sport/tennis/+", "sport/tennis/player1", true),
        ("sport/tennis/+", "sport/tennis/player1/ranking", false),
        ("sport/+", "sport", false),
        ("sport/+", "sport/", true),
        ("+/+", "/finance", true),
        ("/+", "/finance", true),
        ("+", "/finance", false),
        ("+", "finance", true),
        ("#", "$SYS/x", false),
        ("#", "$SYS", false),
        ("+/#", "$SYS/monitor/Clients", false),
        ("+/monitor/Clients", "$SYS/monitor/Clients", false),
        ("$SYS/#", "$SYS/monitor/Clients", true),
        ("$SYS/#", "$SYS", true),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
        ("a/+", "a/$b", true),
        ("Accounts", "ACCOUNTS", false),
        ("finance", "/finance", false),
        ("a//b", "a//b", true),
        ("a//b", "a/b", false),
        ("a/+/b", "a//b", true),
    ];

    /// Each spec example gives the same answer through the trie as through topic::matches.
    #[test]
    fn spec_examples_one_filter_at_a_time() {
        for &(filter, topic, expected) in SPEC_CASES {
            assert_eq!(
                validate_filter(filter, MAX_TOPIC_BYTES),
                Ok(()),
                "{filter:?}"
            );
            assert_eq!(validate_topic(topic), Ok(()), "{topic:?}");
            assert_eq!(
                matches(filter, topic),
                expected,
                "reference: {filter:?} vs {topic:?}"
            );
            let mut trie = FilterTrie::new();
            assert!(trie.insert(filter, 7u8));
            let want = if expected { vec![7] } else { vec![] };
            assert_eq!(matched(&trie, topic), want, "trie: {filter:?} vs {topic:?}");
        }
    }

    /// With every spec filter in one trie, each topic gets exactly the spec's matching filters.
    #[test]
    fn spec_examples_all_filters_together() {
        let mut trie = FilterTrie::new();
        let mut filters: Vec<&str> = SPEC_CASES.iter().map(|c| c.0).collect();
        filters.sort();
        filters.dedup();
        for (i, filter) in filters.iter().enumerate() {
            assert!(trie.insert(filter, i));
        }
        for &(_, topic, _) in SPEC_CASES {
            let want: Vec<usize> = (0..filters.len())
                .filter(|&i| matches(filters[i], topic))
                .collect();
            assert_eq!(matched(&trie, topic), want, "{topic:?}");
        }
        // And each spec answer holds in the shared trie.
        for &(filter, topic, expected) in SPEC_CASES {
            let index = filters.iter().position(|f| *f == filter);
            let found = index.is_some_and(|i| matched(&trie, topic).contains(&i));
            assert_eq!(found, expected, "{filter:?} vs {topic:?}");
        }
    }

    /// Inserting a present pair returns false and changes nothing; removing twice returns false.
    #[test]
    fn insert_and_remove_are_idempotent() {
        let mut trie = FilterTrie::new();
        assert!(trie.is_empty());
        assert!(trie.insert("a/+/c", 1u32));
        let nodes = trie.node_count();
        assert!(!trie.insert("a/+/c", 1));
        assert_eq!(trie.len(), 1);
        assert_eq!(trie.node_count(), nodes);
        assert_eq!(matched(&trie, "a/b/c"), vec![1]);

        assert!(trie.insert("a/+/c", 2));
        assert_eq!(trie.len(), 2);
        assert_eq!(matched(&trie, "a/b/c"), vec![1, 2]);

        assert!(trie.remove("a/+/c", 1));
        assert!(!trie.remove("a/+/c", 1));
        assert!(!trie.remove("a/+/d", 2));
        assert!(!trie.remove("a/#", 2));
        assert_eq!(trie.len(), 1);
        assert_eq!(matched(&trie, "a/b/c"), vec![2]);
    }

    /// Removing every pair prunes the tree back to a bare root.
    #[test]
    fn remove_prunes_empty_nodes() {
        let filters = [
            "a/b/c", "a/b/#", "a/+/c", "+/+", "#", "$SYS/#", "a//b", "/", "a",
        ];
        let mut trie = FilterTrie::new();
        for (i, filter) in filters.iter().enumerate() {
            assert!(trie.insert(filter, i));
            assert!(trie.insert(filter, i + 100));
        }
        assert!(trie.node_count() > 1);
        // Removing one branch frees its nodes but keeps the shared prefix.
        assert!(trie.remove("a//b", 6));
        assert!(trie.remove("a//b", 106));
        let without_a_empty_b = trie.node_count();
        assert!(trie.insert("a//b", 6));
        assert_eq!(trie.node_count(), without_a_empty_b + 2);
        assert!(trie.remove("a//b", 6));

        for (i, filter) in filters.iter().enumerate() {
            if *filter != "a//b" {
                assert!(trie.remove(filter, i));
                assert!(trie.remove(filter, i + 100));
            }
        }
        assert!(trie.is_empty());
        assert_eq!(trie.len(), 0);
        assert_eq!(trie.node_count(), 1);
        assert!(trie.root.children.is_empty() && trie.root.plus.is_none());
        assert!(trie.root.hash.is_empty() && trie.root.exact.is_empty());
        assert_eq!(matched(&trie, "a/b/c"), Vec::<usize>::new());
    }

    /// A value under two matching filters is reported once per filter.
    #[test]
    fn value_under_two_matching_filters_is_reported_twice() {
        let mut trie = FilterTrie::new();
        assert!(trie.insert("a/#", 5u8));
        assert!(trie.insert("a/+", 5));
        assert!(trie.insert("a/b", 5));
        assert!(trie.insert("a/b", 6));
        assert_eq!(trie.len(), 4);
        assert_eq!(matched(&trie, "a/b"), vec![5, 5, 5, 6]);
        assert_eq!(matched(&trie, "a"), vec![5]);
        assert_eq!(matched(&trie, "a/c/d"), vec![5]);
    }

    /// A level from the small alphabet the property test builds names and filters from.
    /// A filter of 100,000 levels (`a/` repeated, or `+/`) is stored,
    /// matched, removed and dropped without one stack frame per level: a
    /// WebSocket client sent 8,000 empty levels and the recursive insert
    /// overflowed the stack, aborting the process.
    #[test]
    fn a_filter_of_a_hundred_thousand_levels_does_not_overflow_the_stack() {
        let deep = "a/".repeat(100_000) + "b";
        let plus = "+/".repeat(100_000) + "#";
        // A thread with a small stack: 64 KiB would never hold a frame per level.
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut trie = FilterTrie::new();
                assert!(trie.insert(&deep, 1u8));
                assert!(trie.insert(&plus, 2u8));
                assert_eq!(matched(&trie, &deep), vec![1, 2]);
                assert!(trie.remove(&deep, 1));
                assert_eq!(matched(&trie, &deep), vec![2]);
                assert!(!trie.remove(&deep, 1), "already gone");
                // Dropped with the other deep filter still in it.
                drop(trie);
            })
            .expect("spawn")
            .join()
            .expect("no overflow");
    }

    /// Removing one of two filters that share a prefix keeps the other
    /// whole, and removing both leaves the root alone.
    #[test]
    fn removing_a_branch_keeps_its_sibling() {
        let mut trie = FilterTrie::new();
        trie.insert("a/b/c/d", 1u8);
        trie.insert("a/b/x", 2u8);
        trie.insert("a/+/#", 3u8);
        assert!(trie.remove("a/b/c/d", 1));
        assert_eq!(matched(&trie, "a/b/x"), vec![2, 3]);
        assert!(trie.remove("a/+/#", 3));
        assert_eq!(matched(&trie, "a/b/x"), vec![2]);
        assert!(trie.remove("a/b/x", 2));
        assert_eq!(trie.node_count(), 1);
        assert!(trie.is_empty());
    }

    fn topic_level() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just("a"), Just("b"), Just("$x"), Just("")]
    }

    /// A valid topic name of one to four levels.
    fn topic_name() -> impl Strategy<Value = String> {
        prop::collection::vec(topic_level(), 1..=4)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("valid topic", |t| validate_topic(t).is_ok())
    }

    /// A valid filter: literal or '+' levels, optionally ending in '#'.
    fn filter() -> impl Strategy<Value = String> {
        let level = prop_oneof![3 => topic_level(), 2 => Just("+")];
        (prop::collection::vec(level, 0..=4), any::<bool>())
            .prop_map(|(mut levels, hash)| {
                if hash || levels.is_empty() {
                    levels.push("#");
                }
                levels.join("/")
            })
            .prop_filter("valid filter", |f| {
                validate_filter(f, MAX_TOPIC_BYTES).is_ok()
            })
    }

    /// One step of the random workload: insert (true) or remove (false) a pair.
    fn op() -> impl Strategy<Value = (bool, String, u8)> {
        (prop::bool::weighted(0.7), filter(), 0u8..4)
    }

    proptest! {
        /// After random inserts and removes, the trie agrees with brute-force topic::matches.
        #[test]
        fn trie_agrees_with_reference(
            ops in prop::collection::vec(op(), 0..40),
            topics in prop::collection::vec(topic_name(), 1..12),
        ) {
            let mut trie = FilterTrie::new();
            let mut model: Vec<(String, u8)> = Vec::new();
            for (insert, filter, value) in ops {
                let pair = (filter.clone(), value);
                let present = model.contains(&pair);
                if insert {
                    prop_assert_eq!(trie.insert(&filter, value), !present);
                    if !present {
                        model.push(pair);
                    }
                } else {
                    prop_assert_eq!(trie.remove(&filter, value), present);
                    model.retain(|p| *p != pair);
                }
                prop_assert_eq!(trie.len(), model.len());
            }
            for topic in &topics {
                prop_assert_eq!(matched(&trie, topic), reference(&model, topic), "topic {:?}", topic);
            }
            for (filter, value) in &model {
                prop_assert!(trie.remove(filter, *value));
            }
            prop_assert!(trie.is_empty());
            prop_assert_eq!(trie.node_count(), 1);
        }
    }
}
