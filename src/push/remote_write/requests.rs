//! A destination's series → its requests, conversion after conversion: each label set once
//! per snapshot and a stale marker for each that is gone (`staleness.rs`), in requests of
//! at most `max_series_per_request` series, and the one shortcut between conversions.
//!
//! The shortcut: pushed once a second, a snapshot usually has the previous one's series
//! in the same order, with new values. The uncompressed bodies of a conversion's requests
//! are kept for the next one (up to [`MAX_KEPT_BYTES`]), and while every series of that
//! next conversion so far is the previous one's at the same place, only its value and
//! timestamp are overwritten in place ([`RequestEncoder::overwrite`]) instead of writing
//! the series again. The caller can only state that a metric's series are the previous
//! snapshot's `first..first + count` ([`Writer::repeat`]); whether they are then
//! overwritten or written anew is decided here, by these conditions on series `i`:
//!
//! 1. The kept bodies hold the previous snapshot's series (the staleness list, [`Seen`])
//!    in its order from its first: every series the previous conversion sent was recorded
//!    at the place it was sent, and the other way round (not so after a hash collision
//!    sent a label set unrecorded, after a final push, or after a conversion that failed).
//! 2. They are a prefix of the previous conversion's bodies: past the bound, no later body
//!    is kept.
//! 3. Their samples' timestamps have varints as long as this conversion's.
//! 4. Every series of this conversion so far was overwritten in place, so the next series
//!    in the kept bodies is series `sent`; and `i` is `sent`.
//! 5. Series `i` is this snapshot's next in the staleness list ([`Tracking::repeat`]):
//!    nothing differed from the previous snapshot so far.
//!
//! Anything else writes the series anew; the unit tests (here and in `series_tests.rs`)
//! hold both paths to the same bytes as a conversion from scratch.

use super::encode::{timestamp_len, Body, EncodeError, RequestEncoder, STALE_NAN_BITS};
use super::negotiate::Protocol;
use super::queue::Batch;
use super::staleness::{Seen, Tracking};
use crate::exposition::snapshot::Family;

/// At most this many bytes of bodies are kept for the next conversion (about 70,000 series
/// of the proxy's families); the series after them are written anew each time.
const MAX_KEPT_BYTES: usize = 16 << 20;

/// What one destination's requests keep between conversions.
pub(crate) struct Requests {
    /// The series of the previous snapshot.
    seen: Seen,
    encoder: RequestEncoder,
    max_series_per_request: usize,
    max_kept_bytes: usize,
    /// Taken by each conversion, put back by its end: a conversion that fails half-way
    /// leaves none.
    kept: Kept,
}

/// The previous conversion's bodies, in order.
#[derive(Default)]
struct Kept {
    bodies: Vec<Body>,
    /// Whether they hold the previous snapshot's series in order (condition 1); if not,
    /// they serve as buffers only.
    in_order: bool,
    /// The length of their samples' timestamp varint (condition 3).
    timestamp_len: usize,
    /// Series the conversion that kept them overwrote in place.
    #[cfg(test)]
    overwritten: usize,
}

impl Requests {
    pub(crate) fn new(max_series_per_request: usize) -> Requests {
        Requests {
            seen: Seen::default(),
            encoder: RequestEncoder::default(),
            max_series_per_request: max_series_per_request.max(1),
            max_kept_bytes: MAX_KEPT_BYTES,
            kept: Kept::default(),
        }
    }

    /// The protocol of the requests from the next conversion on; the kept bodies, in the
    /// other protocol, are let go.
    pub(crate) fn set_protocol(&mut self, protocol: Protocol) {
        if self.encoder.protocol() != protocol {
            self.encoder.set_protocol(protocol);
            self.kept = Kept::default();
        }
    }

    pub(crate) fn protocol(&self) -> Protocol {
        self.encoder.protocol()
    }

    /// Learns the type and help of each family's series, for the protocol that sends them.
    pub(crate) fn describe(&mut self, families: &[Family]) {
        self.encoder.describe(families);
    }

    #[cfg(test)]
    pub(crate) fn set_max_kept_bytes(&mut self, max_kept_bytes: usize) {
        self.max_kept_bytes = max_kept_bytes;
    }

    /// Series the last regular conversion overwrote in place.
    #[cfg(test)]
    pub(crate) fn overwritten(&self) -> usize {
        self.kept.overwritten
    }

    /// Starts a conversion whose samples are at `timestamp_ms`.
    pub(crate) fn start(&mut self, timestamp_ms: i64) -> Writer<'_> {
        let Kept {
            mut bodies,
            in_order,
            timestamp_len: kept_timestamp_len,
            ..
        } = std::mem::take(&mut self.kept);
        let timestamp_len = timestamp_len(timestamp_ms);
        // The next on top.
        bodies.reverse();
        let mut body = bodies.pop().unwrap_or_default();
        let cursor =
            (in_order && kept_timestamp_len == timestamp_len && !body.is_empty()).then_some(0);
        if cursor.is_none() {
            body.clear();
        }
        Writer {
            tracking: self.seen.track(),
            in_order: true,
            kept: &mut self.kept,
            timestamp_ms,
            out: Bodies {
                encoder: &mut self.encoder,
                max_series: self.max_series_per_request,
                max_kept_bytes: self.max_kept_bytes,
                body,
                samples: 0,
                oldest_timestamp_ms: i64::MAX,
                cursor,
                previous: bodies,
                keeping: true,
                finished: Vec::new(),
                kept_bytes: 0,
                batches: Vec::new(),
                sent: 0,
                #[cfg(test)]
                overwritten: 0,
            },
        }
    }
}

/// One conversion's series going into requests.
pub(crate) struct Writer<'r> {
    tracking: Tracking<'r>,
    out: Bodies<'r>,
    /// Every series sent so far was recorded at the place it was sent, and the other way
    /// round (condition 1, for the next conversion).
    in_order: bool,
    kept: &'r mut Kept,
    timestamp_ms: i64,
}

impl Writer<'_> {
    /// Series of this snapshot so far: the place the next one takes in its list.
    pub(crate) fn position(&self) -> usize {
        self.tracking.position()
    }

    /// Sends a series, unless this exact label set already came in this snapshot (a strict
    /// receiver rejects a whole request with the same label set twice at one timestamp).
    pub(crate) fn add(&mut self, labels: &[u8], value: f64) -> Result<(), EncodeError> {
        if self.tracking.add(labels) {
            self.out.write(labels, value, self.timestamp_ms)?;
        }
        self.in_order &= self.out.sent == self.tracking.position();
        Ok(())
    }

    /// Sends `values` as the previous snapshot's series `first..first + count`, which the
    /// caller knows to have these series' label sets, if they are this snapshot's next
    /// ones: false, and nothing sent or recorded, if not.
    pub(crate) fn repeat(
        &mut self,
        first: usize,
        count: usize,
        values: impl IntoIterator<Item = f64>,
    ) -> Result<bool, EncodeError> {
        if !self.tracking.repeat(first, count) {
            return Ok(false);
        }
        for (i, v) in (first..first + count).zip(values) {
            if !self.out.overwrite(i, v, self.timestamp_ms)? {
                self.out
                    .write(self.tracking.previous(i), v, self.timestamp_ms)?;
            }
        }
        // Fewer values than series would leave series recorded but not sent.
        self.in_order &= self.out.sent == self.tracking.position();
        Ok(true)
    }

    /// Ends a regular conversion: stale markers for the series gone since the previous
    /// snapshot, then the requests in the order they must be sent.
    pub(crate) fn finish(self) -> Result<Vec<Batch>, EncodeError> {
        let Writer {
            tracking,
            mut out,
            in_order,
            kept,
            timestamp_ms,
        } = self;
        let stale = f64::from_bits(STALE_NAN_BITS);
        tracking.finish(|gone| out.write(gone, stale, timestamp_ms))?;
        out.flush()?;
        *kept = Kept {
            bodies: out.finished,
            in_order,
            timestamp_len: timestamp_len(timestamp_ms),
            #[cfg(test)]
            overwritten: out.overwritten,
        };
        Ok(out.batches)
    }

    /// Ends the conversion at shutdown: like [`finish`](Self::finish), then a stale marker
    /// for every series at `stale_at`, in requests of their own. Nothing is kept.
    pub(crate) fn finish_final(self, stale_at: i64) -> Result<Vec<Batch>, EncodeError> {
        let Writer {
            tracking,
            mut out,
            timestamp_ms,
            ..
        } = self;
        let stale = f64::from_bits(STALE_NAN_BITS);
        let seen = tracking.finish(|gone| out.write(gone, stale, timestamp_ms))?;
        out.flush()?;
        for series in seen.iter() {
            out.write(series, stale, stale_at)?;
        }
        seen.forget();
        out.flush()?;
        Ok(out.batches)
    }
}

/// The bodies of one conversion's requests, written anew or overwritten in the previous
/// conversion's.
struct Bodies<'r> {
    encoder: &'r mut RequestEncoder,
    max_series: usize,
    max_kept_bytes: usize,
    /// The request being written.
    body: Body,
    samples: u64,
    oldest_timestamp_ms: i64,
    /// While every series so far was overwritten in place (condition 4): where in `body`
    /// the next one starts.
    cursor: Option<usize>,
    /// The previous conversion's bodies still to come, the next on top; buffers to write
    /// in once the cursor is gone.
    previous: Vec<Body>,
    /// False from the first body past the bound on (condition 2).
    keeping: bool,
    /// This conversion's bodies kept for the next one, and their bytes.
    finished: Vec<Body>,
    kept_bytes: usize,
    batches: Vec<Batch>,
    /// Series sent so far.
    sent: usize,
    #[cfg(test)]
    overwritten: usize,
}

impl Bodies<'_> {
    /// Appends a series.
    fn write(&mut self, labels: &[u8], value: f64, timestamp_ms: i64) -> Result<(), EncodeError> {
        if let Some(at) = self.cursor.take() {
            // The rest of the previous series are not this conversion's.
            self.body.truncate(at, self.samples as usize);
        }
        self.encoder
            .write_series(&mut self.body, labels, value, timestamp_ms);
        self.sent_one(timestamp_ms)
    }

    /// Gives the series under the cursor, if it is series `i`, `value`; false if not.
    fn overwrite(&mut self, i: usize, value: f64, timestamp_ms: i64) -> Result<bool, EncodeError> {
        let Some(at) = self.cursor.filter(|_| i == self.sent) else {
            return Ok(false);
        };
        let Some(end) = (self.encoder).overwrite(&mut self.body.series, at, value, timestamp_ms)
        else {
            return Ok(false);
        };
        self.cursor = Some(end);
        #[cfg(test)]
        {
            self.overwritten += 1;
        }
        self.sent_one(timestamp_ms)?;
        Ok(true)
    }

    fn sent_one(&mut self, timestamp_ms: i64) -> Result<(), EncodeError> {
        self.sent += 1;
        self.samples += 1;
        self.oldest_timestamp_ms = self.oldest_timestamp_ms.min(timestamp_ms);
        if self.samples >= self.max_series as u64 {
            self.flush()?;
        }
        Ok(())
    }

    /// Compresses the body into a batch, keeps it if it fits, and starts the next one.
    fn flush(&mut self) -> Result<(), EncodeError> {
        if self.samples == 0 {
            return Ok(());
        }
        if let Some(at) = self.cursor {
            // The previous body had more series: they are not part of this one.
            self.body.truncate(at, self.samples as usize);
        }
        let batch =
            (self.encoder).compress_body(&self.body, self.samples, self.oldest_timestamp_ms)?;
        self.batches.push(batch);
        self.samples = 0;
        self.oldest_timestamp_ms = i64::MAX;
        self.keeping &= self.kept_bytes + self.body.series.len() <= self.max_kept_bytes;
        if !self.keeping {
            // Past the bound, the body is only a buffer for the next batch.
            self.cursor = None;
            self.previous = Vec::new();
            self.body.clear();
            return Ok(());
        }
        // Kept until the next conversion: without the slack of growing by doubling.
        let series = &self.body.series;
        if series.capacity() - series.len() > series.len() / 8 {
            self.body.shrink_to_fit();
        }
        self.kept_bytes += self.body.capacity();
        let mut next = self.previous.pop().unwrap_or_default();
        if self.cursor.is_some() && !next.is_empty() {
            self.cursor = Some(0);
        } else {
            self.cursor = None;
            next.clear();
        }
        self.finished.push(std::mem::replace(&mut self.body, next));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::remote_write::encode::{decode, encode_label};

    fn labels(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode_label("__name__", name, &mut out);
        out
    }

    /// Decodes batches into (name, value bits, timestamp) per series.
    fn series(batches: &[Batch]) -> Vec<(String, u64, i64)> {
        batches
            .iter()
            .flat_map(|b| decode(&b.body).unwrap().timeseries)
            .map(|t| {
                (
                    t.labels[0].value.clone(),
                    t.samples[0].value.to_bits(),
                    t.samples[0].timestamp,
                )
            })
            .collect()
    }

    /// One conversion of `names` with `value`, each stated as the previous conversion's
    /// series at its place when `repeat` (and added when that is refused): the batches, and
    /// how many series were overwritten in place.
    fn conversion(
        requests: &mut Requests,
        ts: i64,
        names: &[&str],
        value: f64,
        repeat: bool,
    ) -> (Vec<Batch>, usize) {
        let mut w = requests.start(ts);
        for (i, name) in names.iter().enumerate() {
            if !(repeat && w.repeat(i, 1, [value]).unwrap()) {
                w.add(&labels(name), value).unwrap();
            }
        }
        let overwritten = w.out.overwritten;
        (w.finish().unwrap(), overwritten)
    }

    fn expected(names: &[&str], value: f64, ts: i64) -> Vec<(String, u64, i64)> {
        (names.iter())
            .map(|&n| (n.to_string(), value.to_bits(), ts))
            .collect()
    }

    #[test]
    fn repeated_series_are_overwritten_in_place_across_batches() {
        let mut r = Requests::new(2);
        // "c" long enough for a series length of two varint bytes.
        let long = "c".repeat(200);
        let names = ["a", "b", long.as_str(), "d", "e"];
        let (batches, overwritten) = conversion(&mut r, 1_000, &names, 1.0, true);
        assert_eq!((batches.len(), overwritten), (3, 0));

        // Same series, new values: all overwritten, in batches of 2 as before.
        let (batches, overwritten) = conversion(&mut r, 1_001, &names, 2.0, true);
        assert_eq!(overwritten, 5);
        assert_eq!(
            batches.iter().map(|b| b.samples).collect::<Vec<_>>(),
            [2, 2, 1]
        );
        assert_eq!(series(&batches), expected(&names, 2.0, 1_001));

        // Three repeated, then something new: the rest is written anew, the old tail gone
        // (and marked stale).
        let mut w = r.start(1_002);
        for i in 0..3 {
            assert!(w.repeat(i, 1, [3.0]).unwrap());
        }
        w.add(&labels("x"), 9.0).unwrap();
        assert_eq!(w.out.overwritten, 3);
        let got = series(&w.finish().unwrap());
        let names: Vec<&str> = got.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", long.as_str(), "x", "d", "e"]);
        assert!(got.iter().all(|&(_, _, ts)| ts == 1_002));
        assert!(got[4..].iter().all(|&(_, v, _)| v == STALE_NAN_BITS));

        // Fewer series than last time: the last batch ends where the overwriting stopped.
        let mut w = r.start(1_003);
        assert!(w.repeat(0, 1, [4.0]).unwrap());
        let got = series(&w.finish().unwrap());
        assert_eq!(got[0], ("a".to_string(), 4f64.to_bits(), 1_003));
        assert_eq!(got.len(), 4, "then the stale markers of b, c, x");
    }

    #[test]
    fn only_bodies_within_the_bound_are_kept_and_overwritten() {
        let mut r = Requests::new(2);
        r.max_kept_bytes = 70;
        // Series of 31 bytes, two per batch: only the first batch's body fits the bound.
        let names = ["a", "b", "c", "d", "e"];
        conversion(&mut r, 1_000, &names, 1.0, true);
        let (batches, overwritten) = conversion(&mut r, 1_001, &names, 2.0, true);
        assert_eq!(overwritten, 2);
        assert_eq!(series(&batches), expected(&names, 2.0, 1_001));
        assert!(r.kept.bodies.len() == 1 && r.kept.bodies[0].capacity() <= 70);
    }

    #[test]
    fn a_body_after_one_past_the_bound_is_not_kept_though_it_fits() {
        let mut r = Requests::new(2);
        // The first body (62 bytes) fits, the second does not, the last (31) would.
        r.max_kept_bytes = 100;
        let names = ["a", "b", "c", "d", "e"];
        conversion(&mut r, 1_000, &names, 1.0, true);
        assert_eq!(r.kept.bodies.len(), 1);
        for k in 2..4 {
            let (batches, overwritten) = conversion(&mut r, 1_000 + k, &names, k as f64, true);
            assert_eq!(overwritten, 2);
            assert_eq!(series(&batches), expected(&names, k as f64, 1_000 + k));
        }
    }

    #[test]
    fn nothing_is_overwritten_after_a_final_push_or_when_the_timestamp_changes_length() {
        let mut r = Requests::new(10);
        conversion(&mut r, 100, &["a"], 1.0, true);
        // 100 takes one varint byte, 200 two: the old series cannot be overwritten in place.
        let (batches, overwritten) = conversion(&mut r, 200, &["a"], 2.0, true);
        assert_eq!(overwritten, 0);
        assert_eq!(series(&batches), expected(&["a"], 2.0, 200));
        let (_, overwritten) = conversion(&mut r, 201, &["a"], 3.0, true);
        assert_eq!(overwritten, 1);

        let mut w = r.start(202);
        assert!(w.repeat(0, 1, [4.0]).unwrap());
        let batches = w.finish_final(203).unwrap();
        assert_eq!(
            batches.len(),
            2,
            "the stale markers in a request of their own"
        );
        let mut stale = expected(&["a"], 4.0, 202);
        stale.push(("a".to_string(), STALE_NAN_BITS, 203));
        assert_eq!(series(&batches), stale);
        assert_eq!(r.seen.iter().count(), 0);
        // Every series was forgotten: none is next in line, and nothing is kept.
        let mut w = r.start(204);
        assert!(!w.repeat(0, 1, [5.0]).unwrap());
        w.add(&labels("a"), 5.0).unwrap();
        assert_eq!(w.out.overwritten, 0);
        assert_eq!(series(&w.finish().unwrap()), expected(&["a"], 5.0, 204));
    }

    #[test]
    fn a_timestamp_of_another_length_is_never_overwritten_even_where_bytes_look_like_a_sample() {
        let mut r = Requests::new(10);
        // With a sample field's key and the length of a sample with a 4-byte timestamp,
        // three bytes from their end, the labels of a series at 100 (one byte) hold what a
        // series at 2,100,000 would have in that place.
        let name = "a\u{12}\u{e}z";
        conversion(&mut r, 100, &[name], 1.0, true);
        let (batches, overwritten) = conversion(&mut r, 2_100_000, &[name], 2.0, true);
        assert_eq!(overwritten, 0);
        assert_eq!(series(&batches), expected(&[name], 2.0, 2_100_000));
    }

    #[test]
    fn a_conversion_that_sent_fewer_values_than_it_recorded_keeps_nothing_to_overwrite() {
        let mut r = Requests::new(10);
        conversion(&mut r, 1_000, &["a", "b"], 1.0, true);
        let mut w = r.start(1_001);
        assert!(w.repeat(0, 2, [2.0]).unwrap());
        assert!(!w.in_order);
        w.finish().unwrap();
        assert!(!r.kept.in_order);
        let (batches, overwritten) = conversion(&mut r, 1_002, &["a", "b"], 3.0, true);
        assert_eq!(overwritten, 0);
        assert_eq!(series(&batches), expected(&["a", "b"], 3.0, 1_002));
    }

    #[test]
    fn a_repeat_out_of_line_is_refused_and_after_a_written_series_none_is_overwritten() {
        let mut r = Requests::new(10);
        conversion(&mut r, 1_000, &["a", "b"], 1.0, false);
        let mut w = r.start(1_001);
        assert!(!w.repeat(1, 1, [2.0]).unwrap());
        w.add(&labels("a"), 2.0).unwrap();
        // In line, but `a` was written, not overwritten: `b` is written too.
        assert!(w.repeat(1, 1, [2.0]).unwrap());
        assert_eq!(w.out.overwritten, 0);
        // A label set already sent in this snapshot is not sent again.
        w.add(&labels("a"), 3.0).unwrap();
        assert_eq!(
            series(&w.finish().unwrap()),
            expected(&["a", "b"], 2.0, 1_001)
        );
    }

    #[test]
    fn an_empty_conversion_yields_no_batch() {
        let mut r = Requests::new(10);
        assert!(r.start(1_000).finish().unwrap().is_empty());
    }
}
