//! A map keyed by a list of label values that is looked up with `&[&str]` without
//! allocating: the hot path (one request) only hashes the values and takes a read lock.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::RwLock;

/// Label values → `T`. Entries are never removed: label values are bounded (labels.rs),
/// so the map is too. They are kept in the order they were added, which is the order
/// [`for_each`](LabelMap::for_each) visits: stable from one snapshot to the next.
pub struct LabelMap<T> {
    inner: RwLock<Inner<T>>,
}

struct Inner<T> {
    /// Hash of the values → positions in `entries` (more than one only on a collision).
    index: HashMap<u64, Vec<usize>, BuildHasherDefault<WordHasher>>,
    entries: Vec<(LabelValues, T)>,
}

type LabelValues = Box<[Box<str>]>;

impl<T> LabelMap<T> {
    pub fn new() -> Self {
        LabelMap {
            inner: RwLock::new(Inner {
                index: HashMap::default(),
                entries: Vec::new(),
            }),
        }
    }

    fn hash(values: &[&str]) -> u64 {
        let mut h = WordHasher::default();
        for v in values {
            h.write_str_value(v);
        }
        h.finish()
    }

    /// Runs `f` on the entry for `values`, creating it with `make` the first time.
    pub fn with<R>(&self, values: &[&str], make: impl FnOnce() -> T, f: impl FnOnce(&T) -> R) -> R {
        let key = Self::hash(values);
        {
            let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
            if let Some(at) = inner.find(key, values) {
                return f(&inner.entries[at].1);
            }
        }
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let at = match inner.find(key, values) {
            Some(at) => at,
            None => {
                let stored = values.iter().map(|v| Box::<str>::from(*v)).collect();
                inner.entries.push((stored, make()));
                let at = inner.entries.len() - 1;
                inner.index.entry(key).or_default().push(at);
                at
            }
        };
        f(&inner.entries[at].1)
    }

    /// Visits every entry in the order they were added (label values in the order they
    /// were given, and the value).
    pub fn for_each(&self, mut f: impl FnMut(&[Box<str>], &T)) {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        for (k, v) in &inner.entries {
            f(k, v);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .len()
    }
}

impl<T> Inner<T> {
    fn find(&self, key: u64, values: &[&str]) -> Option<usize> {
        let same = |stored: &[Box<str>]| stored.iter().map(|s| &**s).eq(values.iter().copied());
        self.index
            .get(&key)?
            .iter()
            .copied()
            .find(|&at| same(&self.entries[at].0))
    }
}

/// A fast unkeyed hash, eight bytes per step (the Fx hash of rustc). SipHash's defence
/// against chosen collisions is not needed: the values hashed here are already bounded
/// label values (labels.rs), never raw client input, and a collision only costs a
/// comparison.
#[derive(Default)]
pub struct WordHasher(u64);

impl WordHasher {
    const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::K);
    }
}

impl WordHasher {
    /// Hashes one value: its full 8-byte words, then a last word holding the 0..=7
    /// remaining bytes and the value's length in the top byte, which also marks where
    /// one value ends and the next begins (`"ab", ""` differs from `"a", "b"`).
    fn write_str_value(&mut self, value: &str) {
        let bytes = value.as_bytes();
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        word[7] = bytes.len() as u8;
        self.add(u64::from_le_bytes(word));
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.add(u64::from(b));
        }
    }

    /// The map's keys are already hashes: one step.
    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl<T> Default for LabelMap<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn the_same_values_reach_the_same_entry() {
        let map: LabelMap<AtomicU32> = LabelMap::new();
        for _ in 0..3 {
            map.with(
                &["a", "b"],
                || AtomicU32::new(0),
                |c| c.fetch_add(1, Ordering::Relaxed),
            );
        }
        map.with(
            &["a", "c"],
            || AtomicU32::new(0),
            |c| c.fetch_add(1, Ordering::Relaxed),
        );
        // "ab" + "" must not be confused with "a" + "b".
        map.with(
            &["ab", ""],
            || AtomicU32::new(0),
            |c| c.fetch_add(1, Ordering::Relaxed),
        );
        assert_eq!(map.len(), 3);
        let n = map.with(
            &["a", "b"],
            || AtomicU32::new(99),
            |c| c.load(Ordering::Relaxed),
        );
        assert_eq!(n, 3);
    }

    #[test]
    fn entries_are_visited_in_the_order_they_were_added() {
        let map: LabelMap<usize> = LabelMap::new();
        let keys: Vec<String> = (0..500).map(|i| format!("k{}", (i * 7919) % 1000)).collect();
        for (i, k) in keys.iter().enumerate() {
            map.with(&[k], || i, |_| ());
        }
        let mut order = Vec::new();
        map.for_each(|k, &i| order.push((k[0].to_string(), i)));
        let expected: Vec<_> = keys.iter().cloned().zip(0..).collect();
        assert_eq!(order, expected);
    }
}
