//! The head of the queue: handing out the oldest record (`front`), taking it away once
//! delivered (`ack`) or dropped (`drop_oldest`), and moving `next` past records, segment
//! ends and damage. A record that no longer reads back is counted lost, with the rest of
//! its segment.

use std::fs::File;
use std::os::unix::fs::FileExt;

use bytes::Bytes;

use super::{DiskQueue, InFlight};
use crate::push::remote_write::queue::ack::Pos;
use crate::push::remote_write::queue::segment::{self, Header, HEADER_LEN};
use crate::push::remote_write::queue::{Batch, Dropped};

impl DiskQueue {
    /// The oldest unacknowledged batch; the same one until `ack`.
    pub(crate) fn front(&mut self) -> Option<Batch> {
        while let Some(f) = self.out.front() {
            if let Some(batch) = &f.batch {
                return Some(batch.clone());
            }
            if let Some(batch) = self.read_out(0) {
                return Some(batch);
            }
        }
        self.read_next()
    }

    /// The oldest batch not handed out yet (first one found in flight at open), handed out.
    pub(crate) fn hand_out(&mut self) -> Option<Batch> {
        while let Some(i) = self.out.iter().position(|f| !f.given) {
            if let Some(batch) = self.read_out(i) {
                self.out[i].given = true;
                return Some(batch);
            }
        }
        self.read_next()
    }

    /// The batch of handed-out record `i`, read now if it was not yet; a record that no
    /// longer reads back is counted lost and taken out.
    fn read_out(&mut self, i: usize) -> Option<Batch> {
        let (pos, header) = {
            let f = &self.out[i];
            if let Some(batch) = &f.batch {
                return Some(batch.clone());
            }
            (f.pos, f.header)
        };
        match self.read_payload(pos, header) {
            Some(body) => {
                let batch = batch_of(header, body);
                self.out[i].batch = Some(batch.clone());
                Some(batch)
            }
            None => {
                self.out.remove(i);
                self.forget(pos.seq, header);
                self.note_lost(
                    pos,
                    Dropped {
                        requests: 1,
                        samples: header.samples,
                    },
                );
                self.persist_ack();
                None
            }
        }
    }

    /// Reads the record at `next` and moves it to the handed-out ones.
    fn read_next(&mut self) -> Option<Batch> {
        loop {
            let header = self.next_header?;
            let pos = self.next;
            match self.read_payload(pos, header) {
                Some(body) => {
                    let batch = batch_of(header, body);
                    self.out.push_back(InFlight {
                        pos,
                        header,
                        batch: Some(batch.clone()),
                        given: true,
                    });
                    self.advance_next(header);
                    return Some(batch);
                }
                None => self.abandon_rest_of_segment(),
            }
        }
    }

    /// Removes the oldest handed-out batch (else the front): delivered, or deliberately
    /// dropped.
    pub(crate) fn ack(&mut self) {
        if self.out.is_empty() && self.front().is_none() {
            return;
        }
        if let Some(f) = self.out.pop_front() {
            self.forget(f.pos.seq, f.header);
        }
        self.persist_ack();
        self.delete_consumed_segments();
    }

    /// Drops the oldest request that is not in flight; `None` when there is none.
    pub(crate) fn drop_oldest(&mut self) -> Option<Dropped> {
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

    /// Moves `pos` past damaged regions and segment ends to the next record, or to the end
    /// of the last segment when nothing is left.
    pub(super) fn normalize(&self, mut pos: Pos) -> Pos {
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
    pub(super) fn refresh_next_header(&mut self) {
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
        let out_here: Vec<Header> = self
            .out
            .iter()
            .filter(|f| f.pos.seq == pos.seq)
            .map(|f| f.header)
            .collect();
        let Some(seg) = self.segments.iter_mut().find(|s| s.seq == pos.seq) else {
            return;
        };
        let mut lost = seg.live;
        let mut lost_bytes = seg.live_bytes;
        for h in out_here {
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
}

fn batch_of(header: Header, body: Bytes) -> Batch {
    Batch {
        body,
        protocol: header.protocol,
        samples: header.samples,
        oldest_timestamp_ms: header.oldest_timestamp_ms,
    }
}
