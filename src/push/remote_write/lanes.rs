//! Joining a backlog of whole snapshots into requests, and splitting such a join into lanes
//! that may be in flight at once.
//!
//! Remote-write 1.0 bodies are protobuf with only repeated fields, so the uncompressed
//! bodies of consecutive snapshots concatenate into one valid `WriteRequest` whose series
//! carry several samples in timestamp order ([`coalesce`]). One such request at a time
//! leaves the receiver idle for a round trip between requests; so a join of several
//! snapshots is cut into lanes ([`split`]): lane `l` carries the `l`-th part of each
//! snapshot's series, series `l * n / lanes .. (l + 1) * n / lanes` of its `n`, for every
//! snapshot of the join. Parts of one snapshot hold disjoint series, so the lanes of a join
//! may all be in flight together, retried in any order, without a series going back in
//! time, on one condition: the `i`-th series is the same in every snapshot of the join.
//! Otherwise (a series came or went mid-backlog) a series could sit in lane 1 in one
//! snapshot and in lane 2 in the next, and two lanes in flight would carry it at once. The
//! guard is a fingerprint of each snapshot's ordered label sets: the join ends before the
//! first snapshot whose fingerprint differs from the first one's, and the next join starts
//! there, after every lane of this one is answered (the order rule of `window.rs`).

use std::hash::Hasher;

use bytes::Bytes;

use super::negotiate::Protocol;
use super::queue::Batch;

/// Snapshots waiting, at least, before consecutive ones are joined. A joined request the
/// receiver committed but whose answer was lost (a kill between its commit and the
/// acknowledgement, a receiver stopped mid-answer) cannot be resent without older samples
/// than the newest it holds, which Prometheus rejects as out of order; a request of one
/// snapshot can (a duplicate). So a short backlog goes one snapshot per request (32 of
/// them take under 2 s through a 50 ms round trip), a long one in joined requests.
pub(super) const COALESCE_FROM: usize = 32;
/// Samples one joined request (one lane of a join) carries at most: the backlog of one
/// series goes one join at a time, so this times the lanes over the round trip is the
/// drain rate. 60,000 samples are about 500 KB compressed, 6 MB decoded.
pub(super) const MAX_COALESCED_SAMPLES: u64 = 60_000;
/// Compressed bytes of the batches one lane of a join carries at most.
pub(super) const MAX_COALESCED_BYTES: usize = 4 << 20;

/// The end of the run of whole snapshots at the front of `candidates` (the window's batches
/// from the first one to send on, each with whether it waits to be sent) that one join
/// carries, when a long backlog waits; `None` to send the first batch alone. A snapshot is
/// whole once a batch of a later one follows it (batches arrive in queue order), and never
/// split across joins. `lanes` scales the caps: each lane carries its share of every snapshot.
pub(super) fn whole_snapshots(candidates: &[(&Batch, bool)], lanes: usize) -> Option<usize> {
    let mut snapshots = 0;
    let mut last_ts = None;
    for (b, _) in candidates.iter().filter(|(_, waiting)| *waiting) {
        if last_ts != Some(b.oldest_timestamp_ms) {
            snapshots += 1;
            last_ts = Some(b.oldest_timestamp_ms);
        }
    }
    if snapshots < COALESCE_FROM {
        return None;
    }
    let max_samples = MAX_COALESCED_SAMPLES * lanes as u64;
    let max_bytes = MAX_COALESCED_BYTES * lanes;
    let (mut samples, mut bytes, mut end, mut joined) = (0u64, 0usize, 0, 0);
    while end < candidates.len() {
        let ts = candidates[end].0.oldest_timestamp_ms;
        let run = candidates[end..]
            .iter()
            .take_while(|(b, _)| b.oldest_timestamp_ms == ts)
            .count();
        let snapshot = &candidates[end..end + run];
        let complete = end + run < candidates.len();
        let all_waiting = snapshot
            .iter()
            .all(|(b, waiting)| *waiting && b.protocol == Protocol::V1);
        let run_samples: u64 = snapshot.iter().map(|(b, _)| b.samples).sum();
        let run_bytes: usize = snapshot.iter().map(|(b, _)| b.body.len()).sum();
        let fits = samples + run_samples <= max_samples && bytes + run_bytes <= max_bytes;
        if !complete || !all_waiting || !fits {
            break;
        }
        samples += run_samples;
        bytes += run_bytes;
        end += run;
        joined += 1;
    }
    // Two snapshots at least, or joining buys nothing.
    (joined >= 2).then_some(end)
}

/// The batches as one request: their uncompressed bodies concatenated. `None` when a body
/// does not decompress, or is not remote-write 1.0 (a 2.0 body has a symbol table of its
/// own: two do not concatenate into one).
pub(super) fn coalesce(batches: &[&Batch]) -> Option<Batch> {
    match batches {
        [] => None,
        [one] => Some((*one).clone()),
        many if many.iter().any(|b| b.protocol != Protocol::V1) => None,
        many => {
            let mut raw = Vec::new();
            for b in many {
                decompress_into(b, &mut raw)?;
            }
            compress(&raw, many.iter().map(|b| b.samples).sum(), oldest(many))
        }
    }
}

/// The join of `batches` (whole snapshots, in order) cut into `lanes` requests, each with
/// the same part of every snapshot's series; and how many batches from the front they
/// hold: the join ends before the first snapshot whose series differ from the first's.
/// `None` when that leaves fewer than two snapshots, or a body does not decompress or
/// parse (then the caller joins them whole or sends them alone).
pub(super) fn split(batches: &[&Batch], lanes: usize) -> Option<(usize, Vec<Batch>)> {
    if lanes < 2 || batches.iter().any(|b| b.protocol != Protocol::V1) {
        return None;
    }
    let mut parts: Vec<Vec<u8>> = vec![Vec::new(); lanes];
    let mut samples = vec![0u64; lanes];
    let mut first_fingerprint = None;
    let (mut taken, mut snapshots) = (0, 0);
    let mut raw = Vec::new();
    let mut series = Vec::new();
    while taken < batches.len() {
        let ts = batches[taken].oldest_timestamp_ms;
        let run = batches[taken..]
            .iter()
            .take_while(|b| b.oldest_timestamp_ms == ts)
            .count();
        raw.clear();
        for b in &batches[taken..taken + run] {
            decompress_into(b, &mut raw)?;
        }
        let fingerprint = walk(&raw, &mut series)?;
        if *first_fingerprint.get_or_insert(fingerprint) != fingerprint {
            break;
        }
        let n = series.len();
        for (l, part) in parts.iter_mut().enumerate() {
            let (from, to) = (l * n / lanes, (l + 1) * n / lanes);
            if from < to {
                part.extend_from_slice(&raw[series[from].0..series[to - 1].1]);
                samples[l] += (to - from) as u64;
            }
        }
        taken += run;
        snapshots += 1;
    }
    if snapshots < 2 {
        return None;
    }
    let oldest = oldest(&batches[..taken]);
    let out = parts
        .iter()
        .zip(samples)
        .filter(|(p, _)| !p.is_empty())
        .map(|(p, s)| compress(p, s, oldest))
        .collect::<Option<Vec<Batch>>>()?;
    Some((taken, out))
}

fn oldest(batches: &[&Batch]) -> i64 {
    batches
        .iter()
        .map(|b| b.oldest_timestamp_ms)
        .min()
        .unwrap_or(i64::MAX)
}

fn decompress_into(b: &Batch, raw: &mut Vec<u8>) -> Option<()> {
    let len = snap::raw::decompress_len(&b.body).ok()?;
    let at = raw.len();
    raw.resize(at + len, 0);
    snap::raw::Decoder::new()
        .decompress(&b.body, &mut raw[at..])
        .ok()?;
    Some(())
}

fn compress(raw: &[u8], samples: u64, oldest_timestamp_ms: i64) -> Option<Batch> {
    let body = snap::raw::Encoder::new().compress_vec(raw).ok()?;
    Some(Batch {
        body: Bytes::from(body),
        protocol: Protocol::V1,
        samples,
        oldest_timestamp_ms,
    })
}

/// The `WriteRequest`'s series as byte ranges of `raw` (each with its field key and
/// length), into `series`; and the fingerprint of their label sets in order. `None` when
/// `raw` is not a `WriteRequest` of series only.
fn walk(raw: &[u8], series: &mut Vec<(usize, usize)>) -> Option<u64> {
    const SERIES_KEY: u64 = 1 << 3 | 2; // field 1 (timeseries), length-delimited
    series.clear();
    // `DefaultHasher::new` has fixed keys: the same label sets give the same fingerprint
    // (64 bits: two different series lists in one backlog colliding is not a concern).
    let mut hash = std::hash::DefaultHasher::new();
    let mut at = 0;
    while at < raw.len() {
        let start = at;
        if read_varint(raw, &mut at)? != SERIES_KEY {
            return None;
        }
        let len = usize::try_from(read_varint(raw, &mut at)?).ok()?;
        let end = at.checked_add(len).filter(|&e| e <= raw.len())?;
        hash_labels(&raw[at..end], &mut hash)?;
        hash.write_u8(0xff); // between series: a label cannot move across
        series.push((start, end));
        at = end;
    }
    Some(hash.finish())
}

/// Feeds a `TimeSeries`'s label fields (field 1) into `hash`, skipping the rest.
fn hash_labels(ts: &[u8], hash: &mut impl Hasher) -> Option<()> {
    let mut at = 0;
    while at < ts.len() {
        let key = read_varint(ts, &mut at)?;
        let skip = match key & 7 {
            0 => {
                read_varint(ts, &mut at)?;
                0
            }
            1 => 8,
            2 => usize::try_from(read_varint(ts, &mut at)?).ok()?,
            5 => 4,
            _ => return None,
        };
        let end = at.checked_add(skip).filter(|&e| e <= ts.len())?;
        if key == (1 << 3 | 2) {
            hash.write_usize(skip);
            hash.write(&ts[at..end]);
        }
        at = end;
    }
    Some(())
}

/// The protobuf varint at `*at`, moving `*at` past it.
fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let (n, used) = super::wire::read_varint(bytes.get(*at..)?)?;
    *at += used;
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::remote_write::encode::{decode, encode_labels, RequestEncoder};

    /// A snapshot at `ts` of the series `names`, in batches of `per_batch`.
    fn snapshot(ts: i64, names: &[&str], per_batch: usize) -> Vec<Batch> {
        let mut enc = RequestEncoder::default();
        names
            .chunks(per_batch)
            .map(|chunk| {
                let mut body = Default::default();
                for n in chunk {
                    enc.write_series(&mut body, &encode_labels(&[("__name__", n)]), 1.0, ts);
                }
                enc.compress_body(&body, chunk.len() as u64, ts).unwrap()
            })
            .collect()
    }

    fn names_of(b: &Batch) -> Vec<(String, i64)> {
        decode(&b.body)
            .unwrap()
            .timeseries
            .into_iter()
            .map(|t| (t.labels[0].value.clone(), t.samples[0].timestamp))
            .collect()
    }

    #[test]
    fn each_lane_carries_the_same_part_of_every_snapshot_in_order() {
        let names = ["a", "b", "c", "d", "e"];
        let batches: Vec<Batch> = (1..=3).flat_map(|ts| snapshot(ts, &names, 2)).collect();
        let refs: Vec<&Batch> = batches.iter().collect();
        let (taken, lanes) = split(&refs, 2).unwrap();
        assert_eq!(taken, batches.len());
        let got: Vec<Vec<(String, i64)>> = lanes.iter().map(names_of).collect();
        let lane = |ns: &[&str]| -> Vec<(String, i64)> {
            (1..=3)
                .flat_map(|ts| ns.iter().map(move |n| (n.to_string(), ts)))
                .collect()
        };
        assert_eq!(got, [lane(&["a", "b"]), lane(&["c", "d", "e"])]);
        assert_eq!(lanes.iter().map(|b| b.samples).sum::<u64>(), 15);
        assert!(lanes.iter().all(|b| b.oldest_timestamp_ms == 1));
    }

    #[test]
    fn a_join_ends_before_the_first_snapshot_whose_series_differ() {
        let mut batches = snapshot(1, &["a", "b", "c"], 2);
        batches.extend(snapshot(2, &["a", "b", "c"], 2));
        let same = batches.len();
        // A series comes at the front: every other one moves by one place.
        batches.extend(snapshot(3, &["_", "a", "b", "c"], 2));
        let refs: Vec<&Batch> = batches.iter().collect();
        let (taken, _) = split(&refs, 2).unwrap();
        assert_eq!(taken, same);
        // From there on, alone, nothing to join: the caller takes the safe path.
        assert!(split(&refs[same..], 2).is_none());
    }

    #[test]
    fn a_body_that_is_not_a_write_request_is_not_split() {
        let raw = vec![7u8; 16];
        let junk = compress(&raw, 1, 1).unwrap();
        let junk2 = compress(&raw, 1, 2).unwrap();
        assert!(split(&[&junk, &junk2], 2).is_none());
    }
}
