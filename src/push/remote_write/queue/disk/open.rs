//! Opening a queue directory: its lock, where delivery stood (`ack`), and a scan that
//! verifies every pending record and reports what it found.

use std::collections::VecDeque;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use super::lock::lock_dir;
use super::{DiskError, DiskQueue, InFlight, Segment};
use crate::push::remote_write::queue::ack::{AckFile, Acked, Loaded, Pos};
use crate::push::remote_write::queue::flusher::Flusher;
use crate::push::remote_write::queue::segment::{self, Found};
use crate::push::remote_write::queue::Dropped;

/// Largest segment file, so fully delivered space is given back in steps of at most this.
const MAX_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// Smallest segment file, so a tiny cap does not mean a file per request.
const MIN_SEGMENT_BYTES: u64 = 64 * 1024;

/// What `open` found in the directory.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recovery {
    /// Pending requests (and their samples) that will be sent again, oldest first.
    pub(crate) replayed: Dropped,
    /// Corrupt regions skipped, and the samples of those whose header was still readable.
    pub(crate) corrupt: Dropped,
    /// Dropped because the queue held more than `max_bytes` (the cap was lowered).
    pub(crate) over_cap: Dropped,
}

impl DiskQueue {
    /// Opens (creating it if needed) the queue in `dir`, verifies every pending record and
    /// positions the queue at the oldest one not yet delivered.
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> Result<(DiskQueue, Recovery), DiskError> {
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
        let seqs = segment_seqs(dir)?;

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
            out: VecDeque::new(),
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
            let opened = File::open(&path).and_then(|f| Ok((f.metadata()?.len(), f)));
            let (len, file) = match opened {
                Ok(opened) => opened,
                Err(e) => {
                    // Left in place for inspection; the rest of the queue still goes out.
                    tracing::warn!(path = %path.display(), "durable queue: cannot read a segment ({e}); its requests are lost");
                    recovery.corrupt.requests += 1;
                    continue;
                }
            };
            if queue.load_segment(seq, &file, len, acked, &mut recovery.corrupt) {
                damaged_files.push(seq);
            }
        }
        if !damaged_files.is_empty() {
            log_damage(dir, recovery.corrupt, &damaged_files);
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
        recovery.over_cap = queue.drop_over_cap();
        recovery.replayed.requests -= recovery.over_cap.requests;
        recovery.replayed.samples -= recovery.over_cap.samples;
        queue.persist_ack();
        queue.delete_consumed_segments();
        Ok((queue, recovery))
    }

    /// Adds a segment read at open: counts its records still pending, keeps its damaged
    /// regions for reading to jump over, and picks up the record that was in flight.
    /// Returns whether damage hit pending records (counted in `corrupt`). The segment is
    /// read in chunks: opening a full queue costs no more memory than an empty one.
    fn load_segment(
        &mut self,
        seq: u64,
        file: &File,
        len: u64,
        acked: Acked,
        corrupt: &mut Dropped,
    ) -> bool {
        let mut seg = Segment {
            end: len,
            ..Segment::empty(seq)
        };
        let mut damaged = false;
        let out = &mut self.out;
        segment::scan_stream(file, len, |found| match found {
            Found::Record { offset, header } => {
                let pos = Pos { seq, offset };
                if acked.in_flight == Some(pos) {
                    out.push_back(InFlight {
                        pos,
                        header,
                        batch: None,
                        given: false,
                    });
                } else if pos < acked.next {
                    return; // delivered or dropped before
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
                    corrupt.requests += 1;
                    corrupt.samples += samples;
                    damaged = true;
                }
                seg.skips.push(range);
            }
        });
        self.live.requests += seg.live.requests;
        self.live.samples += seg.live.samples;
        self.live_bytes += seg.live_bytes;
        self.segments.push_back(seg);
        damaged
    }
}

/// The numbers of the segment files in `dir`, oldest first.
fn segment_seqs(dir: &Path) -> Result<Vec<u64>, DiskError> {
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
    Ok(seqs)
}

/// One line for everything the scan skipped, naming the damaged segments.
fn log_damage(dir: &Path, corrupt: Dropped, damaged_files: &[u64]) {
    let names: Vec<String> = damaged_files
        .iter()
        .map(|&s| segment::file_name(s))
        .collect();
    tracing::warn!(
        queue_dir = %dir.display(),
        "durable queue: skipped {} torn or corrupt record(s) holding {} sample(s) in {}; everything else will be delivered",
        corrupt.requests,
        corrupt.samples,
        names.join(", ")
    );
}

/// The directory's last component, to name the flusher thread.
fn short_name(dir: &Path) -> String {
    let name = dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    name.chars().take(8).collect()
}
