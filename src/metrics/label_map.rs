//! One label value → `T`, looked up on every request without a lock: hashing the value
//! and reading a slot or two is all a lookup costs once the value has been seen.
//!
//! The table uses open addressing with linear probing. A slot is filled once, under the
//! `order` lock, and never emptied, so a reader that meets an empty slot knows the value
//! was absent when it looked, and takes the slow path that adds it. Entries are never
//! removed: label values are bounded (labels.rs), so the map is too. Past three quarters
//! of the table, values go to an overflow list behind a read-write lock (a route label has
//! a dozen values, so that is for the pathological case only).

use std::sync::{Mutex, OnceLock, RwLock};

/// Slots in the lock-free table.
const SLOTS: usize = 256;
/// Values held in the table; those past it go to the overflow list.
const TABLE_LIMIT: usize = SLOTS / 4 * 3;

pub(crate) struct LabelMap<T> {
    slots: Box<[OnceLock<Box<Entry<T>>>]>,
    /// Filled slots, in the order they were filled. Held while adding.
    order: Mutex<Vec<usize>>,
    overflow: RwLock<Vec<Entry<T>>>,
}

struct Entry<T> {
    key: Box<str>,
    value: T,
}

impl<T> LabelMap<T> {
    pub(crate) fn new() -> Self {
        LabelMap {
            slots: (0..SLOTS).map(|_| OnceLock::new()).collect(),
            order: Mutex::new(Vec::new()),
            overflow: RwLock::new(Vec::new()),
        }
    }

    /// Runs `f` on the entry for `key`, creating it with `make` the first time.
    pub(crate) fn with<R>(
        &self,
        key: &str,
        make: impl FnOnce() -> T,
        f: impl FnOnce(&T) -> R,
    ) -> R {
        let start = hash(key);
        if let Probe::Found(entry) = self.probe(start, key) {
            return f(&entry.value);
        }
        self.with_slow(start, key, make, f)
    }

    fn probe(&self, start: usize, key: &str) -> Probe<'_, T> {
        for i in 0..SLOTS {
            let at = (start + i) % SLOTS;
            match self.slots[at].get() {
                Some(entry) if same_value(&entry.key, key) => return Probe::Found(entry),
                Some(_) => continue,
                None => return Probe::Empty(at),
            }
        }
        // Unreachable while the table stays under TABLE_LIMIT.
        Probe::Full
    }

    #[cold]
    fn with_slow<R>(
        &self,
        start: usize,
        key: &str,
        make: impl FnOnce() -> T,
        f: impl FnOnce(&T) -> R,
    ) -> R {
        {
            let overflow = self.overflow.read().unwrap_or_else(|p| p.into_inner());
            if let Some(entry) = overflow.iter().find(|e| *e.key == *key) {
                return f(&entry.value);
            }
        }
        let mut order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        match self.probe(start, key) {
            Probe::Found(entry) => f(&entry.value),
            Probe::Empty(at) if order.len() < TABLE_LIMIT => {
                // Only this thread (holding `order`) fills slots, so `make` runs.
                let entry = self.slots[at].get_or_init(|| {
                    Box::new(Entry {
                        key: key.into(),
                        value: make(),
                    })
                });
                order.push(at);
                drop(order);
                f(&entry.value)
            }
            Probe::Empty(_) | Probe::Full => {
                let mut overflow = self.overflow.write().unwrap_or_else(|p| p.into_inner());
                let at = match overflow.iter().position(|e| *e.key == *key) {
                    Some(at) => at,
                    None => {
                        overflow.push(Entry {
                            key: key.into(),
                            value: make(),
                        });
                        overflow.len() - 1
                    }
                };
                f(&overflow[at].value)
            }
        }
    }

    /// Visits every entry in the order they were added.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&str, &T)) {
        {
            let order = self.order.lock().unwrap_or_else(|p| p.into_inner());
            for entry in order.iter().filter_map(|&at| self.slots[at].get()) {
                f(&entry.key, &entry.value);
            }
        }
        let overflow = self.overflow.read().unwrap_or_else(|p| p.into_inner());
        for entry in overflow.iter() {
            f(&entry.key, &entry.value);
        }
    }
}

enum Probe<'a, T> {
    Found(&'a Entry<T>),
    Empty(usize),
    Full,
}

/// Where `key`'s probe starts: a multiplicative hash of the value's first and last eight
/// bytes and its length. Label values are short, bounded and already chosen by the rules
/// (labels.rs), never raw client input, so no keyed hash is needed, and a collision only
/// costs a comparison. Whole-word loads, because assembling a word byte by byte made the
/// hash stall on its own stores for a fifth of a request's recording.
fn hash(key: &str) -> usize {
    const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let bytes = key.as_bytes();
    let (first, last) = match bytes.len() {
        8.. => (word(&bytes[..8]), word(&bytes[bytes.len() - 8..])),
        _ => {
            let mut padded = [0u8; 8];
            padded[..bytes.len()].copy_from_slice(bytes);
            (u64::from_le_bytes(padded), 0)
        }
    };
    let h = (first.wrapping_mul(K).rotate_left(5) ^ last ^ bytes.len() as u64).wrapping_mul(K);
    // The top bits are the best mixed; the table index takes the low ones.
    h.rotate_left(26) as usize
}

/// `a == b` for label values, in whole words rather than through a call to `memcmp`,
/// which was a tenth of a request's recording: values are short (a route template, a
/// model name), so the call's set-up outweighed the comparison. Two overlapping words
/// cover a value of 8 to 16 bytes.
pub(super) fn same_value(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n < 8 {
        return a.iter().zip(b).all(|(x, y)| x == y);
    }
    let mut at = 0;
    while at + 8 < n {
        if word(&a[at..at + 8]) != word(&b[at..at + 8]) {
            return false;
        }
        at += 8;
    }
    word(&a[n - 8..]) == word(&b[n - 8..])
}

/// Eight bytes as a little-endian word.
fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(bytes);
    u64::from_le_bytes(w)
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

    fn count(map: &LabelMap<AtomicU32>, key: &str) -> u32 {
        map.with(
            key,
            || AtomicU32::new(0),
            |c| c.fetch_add(1, Ordering::Relaxed) + 1,
        )
    }

    #[test]
    fn same_value_agrees_with_string_equality() {
        let values = [
            "",
            "a",
            "b",
            "ab",
            "abcdefg",
            "abcdefh",
            "abcdefgh",
            "abcdefgi",
            "bbcdefgh",
            "/v1/models",
            "/v1/modelz",
            "/v2/models",
            "/v1/chat/completions",
            "/v1/chat/completionz",
            "/v1/chat/complet1ons",
            "/v1/chat/xompletions",
            "0123456789abcdef",
            "0123456789abcdeg",
            "0123456789abcdefg",
        ];
        for a in values {
            for b in values {
                assert_eq!(same_value(a, b), a == b, "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn the_same_value_reaches_the_same_entry() {
        let map = LabelMap::new();
        for _ in 0..3 {
            count(&map, "a");
        }
        count(&map, "b");
        assert_eq!(count(&map, "a"), 4);
        assert_eq!(count(&map, "b"), 2);
    }

    #[test]
    fn values_past_the_table_go_to_the_overflow_and_are_still_found() {
        let map = LabelMap::new();
        let keys: Vec<String> = (0..SLOTS * 2).map(|i| format!("/v1/route/{i}")).collect();
        for k in &keys {
            count(&map, k);
        }
        for k in &keys {
            assert_eq!(count(&map, k), 2, "{k}");
        }
        assert_eq!(map.overflow.read().unwrap().len(), SLOTS * 2 - TABLE_LIMIT);
    }

    #[test]
    fn entries_are_visited_in_the_order_they_were_added() {
        let map: LabelMap<usize> = LabelMap::new();
        let keys: Vec<String> = (0..400)
            .map(|i| format!("k{}", (i * 7919) % 1000))
            .collect();
        for (i, k) in keys.iter().enumerate() {
            map.with(k, || i, |_| ());
        }
        let mut order = Vec::new();
        map.for_each(|k, &i| order.push((k.to_string(), i)));
        let expected: Vec<_> = keys.iter().cloned().zip(0..).collect();
        assert_eq!(order, expected);
    }

    #[test]
    fn concurrent_adds_of_one_value_make_one_entry() {
        let map = std::sync::Arc::new(LabelMap::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let map = map.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        count(&map, &format!("k{}", i % 50));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut total = 0;
        let mut keys = 0;
        map.for_each(|_, c| {
            keys += 1;
            total += c.load(Ordering::Relaxed);
        });
        assert_eq!((keys, total), (50, 800));
    }
}
