//! Which series of the previous snapshot are missing from this one (they get a stale
//! marker), and no label set twice within one snapshot (a strict receiver rejects the whole
//! request for that).
//!
//! Label sets are kept as their encoded bytes, back to back in one buffer: a
//! 190,000-series snapshot costs a few tens of MB, not a `String` per label. A registry
//! gathers in a stable order, so a snapshot usually repeats the previous one series by
//! series: while it does, each series is only compared with its counterpart, in sequence.
//! From the first difference on, this snapshot's series are indexed by hash, and at the end
//! the previous ones are looked up in that index.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The series of the last snapshot, across snapshots.
#[derive(Default)]
pub struct Seen {
    previous: SeriesSet,
    /// Buffers of an older set, reused when a snapshot differs.
    spare: SeriesSet,
}

impl Seen {
    /// Starts following a new snapshot.
    pub fn track(&mut self) -> Tracking<'_> {
        Tracking {
            seen: self,
            matched: 0,
            current: None,
        }
    }

    /// Every series of the last snapshot.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.previous.iter()
    }

    /// Forgets every series (after their stale markers went out).
    pub fn forget(&mut self) {
        self.previous.clear();
    }

    /// A set holding the first `n` series of the previous snapshot, indexed.
    fn diverged_at(&mut self, n: usize) -> SeriesSet {
        let mut current = std::mem::take(&mut self.spare);
        current.clear();
        for i in 0..n {
            current.insert(self.previous.get(i));
        }
        current
    }
}

/// One snapshot's series, followed against the previous snapshot's.
pub struct Tracking<'s> {
    seen: &'s mut Seen,
    /// Leading series identical, in order, to the previous snapshot's.
    matched: usize,
    /// This snapshot's series, once they differ from the previous ones.
    current: Option<SeriesSet>,
}

impl Tracking<'_> {
    /// Records a series; false when this exact label set already came in this snapshot.
    pub fn add(&mut self, labels: &[u8]) -> bool {
        let previous = &self.seen.previous;
        if self.current.is_none()
            && self.matched < previous.len()
            && previous.get(self.matched) == labels
        {
            // The previous snapshot had no duplicates, so neither has this identical prefix.
            self.matched += 1;
            return true;
        }
        let (seen, matched) = (&mut *self.seen, self.matched);
        self.current
            .get_or_insert_with(|| seen.diverged_at(matched))
            .insert(labels)
    }

    /// Ends the snapshot: calls `gone` with each series of the previous snapshot that did not
    /// come again; this snapshot becomes the previous one.
    pub fn finish<E>(self, mut gone: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        let seen = self.seen;
        match self.current {
            // The same series as last time in the same order, perhaps fewer at the end.
            None => {
                for i in self.matched..seen.previous.len() {
                    gone(seen.previous.get(i))?;
                }
                seen.previous.truncate(self.matched);
            }
            Some(current) => {
                for series in seen.previous.iter() {
                    if !current.contains(series) {
                        gone(series)?;
                    }
                }
                seen.spare = std::mem::replace(&mut seen.previous, current);
            }
        }
        Ok(())
    }
}

/// Label sets, as encoded bytes in one buffer, optionally findable by hash.
///
/// Two different label sets with the same 64-bit hash (vanishingly rare) are both sent;
/// only the second would miss its stale marker, and receivers end such a series by their
/// own lookback (5 minutes) anyway.
#[derive(Default)]
struct SeriesSet {
    bytes: Vec<u8>,
    /// End offset in `bytes` of each series; it starts where the previous one ends.
    ends: Vec<usize>,
    /// Filled by `insert` only.
    by_hash: HashMap<u64, u32, BuildHasherDefault<Prehashed>>,
}

impl SeriesSet {
    fn len(&self) -> usize {
        self.ends.len()
    }

    /// Empties the set, keeping its buffers.
    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        self.by_hash.clear();
    }

    /// Keeps the first `n` series; the index is dropped (only a set being built uses it).
    fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.bytes
                .truncate(if n == 0 { 0 } else { self.ends[n - 1] });
            self.ends.truncate(n);
            self.by_hash.clear();
        }
    }

    /// Records and indexes a series; false when this exact label set is already there.
    fn insert(&mut self, labels: &[u8]) -> bool {
        let hash = hash(labels);
        if let Some(&i) = self.by_hash.get(&hash) {
            // Equal bytes: a duplicate. Different bytes: a hash collision, sent untracked.
            return self.get(i as usize) != labels;
        }
        self.bytes.extend_from_slice(labels);
        self.ends.push(self.bytes.len());
        self.by_hash.insert(hash, (self.ends.len() - 1) as u32);
        true
    }

    fn contains(&self, labels: &[u8]) -> bool {
        self.by_hash
            .get(&hash(labels))
            .is_some_and(|&i| self.get(i as usize) == labels)
    }

    fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.ends.len()).map(|i| self.get(i))
    }
}

/// A fast hash of label bytes, eight bytes a step (the label sets are the application's
/// own, not chosen by an adversary), with a final mix so that every bit counts.
fn hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let step = |h: u64, word: u64| (h.rotate_left(5) ^ word).wrapping_mul(K);
    let mut h = bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        h = step(h, u64::from_le_bytes(word));
    }
    for &b in words.remainder() {
        h = step(h, u64::from(b));
    }
    // The finalizer of MurmurHash3.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Keys of `SeriesSet::by_hash` are hashes already: use them as they are.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash(bytes);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one snapshot of `series`; returns (series kept, series gone).
    fn snapshot(seen: &mut Seen, series: &[&str]) -> (Vec<String>, Vec<String>) {
        let mut t = seen.track();
        let kept = series
            .iter()
            .filter(|s| t.add(s.as_bytes()))
            .map(|s| s.to_string())
            .collect();
        let mut gone = Vec::new();
        t.finish(|s| {
            gone.push(String::from_utf8_lossy(s).into_owned());
            Ok::<(), ()>(())
        })
        .unwrap();
        (kept, gone)
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn missing_series_are_reported_once_whatever_the_order() {
        let mut seen = Seen::default();
        assert_eq!(snapshot(&mut seen, &["a", "b", "c"]).1, strings(&[]));
        // Same order, nothing gone: the sequential path.
        assert_eq!(snapshot(&mut seen, &["a", "b", "c"]).1, strings(&[]));
        // Shorter at the end.
        assert_eq!(snapshot(&mut seen, &["a", "b"]).1, strings(&["c"]));
        // A difference in the middle, and a newcomer: the indexed path.
        assert_eq!(snapshot(&mut seen, &["a", "x", "b"]).1, strings(&[]));
        assert_eq!(snapshot(&mut seen, &["b", "a"]).1, strings(&["x"]));
        assert_eq!(snapshot(&mut seen, &[]).1, strings(&["b", "a"]));
        assert_eq!(seen.iter().count(), 0);
    }

    #[test]
    fn a_label_set_counts_once_per_snapshot() {
        let mut seen = Seen::default();
        assert_eq!(
            snapshot(&mut seen, &["a", "a", "b"]).0,
            strings(&["a", "b"])
        );
        // The same again, with the duplicate where the sequential path would meet it.
        assert_eq!(
            snapshot(&mut seen, &["a", "b", "a"]).0,
            strings(&["a", "b"])
        );
        assert_eq!(
            snapshot(&mut seen, &["a", "b", "b"]).0,
            strings(&["a", "b"])
        );
        let all: Vec<&[u8]> = seen.iter().collect();
        assert_eq!(all, [b"a".as_slice(), b"b"]);
        seen.forget();
        assert_eq!(seen.iter().count(), 0);
    }

    #[test]
    fn the_hash_tells_apart_what_differs_in_one_byte_or_in_length() {
        let a = hash(b"__name__=x,route=/v1/chat/completions");
        assert_ne!(a, hash(b"__name__=x,route=/v1/chat/completionz"));
        assert_ne!(hash(b"ab"), hash(b"ab\0"));
        assert_ne!(hash(b""), hash(b"\0"));
    }
}
