//! A disk-backed FIFO of encoded requests for one destination, in its own directory.
//!
//! Layout of the directory:
//! - `<seq>.seg`: segment files of records (format in `segment.rs`), appended in order and
//!   rotated at `segment_bytes`; each run of the process appends to a fresh segment, so a
//!   torn tail left by a crash is never followed by new data.
//! - `ack`: where delivery stands (`ack.rs`), rewritten on every acknowledgement or drop.
//! - `lock`: held with `flock` while a process uses the directory (`lock.rs`).
//!
//! Durability: a record is written before `append` returns, so it survives a process kill;
//! the flusher thread (`flusher.rs`) fdatasyncs it milliseconds later, so it survives a
//! power loss too unless that comes within those milliseconds. The `ack` file is not
//! synced: after a power loss a few delivered requests may be sent again (same samples,
//! same timestamps), never lost. A segment is deleted once every record in it is
//! acknowledged or dropped.
//!
//! The queue keeps no per-record index in memory: only per-segment counts, the position of
//! the next record and the one batch in flight, so memory stays flat however long the
//! backlog grows.
//!
//! The code follows the queue's life: `open.rs` scans the directory and finds where
//! delivery stood, `append.rs` writes records at the tail, `read.rs` hands them out,
//! acknowledges and drops them at the head. This file holds the state they share and the
//! bookkeeping both ends do: the live counts, the stored ack position, deleting consumed
//! segments.

mod append;
mod lock;
mod open;
mod read;

use std::collections::VecDeque;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::io::Errno;

use super::ack::{AckFile, Acked, Pos};
use super::flusher::Flusher;
use super::segment::{self, Header};
use super::{Batch, Dropped, QueueStats};

pub(crate) use open::Recovery;

#[derive(Debug, thiserror::Error)]
pub(crate) enum DiskError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is in use by another codex-proxy queue (each destination needs its own queue_dir)"
    )]
    Locked { path: PathBuf },
    #[error("a request of {bytes} bytes is too large for a queue record")]
    TooLarge { bytes: usize },
}

impl DiskError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
        move |source| DiskError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// True when the disk is full (ENOSPC, EDQUOT).
    pub(crate) fn is_disk_full(&self) -> bool {
        matches!(self, DiskError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(e) if e == Errno::NOSPC.raw_os_error() || e == Errno::DQUOT.raw_os_error()))
    }
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    /// Bytes of the file that belong to the queue.
    end: u64,
    /// Damaged regions found by the scan at open; reading jumps over them.
    skips: Vec<Range<u64>>,
    /// Records not yet acknowledged or dropped: count, bytes, samples.
    live: Dropped,
    live_bytes: u64,
}

impl Segment {
    fn empty(seq: u64) -> Segment {
        Segment {
            seq,
            end: 0,
            skips: Vec::new(),
            live: Dropped::default(),
            live_bytes: 0,
        }
    }
}

/// A record handed out by `front` or `hand_out` (or found in flight at open), until `ack`.
struct InFlight {
    pos: Pos,
    header: Header,
    /// `None` for a record found in flight at open and not read yet.
    batch: Option<Batch>,
    /// Whether `hand_out` returned it already (false for the one found in flight at open,
    /// so that the sender gets it first).
    given: bool,
}

pub(crate) struct DiskQueue {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    /// The segment new records go to; `None` after a failed write, until the next append
    /// opens a fresh one.
    writer: Option<(u64, Arc<File>)>,
    /// The highest segment number used so far.
    last_seq: u64,
    /// The directory itself, synced after a segment is created so its name survives.
    dir_handle: Arc<File>,
    flusher: Flusher,
    ack: AckFile,
    next: Pos,
    /// Header of the record at `next`; `None` when nothing waits behind the one in flight.
    next_header: Option<Header>,
    /// Records handed out and not acknowledged, oldest first; all before `next`.
    out: VecDeque<InFlight>,
    reader: Option<(u64, File)>,
    live: Dropped,
    live_bytes: u64,
    /// Records found damaged while running (after open), not yet reported.
    lost: Dropped,
    ack_write_failed: bool,
    _lock: File,
    /// Test hook: appends fail with this errno, as on a full disk.
    #[cfg(test)]
    pub(super) fail_appends: Option<i32>,
}

impl std::fmt::Debug for DiskQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskQueue")
            .field("dir", &self.dir)
            .field("requests", &self.live.requests)
            .field("bytes", &self.live_bytes)
            .finish_non_exhaustive()
    }
}

impl DiskQueue {
    pub(crate) fn stats(&self) -> QueueStats {
        QueueStats {
            bytes: self.live_bytes,
            requests: self.live.requests,
            oldest_timestamp_ms: self
                .out
                .front()
                .map(|f| f.header)
                .or(self.next_header)
                .map(|h| h.oldest_timestamp_ms),
            degraded: false,
        }
    }

    /// Records found damaged while running, since the last call.
    pub(crate) fn take_lost(&mut self) -> Dropped {
        std::mem::take(&mut self.lost)
    }

    fn queued_behind_in_flight(&self) -> u64 {
        self.live.requests - self.out.len() as u64
    }

    /// Records handed out and not acknowledged yet.
    pub(crate) fn handed_out(&self) -> usize {
        self.out.len()
    }

    /// Drops the oldest queued requests while over the cap, but never one handed out.
    fn drop_over_cap(&mut self) -> Dropped {
        let mut dropped = Dropped::default();
        while self.live_bytes > self.max_bytes && self.queued_behind_in_flight() > 0 {
            match self.drop_oldest() {
                Some(d) => {
                    dropped.requests += d.requests;
                    dropped.samples += d.samples;
                }
                None => break,
            }
        }
        dropped
    }

    /// Takes a delivered or dropped record out of the counts.
    fn forget(&mut self, seq: u64, header: Header) {
        if let Some(seg) = self.segments.iter_mut().find(|s| s.seq == seq) {
            seg.live.requests -= 1;
            seg.live.samples -= header.samples;
            seg.live_bytes -= header.record_len();
        }
        self.live.requests -= 1;
        self.live.samples -= header.samples;
        self.live_bytes -= header.record_len();
    }

    /// Stores the delivery position; a failure is logged once and retried on the next change
    /// (until then a restart would resend a few delivered requests, never lose any).
    fn persist_ack(&mut self) {
        // With several records out, a restart resends from the oldest of them: the ones
        // after it were handed out in order, so nothing pending is skipped. Those already
        // delivered go again with the same samples and timestamps, which receivers take as
        // duplicates; the sender never lets a later request of the same series out before
        // an earlier one is answered, so no resend can go back in time.
        let acked = match self.out.len() {
            0 | 1 => Acked {
                next: self.next,
                in_flight: self.out.front().map(|f| f.pos),
            },
            _ => Acked {
                next: self.out.front().map_or(self.next, |f| f.pos),
                in_flight: None,
            },
        };
        match self.ack.write(&acked) {
            Ok(()) if self.ack_write_failed => {
                self.ack_write_failed = false;
                tracing::info!(queue_dir = %self.dir.display(), "durable queue: ack position written again");
            }
            Ok(()) => {}
            Err(e) if !self.ack_write_failed => {
                self.ack_write_failed = true;
                tracing::warn!(queue_dir = %self.dir.display(), "durable queue: cannot write the ack position: {e}; a restart may resend delivered requests");
            }
            Err(_) => {}
        }
    }

    /// Deletes segments that hold nothing pending any more (only the one being written
    /// can still gain records).
    fn delete_consumed_segments(&mut self) {
        let writer = self.writer.as_ref().map(|(s, _)| *s);
        let consumed: Vec<u64> = self
            .segments
            .iter()
            .filter(|s| s.live.requests == 0 && Some(s.seq) != writer)
            .map(|s| s.seq)
            .collect();
        for seq in consumed {
            self.remove_segment_file(seq);
            self.segments.retain(|s| s.seq != seq);
        }
        self.next = self.normalize(self.next);
    }

    fn remove_segment_file(&mut self, seq: u64) {
        if self.reader.as_ref().is_some_and(|(s, _)| *s == seq) {
            self.reader = None;
        }
        let path = self.dir.join(segment::file_name(seq));
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), "durable queue: cannot delete a delivered segment: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests;
