//! The in-memory queue: a FIFO of encoded batches under a byte cap. Past the cap the oldest
//! batches go first, counted, so that a dead receiver costs bounded memory and the newest
//! data survives.

use std::collections::VecDeque;

use super::{Batch, Dropped, Queue, QueueStats};

pub(crate) struct MemoryQueue {
    batches: VecDeque<Batch>,
    bytes: u64,
    max_bytes: u64,
    /// The first `out` batches are handed out: never dropped by the cap.
    out: usize,
}

impl MemoryQueue {
    pub(crate) fn new(max_bytes: u64) -> MemoryQueue {
        MemoryQueue {
            batches: VecDeque::new(),
            bytes: 0,
            max_bytes,
            out: 0,
        }
    }

    fn pop_front(&mut self) -> Option<Batch> {
        let batch = self.batches.pop_front()?;
        self.bytes -= batch.body.len() as u64;
        self.out = self.out.saturating_sub(1);
        Some(batch)
    }

    /// Batches handed out and not acknowledged yet.
    pub(crate) fn handed_out(&self) -> usize {
        self.out
    }

    /// Takes the oldest batch not handed out (to move it to disk).
    pub(crate) fn take_unsent(&mut self) -> Option<Batch> {
        let batch = self.batches.remove(self.out)?;
        self.bytes -= batch.body.len() as u64;
        Some(batch)
    }

    /// The oldest batch not handed out, left in place.
    pub(crate) fn first_unsent(&self) -> Option<&Batch> {
        self.batches.get(self.out)
    }
}

impl Queue for MemoryQueue {
    /// A batch larger than the whole cap is dropped at once: it could never fit.
    fn push(&mut self, batch: Batch) -> Dropped {
        self.bytes += batch.body.len() as u64;
        self.batches.push_back(batch);
        let mut dropped = Dropped::default();
        while self.bytes > self.max_bytes {
            let Some(old) = self.take_unsent() else { break };
            dropped.requests += 1;
            dropped.samples += old.samples;
        }
        dropped
    }

    fn front(&mut self) -> Option<Batch> {
        self.batches.front().cloned()
    }

    fn hand_out(&mut self) -> Option<Batch> {
        let batch = self.batches.get(self.out).cloned()?;
        self.out += 1;
        Some(batch)
    }

    fn ack(&mut self) {
        self.pop_front();
    }

    fn stats(&self) -> QueueStats {
        QueueStats {
            bytes: self.bytes,
            requests: self.batches.len() as u64,
            oldest_timestamp_ms: self.batches.front().map(|b| b.oldest_timestamp_ms),
            degraded: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::remote_write::negotiate::Protocol;
    use bytes::Bytes;

    fn batch(len: usize, ts: i64) -> Batch {
        Batch {
            body: Bytes::from(vec![0u8; len]),
            protocol: Protocol::V1,
            samples: len as u64 * 10,
            oldest_timestamp_ms: ts,
        }
    }

    #[test]
    fn batches_leave_in_order_and_only_on_ack() {
        let mut q = MemoryQueue::new(1000);
        q.push(batch(10, 1));
        q.push(batch(20, 2));
        assert_eq!(q.front(), Some(batch(10, 1)));
        assert_eq!(q.front(), Some(batch(10, 1)), "front does not remove");
        q.ack();
        assert_eq!(q.front(), Some(batch(20, 2)));
        assert_eq!(
            q.stats(),
            QueueStats {
                bytes: 20,
                requests: 1,
                oldest_timestamp_ms: Some(2),
                degraded: false,
            }
        );
        q.ack();
        q.ack(); // acknowledging an empty queue is harmless
        assert_eq!(q.front(), None);
        assert_eq!(q.stats(), QueueStats::default());
    }

    #[test]
    fn over_the_byte_cap_the_oldest_batches_are_dropped_and_counted() {
        let mut q = MemoryQueue::new(50);
        assert_eq!(q.push(batch(20, 1)), Dropped::default());
        assert_eq!(q.push(batch(20, 2)), Dropped::default());
        let d = q.push(batch(20, 3));
        assert_eq!(
            d,
            Dropped {
                requests: 1,
                samples: 200
            }
        );
        assert_eq!(q.front().map(|b| b.oldest_timestamp_ms), Some(2));
        assert_eq!(q.stats().bytes, 40);
        let d = q.push(batch(60, 4));
        assert_eq!(d.requests, 3, "a batch over the whole cap never fits");
        assert_eq!(q.stats(), QueueStats::default());
    }

    #[test]
    fn handed_out_batches_are_never_dropped_by_the_cap_and_ack_in_order() {
        let mut q = MemoryQueue::new(50);
        q.push(batch(20, 1));
        q.push(batch(20, 2));
        assert_eq!(q.hand_out(), Some(batch(20, 1)));
        assert_eq!(q.hand_out(), Some(batch(20, 2)));
        assert_eq!(q.hand_out(), None, "nothing left to hand out");
        let d = q.push(batch(20, 3));
        assert_eq!(
            d.requests, 1,
            "the newest, not handed out, goes over the cap"
        );
        q.push(batch(5, 4));
        assert_eq!(q.front(), Some(batch(20, 1)));
        q.ack();
        assert_eq!(q.hand_out(), Some(batch(5, 4)));
        q.ack();
        q.ack();
        assert_eq!(q.stats(), QueueStats::default());
    }
}
