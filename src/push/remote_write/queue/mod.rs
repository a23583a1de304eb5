//! Queues of encoded remote-write requests, one per destination. A request is encoded
//! once, queued in order, and acknowledged only after delivery or a deliberate drop.
//!
//! - `memory.rs`: the queue of a destination without `queue_dir`.
//! - `durable.rs`: the queue of a destination with `queue_dir`: on disk, in memory while
//!   the disk refuses writes.
//! - `disk/`: the on-disk FIFO it is built on (opening and recovery, the writing tail, the
//!   reading head), with `segment.rs` (the record format and its scan), `ack.rs` (where
//!   delivery stands) and `flusher.rs` (the thread that fdatasyncs appended records).

mod ack;
pub(crate) mod disk;
pub(crate) mod durable;
mod flusher;
pub(crate) mod memory;
mod segment;

use bytes::Bytes;

use super::negotiate::Protocol;

/// One encoded remote-write request body (snappy-compressed protobuf), sent as-is and
/// resent byte-identical on retry.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub(crate) body: Bytes,
    /// The protocol of `body`: a durable queue may hold 2.0 requests from before a
    /// fallback to 1.0, to be converted when sent.
    pub(crate) protocol: Protocol,
    /// Samples it carries, for the sent/dropped counters.
    pub samples: u64,
    /// Timestamp of its oldest sample (ms since the epoch), for the pending-age gauge.
    pub(crate) oldest_timestamp_ms: i64,
}

impl Batch {
    /// The compressed request body, as sent.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The protocol of the body.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
}

/// What a push had to drop to stay under the byte cap.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dropped {
    pub(crate) requests: u64,
    pub samples: u64,
}

/// Queue depth, for gauges and `/healthz`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueStats {
    pub(crate) bytes: u64,
    pub(crate) requests: u64,
    pub(crate) oldest_timestamp_ms: Option<i64>,
    /// A durable queue keeping batches in memory because its disk refused them.
    pub(crate) degraded: bool,
}

/// A FIFO of batches with a byte cap; past the cap the oldest batches are dropped.
pub(crate) trait Queue: Send {
    /// Appends a batch, dropping the oldest ones when over the cap.
    fn push(&mut self, batch: Batch) -> Dropped;
    /// The oldest unacknowledged batch (handed out, if it was not yet).
    fn front(&mut self) -> Option<Batch>;
    /// The oldest batch not handed out yet, handed out now: it stays queued (and is never
    /// dropped by the cap) until acknowledged. The sender reads ahead with this to keep
    /// several requests in flight.
    fn hand_out(&mut self) -> Option<Batch>;
    /// Removes the oldest handed-out batch (else the front): it was delivered, or
    /// deliberately dropped. Acknowledgements come in queue order.
    fn ack(&mut self);
    fn stats(&self) -> QueueStats;
    /// Samples found damaged inside the queue since the last call (a durable queue's record
    /// that no longer reads back), to count as dropped with reason `corrupt`.
    fn take_corrupt(&mut self) -> Dropped {
        Dropped::default()
    }
    /// What a durable queue found when its directory became usable after start, once.
    fn take_reopened(&mut self) -> Option<durable::Reopened> {
        None
    }
    /// Whether what is queued survives a restart (only the part on disk does).
    fn is_durable(&self) -> bool {
        false
    }
}
