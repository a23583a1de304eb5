//! The tail of the queue: writing records to the current segment and starting new ones.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::{DiskError, DiskQueue, Segment};
use crate::push::remote_write::queue::segment::{self, Header};
use crate::push::remote_write::queue::{Batch, Dropped};

impl DiskQueue {
    /// Appends a batch (written before returning, synced by the flusher right after), then
    /// drops the oldest queued requests while over the cap, but never the one in flight (a
    /// batch larger than the whole cap goes at once, like in the memory queue: it could
    /// never fit). On error the batch is not queued and the caller keeps it.
    pub(crate) fn append(&mut self, batch: &Batch) -> Result<Dropped, DiskError> {
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
            .map(|h| h.with_protocol(batch.protocol))
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
        // The writer's segment is the newest one: nothing deletes it while it is written.
        let (Some((seq, file)), Some(seg)) = (&self.writer, self.segments.back_mut()) else {
            unreachable!("open_writer succeeded")
        };
        let seq = *seq;
        let offset = seg.end;
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
        Ok(self.drop_over_cap())
    }

    /// Starts a fresh segment file and makes it the one new records go to.
    pub(super) fn open_writer(&mut self) -> Result<(), DiskError> {
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
        self.segments.push_back(Segment::empty(seq));
        self.writer = Some((seq, Arc::new(file)));
        self.last_seq = seq;
        Ok(())
    }
}
