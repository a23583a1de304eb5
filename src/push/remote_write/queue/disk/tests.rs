use std::fs::File;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{DiskError, DiskQueue, Recovery};
use crate::push::remote_write::negotiate::Protocol;
use crate::push::remote_write::queue::segment;
use crate::push::remote_write::queue::{Batch, Dropped, QueueStats};

const MIB: u64 = 1024 * 1024;
/// Bytes of a record holding a 100-byte batch: the body and its 32-byte header.
const RECORD: u64 = 132;

fn batch(n: u64, size: usize) -> Batch {
    let mut body = vec![0u8; size];
    body[..8].copy_from_slice(&n.to_le_bytes());
    Batch {
        body: Bytes::from(body),
        // Both record formats, so that every test also round-trips the protocol.
        protocol: if n.is_multiple_of(2) {
            Protocol::V2
        } else {
            Protocol::V1
        },
        samples: n,
        oldest_timestamp_ms: 1_000 * n as i64,
    }
}

fn dropped(requests: u64, samples: u64) -> Dropped {
    Dropped { requests, samples }
}

fn open(dir: &Path, max_bytes: u64) -> (DiskQueue, Recovery) {
    DiskQueue::open(dir, max_bytes).unwrap()
}

/// Opens the queue in `dir` and appends batches 1 to `count`, 100 bytes each.
fn open_filled(dir: &Path, max_bytes: u64, count: u64) -> DiskQueue {
    let (mut q, _) = open(dir, max_bytes);
    for n in 1..=count {
        q.append(&batch(n, 100)).unwrap();
    }
    q
}

/// Takes every batch, acknowledging each, and returns their numbers.
fn drain(q: &mut DiskQueue) -> Vec<u64> {
    let mut out = Vec::new();
    while let Some(b) = q.front() {
        out.push(b.samples);
        q.ack();
    }
    out
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// The segment holding data (the newest one of a closed queue is the empty writer).
fn data_segment(dir: &Path) -> PathBuf {
    segment_files(dir)
        .into_iter()
        .find(|p| std::fs::metadata(p).unwrap().len() > 0)
        .unwrap()
}

/// Inverts the byte at `at` of the data segment, as a failing disk would.
fn flip_byte(dir: &Path, at: u64) {
    let seg = data_segment(dir);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[at as usize] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
}

#[test]
fn batches_come_back_in_order_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut q, recovery) = open(dir.path(), MIB);
    assert_eq!(recovery, Recovery::default());
    for n in 1..=3 {
        assert_eq!(q.append(&batch(n, 100)).unwrap(), Dropped::default());
    }
    assert_eq!(q.stats().requests, 3);
    assert_eq!(q.stats().oldest_timestamp_ms, Some(1_000));
    drop(q);

    let (mut q, recovery) = open(dir.path(), MIB);
    assert_eq!(recovery.replayed, dropped(3, 6));
    assert_eq!(q.front(), Some(batch(1, 100)));
    assert_eq!(drain(&mut q), vec![1, 2, 3]);
    assert_eq!(q.stats(), QueueStats::default());
}

#[test]
fn acknowledged_batches_are_not_returned_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = open_filled(dir.path(), MIB, 3);
    q.front();
    q.ack();
    drop(q);
    let (mut q, recovery) = open(dir.path(), MIB);
    assert_eq!(recovery.replayed.requests, 2);
    assert_eq!(drain(&mut q), vec![2, 3]);
    drop(q);
    let (mut q, recovery) = open(dir.path(), MIB);
    assert_eq!(recovery.replayed, Dropped::default());
    assert_eq!(q.front(), None);
}

#[test]
fn a_batch_in_flight_at_a_crash_is_returned_again_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = open_filled(dir.path(), MIB, 2);
    assert_eq!(q.front().map(|b| b.samples), Some(1));
    drop(q); // killed while sending batch 1
    let (mut q, _) = open(dir.path(), MIB);
    assert_eq!(drain(&mut q), vec![1, 2]);
}

#[test]
fn new_batches_queue_behind_replayed_ones() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_filled(dir.path(), MIB, 1));
    let (mut q, _) = open(dir.path(), MIB);
    q.append(&batch(2, 100)).unwrap();
    assert_eq!(drain(&mut q), vec![1, 2]);
}

#[test]
fn a_tail_truncated_mid_record_is_counted_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_filled(dir.path(), MIB, 3));
    let seg = data_segment(dir.path());
    let len = std::fs::metadata(&seg).unwrap().len();
    File::options()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 50)
        .unwrap();

    let (mut q, recovery) = open(dir.path(), MIB);
    assert_eq!(recovery.corrupt, dropped(1, 3));
    assert_eq!(recovery.replayed, dropped(2, 3));
    q.append(&batch(4, 100)).unwrap();
    assert_eq!(drain(&mut q), vec![1, 2, 4]);
    drop(q);
    // Counted once: the damaged segment is gone with everything else delivered.
    let (_, recovery) = open(dir.path(), MIB);
    assert_eq!(recovery, Recovery::default());
}

#[test]
fn a_flipped_byte_in_the_middle_skips_only_that_record() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_filled(dir.path(), MIB, 3));
    flip_byte(dir.path(), RECORD + 60); // inside the second record's payload

    let (mut q, recovery) = open(dir.path(), MIB);
    assert_eq!(recovery.corrupt, dropped(1, 2));
    assert_eq!(drain(&mut q), vec![1, 3]);
}

#[test]
fn a_damaged_header_is_skipped_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_filled(dir.path(), MIB, 3));
    flip_byte(dir.path(), RECORD + 5); // the second record's length

    let (mut q, recovery) = open(dir.path(), MIB);
    assert_eq!(recovery.corrupt, dropped(1, 0));
    assert_eq!(drain(&mut q), vec![1, 3]);
}

#[test]
fn damage_in_delivered_records_is_not_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = open_filled(dir.path(), MIB, 2);
    q.front();
    q.ack();
    drop(q);
    flip_byte(dir.path(), 60); // the delivered first record
    let (mut q, recovery) = open(dir.path(), MIB);
    assert_eq!(recovery.corrupt, Dropped::default());
    assert_eq!(drain(&mut q), vec![2]);
}

#[test]
fn a_record_damaged_while_running_is_counted_lost_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = open_filled(dir.path(), MIB, 2);
    flip_byte(dir.path(), 60);
    // The rest of the segment goes with it: its records were verified once already.
    assert_eq!(q.front(), None);
    assert_eq!(q.take_lost(), dropped(2, 3));
    assert_eq!(q.stats(), QueueStats::default());
    q.append(&batch(3, 100)).unwrap();
    assert_eq!(drain(&mut q), vec![3]);
}

#[test]
fn an_unreadable_segment_is_counted_and_the_others_delivered() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_filled(dir.path(), MIB, 1));
    // Unreadable as a file, whoever runs the test.
    std::fs::create_dir(dir.path().join(segment::file_name(5))).unwrap();
    let (mut q, recovery) = open(dir.path(), MIB);
    assert_eq!(recovery.corrupt, dropped(1, 0));
    assert_eq!(drain(&mut q), vec![1]);
}

#[test]
fn segments_rotate_and_are_deleted_once_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (mut q, _) = open(dir.path(), MIB); // 64 KiB segments
    for n in 1..=10 {
        q.append(&batch(n, 20_000)).unwrap();
    }
    assert!(
        segment_files(dir.path()).len() >= 4,
        "{:?}",
        segment_files(dir.path())
    );
    for _ in 0..5 {
        q.front();
        q.ack();
    }
    let halfway = segment_files(dir.path()).len();
    assert!(halfway < 4, "delivered segments were kept: {halfway}");
    assert_eq!(drain(&mut q), vec![6, 7, 8, 9, 10]);
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "only the segment being written stays"
    );
    drop(q);
    let (mut q, _) = open(dir.path(), MIB);
    assert_eq!(q.front(), None);
}

#[test]
fn past_the_cap_the_oldest_batches_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut q, _) = open(dir.path(), 3 * RECORD);
    for n in 1..=3 {
        assert_eq!(q.append(&batch(n, 100)).unwrap(), Dropped::default());
    }
    assert_eq!(q.append(&batch(4, 100)).unwrap(), dropped(1, 1));
    assert_eq!(q.stats().bytes, 3 * RECORD);
    drop(q);
    let (mut q, _) = open(dir.path(), 3 * RECORD);
    assert_eq!(
        drain(&mut q),
        vec![2, 3, 4],
        "a dropped batch came back after reopen"
    );
}

#[test]
fn the_cap_spares_the_batch_in_flight_and_remembers_what_it_dropped_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = open_filled(dir.path(), 2 * RECORD, 2);
    assert_eq!(q.front().map(|b| b.samples), Some(1));
    assert_eq!(q.append(&batch(3, 100)).unwrap(), dropped(1, 2));
    drop(q); // crash while 1 is in flight
    let (mut q, recovery) = open(dir.path(), 2 * RECORD);
    assert_eq!(recovery.replayed, dropped(2, 4));
    assert_eq!(drain(&mut q), vec![1, 3]);
}

#[test]
fn a_batch_larger_than_the_cap_is_dropped_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut q, _) = open(dir.path(), 200);
    assert_eq!(q.append(&batch(1, 100)).unwrap(), Dropped::default());
    assert_eq!(q.append(&batch(2, 300)).unwrap(), dropped(2, 3));
    assert_eq!(q.stats(), QueueStats::default());
    q.append(&batch(3, 100)).unwrap();
    assert_eq!(drain(&mut q), vec![3]);
}

#[test]
fn a_lowered_cap_drops_the_oldest_at_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_filled(dir.path(), MIB, 4));
    let (mut q, recovery) = open(dir.path(), 2 * RECORD);
    assert_eq!(recovery.over_cap, dropped(2, 3));
    assert_eq!(recovery.replayed, dropped(2, 7));
    assert_eq!(drain(&mut q), vec![3, 4]);
}

#[test]
fn a_directory_can_serve_one_queue_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (_q, _) = open(dir.path(), MIB);
    assert!(matches!(
        DiskQueue::open(dir.path(), MIB),
        Err(DiskError::Locked { .. })
    ));
}

#[test]
fn a_queue_dir_that_cannot_be_created_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    assert!(matches!(
        DiskQueue::open(&file.join("queue"), MIB),
        Err(DiskError::Io { .. })
    ));
}

#[test]
fn an_unreadable_ack_file_means_resending_not_losing() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = open_filled(dir.path(), MIB, 2);
    q.front();
    q.ack();
    drop(q);
    std::fs::write(dir.path().join("ack"), "garbage").unwrap(); // neither slot valid
    let (mut q, _) = open(dir.path(), MIB);
    assert_eq!(drain(&mut q), vec![1, 2]);
}

#[test]
fn several_handed_out_are_acknowledged_in_order_and_a_crash_resends_from_the_oldest_unacked() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = open_filled(dir.path(), MIB, 5);
    let out: Vec<u64> = std::iter::from_fn(|| q.hand_out())
        .take(3)
        .map(|b| b.samples)
        .collect();
    assert_eq!(out, vec![1, 2, 3]);
    assert_eq!(q.handed_out(), 3);
    q.ack(); // 1 delivered
    assert_eq!(q.stats().requests, 4);
    drop(q); // killed with 2 and 3 out
    let (mut q, recovery) = open(dir.path(), MIB);
    assert_eq!(recovery.replayed.requests, 4);
    assert_eq!(drain(&mut q), vec![2, 3, 4, 5]);
}

#[test]
fn the_cap_never_drops_a_handed_out_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = open_filled(dir.path(), 3 * RECORD, 3);
    assert_eq!(q.hand_out().map(|b| b.samples), Some(1));
    assert_eq!(q.hand_out().map(|b| b.samples), Some(2));
    let d = q.append(&batch(4, 100)).unwrap();
    assert_eq!(d, dropped(1, 3), "the oldest not handed out goes");
    assert_eq!(q.hand_out().map(|b| b.samples), Some(4));
    assert_eq!(drain(&mut q), vec![1, 2, 4]);
}

#[test]
fn the_record_in_flight_at_a_crash_is_handed_out_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = open_filled(dir.path(), MIB, 3);
    assert_eq!(q.hand_out().map(|b| b.samples), Some(1));
    drop(q);
    let (mut q, _) = open(dir.path(), MIB);
    let out: Vec<u64> = std::iter::from_fn(|| q.hand_out())
        .map(|b| b.samples)
        .collect();
    assert_eq!(out, vec![1, 2, 3]);
}
