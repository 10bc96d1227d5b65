//! `VecMap`: a map kept as a vector sorted by key, for the per-topic maps
//! that hold a handful of entries (a topic's body generations).
//!
//! Why not a `BTreeMap`: its first insert allocates a whole leaf (eleven
//! slots), ~150–400 bytes for these value types, where one or two entries
//! are the rule. A store with 10,000 topics keeps several such maps per
//! topic, twice over while it reopens in the same process (the freed
//! memory of the first is not always reused). Here an entry costs its own
//! size: the vector grows one slot at a time (`reserve_exact`), which is
//! right for maps that gain an entry per body generation (a new one every
//! 64 MiB at most), not for large or hot ones.
//!
//! # Invariant
//!
//! - V1: keys are unique and strictly ascending; every method keeps it.

/// A small ordered map (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct VecMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<K: Ord + Copy, V> VecMap<K, V> {
    fn find(&self, key: &K) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.cmp(key))
    }

    /// The value under `key`.
    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.find(key).ok().map(|i| &self.entries[i].1)
    }

    /// The value under `key`, to change.
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.find(key).ok().map(|i| &mut self.entries[i].1)
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.insert_at(i, key, value);
                None
            }
        }
    }

    /// Inserts a new entry at its place `i`, growing by one slot.
    fn insert_at(&mut self, i: usize, key: K, value: V) {
        self.entries.reserve_exact(1);
        self.entries.insert(i, (key, value));
    }

    /// Removes `key`; returns its value.
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.find(key).ok()?;
        let (_, v) = self.entries.remove(i);
        if self.entries.is_empty() {
            // A drained topic keeps no allocation.
            self.entries = Vec::new();
        }
        Some(v)
    }

    /// The entries in key order.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// How many entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

impl<K: Ord + Copy, V: Default> VecMap<K, V> {
    /// The value under `key`, a default one if there is none.
    pub(crate) fn entry_or_default(&mut self, key: K) -> &mut V {
        let i = match self.find(&key) {
            Ok(i) => i,
            Err(i) => {
                self.insert_at(i, key, V::default());
                i
            }
        };
        &mut self.entries[i].1
    }
}

#[cfg(test)]
mod tests {
    use super::VecMap;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Clone, Debug)]
    enum Step {
        Insert(u8, u32),
        Remove(u8),
        Bump(u8),
        Get(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (any::<u8>(), any::<u32>()).prop_map(|(k, v)| Step::Insert(k % 16, v)),
            any::<u8>().prop_map(|k| Step::Remove(k % 16)),
            any::<u8>().prop_map(|k| Step::Bump(k % 16)),
            any::<u8>().prop_map(|k| Step::Get(k % 16)),
        ]
    }

    proptest! {
        /// Every step answers as a `BTreeMap` does, and iteration stays in
        /// key order (V1).
        #[test]
        fn a_vec_map_answers_every_step_as_a_btree_map_does(steps in prop::collection::vec(step(), 0..200)) {
            let mut ours: VecMap<u8, u32> = VecMap::default();
            let mut oracle: BTreeMap<u8, u32> = BTreeMap::new();
            for s in steps {
                match s {
                    Step::Insert(k, v) => prop_assert_eq!(ours.insert(k, v), oracle.insert(k, v)),
                    Step::Remove(k) => prop_assert_eq!(ours.remove(&k), oracle.remove(&k)),
                    Step::Bump(k) => {
                        *ours.entry_or_default(k) += 1;
                        *oracle.entry(k).or_default() += 1;
                    }
                    Step::Get(k) => {
                        prop_assert_eq!(ours.get(&k), oracle.get(&k));
                        prop_assert_eq!(ours.get_mut(&k).copied(), oracle.get_mut(&k).copied());
                    }
                }
                let a: Vec<(u8, u32)> = ours.iter().map(|(k, v)| (*k, *v)).collect();
                let b: Vec<(u8, u32)> = oracle.iter().map(|(k, v)| (*k, *v)).collect();
                prop_assert_eq!(a, b);
                prop_assert_eq!(ours.len(), oracle.len());
            }
        }
    }

    #[test]
    fn a_vec_map_holds_exactly_its_entries_and_nothing_once_emptied() {
        let mut m: VecMap<u32, [u64; 4]> = VecMap::default();
        m.insert(2, [0; 4]);
        m.insert(1, [0; 4]);
        assert_eq!(m.entries.capacity(), 2, "grows one slot at a time");
        assert_eq!(m.remove(&1), Some([0; 4]));
        assert_eq!(m.remove(&2), Some([0; 4]));
        assert_eq!(
            m.entries.capacity(),
            0,
            "an emptied map keeps no allocation"
        );
        assert_eq!(m.remove(&2), None);
    }
}
