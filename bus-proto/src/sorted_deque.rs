//! A small ordered map whose keys mostly arrive in increasing order, as a
//! client's request numbers and deadlines do.
//!
//! Entries sit in one `VecDeque`, sorted by key. Adding past the last key
//! and removing the first are O(1) with no allocation once the deque has
//! grown; other positions are found by binary search and shift the
//! shorter side. A `BTreeMap` would do two tree walks per request and, at
//! these sizes (a client's outstanding requests), cost several times
//! more. The caller bounds the length; nothing here does.
//!
//! The worst case is linear: removing from the middle moves up to half the
//! entries. A node answering a client's requests middle-first, or an
//! application numbering them out of order, costs O(n) per operation with
//! n at most `client_max_outstanding` (64 by default), where a B-tree
//! costs O(log n). Keys from the network (reply numbers) are only looked
//! up, never inserted.

use alloc::collections::VecDeque;

/// Entries sorted by key, at most one per key.
#[derive(Clone, Debug)]
pub(crate) struct SortedDeque<K, V> {
    entries: VecDeque<(K, V)>,
}

impl<K: Ord + Copy, V> Default for SortedDeque<K, V> {
    fn default() -> Self {
        SortedDeque {
            entries: VecDeque::new(),
        }
    }
}

impl<K: Ord + Copy, V> SortedDeque<K, V> {
    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Where `key` is (`Ok`), or where it would go (`Err`). The ends are
    /// looked at first: new keys go last, answered ones are mostly first.
    fn find(&self, key: K) -> Result<usize, usize> {
        let len = self.entries.len();
        match self.entries.back() {
            None => return Err(0),
            Some(&(last, _)) if last < key => return Err(len),
            Some(&(last, _)) if last == key => return Ok(len - 1),
            Some(_) => {}
        }
        if self.entries.front().is_some_and(|&(first, _)| first == key) {
            return Ok(0);
        }
        self.entries.binary_search_by(|&(k, _)| k.cmp(&key))
    }

    /// Adds `value` under `key`; returns the value it replaced.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(key) {
            Ok(at) => Some(core::mem::replace(&mut self.entries[at].1, value)),
            Err(at) if at == self.entries.len() => {
                self.entries.push_back((key, value));
                None
            }
            Err(at) => {
                self.entries.insert(at, (key, value));
                None
            }
        }
    }

    pub(crate) fn contains_key(&self, key: K) -> bool {
        self.find(key).is_ok()
    }

    pub(crate) fn get_mut(&mut self, key: K) -> Option<&mut V> {
        let at = self.find(key).ok()?;
        self.entries.get_mut(at).map(|(_, v)| v)
    }

    pub(crate) fn remove(&mut self, key: K) -> Option<V> {
        let at = self.find(key).ok()?;
        let entry = if at == 0 {
            self.entries.pop_front()
        } else {
            self.entries.remove(at)
        };
        entry.map(|(_, v)| v)
    }

    /// The entry with the lowest key.
    pub(crate) fn first(&self) -> Option<&(K, V)> {
        self.entries.front()
    }

    /// Removes the entry with the lowest key.
    pub(crate) fn pop_first(&mut self) -> Option<(K, V)> {
        self.entries.pop_front()
    }

    /// Every entry, in key order.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }

    /// Keeps the entries for which `keep` says so.
    #[cfg(feature = "host")]
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.entries.retain_mut(|(k, v)| keep(k, v));
    }
}

#[cfg(test)]
mod tests {
    use super::SortedDeque;
    use alloc::collections::BTreeMap;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u8, u16),
        Remove(u8),
        PopFirst,
        Get(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), any::<u16>()).prop_map(|(k, v)| Op::Insert(k, v)),
            any::<u8>().prop_map(Op::Remove),
            Just(Op::PopFirst),
            any::<u8>().prop_map(Op::Get),
        ]
    }

    proptest! {
        /// Any sequence of operations, keys in any order, answers as a
        /// `BTreeMap` does and keeps the same entries in the same order.
        #[test]
        fn behaves_as_an_ordered_map(ops in proptest::collection::vec(op(), 0..200)) {
            let mut deque = SortedDeque::default();
            let mut model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => prop_assert_eq!(deque.insert(k, v), model.insert(k, v)),
                    Op::Remove(k) => prop_assert_eq!(deque.remove(k), model.remove(&k)),
                    Op::PopFirst => prop_assert_eq!(deque.pop_first(), model.pop_first()),
                    Op::Get(k) => {
                        prop_assert_eq!(deque.contains_key(k), model.contains_key(&k));
                        prop_assert_eq!(deque.get_mut(k), model.get_mut(&k));
                    }
                }
                prop_assert_eq!(deque.len(), model.len());
                prop_assert_eq!(deque.first().copied(), model.first_key_value().map(|(&k, &v)| (k, v)));
            }
            let held: Vec<_> = deque.iter_mut().map(|(&k, &mut v)| (k, v)).collect();
            let expected: Vec<_> = model.into_iter().collect();
            prop_assert_eq!(held, expected);
        }
    }

    #[test]
    fn increasing_keys_are_appended_and_taken_from_the_front() {
        let mut deque = SortedDeque::default();
        for k in 0..10u64 {
            assert_eq!(deque.insert(k, k * 2), None);
        }
        assert_eq!(deque.remove(0), Some(0));
        assert_eq!(deque.remove(9), Some(18));
        assert_eq!(deque.remove(5), Some(10));
        assert_eq!(deque.remove(5), None);
        assert_eq!(deque.insert(3, 7), Some(6));
        assert_eq!(deque.first(), Some(&(1, 2)));
        assert_eq!(deque.len(), 7);
    }
}
