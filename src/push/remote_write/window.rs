//! The sender of one destination: several requests in flight, per-series order kept.
//!
//! The sender reads ahead from the queue into a window of batches (handed out: the queue
//! keeps them until acknowledged, in order) and sends them as requests. Every batch holds
//! samples of one snapshot, all at the snapshot's timestamp, and the batches of one snapshot
//! hold disjoint series; that timestamp (the batch's `oldest_timestamp_ms`, kept in the disk
//! record too) is what the order rule needs, so it survives a restart:
//!
//! - A request may go while earlier ones are unanswered only when it and all of them belong
//!   to the same snapshot (disjoint series). Otherwise it waits until every earlier request
//!   is answered: delivered, or deliberately dropped. A retry keeps its place; so no series
//!   ever arrives at a receiver out of order, whatever fails and whatever is retried.
//! - When nothing earlier is unanswered and a long backlog waits (`COALESCE_FROM`),
//!   consecutive whole snapshots are coalesced into one request (up to
//!   `MAX_COALESCED_SAMPLES` and `MAX_COALESCED_BYTES`): remote-write 1.0 bodies are protobuf with only repeated fields,
//!   so the uncompressed bodies concatenate into one valid `WriteRequest` whose series carry
//!   several samples in timestamp order. That is what drains a backlog of small snapshots
//!   quickly through a receiver tens of milliseconds away: parallel requests cannot help
//!   there, since each snapshot shares its series with the next.
//! - The in-flight limit starts at `max_in_flight`, halves on a 429 and grows back by one
//!   per delivered request. `Retry-After` holds back every new request until it passes.
//! - `max_sample_age` drops batches whose samples are too old when they would be sent;
//!   `max_bytes_per_second` spaces requests so that the body bytes stay under the rate.
//!
//! Batches are acknowledged to the queue in order, once answered; a restart resends from
//! the oldest unanswered one (see `disk/mod.rs`), and by the rule above nothing resent can
//! go back in time.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::negotiate::Protocol;
use super::queue::durable::Reopened;
use super::queue::{Batch, Queue};
use super::{attempt, drain, in_current_protocol, Destination, Verdict};
use crate::push::retry::Backoff;
use crate::push::self_metrics::DropReason;
use crate::push::signal::Shutdown;

/// Snapshots waiting, at least, before consecutive ones are joined. A joined request the
/// receiver committed but whose answer was lost (a kill between its commit and the
/// acknowledgement, a receiver stopped mid-answer) cannot be resent without older samples
/// than the newest it holds, which Prometheus rejects as out of order; a request of one
/// snapshot can (a duplicate). So a short backlog goes one snapshot per request (32 of
/// them take under 2 s through a 50 ms round trip), a long one in joined requests.
const COALESCE_FROM: usize = 32;
/// Samples one coalesced request carries at most: the backlog of one series goes one
/// request at a time (each shares its series with the next), so this over the round trip
/// is the drain rate. 60,000 samples are about 500 KB compressed, 6 MB decoded.
const MAX_COALESCED_SAMPLES: u64 = 60_000;
/// Compressed bytes of the batches one coalesced request joins at most.
const MAX_COALESCED_BYTES: usize = 4 << 20;
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

    fn front_answered(&self) -> bool {
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
        let mut end = first + 1;
        if unanswered.is_empty() {
            end = self.whole_snapshots_from(first).unwrap_or(end);
        }
        let joined: Vec<&Batch> = self.entries.range(first..end).map(|e| &e.batch).collect();
        let (batch, end) = match coalesce(&joined) {
            Some(b) => (b, end),
            // A body that does not decompress goes alone, as it came.
            None => (self.entries[first].batch.clone(), first + 1),
        };
        let newest_ms = self.entries[end - 1].batch.oldest_timestamp_ms;
        for e in self.entries.range_mut(first..end) {
            e.state = State::Sending;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.requests.push(Request {
            id,
            start: self.base + first as u64,
            end: self.base + end as u64,
            batch: batch.clone(),
            newest_ms,
            backoff: Backoff::new(self.min_backoff, self.max_backoff),
            retry_at: None,
            attempts: 1,
        });
        self.spend_rate(now, batch.body.len());
        Some(Dispatch {
            id,
            batch,
            retry: false,
            too_old: 0,
        })
    }

    /// The end of the run of whole snapshots from `first` that one joined request carries,
    /// when a long backlog waits; `None` to send `first` alone. A snapshot is whole once a
    /// batch of a later one follows it in the window (batches arrive in queue order), and
    /// never split across requests: its batches hold disjoint series, consecutive
    /// snapshots the same ones, so each series gets its samples in timestamp order.
    fn whole_snapshots_from(&self, first: usize) -> Option<usize> {
        // `max_in_flight = 1` keeps the behaviour from before: one snapshot per request.
        if self.limits.max_in_flight < 2 {
            return None;
        }
        let waiting = &self.entries;
        let mut snapshots = 0;
        let mut last_ts = None;
        for e in waiting.range(first..) {
            if e.state == State::Waiting && last_ts != Some(e.batch.oldest_timestamp_ms) {
                snapshots += 1;
                last_ts = Some(e.batch.oldest_timestamp_ms);
            }
        }
        if snapshots < COALESCE_FROM {
            return None;
        }
        let (mut samples, mut bytes, mut end) = (0u64, 0usize, first);
        while end < waiting.len() {
            let ts = waiting[end].batch.oldest_timestamp_ms;
            let run = waiting
                .range(end..)
                .take_while(|e| e.batch.oldest_timestamp_ms == ts)
                .count();
            let complete = end + run < waiting.len();
            let all_waiting = waiting
                .range(end..end + run)
                .all(|e| e.state == State::Waiting && e.batch.protocol == Protocol::V1);
            let run_samples: u64 = waiting.range(end..end + run).map(|e| e.batch.samples).sum();
            let run_bytes: usize = waiting
                .range(end..end + run)
                .map(|e| e.batch.body.len())
                .sum();
            let fits = samples + run_samples <= MAX_COALESCED_SAMPLES
                && bytes + run_bytes <= MAX_COALESCED_BYTES;
            if !complete || !all_waiting || !fits {
                break;
            }
            samples += run_samples;
            bytes += run_bytes;
            end += run;
        }
        // Two snapshots at least, or joining buys nothing.
        let joined_snapshots = {
            let mut n = 0;
            let mut last = None;
            for e in waiting.range(first..end) {
                if last != Some(e.batch.oldest_timestamp_ms) {
                    n += 1;
                    last = Some(e.batch.oldest_timestamp_ms);
                }
            }
            n
        };
        (joined_snapshots >= 2).then_some(end)
    }

    /// A request whose retry is due: sent again as it was, or dropped if too old by now.
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
                retry: true,
                too_old,
            });
        }
        let r = &mut self.requests[i];
        r.retry_at = None;
        r.attempts += 1;
        let (id, batch) = (r.id, r.batch.clone());
        self.spend_rate(now, batch.body.len());
        Some(Dispatch {
            id,
            batch,
            retry: true,
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

    fn finish(&mut self, r: &Request) {
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
            Verdict::FallBack(_) => {
                // The same batches again at once, converted to 1.0 when sent.
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

/// The batches as one request: their uncompressed bodies concatenated. `None` when a body
/// does not decompress, or is not remote-write 1.0 (a 2.0 body has a symbol table of its
/// own: two do not concatenate into one).
fn coalesce(batches: &[&Batch]) -> Option<Batch> {
    match batches {
        [] => None,
        [one] => Some((*one).clone()),
        many if many.iter().any(|b| b.protocol != Protocol::V1) => None,
        many => {
            let mut decoder = snap::raw::Decoder::new();
            let mut raw = Vec::new();
            for b in many {
                let len = snap::raw::decompress_len(&b.body).ok()?;
                let at = raw.len();
                raw.resize(at + len, 0);
                decoder.decompress(&b.body, &mut raw[at..]).ok()?;
            }
            let body = snap::raw::Encoder::new().compress_vec(&raw).ok()?;
            Some(Batch {
                body: Bytes::from(body),
                protocol: Protocol::V1,
                samples: many.iter().map(|b| b.samples).sum(),
                oldest_timestamp_ms: many
                    .iter()
                    .map(|b| b.oldest_timestamp_ms)
                    .min()
                    .unwrap_or(i64::MAX),
            })
        }
    }
}

enum Event {
    Answer(u64, Verdict),
    Woken,
    Timer,
}

/// The sender task.
pub(super) async fn send(dest: Arc<Destination>, limits: Limits, mut shutdown: Shutdown) {
    let mut window = Window::new(limits, dest.min_backoff, dest.max_backoff);
    let mut running: JoinSet<(u64, Verdict)> = JoinSet::new();
    // Whether the queue may hold batches not handed out yet.
    let mut more = true;
    loop {
        let plan = window.sync();
        if plan.acks > 0 {
            dest.acknowledged(plan.acks);
        }
        if plan.acks > 0 || (more && plan.batches > 0) {
            let want = if more {
                plan
            } else {
                Sync { batches: 0, ..plan }
            };
            let Some(read) = dest.with_queue(move |q| read_ahead(q, want)).await else {
                break;
            };
            dest.metrics.dropped(DropReason::Corrupt, read.corrupt);
            if let Some(r) = read.reopened {
                super::count_recovery(&dest.metrics, &r.recovery);
                dest.metrics
                    .dropped(DropReason::TooOld, r.superseded.samples);
                let replayed = dest.metrics.replayed_requests.get();
                dest.status.send_modify(|s| s.replayed_requests = replayed);
            }
            more &= !read.exhausted;
            window.extend(read.batches);
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let too_old = window.drop_too_old(now_ms);
        if too_old > 0 {
            dest.metrics.dropped(DropReason::TooOld, too_old);
        }
        let now = Instant::now();
        while let Some(d) = window.next_request(now, now_ms) {
            if d.too_old > 0 {
                tracing::warn!(destination = %dest.name, samples = d.too_old, "retrying request dropped: its samples are older than max_sample_age");
                dest.metrics.dropped(DropReason::TooOld, d.too_old);
                continue;
            }
            if d.retry {
                dest.metrics.retried(d.batch.samples);
            }
            let dest = dest.clone();
            running.spawn(async move {
                // A 2.0 batch queued before a fallback to 1.0 goes out converted.
                let verdict = match in_current_protocol(&dest, &d.batch) {
                    Some(wire) => attempt(&dest, &wire).await,
                    None => Verdict::Drop(DropReason::Corrupt),
                };
                (d.id, verdict)
            });
        }
        dest.publish_window(window.in_flight(), window.limit());
        if window.front_answered() {
            continue; // acknowledge it before waiting
        }
        if running.is_empty()
            && window.is_empty()
            && !more
            && dest.producer_done.load(Ordering::Acquire)
        {
            return;
        }
        let timer = window.next_timer(Instant::now());
        let event = shutdown
            .before_deadline(async {
                tokio::select! {
                    Some(joined) = running.join_next() => match joined {
                        Ok((id, verdict)) => Event::Answer(id, verdict),
                        // A panic in `attempt` is a bug: retry the request after backoff.
                        Err(_) => Event::Timer,
                    },
                    () = dest.wake.notified() => Event::Woken,
                    () = sleep_until(timer) => Event::Timer,
                }
            })
            .await;
        match event {
            None => break,
            Some(Event::Answer(id, verdict)) => {
                let answered = window.answered(id, &verdict, Instant::now());
                match verdict {
                    Verdict::Delivered => {
                        if answered.after_retry {
                            tracing::info!(destination = %dest.name, "delivered after retrying");
                        }
                        dest.metrics.sent(answered.samples);
                        crate::push::record_success(&dest.status);
                    }
                    Verdict::Drop(reason) => dest.metrics.dropped(reason, answered.samples),
                    Verdict::Retry { .. } => {}
                    Verdict::FallBack(why) => {
                        dest.negotiation.fall_back(&dest.name, why);
                        let protocol = dest.negotiation.current().as_str();
                        dest.status.send_modify(|s| s.protocol = Some(protocol));
                    }
                }
            }
            Some(Event::Woken) => more = true,
            Some(Event::Timer) => {}
        }
    }
    running.abort_all();
    dest.publish_window(0, window.limit());
    // Delivered batches are acknowledged even now, so that a restart does not resend them.
    let acks = window.sync().acks;
    let lost = dest
        .with_queue(move |q| {
            for _ in 0..acks {
                q.ack();
            }
            // The deadline passed: what a memory queue still holds is lost.
            if q.is_durable() {
                0
            } else {
                drain(q)
            }
        })
        .await;
    if let Some(samples) = lost.filter(|&s| s > 0) {
        tracing::warn!(destination = %dest.name, samples, "shutdown grace over: queued samples dropped");
        dest.metrics.dropped(DropReason::Shutdown, samples);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What one read-ahead got from the queue.
struct ReadAhead {
    batches: Vec<Batch>,
    /// The queue has nothing more to hand out.
    exhausted: bool,
    corrupt: u64,
    reopened: Option<Reopened>,
}

/// Acknowledges the answered front batches, then hands out up to `want` more.
fn read_ahead(q: &mut dyn Queue, want: Sync) -> ReadAhead {
    for _ in 0..want.acks {
        q.ack();
    }
    let mut batches = Vec::new();
    let mut bytes = 0u64;
    let mut exhausted = false;
    while batches.len() < want.batches && bytes < want.bytes {
        let Some(batch) = q.hand_out() else {
            exhausted = true;
            break;
        };
        bytes += batch.body.len() as u64;
        batches.push(batch);
    }
    ReadAhead {
        batches,
        exhausted,
        corrupt: q.take_corrupt().samples,
        reopened: q.take_reopened(),
    }
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
