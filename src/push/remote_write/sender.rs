//! The sender task of one destination: reads batches ahead from the queue into the window
//! (`window.rs`, which decides what goes and when), sends the requests it hands out,
//! applies their answers, counts them and acknowledges the answered batches in order.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::attempt::{attempt, in_current_protocol};
use super::queue::durable::Reopened;
use super::queue::{Batch, Queue};
use super::window::{Limits, Sync, Window};
use super::{drain, Destination, Verdict};
use crate::push::self_metrics::DropReason;
use crate::push::signal::Shutdown;

enum Event {
    Answer(u64, Verdict),
    Woken,
    Timer,
}

/// The sender task. Its totals are logged when it stops, so that what a process sent can
/// be compared with what a receiver holds after the process is gone (`scripts/bench/fleet.sh`).
pub(super) async fn send(dest: Arc<Destination>, limits: Limits, shutdown: Shutdown) {
    run(dest.clone(), limits, shutdown).await;
    let (samples_sent, samples_dropped) = dest.metrics.totals();
    tracing::info!(destination = %dest.name, samples_sent, samples_dropped, "remote-write sender stopped");
}

async fn run(dest: Arc<Destination>, limits: Limits, mut shutdown: Shutdown) {
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
                    Verdict::ClassicOnly => dest
                        .refuse_native("the receiver answered \"native histograms are disabled\""),
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
