//! Which series of the previous snapshot are missing from this one (they get a stale
//! marker), and no label set twice within one snapshot (a strict receiver rejects the whole
//! request for that).
//!
//! Label sets are kept as their encoded bytes, back to back in large chunks: a
//! 190,000-series snapshot costs a few tens of MB, not a `String` per label. A snapshot
//! lists its metrics in a stable order, so it usually repeats the previous one series by
//! series: while it does, each series is only compared with its counterpart, in sequence.
//! From the first difference on, this snapshot's series are indexed by hash, and at the end
//! the previous ones are looked up in that index.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hasher};

/// The series of the last snapshot, across snapshots.
#[derive(Default)]
pub(crate) struct Seen {
    previous: SeriesSet,
}

impl Seen {
    /// Starts following a new snapshot.
    pub(crate) fn track(&mut self) -> Tracking<'_> {
        Tracking {
            seen: self,
            matched: 0,
            current: None,
        }
    }

    /// Every series of the last snapshot.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.previous.iter()
    }

    /// Forgets every series (after their stale markers went out).
    pub(crate) fn forget(&mut self) {
        self.previous = SeriesSet::default();
    }

    /// A set holding the first `n` series of the previous snapshot, indexed, with room for
    /// as many series as the previous snapshot had.
    fn diverged_at(&self, n: usize) -> SeriesSet {
        let mut current = SeriesSet {
            chunks: Vec::new(),
            spans: Vec::with_capacity(self.previous.len()),
            by_hash: HashMap::with_capacity(self.previous.len()),
        };
        for i in 0..n {
            current.insert(self.previous.get(i));
        }
        current
    }
}

/// One snapshot's series, followed against the previous snapshot's.
pub(crate) struct Tracking<'s> {
    seen: &'s mut Seen,
    /// Leading series identical, in order, to the previous snapshot's.
    matched: usize,
    /// This snapshot's series, once they differ from the previous ones.
    current: Option<SeriesSet>,
}

impl<'s> Tracking<'s> {
    /// Records a series; false when this exact label set already came in this snapshot.
    pub(crate) fn add(&mut self, labels: &[u8]) -> bool {
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

    /// Series of this snapshot so far: the place the next one takes in its list, which is
    /// the previous snapshot's list at the next conversion.
    pub(crate) fn position(&self) -> usize {
        match &self.current {
            None => self.matched,
            Some(current) => current.len(),
        }
    }

    /// Records the previous snapshot's series `first..first + count` again as this
    /// snapshot's next ones, when they are next in line (every series so far repeated the
    /// previous snapshot's, in order): true then, false and nothing recorded otherwise. The
    /// caller knows they are the series it would add (the same labels, encoded the same
    /// way): it skips encoding and comparing them, and reads them with [`previous`](Self::previous)
    /// if it needs their bytes.
    pub(crate) fn repeat(&mut self, first: usize, count: usize) -> bool {
        let in_line = self.current.is_none()
            && self.matched == first
            && first + count <= self.seen.previous.len();
        if in_line {
            self.matched += count;
        }
        in_line
    }

    /// The previous snapshot's series `i`.
    pub(crate) fn previous(&self, i: usize) -> &[u8] {
        self.seen.previous.get(i)
    }

    /// Ends the snapshot: calls `gone` with each series of the previous snapshot that did not
    /// come again; this snapshot becomes the previous one, which it returns.
    pub(crate) fn finish<E>(
        self,
        mut gone: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<&'s mut Seen, E> {
        let seen = self.seen;
        match self.current {
            // The same series as last time in the same order, perhaps fewer at the end.
            None => {
                for i in self.matched..seen.previous.len() {
                    gone(seen.previous.get(i))?;
                }
                seen.previous.truncate(self.matched);
            }
            Some(mut current) => {
                for series in seen.previous.iter() {
                    if !current.contains(series) {
                        gone(series)?;
                    }
                }
                // Only a set being built needs the index.
                current.by_hash = HashMap::default();
                seen.previous = current;
            }
        }
        Ok(seen)
    }
}

/// Label sets, as encoded bytes, optionally findable by hash.
///
/// Two different label sets with the same 64-bit hash (vanishingly rare) are both sent;
/// only the second would miss its stale marker, and receivers end such a series by their
/// own lookback (5 minutes) anyway.
#[derive(Default)]
struct SeriesSet {
    /// The bytes, in chunks of `CHUNK` (a label set never spans two): growing never
    /// copies, nor holds an old and a new buffer at once.
    chunks: Vec<Vec<u8>>,
    spans: Vec<Span>,
    /// Filled by `insert`, while the set is being built.
    by_hash: HashMap<u64, u32>,
}

/// Where one label set is: `chunks[chunk][start..end]`.
#[derive(Clone, Copy)]
struct Span {
    chunk: u32,
    start: u32,
    end: u32,
}

const CHUNK: usize = 1 << 20;

impl SeriesSet {
    fn len(&self) -> usize {
        self.spans.len()
    }

    /// Keeps the first `n` series; the index is dropped (only a set being built uses it).
    fn truncate(&mut self, n: usize) {
        if n >= self.len() {
            return;
        }
        match n.checked_sub(1).map(|i| self.spans[i]) {
            Some(last) => {
                self.chunks.truncate(last.chunk as usize + 1);
                self.chunks[last.chunk as usize].truncate(last.end as usize);
            }
            None => self.chunks.clear(),
        }
        self.spans.truncate(n);
        self.by_hash = HashMap::default();
    }

    /// Records and indexes a series; false when this exact label set is already there.
    fn insert(&mut self, labels: &[u8]) -> bool {
        let hash = hash(labels);
        if let Some(&i) = self.by_hash.get(&hash) {
            // Equal bytes: a duplicate. Different bytes: a hash collision, sent untracked.
            return self.get(i as usize) != labels;
        }
        let fits = self
            .chunks
            .last()
            .is_some_and(|c| c.capacity() - c.len() >= labels.len());
        if !fits {
            self.chunks
                .push(Vec::with_capacity(CHUNK.max(labels.len())));
        }
        let chunk = self.chunks.len() - 1;
        let bytes = &mut self.chunks[chunk];
        let start = bytes.len();
        bytes.extend_from_slice(labels);
        self.spans.push(Span {
            chunk: chunk as u32,
            start: start as u32,
            end: bytes.len() as u32,
        });
        self.by_hash.insert(hash, (self.spans.len() - 1) as u32);
        true
    }

    fn contains(&self, labels: &[u8]) -> bool {
        self.by_hash
            .get(&hash(labels))
            .is_some_and(|&i| self.get(i as usize) == labels)
    }

    fn get(&self, i: usize) -> &[u8] {
        let s = self.spans[i];
        &self.chunks[s.chunk as usize][s.start as usize..s.end as usize]
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// SipHash of label bytes. Only a snapshot that differs from the previous one is hashed,
/// so speed matters less than quality here: faster multiply-rotate hashes collide on label
/// sets that differ in two places (two such series would share one stale-marker slot).
fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::remote_write::encode::encode_label;

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
    fn a_repeat_is_taken_only_in_line_and_counts_as_added() {
        let mut seen = Seen::default();
        snapshot(&mut seen, &["a", "b", "c", "d"]);
        let mut t = seen.track();
        assert!(t.add(b"a"));
        // Not next in line, or past the end: nothing taken.
        assert!(!t.repeat(2, 1));
        assert!(!t.repeat(1, 4));
        assert!(t.repeat(1, 2));
        assert_eq!([t.previous(1), t.previous(2)], [b"b".as_slice(), b"c"]);
        assert_eq!(t.position(), 3);
        let mut gone = Vec::new();
        t.finish(|s| {
            gone.push(s.to_vec());
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(gone, [b"d".to_vec()]);
        assert_eq!(
            seen.iter().collect::<Vec<_>>(),
            [b"a".as_slice(), b"b", b"c"]
        );

        // Once the snapshot differs from the previous one, no series is in line.
        let mut t = seen.track();
        assert!(t.add(b"x"));
        assert_eq!(t.position(), 1);
        assert!(!t.repeat(1, 2));
        assert!(!t.repeat(0, 1));
    }

    #[test]
    fn label_sets_larger_than_a_chunk_and_truncation_across_chunks_work() {
        let big = vec![b'x'; CHUNK + 10];
        let mut set = SeriesSet::default();
        assert!(set.insert(b"a"));
        assert!(set.insert(&big));
        assert!(set.insert(b"b"));
        assert_eq!(set.chunks.len(), 3);
        assert_eq!(set.get(1), big.as_slice());
        set.truncate(1);
        assert_eq!(set.iter().collect::<Vec<_>>(), [b"a".as_slice()]);
        assert_eq!(set.chunks.len(), 1);
        set.truncate(0);
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn label_sets_that_differ_in_two_places_do_not_collide() {
        // Encoded series shaped like the proxy's: buckets × methods × models × routes.
        let mut hashes = std::collections::HashSet::new();
        for combo in 0..4000 {
            for le in [
                "50", "100", "200", "400", "800", "1200", "2000", "5000", "10000", "+Inf",
            ] {
                let mut labels = Vec::new();
                encode_label("__name__", "codex_http_latency_ms_bucket", &mut labels);
                encode_label("le", le, &mut labels);
                encode_label("method", ["GET", "POST"][combo % 2], &mut labels);
                encode_label("model", &format!("model-{}", combo / 97), &mut labels);
                encode_label("route", &format!("/v1/r{}", combo % 97), &mut labels);
                assert!(hashes.insert(hash(&labels)), "{combo} {le}");
            }
        }
    }
}
