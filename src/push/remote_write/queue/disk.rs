//! A disk-backed FIFO of encoded requests for one destination, in its own directory.
//!
//! Layout of the directory:
//! - `<seq>.seg`: segment files of records (format in `segment.rs`), appended in order and
//!   rotated at `segment_bytes`; each run of the process appends to a fresh segment, so a
//!   torn tail left by a crash is never followed by new data.
//! - `ack`: where delivery stands (`ack.rs`), rewritten on every acknowledgement or drop.
//! - `lock`: held with `flock` while a process uses the directory.
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

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

use super::ack::{AckFile, Acked, Loaded, Pos};
use super::flusher::Flusher;
use super::segment::{self, Found, Header, HEADER_LEN};
use super::{Batch, Dropped, QueueStats};

/// Largest segment file, so fully delivered space is given back in steps of at most this.
const MAX_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// Smallest segment file, so a tiny cap does not mean a file per request.
const MIN_SEGMENT_BYTES: u64 = 64 * 1024;
/// How long a busy `lock` is tried before the directory counts as used by another queue.
const LOCK_ATTEMPTS: u32 = 10;
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
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
    pub fn is_disk_full(&self) -> bool {
        matches!(self, DiskError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(e) if e == Errno::NOSPC.raw_os_error() || e == Errno::DQUOT.raw_os_error()))
    }
}

/// What `open` found in the directory.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Pending requests (and their samples) that will be sent again, oldest first.
    pub replayed: Dropped,
    /// Corrupt regions skipped, and the samples of those whose header was still readable.
    pub corrupt: Dropped,
    /// Dropped because the queue held more than `max_bytes` (the cap was lowered).
    pub over_cap: Dropped,
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

/// The record handed out by `front` (or found in flight at open), until `ack`.
struct InFlight {
    pos: Pos,
    header: Header,
    /// `None` for a record found in flight at open and not read yet.
    batch: Option<Batch>,
}

pub struct DiskQueue {
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
    in_flight: Option<InFlight>,
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
    /// Opens (creating it if needed) the queue in `dir`, verifies every pending record and
    /// positions the queue at the oldest one not yet delivered.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(DiskQueue, Recovery), DiskError> {
        std::fs::create_dir_all(dir).map_err(DiskError::io(dir))?;
        let lock = lock_dir(dir)?;
        let ack_path = dir.join("ack");
        let (ack, loaded) = AckFile::open(&ack_path).map_err(DiskError::io(&ack_path))?;
        let acked = match loaded {
            Loaded::Found(acked) => acked,
            Loaded::Fresh => Acked::default(),
            Loaded::Unreadable => {
                tracing::warn!(path = %ack_path.display(), "durable queue: the ack position is unreadable; resending everything queued");
                Acked::default()
            }
        };
        let dir_handle = File::open(dir).map_err(DiskError::io(dir))?;
        let flusher = Flusher::start(format!("queue-sync-{}", short_name(dir)))
            .map_err(DiskError::io(dir))?;
        let mut seqs = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(DiskError::io(dir))? {
            let entry = entry.map_err(DiskError::io(dir))?;
            if let Some(seq) = entry
                .file_name()
                .to_str()
                .and_then(segment::parse_file_name)
            {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();

        let mut queue = DiskQueue {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes: (max_bytes / 16).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES),
            segments: VecDeque::new(),
            writer: None,
            last_seq: 0,
            dir_handle: Arc::new(dir_handle),
            flusher,
            ack,
            next: acked.next,
            next_header: None,
            in_flight: None,
            reader: None,
            live: Dropped::default(),
            live_bytes: 0,
            lost: Dropped::default(),
            ack_write_failed: false,
            _lock: lock,
            #[cfg(test)]
            fail_appends: None,
        };
        let mut recovery = Recovery::default();
        let mut damaged_files = Vec::new();
        for &seq in &seqs {
            if seq < acked.next.seq && acked.in_flight.map(|p| p.seq) != Some(seq) {
                queue.remove_segment_file(seq);
                continue;
            }
            let path = dir.join(segment::file_name(seq));
            let buf = match std::fs::read(&path) {
                Ok(buf) => buf,
                Err(e) => {
                    // Left in place for inspection; the rest of the queue still goes out.
                    tracing::warn!(path = %path.display(), "durable queue: cannot read a segment ({e}); its requests are lost");
                    recovery.corrupt.requests += 1;
                    continue;
                }
            };
            let mut seg = Segment {
                seq,
                end: buf.len() as u64,
                skips: Vec::new(),
                live: Dropped::default(),
                live_bytes: 0,
            };
            for found in segment::scan(&buf) {
                match found {
                    Found::Record { offset, header } => {
                        let pos = Pos { seq, offset };
                        if acked.in_flight == Some(pos) {
                            queue.in_flight = Some(InFlight {
                                pos,
                                header,
                                batch: None,
                            });
                        } else if pos < acked.next {
                            continue; // delivered or dropped before
                        }
                        seg.live.requests += 1;
                        seg.live.samples += header.samples;
                        seg.live_bytes += header.record_len();
                    }
                    Found::Corrupt { range, samples } => {
                        let pending = Pos {
                            seq,
                            offset: range.end,
                        } > acked.next
                            || acked
                                .in_flight
                                .is_some_and(|p| p.seq == seq && range.contains(&p.offset));
                        if pending {
                            recovery.corrupt.requests += 1;
                            recovery.corrupt.samples += samples;
                            if damaged_files.last() != Some(&seq) {
                                damaged_files.push(seq);
                            }
                        }
                        seg.skips.push(range);
                    }
                }
            }
            queue.live.requests += seg.live.requests;
            queue.live.samples += seg.live.samples;
            queue.live_bytes += seg.live_bytes;
            queue.segments.push_back(seg);
        }
        if !damaged_files.is_empty() {
            let names: Vec<String> = damaged_files
                .iter()
                .map(|&s| segment::file_name(s))
                .collect();
            tracing::warn!(
                queue_dir = %dir.display(),
                "durable queue: skipped {} torn or corrupt record(s) holding {} sample(s) in {}; everything else will be delivered",
                recovery.corrupt.requests,
                recovery.corrupt.samples,
                names.join(", ")
            );
        }

        // Sequence numbers only grow, even when every segment was deleted.
        queue.last_seq = seqs
            .last()
            .copied()
            .into_iter()
            .chain([acked.next.seq])
            .chain(acked.in_flight.map(|p| p.seq))
            .max()
            .unwrap_or(0);
        queue.open_writer()?;
        queue.next = queue.normalize(queue.next);
        queue.refresh_next_header();
        recovery.replayed = queue.live;
        while queue.live_bytes > max_bytes && queue.queued_behind_in_flight() > 0 {
            match queue.drop_oldest() {
                Some(d) => {
                    recovery.over_cap.requests += d.requests;
                    recovery.over_cap.samples += d.samples;
                }
                None => break,
            }
        }
        recovery.replayed.requests -= recovery.over_cap.requests;
        recovery.replayed.samples -= recovery.over_cap.samples;
        queue.persist_ack();
        queue.delete_consumed_segments();
        Ok((queue, recovery))
    }

    /// Appends a batch (written before returning, synced by the flusher right after), then
    /// drops the oldest queued requests while over the cap, but never the one in flight (a
    /// batch larger than the whole cap goes at once, like in the memory queue: it could
    /// never fit). On error the batch is not queued and the caller keeps it.
    pub fn append(&mut self, batch: &Batch) -> Result<Dropped, DiskError> {
        #[cfg(test)]
        if let Some(errno) = self.fail_appends {
            return Err(DiskError::Io {
                path: self.dir.clone(),
                source: std::io::Error::from_raw_os_error(errno),
            });
        }
        if let Some(source) = self.flusher.take_error() {
            self.writer = None;
            return Err(DiskError::Io {
                path: self.dir.clone(),
                source,
            });
        }
        let header = Header::for_payload(&batch.body, batch.samples, batch.oldest_timestamp_ms)
            .ok_or(DiskError::TooLarge {
                bytes: batch.body.len(),
            })?;
        let len = header.record_len();
        let write_end = self.segments.back().map_or(0, |s| s.end);
        let rotate = match &self.writer {
            None => true,
            Some(_) => write_end > 0 && write_end + len > self.segment_bytes,
        };
        if rotate {
            self.open_writer()?;
        }
        let Some((seq, file)) = &self.writer else {
            unreachable!("open_writer succeeded")
        };
        let seq = *seq;
        let offset = self.segments.back().map_or(0, |s| s.end);
        let mut record = Vec::with_capacity(len as usize);
        record.extend_from_slice(&header.encode());
        record.extend_from_slice(&batch.body);
        if let Err(source) = file.write_all_at(&record, offset) {
            // Take back what may have reached the file, and never append after it again.
            let _ = file.set_len(offset);
            self.writer = None;
            return Err(DiskError::Io {
                path: self.dir.join(segment::file_name(seq)),
                source,
            });
        }
        self.flusher.mark_dirty(file);
        let seg = self.segments.back_mut().expect("the writer's segment");
        seg.end += len;
        seg.live.requests += 1;
        seg.live.samples += batch.samples;
        seg.live_bytes += len;
        self.live.requests += 1;
        self.live.samples += batch.samples;
        self.live_bytes += len;
        if self.next_header.is_none() {
            self.next = self.normalize(self.next);
            self.refresh_next_header();
        }

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
        Ok(dropped)
    }

    /// The oldest unacknowledged batch; the same one until `ack`.
    pub fn front(&mut self) -> Option<Batch> {
        if let Some(f) = &self.in_flight {
            if let Some(batch) = &f.batch {
                return Some(batch.clone());
            }
            let (pos, header) = (f.pos, f.header);
            match self.read_payload(pos, header) {
                Some(body) => {
                    let batch = batch_of(header, body);
                    if let Some(f) = &mut self.in_flight {
                        f.batch = Some(batch.clone());
                    }
                    return Some(batch);
                }
                None => {
                    self.in_flight = None;
                    self.forget(pos.seq, header);
                    self.note_lost(
                        pos,
                        Dropped {
                            requests: 1,
                            samples: header.samples,
                        },
                    );
                    self.persist_ack();
                }
            }
        }
        loop {
            let header = self.next_header?;
            let pos = self.next;
            match self.read_payload(pos, header) {
                Some(body) => {
                    let batch = batch_of(header, body);
                    self.in_flight = Some(InFlight {
                        pos,
                        header,
                        batch: Some(batch.clone()),
                    });
                    self.advance_next(header);
                    return Some(batch);
                }
                None => self.abandon_rest_of_segment(),
            }
        }
    }

    /// Removes the front batch: delivered, or deliberately dropped.
    pub fn ack(&mut self) {
        if self.in_flight.is_none() && self.front().is_none() {
            return;
        }
        if let Some(f) = self.in_flight.take() {
            self.forget(f.pos.seq, f.header);
        }
        self.persist_ack();
        self.delete_consumed_segments();
    }

    pub fn stats(&self) -> QueueStats {
        QueueStats {
            bytes: self.live_bytes,
            requests: self.live.requests,
            oldest_timestamp_ms: self
                .in_flight
                .as_ref()
                .map(|f| f.header)
                .or(self.next_header)
                .map(|h| h.oldest_timestamp_ms),
            degraded: false,
        }
    }

    /// Drops the oldest request that is not in flight; `None` when there is none.
    pub fn drop_oldest(&mut self) -> Option<Dropped> {
        let header = self.next_header?;
        // Out of the counts first: moving on may find damage and count what is left.
        self.forget(self.next.seq, header);
        self.advance_next(header);
        self.persist_ack();
        self.delete_consumed_segments();
        Some(Dropped {
            requests: 1,
            samples: header.samples,
        })
    }

    /// Records found damaged while running, since the last call.
    pub fn take_lost(&mut self) -> Dropped {
        std::mem::take(&mut self.lost)
    }

    fn queued_behind_in_flight(&self) -> u64 {
        self.live.requests - u64::from(self.in_flight.is_some())
    }

    fn open_writer(&mut self) -> Result<(), DiskError> {
        let seq = self.last_seq + 1;
        let path = self.dir.join(segment::file_name(seq));
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(DiskError::io(&path))?;
        // The new name must survive a power loss too, or its synced records would be lost.
        self.flusher.mark_dirty(&self.dir_handle);
        self.segments.push_back(Segment {
            seq,
            end: 0,
            skips: Vec::new(),
            live: Dropped::default(),
            live_bytes: 0,
        });
        self.writer = Some((seq, Arc::new(file)));
        self.last_seq = seq;
        Ok(())
    }

    /// Moves `pos` past damaged regions and segment ends to the next record, or to the end
    /// of the last segment when nothing is left.
    fn normalize(&self, mut pos: Pos) -> Pos {
        for seg in &self.segments {
            if seg.seq < pos.seq {
                continue;
            }
            if seg.seq > pos.seq {
                pos = Pos {
                    seq: seg.seq,
                    offset: 0,
                };
            }
            while let Some(skip) = seg.skips.iter().find(|r| r.contains(&pos.offset)) {
                pos.offset = skip.end;
            }
            if pos.offset < seg.end {
                return pos;
            }
        }
        self.segments.back().map_or(pos, |s| Pos {
            seq: s.seq,
            offset: s.end,
        })
    }

    /// Reads the header at `next`; a damaged one abandons the rest of its segment.
    fn refresh_next_header(&mut self) {
        loop {
            let pos = self.next;
            let in_range = self
                .segments
                .iter()
                .find(|s| s.seq == pos.seq)
                .is_some_and(|s| pos.offset < s.end);
            if !in_range {
                self.next_header = None;
                return;
            }
            let mut buf = [0u8; HEADER_LEN];
            let header = self
                .read_at(pos, &mut buf)
                .ok()
                .and_then(|()| Header::decode(&buf));
            match header {
                Some(h) => {
                    self.next_header = Some(h);
                    return;
                }
                None => self.abandon_rest_of_segment(),
            }
        }
    }

    fn advance_next(&mut self, header: Header) {
        self.next.offset += header.record_len();
        self.next = self.normalize(self.next);
        self.refresh_next_header();
    }

    /// Reading at `next` failed (I/O error or a record damaged after it was verified):
    /// every pending record from there to the end of its segment is counted lost.
    fn abandon_rest_of_segment(&mut self) {
        let pos = self.next;
        let in_flight_here = self
            .in_flight
            .as_ref()
            .filter(|f| f.pos.seq == pos.seq)
            .map(|f| f.header);
        let Some(seg) = self.segments.iter_mut().find(|s| s.seq == pos.seq) else {
            return;
        };
        let mut lost = seg.live;
        let mut lost_bytes = seg.live_bytes;
        if let Some(h) = in_flight_here {
            lost.requests -= 1;
            lost.samples -= h.samples;
            lost_bytes -= h.record_len();
        }
        seg.live.requests -= lost.requests;
        seg.live.samples -= lost.samples;
        seg.live_bytes -= lost_bytes;
        seg.end = pos.offset;
        self.live.requests -= lost.requests;
        self.live.samples -= lost.samples;
        self.live_bytes -= lost_bytes;
        if self.writer.as_ref().is_some_and(|(s, _)| *s == pos.seq) {
            self.writer = None;
        }
        self.note_lost(pos, lost);
        self.next = self.normalize(Pos {
            seq: pos.seq + 1,
            offset: 0,
        });
        self.next_header = None;
        self.persist_ack();
    }

    fn note_lost(&mut self, pos: Pos, lost: Dropped) {
        tracing::warn!(
            queue_dir = %self.dir.display(),
            "durable queue: cannot read {} at offset {}; {} request(s) with {} sample(s) are lost",
            segment::file_name(pos.seq),
            pos.offset,
            lost.requests,
            lost.samples
        );
        self.lost.requests += lost.requests;
        self.lost.samples += lost.samples;
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

    fn read_payload(&mut self, pos: Pos, header: Header) -> Option<Bytes> {
        let mut body = vec![0u8; header.payload_len as usize];
        let payload_pos = Pos {
            seq: pos.seq,
            offset: pos.offset + HEADER_LEN as u64,
        };
        self.read_at(payload_pos, &mut body).ok()?;
        header.payload_matches(&body).then(|| Bytes::from(body))
    }

    fn read_at(&mut self, pos: Pos, buf: &mut [u8]) -> std::io::Result<()> {
        if self.reader.as_ref().map(|(s, _)| *s) != Some(pos.seq) {
            let file = File::open(self.dir.join(segment::file_name(pos.seq)))?;
            self.reader = Some((pos.seq, file));
        }
        match &self.reader {
            Some((_, file)) => file.read_exact_at(buf, pos.offset),
            None => unreachable!("reader just opened"),
        }
    }

    /// Stores the delivery position; a failure is logged once and retried on the next change
    /// (until then a restart would resend a few delivered requests, never lose any).
    fn persist_ack(&mut self) {
        let acked = Acked {
            next: self.next,
            in_flight: self.in_flight.as_ref().map(|f| f.pos),
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

/// The directory's last component, to name the flusher thread.
fn short_name(dir: &Path) -> String {
    let name = dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    name.chars().take(8).collect()
}

fn batch_of(header: Header, body: Bytes) -> Batch {
    Batch {
        body,
        samples: header.samples,
        oldest_timestamp_ms: header.oldest_timestamp_ms,
    }
}

/// Takes an exclusive `flock` on `<dir>/lock`, so two queues never share a directory.
///
/// A child process being spawned (the worker, any command) shares our descriptors from its
/// fork until its exec closes them, and with them a lock we just released: a busy lock is
/// therefore tried again for a moment before it counts as held by another queue.
fn lock_dir(dir: &Path) -> Result<File, DiskError> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(DiskError::io(&path))?;
    for attempt in 0..LOCK_ATTEMPTS {
        // Released when `file` is closed.
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(file),
            Err(Errno::WOULDBLOCK) => {}
            Err(e) => {
                return Err(DiskError::Io {
                    path,
                    source: e.into(),
                })
            }
        }
        if attempt + 1 < LOCK_ATTEMPTS {
            std::thread::sleep(LOCK_RETRY);
        }
    }
    Err(DiskError::Locked {
        path: dir.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: u64, size: usize) -> Batch {
        let mut body = vec![0u8; size];
        body[..8].copy_from_slice(&n.to_le_bytes());
        Batch {
            body: Bytes::from(body),
            samples: n,
            oldest_timestamp_ms: 1_000 * n as i64,
        }
    }

    fn open(dir: &Path, max_bytes: u64) -> (DiskQueue, Recovery) {
        DiskQueue::open(dir, max_bytes).unwrap()
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

    const MIB: u64 = 1024 * 1024;

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
        assert_eq!(
            recovery.replayed,
            Dropped {
                requests: 3,
                samples: 6
            }
        );
        assert_eq!(q.front(), Some(batch(1, 100)));
        assert_eq!(drain(&mut q), vec![1, 2, 3]);
        assert_eq!(q.stats(), QueueStats::default());
    }

    #[test]
    fn acknowledged_batches_are_not_returned_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = open(dir.path(), MIB);
        for n in 1..=3 {
            q.append(&batch(n, 100)).unwrap();
        }
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
        let (mut q, _) = open(dir.path(), MIB);
        q.append(&batch(1, 100)).unwrap();
        q.append(&batch(2, 100)).unwrap();
        assert_eq!(q.front().map(|b| b.samples), Some(1));
        drop(q); // killed while sending batch 1
        let (mut q, _) = open(dir.path(), MIB);
        assert_eq!(drain(&mut q), vec![1, 2]);
    }

    #[test]
    fn new_batches_queue_behind_replayed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = open(dir.path(), MIB);
        q.append(&batch(1, 100)).unwrap();
        drop(q);
        let (mut q, _) = open(dir.path(), MIB);
        q.append(&batch(2, 100)).unwrap();
        assert_eq!(drain(&mut q), vec![1, 2]);
    }

    #[test]
    fn a_tail_truncated_mid_record_is_counted_and_the_rest_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = open(dir.path(), MIB);
        for n in 1..=3 {
            q.append(&batch(n, 100)).unwrap();
        }
        drop(q);
        let seg = data_segment(dir.path());
        let len = std::fs::metadata(&seg).unwrap().len();
        File::options()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 50)
            .unwrap();

        let (mut q, recovery) = open(dir.path(), MIB);
        assert_eq!(
            recovery.corrupt,
            Dropped {
                requests: 1,
                samples: 3
            }
        );
        assert_eq!(
            recovery.replayed,
            Dropped {
                requests: 2,
                samples: 3
            }
        );
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
        let (mut q, _) = open(dir.path(), MIB);
        for n in 1..=3 {
            q.append(&batch(n, 100)).unwrap();
        }
        drop(q);
        let seg = data_segment(dir.path());
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[132 + 60] ^= 0xff; // inside the second record's payload
        std::fs::write(&seg, bytes).unwrap();

        let (mut q, recovery) = open(dir.path(), MIB);
        assert_eq!(
            recovery.corrupt,
            Dropped {
                requests: 1,
                samples: 2
            }
        );
        assert_eq!(drain(&mut q), vec![1, 3]);
    }

    #[test]
    fn a_damaged_header_is_skipped_and_the_rest_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = open(dir.path(), MIB);
        for n in 1..=3 {
            q.append(&batch(n, 100)).unwrap();
        }
        drop(q);
        let seg = data_segment(dir.path());
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[132 + 5] ^= 0xff; // the second record's length
        std::fs::write(&seg, bytes).unwrap();

        let (mut q, recovery) = open(dir.path(), MIB);
        assert_eq!(
            recovery.corrupt,
            Dropped {
                requests: 1,
                samples: 0
            }
        );
        assert_eq!(drain(&mut q), vec![1, 3]);
    }

    #[test]
    fn damage_in_delivered_records_is_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = open(dir.path(), MIB);
        for n in 1..=2 {
            q.append(&batch(n, 100)).unwrap();
        }
        q.front();
        q.ack();
        drop(q);
        let seg = data_segment(dir.path());
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[60] ^= 0xff; // the delivered first record
        std::fs::write(&seg, bytes).unwrap();
        let (mut q, recovery) = open(dir.path(), MIB);
        assert_eq!(recovery.corrupt, Dropped::default());
        assert_eq!(drain(&mut q), vec![2]);
    }

    #[test]
    fn a_record_damaged_while_running_is_counted_lost_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = open(dir.path(), MIB);
        for n in 1..=2 {
            q.append(&batch(n, 100)).unwrap();
        }
        let seg = data_segment(dir.path());
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[60] ^= 0xff;
        std::fs::write(&seg, bytes).unwrap();
        // The rest of the segment goes with it: its records were verified once already.
        assert_eq!(q.front(), None);
        assert_eq!(
            q.take_lost(),
            Dropped {
                requests: 2,
                samples: 3
            }
        );
        assert_eq!(q.stats(), QueueStats::default());
        q.append(&batch(3, 100)).unwrap();
        assert_eq!(drain(&mut q), vec![3]);
    }

    #[test]
    fn an_unreadable_segment_is_counted_and_the_others_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = open(dir.path(), MIB);
        q.append(&batch(1, 100)).unwrap();
        drop(q);
        // Unreadable as a file, whoever runs the test.
        std::fs::create_dir(dir.path().join(segment::file_name(5))).unwrap();
        let (mut q, recovery) = open(dir.path(), MIB);
        assert_eq!(
            recovery.corrupt,
            Dropped {
                requests: 1,
                samples: 0
            }
        );
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
        let record = 132; // 100-byte body + header
        let (mut q, _) = open(dir.path(), 3 * record);
        for n in 1..=3 {
            assert_eq!(q.append(&batch(n, 100)).unwrap(), Dropped::default());
        }
        assert_eq!(
            q.append(&batch(4, 100)).unwrap(),
            Dropped {
                requests: 1,
                samples: 1
            }
        );
        assert_eq!(q.stats().bytes, 3 * record);
        drop(q);
        let (mut q, _) = open(dir.path(), 3 * record);
        assert_eq!(
            drain(&mut q),
            vec![2, 3, 4],
            "a dropped batch came back after reopen"
        );
    }

    #[test]
    fn the_cap_spares_the_batch_in_flight_and_remembers_what_it_dropped_behind_it() {
        let dir = tempfile::tempdir().unwrap();
        let record = 132;
        let (mut q, _) = open(dir.path(), 2 * record);
        q.append(&batch(1, 100)).unwrap();
        q.append(&batch(2, 100)).unwrap();
        assert_eq!(q.front().map(|b| b.samples), Some(1));
        assert_eq!(
            q.append(&batch(3, 100)).unwrap(),
            Dropped {
                requests: 1,
                samples: 2
            }
        );
        drop(q); // crash while 1 is in flight
        let (mut q, recovery) = open(dir.path(), 2 * record);
        assert_eq!(
            recovery.replayed,
            Dropped {
                requests: 2,
                samples: 4
            }
        );
        assert_eq!(drain(&mut q), vec![1, 3]);
    }

    #[test]
    fn a_batch_larger_than_the_cap_is_dropped_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = open(dir.path(), 200);
        assert_eq!(q.append(&batch(1, 100)).unwrap(), Dropped::default());
        assert_eq!(
            q.append(&batch(2, 300)).unwrap(),
            Dropped {
                requests: 2,
                samples: 3
            }
        );
        assert_eq!(q.stats(), QueueStats::default());
        q.append(&batch(3, 100)).unwrap();
        assert_eq!(drain(&mut q), vec![3]);
    }

    #[test]
    fn a_lowered_cap_drops_the_oldest_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = open(dir.path(), MIB);
        for n in 1..=4 {
            q.append(&batch(n, 100)).unwrap();
        }
        drop(q);
        let (mut q, recovery) = open(dir.path(), 2 * 132);
        assert_eq!(
            recovery.over_cap,
            Dropped {
                requests: 2,
                samples: 3
            }
        );
        assert_eq!(
            recovery.replayed,
            Dropped {
                requests: 2,
                samples: 7
            }
        );
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
        let (mut q, _) = open(dir.path(), MIB);
        q.append(&batch(1, 100)).unwrap();
        q.append(&batch(2, 100)).unwrap();
        q.front();
        q.ack();
        drop(q);
        std::fs::write(dir.path().join("ack"), "garbage").unwrap(); // neither slot valid
        let (mut q, _) = open(dir.path(), MIB);
        assert_eq!(drain(&mut q), vec![1, 2]);
    }
}
