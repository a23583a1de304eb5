//! A map keyed by a list of label values that is looked up with `&[&str]` without
//! allocating: the hot path (one request) only hashes the values and takes a read lock.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::RwLock;

/// Label values → `T`. Entries are never removed: label values are bounded (labels.rs),
/// so the map is too.
pub struct LabelMap<T> {
    entries: RwLock<Buckets<T>>,
}

/// Hash of the values → the entries with that hash (more than one only on a collision).
type Buckets<T> = HashMap<u64, Vec<(LabelValues, T)>, BuildHasherDefault<WordHasher>>;
type LabelValues = Box<[Box<str>]>;

impl<T> LabelMap<T> {
    pub fn new() -> Self {
        LabelMap {
            entries: RwLock::new(HashMap::default()),
        }
    }

    fn hash(&self, values: &[&str]) -> u64 {
        let mut h = WordHasher::default();
        for v in values {
            h.write_str_value(v);
        }
        h.finish()
    }

    /// Runs `f` on the entry for `values`, creating it with `make` the first time.
    pub fn with<R>(&self, values: &[&str], make: impl FnOnce() -> T, f: impl FnOnce(&T) -> R) -> R {
        let key = self.hash(values);
        let same = |stored: &[Box<str>]| stored.iter().map(|s| &**s).eq(values.iter().copied());
        {
            let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
            if let Some((_, v)) = entries
                .get(&key)
                .and_then(|bucket| bucket.iter().find(|(k, _)| same(k)))
            {
                return f(v);
            }
        }
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let bucket = entries.entry(key).or_default();
        let index = match bucket.iter().position(|(k, _)| same(k)) {
            Some(i) => i,
            None => {
                let stored = values.iter().map(|v| Box::<str>::from(*v)).collect();
                bucket.push((stored, make()));
                bucket.len() - 1
            }
        };
        f(&bucket[index].1)
    }

    /// Visits every entry (label values in the order they were given, and the value).
    pub fn for_each(&self, mut f: impl FnMut(&[Box<str>], &T)) {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        for (k, v) in entries.values().flatten() {
            f(k, v);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.values().map(Vec::len).sum()
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
}
