//! The window of one destination: several requests in flight, per-series order kept.
//!
//! The sender (`sender.rs`) reads ahead from the queue into a window of batches (handed
//! out: the queue keeps them until acknowledged, in order) and sends them as the requests
//! this window makes of them. Every batch holds samples of one snapshot, all at the
//! snapshot's timestamp, and the batches of one snapshot hold disjoint series; that
//! timestamp (the batch's `oldest_timestamp_ms`, kept in the disk record too) is what the
//! order rule needs, so it survives a restart:
//!
//! - A request may go while earlier ones are unanswered only when it and all of them belong
//!   to the same snapshot, or the same join (below): disjoint series. Otherwise it waits
//!   until every earlier request is answered: delivered, or deliberately dropped. A retry
//!   keeps its place; so no series ever arrives at a receiver out of order, whatever fails
//!   and whatever is retried.
//! - When nothing earlier is unanswered and a long backlog waits, consecutive whole
//!   snapshots are joined (`lanes.rs`): cut into lanes of disjoint series, one request
//!   each, all in flight at once, as long as every snapshot of the join has the same series
//!   in the same order (a fingerprint checks it); joined whole into one request otherwise.
//!   That is what drains a backlog of small snapshots quickly through a receiver tens of
//!   milliseconds away: one snapshot per request would wait a round trip per snapshot,
//!   since each shares its series with the next.
//! - The in-flight limit starts at `max_in_flight`, halves on a 429 and grows back by one
//!   per delivered request; a join has as many lanes as the limit. `Retry-After` holds back
//!   every new request until it passes.
//! - `max_sample_age` drops batches whose samples are too old when they would be sent;
//!   `max_bytes_per_second` spaces requests so that the body bytes stay under the rate.
//!
//! Batches are acknowledged to the queue in order, once answered; a restart resends from
//! the oldest unanswered one (see `disk/mod.rs`), and by the rule above nothing resent can
//! go back in time.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::lanes;
use super::queue::Batch;
use super::Verdict;
use crate::push::retry::Backoff;

/// Batches read ahead into the window at most.
const MAX_WINDOW_BATCHES: usize = 512;
/// Bytes read ahead at most (also at most a quarter of the queue's cap: read-ahead batches
/// are never dropped by the cap).
const MAX_WINDOW_BYTES: u64 = 16 << 20;

/// The sending limits of one destination.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) max_in_flight: usize,
    pub(super) max_sample_age: Option<Duration>,
    pub(super) max_bytes_per_second: Option<u64>,
    pub(super) max_window_bytes: u64,
}

impl Limits {
    pub(super) fn new(
        max_in_flight: usize,
        max_sample_age: Option<Duration>,
        max_bytes_per_second: Option<u64>,
        max_queue_bytes: u64,
    ) -> Limits {
        Limits {
            max_in_flight: max_in_flight.max(1),
            max_sample_age,
            max_bytes_per_second,
            max_window_bytes: (max_queue_bytes / 4).clamp(1, MAX_WINDOW_BYTES),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Read ahead, not sent yet.
    Waiting,
    /// Part of a request in flight or waiting for its retry.
    Sending,
    /// Delivered or dropped; acknowledged once everything before it is.
    Done,
}

struct Entry {
    batch: Batch,
    state: State,
}

/// One request: the window's entries `start..end` (absolute positions).
struct Request {
    id: u64,
    start: u64,
    end: u64,
    batch: Batch,
    /// The snapshot timestamp of its newest samples.
    newest_ms: i64,
    backoff: Backoff,
    /// When it failed last, when to send it again; `None` while in flight.
    retry_at: Option<Instant>,
    attempts: u32,
    /// A lane of a join not sent yet (`retry_at` is then its creation): it waits for a
    /// free slot, as a retry does.
    unsent: bool,
}

/// The batches read ahead and the requests made of them.
pub(super) struct Window {
    limits: Limits,
    min_backoff: Duration,
    max_backoff: Duration,
    entries: VecDeque<Entry>,
    /// The absolute position of `entries[0]`.
    base: u64,
    bytes: u64,
    requests: Vec<Request>,
    next_id: u64,
    /// The current in-flight limit (AIMD between 1 and `max_in_flight`).
    limit: usize,
    /// No new request before this (`Retry-After`).
    paused_until: Option<Instant>,
    /// No new request before this (`max_bytes_per_second`).
    rate_next: Option<Instant>,
}

/// What the window wants from the queue in one go.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sync {
    /// Front batches answered, to acknowledge.
    pub(super) acks: usize,
    /// Batches and bytes to read ahead at most.
    pub(super) batches: usize,
    pub(super) bytes: u64,
}

impl Window {
    pub(super) fn new(limits: Limits, min_backoff: Duration, max_backoff: Duration) -> Window {
        Window {
            limits,
            min_backoff,
            max_backoff,
            entries: VecDeque::new(),
            base: 0,
            bytes: 0,
            requests: Vec::new(),
            next_id: 0,
            limit: limits.max_in_flight,
            paused_until: None,
            rate_next: None,
        }
    }

    pub(super) fn limit(&self) -> usize {
        self.limit
    }

    pub(super) fn in_flight(&self) -> usize {
        self.requests
            .iter()
            .filter(|r| r.retry_at.is_none())
            .count()
    }

    pub(super) fn front_answered(&self) -> bool {
        self.entries.front().is_some_and(|e| e.state == State::Done)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Takes the answered batches off the front (to acknowledge) and says how much to read
    /// ahead: enough for the next requests, and nothing while a request waits for a retry
    /// (then the batches stay in the queue, where the cap may drop the oldest).
    pub(super) fn sync(&mut self) -> Sync {
        let mut acks = 0;
        while self.entries.front().is_some_and(|e| e.state == State::Done) {
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= e.batch.body.len() as u64;
            }
            self.base += 1;
            acks += 1;
        }
        let retrying = self.requests.iter().any(|r| r.retry_at.is_some());
        let waiting = self
            .entries
            .iter()
            .filter(|e| e.state == State::Waiting)
            .count();
        let (batches, bytes) = if retrying || waiting >= MAX_WINDOW_BATCHES / 2 {
            (0, 0)
        } else {
            (
                MAX_WINDOW_BATCHES.saturating_sub(self.entries.len()),
                self.limits.max_window_bytes.saturating_sub(self.bytes),
            )
        };
        Sync {
            acks,
            batches,
            bytes,
        }
    }

    pub(super) fn extend(&mut self, batches: Vec<Batch>) {
        for batch in batches {
            self.bytes += batch.body.len() as u64;
            self.entries.push_back(Entry {
                batch,
                state: State::Waiting,
            });
        }
    }

    /// Drops the waiting batches whose samples are older than `max_sample_age`; returns
    /// their samples.
    pub(super) fn drop_too_old(&mut self, now_ms: i64) -> u64 {
        let Some(age) = self.limits.max_sample_age else {
            return 0;
        };
        let cutoff = now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
        let mut samples = 0;
        for e in &mut self.entries {
            if e.state == State::Waiting && e.batch.oldest_timestamp_ms < cutoff {
                e.state = State::Done;
                samples += e.batch.samples;
            }
        }
        samples
    }

    /// The next request that may go now, marked in flight; `None` when the limit, a pause,
    /// the rate or the order rule holds everything back.
    pub(super) fn next_request(&mut self, now: Instant, now_ms: i64) -> Option<Dispatch> {
        if self.in_flight() >= self.limit {
            return None;
        }
        if self.paused_until.is_some_and(|t| t > now) || self.rate_next.is_some_and(|t| t > now) {
            return None;
        }
        if let Some(d) = self.due_retry(now, now_ms) {
            return Some(d);
        }
        let first = self
            .entries
            .iter()
            .position(|e| e.state == State::Waiting)?;
        let ts = self.entries[first].batch.oldest_timestamp_ms;
        let unanswered: Vec<i64> = self
            .entries
            .iter()
            .take(first)
            .filter(|e| e.state == State::Sending)
            .map(|e| e.batch.oldest_timestamp_ms)
            .collect();
        if unanswered.iter().any(|&t| t != ts) {
            return None;
        }
        let (end, lanes) = if unanswered.is_empty() {
            self.join_from(first)
        } else {
            (first + 1, None)
        };
        let (batches, end) = match lanes {
            Some(lanes) => (lanes, end),
            None => {
                let joined: Vec<&Batch> =
                    self.entries.range(first..end).map(|e| &e.batch).collect();
                match lanes::coalesce(&joined) {
                    Some(b) => (vec![b], end),
                    // A body that does not decompress goes alone, as it came.
                    None => (vec![self.entries[first].batch.clone()], first + 1),
                }
            }
        };
        let newest_ms = self.entries[end - 1].batch.oldest_timestamp_ms;
        for e in self.entries.range_mut(first..end) {
            e.state = State::Sending;
        }
        let (start, end) = (self.base + first as u64, self.base + end as u64);
        let mut dispatch = None;
        for batch in batches {
            let id = self.next_id;
            self.next_id += 1;
            let unsent = dispatch.is_some();
            if !unsent {
                self.spend_rate(now, batch.body.len());
                dispatch = Some(Dispatch {
                    id,
                    batch: batch.clone(),
                    retry: false,
                    too_old: 0,
                });
            }
            self.requests.push(Request {
                id,
                start,
                end,
                batch,
                newest_ms,
                backoff: Backoff::new(self.min_backoff, self.max_backoff),
                retry_at: unsent.then_some(now),
                attempts: 1,
                unsent,
            });
        }
        dispatch
    }

    /// The end of the batches from `first` that go next, nothing earlier being unanswered:
    /// `first` alone, or a join of whole snapshots, cut into lanes (the requests) when the
    /// in-flight limit allows more than one and their series allow it.
    fn join_from(&self, first: usize) -> (usize, Option<Vec<Batch>>) {
        // `max_in_flight = 1` keeps the behaviour from before: one snapshot per request.
        if self.limits.max_in_flight < 2 {
            return (first + 1, None);
        }
        let candidates: Vec<(&Batch, bool)> = (self.entries.range(first..))
            .map(|e| (&e.batch, e.state == State::Waiting))
            .collect();
        if self.limit >= 2 {
            if let Some(end) = lanes::whole_snapshots(&candidates, self.limit) {
                let joined: Vec<&Batch> = candidates[..end].iter().map(|c| c.0).collect();
                if let Some((taken, lanes)) = lanes::split(&joined, self.limit) {
                    return (first + taken, Some(lanes));
                }
            }
        }
        // Joined whole: one request, within the caps of one.
        let end = lanes::whole_snapshots(&candidates, 1).unwrap_or(1);
        (first + end, None)
    }

    /// A request whose retry is due (or a lane of a join not sent yet): sent again as it
    /// was, or dropped if too old by now.
    fn due_retry(&mut self, now: Instant, now_ms: i64) -> Option<Dispatch> {
        let cutoff = self
            .limits
            .max_sample_age
            .map(|a| now_ms.saturating_sub(i64::try_from(a.as_millis()).unwrap_or(i64::MAX)));
        let i = self
            .requests
            .iter()
            .position(|r| r.retry_at.is_some_and(|t| t <= now))?;
        if cutoff.is_some_and(|c| self.requests[i].newest_ms < c) {
            let r = self.requests.swap_remove(i);
            self.finish(&r);
            let too_old = r.batch_samples();
            return Some(Dispatch {
                id: r.id,
                batch: r.batch,
                retry: !r.unsent,
                too_old,
            });
        }
        let r = &mut self.requests[i];
        let retry = !std::mem::take(&mut r.unsent);
        r.retry_at = None;
        if retry {
            r.attempts += 1;
        }
        let (id, batch) = (r.id, r.batch.clone());
        self.spend_rate(now, batch.body.len());
        Some(Dispatch {
            id,
            batch,
            retry,
            too_old: 0,
        })
    }

    fn spend_rate(&mut self, now: Instant, bytes: usize) {
        if let Some(rate) = self.limits.max_bytes_per_second {
            let start = self.rate_next.map_or(now, |t| t.max(now));
            let secs = bytes as f64 / rate as f64;
            self.rate_next = Some(start + Duration::from_secs_f64(secs));
        }
    }

    /// Marks the batches of an answered request done, once the other lanes of its join
    /// (requests over the same batches) are answered too.
    fn finish(&mut self, r: &Request) {
        if (self.requests.iter()).any(|o| (o.start, o.end) == (r.start, r.end)) {
            return;
        }
        let start = (r.start - self.base) as usize;
        let end = (r.end - self.base) as usize;
        for e in self.entries.range_mut(start..end) {
            e.state = State::Done;
        }
    }

    /// Applies the answer to request `id`; returns what to count.
    pub(super) fn answered(&mut self, id: u64, verdict: &Verdict, now: Instant) -> Answered {
        let Some(i) = self.requests.iter().position(|r| r.id == id) else {
            return Answered::default();
        };
        let samples = self.requests[i].batch_samples();
        let attempts = self.requests[i].attempts;
        match verdict {
            Verdict::Delivered | Verdict::Drop(_) => {
                let r = self.requests.swap_remove(i);
                self.finish(&r);
                if matches!(verdict, Verdict::Delivered) {
                    self.limit = (self.limit + 1).min(self.limits.max_in_flight);
                }
                Answered {
                    samples,
                    after_retry: attempts > 1,
                }
            }
            Verdict::FallBack(_) | Verdict::ClassicOnly => {
                // The same batches again at once, converted when sent.
                self.requests[i].retry_at = Some(now);
                Answered::default()
            }
            Verdict::Retry {
                after,
                rate_limited,
            } => {
                if *rate_limited {
                    self.limit = (self.limit / 2).max(1);
                }
                let r = &mut self.requests[i];
                let delay = match after {
                    Some(after) => {
                        let until = now + *after;
                        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
                        *after
                    }
                    None => r.backoff.next_delay(),
                };
                r.retry_at = Some(now + delay);
                Answered {
                    samples,
                    after_retry: false,
                }
            }
        }
    }

    /// When something held back may go: the earliest retry, pause or rate slot; `None`
    /// when only an answer can free something (then the sender waits for one).
    pub(super) fn next_timer(&self, now: Instant) -> Option<Instant> {
        if self.in_flight() >= self.limit {
            return None;
        }
        let gate = [self.paused_until, self.rate_next]
            .into_iter()
            .flatten()
            .filter(|&t| t > now)
            .max();
        let retry = self
            .requests
            .iter()
            .filter_map(|r| r.retry_at)
            .min()
            .map(|r| gate.map_or(r, |g| r.max(g)));
        let waiting = self.entries.iter().any(|e| e.state == State::Waiting);
        let at = match retry {
            Some(r) => Some(r),
            None if waiting => gate,
            None => None,
        };
        at.filter(|&t| t > now)
    }
}

impl Request {
    fn batch_samples(&self) -> u64 {
        self.batch.samples
    }
}

/// A request to send now.
pub(super) struct Dispatch {
    pub(super) id: u64,
    pub(super) batch: Batch,
    pub(super) retry: bool,
    /// Samples dropped as too old instead of being sent (then nothing is sent).
    pub(super) too_old: u64,
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Answered {
    pub(super) samples: u64,
    pub(super) after_retry: bool,
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
