//! The queue of a destination with `queue_dir`: on disk while the disk takes it, in memory
//! (under the same byte cap) when it does not, and never a reason to stop the proxy.
//!
//! - `queue_dir` unusable at start (not creatable, not writable, in use by another queue):
//!   the queue lives in memory, and every `RETRY_OPEN` a push tries to open the directory
//!   again. Once it opens, the memory part moves onto disk behind what the directory held.
//!   What it held is older than anything sent from memory meanwhile: if something was, a
//!   receiver would reject it as out of order, so it is dropped (counted `too_old`) instead.
//! - An append fails while running (disk full, I/O error): that batch and the ones after it
//!   queue in memory behind what is already on disk, so the order holds; the disk part keeps
//!   draining. Every `RETRY_DISK` a push tries to move the memory part back onto disk, in
//!   order, and the queue is durable again once it is empty.
//!
//! Either way `QueueStats::degraded` says so (the `codex_push_queue_degraded` gauge), with
//! one log line when it starts and one when it ends.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::disk::{DiskError, DiskQueue, Recovery};
use super::memory::MemoryQueue;
use super::{Batch, Dropped, Queue, QueueStats};

/// How often a degraded queue tries the disk again.
const RETRY_DISK: Duration = Duration::from_secs(30);
/// How often a queue whose directory was unusable at start tries to open it again.
const RETRY_OPEN: Duration = Duration::from_secs(60);

/// What opening the directory late found, for the destination's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reopened {
    pub(crate) recovery: Recovery,
    /// The directory's backlog, dropped: older than what was sent from memory meanwhile.
    pub(crate) superseded: Dropped,
}

pub(crate) struct DurableQueue {
    /// `None` when `queue_dir` was unusable at start.
    disk: Option<DiskQueue>,
    /// Batches that could not go to disk, newer than everything on disk.
    memory: MemoryQueue,
    max_bytes: u64,
    dir: PathBuf,
    /// Set while batches are (or must be) kept in memory.
    degraded_since: Option<Instant>,
    last_disk_try: Option<Instant>,
    retry_disk: Duration,
    /// When opening the directory was tried last (it was unusable at start).
    last_open_try: Option<Instant>,
    retry_open: Duration,
    /// Whether a batch was handed out from memory: then nothing older may follow it.
    sent_from_memory: bool,
    reopened: Option<Reopened>,
}

impl DurableQueue {
    /// Opens the queue in `dir`; falls back to memory (logged once) when the directory is
    /// unusable. The recovery says what was found on disk.
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> (DurableQueue, Recovery) {
        let opened = DiskQueue::open(dir, max_bytes);
        let failed_at = opened.is_err().then(Instant::now);
        let (disk, recovery, degraded_since) = match opened {
            Ok((disk, recovery)) => {
                if recovery.replayed.requests > 0 {
                    tracing::info!(
                        queue_dir = %dir.display(),
                        requests = recovery.replayed.requests,
                        samples = recovery.replayed.samples,
                        "durable queue: pending requests found; they are sent first, in order"
                    );
                }
                (Some(disk), recovery, None)
            }
            Err(e) => {
                tracing::error!(
                    queue_dir = %dir.display(),
                    "durable queue unusable ({e}); queueing in memory up to max_queue_bytes (which a restart loses), trying the directory again every {}s",
                    RETRY_OPEN.as_secs()
                );
                (None, Recovery::default(), Some(Instant::now()))
            }
        };
        let queue = DurableQueue {
            disk,
            memory: MemoryQueue::new(max_bytes),
            max_bytes,
            dir: dir.to_path_buf(),
            degraded_since,
            last_disk_try: None,
            retry_disk: RETRY_DISK,
            last_open_try: failed_at,
            retry_open: RETRY_OPEN,
            sent_from_memory: false,
            reopened: None,
        };
        (queue, recovery)
    }

    /// Tries the directory that was unusable at start, when due.
    fn try_open(&mut self) {
        let due = self
            .last_open_try
            .is_some_and(|t| t.elapsed() >= self.retry_open);
        if self.disk.is_some() || !due {
            return;
        }
        self.last_open_try = Some(Instant::now());
        let (mut disk, recovery) = match DiskQueue::open(&self.dir, self.max_bytes) {
            Ok(opened) => opened,
            Err(e) => {
                tracing::debug!(queue_dir = %self.dir.display(), "durable queue still unusable: {e}");
                return;
            }
        };
        let mut reopened = Reopened {
            recovery,
            superseded: Dropped::default(),
        };
        if self.sent_from_memory {
            while let Some(d) = disk.drop_oldest() {
                reopened.superseded.requests += d.requests;
                reopened.superseded.samples += d.samples;
            }
            while let Some(b) = disk.front() {
                reopened.superseded.requests += 1;
                reopened.superseded.samples += b.samples;
                disk.ack();
            }
            reopened.recovery.replayed = Dropped::default();
        }
        tracing::info!(
            queue_dir = %self.dir.display(),
            replayed_requests = reopened.recovery.replayed.requests,
            dropped_older_requests = reopened.superseded.requests,
            "durable queue: the directory is usable now; queueing on disk again"
        );
        self.disk = Some(disk);
        self.last_disk_try = None;
        self.reopened = Some(reopened);
    }

    fn disk_pending(&self) -> u64 {
        self.disk.as_ref().map_or(0, |d| d.stats().requests)
    }

    /// Appends to disk when possible; on failure switches to memory (logged once).
    fn push_to_disk(&mut self, batch: &Batch) -> Result<Dropped, ()> {
        let Some(disk) = &mut self.disk else {
            return Err(());
        };
        match disk.append(batch) {
            Ok(dropped) => Ok(dropped),
            Err(e) => {
                if self.degraded_since.is_none() {
                    self.degraded_since = Some(Instant::now());
                    log_degraded(&self.dir, &e);
                }
                self.last_disk_try = Some(Instant::now());
                Err(())
            }
        }
    }

    /// Moves the memory part onto disk, oldest first, while the disk takes it.
    fn try_back_to_disk(&mut self) {
        let due = self
            .last_disk_try
            .is_none_or(|t| t.elapsed() >= self.retry_disk);
        if self.disk.is_none() || !due {
            return;
        }
        // A batch handed out from memory is acknowledged in memory, and the disk would
        // hand it out a second time: wait until none is out.
        if self.memory.handed_out() > 0 {
            return;
        }
        self.last_disk_try = Some(Instant::now());
        while let Some(batch) = self.memory.first_unsent() {
            let Some(disk) = &mut self.disk else { return };
            if disk.append(batch).is_err() {
                return;
            }
            self.memory.take_unsent();
        }
        if let Some(since) = self.degraded_since.take() {
            tracing::info!(
                queue_dir = %self.dir.display(),
                after_seconds = since.elapsed().as_secs(),
                "durable queue: the disk takes appends again; queueing on disk"
            );
        }
    }

    /// Keeps disk and memory together under the cap, dropping the oldest (on disk) first.
    fn make_room(&mut self, incoming: u64) -> Dropped {
        let mut dropped = Dropped::default();
        let Some(disk) = &mut self.disk else {
            return dropped;
        };
        while disk.stats().bytes + self.memory.stats().bytes + incoming > self.max_bytes {
            match disk.drop_oldest() {
                Some(d) => {
                    dropped.requests += d.requests;
                    dropped.samples += d.samples;
                }
                None => break,
            }
        }
        dropped
    }
}

fn log_degraded(dir: &Path, e: &DiskError) {
    let why = if e.is_disk_full() {
        "the disk is full"
    } else {
        "the disk refused a write"
    };
    tracing::error!(
        queue_dir = %dir.display(),
        "durable queue degraded: {why} ({e}); new requests queue in memory up to max_queue_bytes until the disk takes them again"
    );
}

impl Queue for DurableQueue {
    fn push(&mut self, batch: Batch) -> Dropped {
        self.try_open();
        if self.degraded_since.is_some() {
            self.try_back_to_disk();
        }
        if self.degraded_since.is_none() {
            if let Ok(dropped) = self.push_to_disk(&batch) {
                return dropped;
            }
        }
        let mut dropped = self.make_room(batch.body.len() as u64);
        let d = self.memory.push(batch);
        dropped.requests += d.requests;
        dropped.samples += d.samples;
        dropped
    }

    fn front(&mut self) -> Option<Batch> {
        if let Some(batch) = self.disk.as_mut().and_then(|d| d.front()) {
            return Some(batch);
        }
        self.memory.front()
    }

    fn hand_out(&mut self) -> Option<Batch> {
        if let Some(batch) = self.disk.as_mut().and_then(|d| d.hand_out()) {
            return Some(batch);
        }
        let batch = self.memory.hand_out()?;
        self.sent_from_memory = true;
        Some(batch)
    }

    /// Disk records come before memory ones (memory moves to disk only while none of it is
    /// handed out), so the oldest handed-out batch is on disk when any disk record is out.
    fn ack(&mut self) {
        let disk_out = self.disk.as_ref().map_or(0, |d| d.handed_out());
        let on_disk = disk_out > 0 || (self.memory.handed_out() == 0 && self.disk_pending() > 0);
        if on_disk {
            if let Some(disk) = &mut self.disk {
                disk.ack();
            }
        } else {
            self.memory.ack();
        }
    }

    fn stats(&self) -> QueueStats {
        let memory = self.memory.stats();
        let Some(disk) = &self.disk else {
            return QueueStats {
                degraded: self.degraded_since.is_some(),
                ..memory
            };
        };
        let disk = disk.stats();
        QueueStats {
            bytes: disk.bytes + memory.bytes,
            requests: disk.requests + memory.requests,
            oldest_timestamp_ms: disk.oldest_timestamp_ms.or(memory.oldest_timestamp_ms),
            degraded: self.degraded_since.is_some(),
        }
    }

    fn take_reopened(&mut self) -> Option<Reopened> {
        self.reopened.take()
    }

    /// False while `queue_dir` is unusable (batches queued in memory while the disk is
    /// full are reported lost when the queue is dropped).
    fn is_durable(&self) -> bool {
        self.disk.is_some()
    }

    fn take_corrupt(&mut self) -> Dropped {
        self.disk
            .as_mut()
            .map_or_else(Dropped::default, |d| d.take_lost())
    }
}

impl Drop for DurableQueue {
    fn drop(&mut self) {
        let lost = self.memory.stats();
        if self.disk.is_some() && lost.requests > 0 {
            tracing::warn!(
                queue_dir = %self.dir.display(),
                requests = lost.requests,
                "durable queue: requests kept in memory while the disk refused them are lost at exit"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::remote_write::negotiate::Protocol;
    use bytes::Bytes;

    fn batch(n: u64) -> Batch {
        Batch {
            body: Bytes::from(vec![n as u8; 100]),
            protocol: Protocol::V1,
            samples: n,
            oldest_timestamp_ms: n as i64,
        }
    }

    fn drain(q: &mut DurableQueue) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(b) = q.front() {
            out.push(b.samples);
            q.ack();
        }
        out
    }

    fn dropped(requests: u64, samples: u64) -> Dropped {
        Dropped { requests, samples }
    }

    fn fail_appends(q: &mut DurableQueue, errno: Option<i32>) {
        q.disk.as_mut().unwrap().fail_appends = errno;
    }

    #[test]
    fn an_unusable_queue_dir_falls_back_to_a_bounded_memory_queue() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let (mut q, recovery) = DurableQueue::open(&file.join("queue"), 250);
        assert_eq!(recovery, Recovery::default());
        assert!(!q.is_durable());
        assert!(q.stats().degraded);
        q.push(batch(1));
        q.push(batch(2));
        assert_eq!(q.push(batch(3)), dropped(1, 1));
        assert_eq!(drain(&mut q), vec![2, 3]);
        assert!(
            q.stats().degraded,
            "stays degraded while the directory is unusable"
        );
        q.retry_open = Duration::ZERO;
        q.push(batch(4));
        assert!(q.stats().degraded, "still unusable");
        assert_eq!(drain(&mut q), vec![4]);
    }

    #[test]
    fn a_queue_dir_unusable_at_start_is_opened_later_and_the_memory_part_moves_onto_it() {
        let dir = tempfile::tempdir().unwrap();
        let (held, _) = DurableQueue::open(dir.path(), 1 << 20);
        let (mut q, _) = DurableQueue::open(dir.path(), 1 << 20);
        assert!(q.stats().degraded, "in use by another queue");
        q.retry_open = Duration::ZERO;
        q.push(batch(1));
        assert!(q.stats().degraded);
        drop(held);
        q.push(batch(2));
        assert!(
            !q.stats().degraded,
            "opened, and the memory part moved to disk"
        );
        assert!(q.is_durable());
        assert_eq!(
            q.take_reopened().map(|r| r.superseded),
            Some(Dropped::default())
        );
        drop(q);
        let (mut q, recovery) = DurableQueue::open(dir.path(), 1 << 20);
        assert_eq!(recovery.replayed.requests, 2);
        assert_eq!(drain(&mut q), vec![1, 2]);
    }

    #[test]
    fn a_backlog_found_late_is_dropped_when_newer_batches_were_sent_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let (mut held, _) = DurableQueue::open(dir.path(), 1 << 20);
        held.push(batch(1));
        held.push(batch(2));
        let (mut q, _) = DurableQueue::open(dir.path(), 1 << 20);
        q.retry_open = Duration::ZERO;
        q.push(batch(3));
        assert_eq!(q.hand_out().map(|b| b.samples), Some(3), "sent from memory");
        drop(held);
        q.push(batch(4));
        let reopened = q.take_reopened().unwrap();
        assert_eq!(reopened.superseded, dropped(2, 3));
        assert_eq!(drain(&mut q), vec![3, 4]);
    }

    #[test]
    fn a_full_disk_queues_new_batches_in_memory_behind_the_disk_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = DurableQueue::open(dir.path(), 1 << 20);
        q.push(batch(1));
        q.push(batch(2));
        fail_appends(&mut q, Some(rustix::io::Errno::NOSPC.raw_os_error()));
        q.push(batch(3));
        assert!(q.stats().degraded);
        assert_eq!(q.stats().requests, 3);
        assert_eq!(q.front().map(|b| b.samples), Some(1));
        q.ack();
        q.push(batch(4));
        assert_eq!(drain(&mut q), vec![2, 3, 4]);
    }

    #[test]
    fn once_the_disk_takes_appends_again_the_memory_part_moves_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = DurableQueue::open(dir.path(), 1 << 20);
        q.retry_disk = Duration::ZERO;
        q.push(batch(1));
        fail_appends(&mut q, Some(rustix::io::Errno::NOSPC.raw_os_error()));
        q.push(batch(2));
        q.push(batch(3));
        fail_appends(&mut q, None);
        q.push(batch(4));
        assert!(!q.stats().degraded);
        assert_eq!(q.memory.stats().requests, 0);
        drop(q);
        let (mut q, recovery) = DurableQueue::open(dir.path(), 1 << 20);
        assert_eq!(recovery.replayed.requests, 4);
        assert_eq!(drain(&mut q), vec![1, 2, 3, 4]);
    }

    #[test]
    fn the_cap_covers_disk_and_memory_together_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let record = 132; // 100-byte body + 32-byte header
        let (mut q, _) = DurableQueue::open(dir.path(), 2 * record + 50);
        q.push(batch(1));
        q.push(batch(2));
        fail_appends(&mut q, Some(rustix::io::Errno::IO.raw_os_error()));
        assert_eq!(q.push(batch(3)), dropped(1, 1));
        assert_eq!(drain(&mut q), vec![2, 3]);
    }

    #[test]
    fn a_batch_sent_from_memory_is_acknowledged_once_even_if_moved_to_disk_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = DurableQueue::open(dir.path(), 1 << 20);
        q.retry_disk = Duration::ZERO;
        fail_appends(&mut q, Some(rustix::io::Errno::NOSPC.raw_os_error()));
        q.push(batch(1));
        let sending = q.front();
        fail_appends(&mut q, None);
        q.push(batch(2)); // moves 1 onto disk, then appends 2
        assert_eq!(q.front(), sending);
        q.ack();
        assert_eq!(drain(&mut q), vec![2]);
    }

    /// A tmpfs of 256 KiB, unmounted on drop; `None` where mounting is not permitted.
    struct SmallDisk(tempfile::TempDir);

    impl SmallDisk {
        fn mount() -> Option<SmallDisk> {
            let dir = tempfile::tempdir().ok()?;
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
                .arg(dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            ok.then_some(SmallDisk(dir))
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.0.path())
                .status();
        }
    }

    #[test]
    fn a_really_full_disk_degrades_loses_nothing_and_recovers_once_drained() {
        let Some(disk) = SmallDisk::mount() else {
            // CI runs as root and requires every real resource, as for the test servers.
            assert_ne!(
                std::env::var("CODEX_PROXY_REQUIRE_SERVERS").as_deref(),
                Ok("1"),
                "mounting a 256 KiB tmpfs failed (needs root); CODEX_PROXY_REQUIRE_SERVERS=1 forbids skipping"
            );
            eprintln!("SKIPPED: mounting a tmpfs needs root");
            return;
        };
        let (mut q, _) = DurableQueue::open(&disk.0.path().join("q"), 64 << 20);
        q.retry_disk = Duration::ZERO;
        let big = |n: u64| Batch {
            body: Bytes::from(vec![n as u8; 30_000]),
            protocol: Protocol::V1,
            samples: n,
            oldest_timestamp_ms: n as i64,
        };
        let mut n = 0;
        while !q.stats().degraded {
            n += 1;
            assert_eq!(q.push(big(n)), Dropped::default());
            assert!(n < 100, "a 256 KiB disk never filled up");
        }
        q.push(big(n + 1));
        assert_eq!(drain(&mut q), (1..=n + 1).collect::<Vec<_>>());
        // The flusher thread may still hold a deleted segment open for a moment (its space
        // is freed only then): push until a batch lands on disk again.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = n + 1;
        while last == n + 1 || q.stats().degraded {
            assert!(
                Instant::now() < deadline,
                "space was freed, yet the queue stayed in memory"
            );
            std::thread::sleep(Duration::from_millis(20));
            last += 1;
            q.push(big(last));
        }
        drop(q);
        let (mut q, recovery) = DurableQueue::open(&disk.0.path().join("q"), 64 << 20);
        assert_eq!(
            recovery.corrupt,
            Dropped::default(),
            "a failed write left a torn record"
        );
        assert_eq!(drain(&mut q), (n + 2..=last).collect::<Vec<_>>());
    }
}
