use super::*;
use bytes::Bytes;

use super::lanes::{COALESCE_FROM, MAX_COALESCED_SAMPLES};
use crate::push::remote_write::negotiate::Protocol;
use crate::push::self_metrics::DropReason;

const MS: Duration = Duration::from_millis(1);

/// A batch of snapshot `ts` whose uncompressed body is `tag` repeated.
fn batch(ts: i64, tag: u8) -> Batch {
    let raw = vec![tag; 16];
    Batch {
        body: Bytes::from(snap::raw::Encoder::new().compress_vec(&raw).unwrap()),
        protocol: Protocol::V1,
        samples: 1,
        oldest_timestamp_ms: ts,
    }
}

fn window(max_in_flight: usize) -> Window {
    Window::new(
        Limits::new(max_in_flight, None, None, 1 << 30),
        10 * MS,
        100 * MS,
    )
}

fn raw(b: &Batch) -> Vec<u8> {
    snap::raw::Decoder::new().decompress_vec(&b.body).unwrap()
}

/// Every request that may go now.
fn all_due(w: &mut Window, now: Instant) -> Vec<Dispatch> {
    std::iter::from_fn(|| w.next_request(now, 0)).collect()
}

#[test]
fn the_requests_of_one_snapshot_go_together_up_to_the_limit() {
    let mut w = window(4);
    w.extend((0..6).map(|i| batch(100, i)).collect());
    let now = Instant::now();
    let sent = all_due(&mut w, now);
    assert_eq!(sent.len(), 4, "four in flight at once");
    assert_eq!(w.in_flight(), 4);
    let answered = w.answered(sent[2].id, &Verdict::Delivered, now);
    assert_eq!(answered.samples, 1);
    assert_eq!(all_due(&mut w, now).len(), 1, "one slot freed");
    assert_eq!(w.sync().acks, 0, "the front is not answered yet");
}

#[test]
fn a_later_snapshot_waits_until_every_earlier_request_is_answered() {
    let mut w = window(4);
    w.extend(vec![batch(100, 1), batch(100, 2), batch(200, 3)]);
    let now = Instant::now();
    let first = all_due(&mut w, now);
    assert_eq!(
        first.len(),
        2,
        "snapshot 200 shares series with 100: it waits"
    );
    w.answered(first[1].id, &Verdict::Delivered, now);
    assert!(
        all_due(&mut w, now).is_empty(),
        "one of snapshot 100 is open"
    );
    w.answered(first[0].id, &Verdict::Drop(DropReason::Rejected), now);
    let next = all_due(&mut w, now);
    assert_eq!(next.len(), 1);
    assert_eq!(raw(&next[0].batch), vec![3; 16]);
    assert_eq!(
        w.sync().acks,
        2,
        "answered front batches are acknowledged in order"
    );
}

#[test]
fn a_retry_keeps_its_place_and_holds_back_later_snapshots() {
    let mut w = window(4);
    w.extend(vec![batch(100, 1), batch(200, 2)]);
    let now = Instant::now();
    let first = all_due(&mut w, now);
    assert_eq!(first.len(), 1, "200 waits for 100");
    w.answered(
        first[0].id,
        &Verdict::Retry {
            after: None,
            rate_limited: false,
        },
        now,
    );
    assert!(all_due(&mut w, now).is_empty(), "nothing passes a retry");
    let later = now + Duration::from_secs(1);
    let again = all_due(&mut w, later);
    assert_eq!(again.len(), 1);
    assert!(again[0].retry);
    assert_eq!(again[0].batch, first[0].batch, "resent byte for byte");
    w.answered(again[0].id, &Verdict::Delivered, later);
    let next = all_due(&mut w, later);
    assert_eq!(next.len(), 1);
    assert_eq!(raw(&next[0].batch), vec![2; 16]);
}

/// `n` snapshots of one batch each, tagged 0, 1, 2, ...
fn backlog(n: usize) -> Vec<Batch> {
    (0..n)
        .map(|i| batch(100 * (i as i64 + 1), i as u8))
        .collect()
}

#[test]
fn a_long_backlog_of_whole_snapshots_coalesces_into_one_request_in_order() {
    let mut w = window(4);
    w.extend(backlog(COALESCE_FROM));
    let sent = all_due(&mut w, Instant::now());
    assert_eq!(sent.len(), 1);
    // The last snapshot in the window may still have batches to come: it waits.
    let joined = COALESCE_FROM - 1;
    let expected: Vec<u8> = (0..joined as u8).flat_map(|i| [i; 16]).collect();
    assert_eq!(raw(&sent[0].batch), expected);
    assert_eq!(sent[0].batch.samples, joined as u64);
    assert_eq!(sent[0].batch.oldest_timestamp_ms, 100);
}

#[test]
fn max_in_flight_1_never_joins_snapshots() {
    let mut w = window(1);
    w.extend(backlog(2 * COALESCE_FROM));
    let sent = all_due(&mut w, Instant::now());
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].batch.samples, 1);
}

#[test]
fn a_short_backlog_goes_one_snapshot_per_request() {
    let mut w = window(4);
    w.extend(backlog(COALESCE_FROM - 1));
    let sent = all_due(&mut w, Instant::now());
    assert_eq!(sent.len(), 1, "the next snapshot waits for this one");
    assert_eq!(raw(&sent[0].batch), vec![0; 16]);
}

#[test]
fn a_snapshot_of_several_requests_is_joined_whole_or_not_at_all() {
    let mut w = window(2);
    let mut batches = vec![batch(50, 1), batch(60, 2), batch(60, 3)];
    batches.extend(backlog(COALESCE_FROM));
    w.extend(batches);
    let sent = all_due(&mut w, Instant::now());
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].batch.samples, 3 + COALESCE_FROM as u64 - 1);
    let mut raw_expected = vec![1; 16];
    raw_expected.extend([2; 16]);
    raw_expected.extend([3; 16]);
    assert!(raw(&sent[0].batch).starts_with(&raw_expected));
}

#[test]
fn joining_stops_before_a_snapshot_that_would_pass_the_sample_cap() {
    let mut w = window(2);
    let mut big: Vec<Batch> = backlog(COALESCE_FROM + 1);
    for b in &mut big {
        b.samples = MAX_COALESCED_SAMPLES / 3;
    }
    w.extend(big);
    let sent = all_due(&mut w, Instant::now());
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].batch.samples, 3 * (MAX_COALESCED_SAMPLES / 3));
}

#[test]
fn a_429_halves_the_limit_and_each_success_adds_one() {
    let mut w = window(8);
    w.extend((0..20).map(|i| batch(100, i)).collect());
    let now = Instant::now();
    let sent = all_due(&mut w, now);
    assert_eq!(sent.len(), 8);
    let rate_limited = Verdict::Retry {
        after: Some(Duration::from_secs(2)),
        rate_limited: true,
    };
    w.answered(sent[0].id, &rate_limited, now);
    assert_eq!(w.limit(), 4);
    w.answered(sent[1].id, &rate_limited, now);
    assert_eq!(w.limit(), 2);
    for d in &sent[2..4] {
        w.answered(d.id, &Verdict::Delivered, now);
    }
    assert_eq!(w.limit(), 4);
    assert_eq!(
        w.next_timer(now),
        None,
        "4 in flight: only an answer frees a slot"
    );
    for d in &sent[4..] {
        w.answered(d.id, &Verdict::Delivered, now);
    }
    assert_eq!(w.limit(), 8);
    assert!(
        all_due(&mut w, now + Duration::from_secs(1)).is_empty(),
        "Retry-After holds back new requests too"
    );
    assert_eq!(w.next_timer(now), Some(now + Duration::from_secs(2)));
}

#[test]
fn batches_older_than_max_sample_age_are_dropped_at_send_time() {
    let mut w = Window::new(
        Limits::new(4, Some(Duration::from_secs(60)), None, 1 << 30),
        10 * MS,
        100 * MS,
    );
    let now_ms = 1_000_000;
    w.extend(vec![
        batch(now_ms - 120_000, 1),
        batch(now_ms - 61_000, 2),
        batch(now_ms - 1_000, 3),
    ]);
    assert_eq!(w.drop_too_old(now_ms), 2);
    let sent: Vec<Dispatch> =
        std::iter::from_fn(|| w.next_request(Instant::now(), now_ms)).collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(raw(&sent[0].batch), vec![3; 16]);
    assert_eq!(w.sync().acks, 2);
}

#[test]
fn the_byte_rate_spaces_requests() {
    let mut w = Window::new(Limits::new(4, None, Some(1000), 1 << 30), 10 * MS, 100 * MS);
    w.extend((0..3).map(|i| batch(100, i)).collect());
    let now = Instant::now();
    let sent = all_due(&mut w, now);
    assert_eq!(sent.len(), 1, "the first request spends the budget");
    let len = sent[0].batch.body.len() as f64;
    let next = w.next_timer(now).unwrap();
    let gap = next.duration_since(now).as_secs_f64();
    assert!((gap - len / 1000.0).abs() < 1e-3, "{gap}");
    assert_eq!(all_due(&mut w, next).len(), 1);
}

#[test]
fn no_timer_while_the_limit_is_reached_so_the_sender_waits_for_an_answer() {
    let mut w = window(1);
    w.extend(vec![batch(100, 1), batch(100, 2)]);
    let now = Instant::now();
    let sent = all_due(&mut w, now);
    assert_eq!(sent.len(), 1);
    assert_eq!(w.next_timer(now), None);
    w.answered(
        sent[0].id,
        &Verdict::Retry {
            after: None,
            rate_limited: false,
        },
        now,
    );
    let next = w.next_timer(now).expect("the retry");
    assert!(next > now);
    assert_eq!(
        w.next_timer(next + Duration::from_secs(1)),
        None,
        "due: nothing to wait for"
    );
}

#[test]
fn remote_write_2_0_batches_are_never_joined() {
    let mut w = window(4);
    let mut batches = backlog(2 * COALESCE_FROM);
    for b in &mut batches {
        b.protocol = Protocol::V2;
    }
    w.extend(batches);
    let sent = all_due(&mut w, Instant::now());
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].batch.samples, 1,
        "a 2.0 body has its own symbol table"
    );
}

/// A real snapshot at `ts` of the series `names`, in batches of `per_batch` series.
fn snapshot(ts: i64, names: &[String], per_batch: usize) -> Vec<Batch> {
    use crate::push::remote_write::encode::{encode_labels, RequestEncoder};
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

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:02}")).collect()
}

/// The (series, timestamp) pairs of a request, in body order.
fn samples_of(d: &Dispatch) -> Vec<(String, i64)> {
    crate::push::remote_write::encode::decode(&d.batch.body)
        .unwrap()
        .timeseries
        .into_iter()
        .map(|t| (t.labels[0].value.clone(), t.samples[0].timestamp))
        .collect()
}

/// Requests in flight together share no series, and each carries a series' samples in
/// timestamp order.
fn assert_disjoint_and_ordered(in_flight: &[Dispatch]) {
    let mut owner: HashMap<String, usize> = HashMap::new();
    for (i, d) in in_flight.iter().enumerate() {
        let mut last: HashMap<String, i64> = HashMap::new();
        for (name, ts) in samples_of(d) {
            let o = *owner.entry(name.clone()).or_insert(i);
            assert_eq!(o, i, "{name} is in two requests in flight at once");
            if let Some(prev) = last.insert(name.clone(), ts) {
                assert!(ts > prev, "{name}: {ts} after {prev}");
            }
        }
    }
}

use std::collections::HashMap;

#[test]
fn the_lanes_of_a_join_are_in_flight_together_with_disjoint_series() {
    let mut w = window(4);
    let series = names("s", 10);
    w.extend((1..=40).flat_map(|ts| snapshot(ts, &series, 6)).collect());
    let now = Instant::now();
    let lanes = all_due(&mut w, now);
    assert_eq!(lanes.len(), 4, "one request per lane, all at once");
    assert!(lanes.iter().all(|d| !d.retry));
    assert_disjoint_and_ordered(&lanes);
    // The last snapshot may still have batches to come: 39 joined, 10 series each.
    assert_eq!(lanes.iter().map(|d| d.batch.samples).sum::<u64>(), 390);
    assert_eq!(
        samples_of(&lanes[0]).len() + samples_of(&lanes[3]).len(),
        39 * 5
    );
    // A lane retried keeps every later snapshot back, and so do the lanes unanswered.
    let retry = Verdict::Retry {
        after: None,
        rate_limited: false,
    };
    w.answered(lanes[1].id, &retry, now);
    for d in [&lanes[0], &lanes[2]] {
        w.answered(d.id, &Verdict::Delivered, now);
    }
    assert_eq!(
        w.sync().acks,
        0,
        "a join is acknowledged once all its lanes are"
    );
    let later = now + Duration::from_secs(1);
    let again = all_due(&mut w, later);
    assert_eq!(again.len(), 1, "only the retry: lane 3 is still in flight");
    assert!(again[0].retry && again[0].batch == lanes[1].batch);
    w.answered(again[0].id, &Verdict::Delivered, later);
    assert!(all_due(&mut w, later).is_empty());
    w.answered(lanes[3].id, &Verdict::Delivered, later);
    assert_eq!(w.sync().acks, 2 * 39);
}

#[test]
fn a_series_set_change_mid_backlog_ends_the_join_before_it() {
    let mut w = window(4);
    let before = names("s", 10);
    // A series that sorts first: every other one moves one place on.
    let mut after = vec!["a".to_string()];
    after.extend(before.iter().cloned());
    let mut batches: Vec<Batch> = (1..=40).flat_map(|ts| snapshot(ts, &before, 6)).collect();
    batches.extend((41..=80).flat_map(|ts| snapshot(ts, &after, 6)));
    w.extend(batches);
    let now = Instant::now();
    let first = all_due(&mut w, now);
    assert_eq!(first.len(), 4);
    assert_disjoint_and_ordered(&first);
    let newest = first
        .iter()
        .flat_map(samples_of)
        .map(|(_, ts)| ts)
        .max()
        .unwrap();
    assert_eq!(
        newest, 40,
        "the join ends before the first changed snapshot"
    );
    for d in &first {
        w.answered(d.id, &Verdict::Delivered, now);
    }
    let second = all_due(&mut w, now);
    assert_disjoint_and_ordered(&second);
    let oldest = (second.iter().flat_map(samples_of))
        .map(|(_, ts)| ts)
        .min()
        .unwrap();
    assert_eq!(oldest, 41);
}
