//! One attempt at a queued request: the batch as the destination sends it now (converted
//! after a fallback to 1.0 or to classic histograms), the request, and the verdict on the
//! answer, `*-Written` headers included.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use reqwest::header::{self, HeaderMap};
use reqwest::{Method, StatusCode};

use super::negotiate::{self, Protocol, Written};
use super::queue::Batch;
use super::transcode::{self, to_v1, without_histograms};
use super::{Destination, Verdict};
use crate::push::http::{error_body, error_chain, ERROR_BODY_LIMIT};
use crate::push::retry::parse_retry_after;
use crate::push::self_metrics::{DropReason, Outcome};

/// `batch` as the destination's protocol wants it sent: a 2.0 batch queued before a
/// fallback to 1.0 is converted, and one made before the receiver refused native
/// histograms loses them; `None` when it cannot be read (it is dropped as corrupt).
pub(super) fn in_current_protocol<'b>(
    dest: &Destination,
    batch: &'b Batch,
) -> Option<Cow<'b, Batch>> {
    if batch.protocol == Protocol::V1 || dest.negotiation.current() == Protocol::V2 {
        return without_native(dest, Cow::Borrowed(batch));
    }
    match to_v1(batch) {
        Ok(b) => without_native(dest, Cow::Owned(b)),
        Err(e) => {
            tracing::warn!(destination = %dest.name, error = %e, samples = batch.samples, "queued 2.0 request unreadable; dropped");
            None
        }
    }
}

/// A `batch` made before the receiver refused native histograms, without them; `None`
/// when it cannot be read (it is dropped as corrupt).
fn without_native<'b>(dest: &Destination, batch: Cow<'b, Batch>) -> Option<Cow<'b, Batch>> {
    if !dest.native_refused.load(Ordering::Acquire)
        || batch.oldest_timestamp_ms > dest.native_until_ms.load(Ordering::Acquire)
    {
        return Some(batch);
    }
    match without_histograms(&batch, dest.native_only) {
        Ok(None) => Some(batch),
        Ok(Some(b)) => Some(Cow::Owned(b)),
        Err(e) => {
            tracing::warn!(destination = %dest.name, error = %e, samples = batch.samples, "queued request unreadable; dropped");
            None
        }
    }
}

/// Sends `batch` once and judges the answer.
pub(super) async fn attempt(dest: &Destination, batch: &Batch) -> Verdict {
    let request = match dest.transport.request(Method::POST, dest.url.clone()) {
        Ok(r) => r.headers(batch.protocol.headers()).body(batch.body.clone()),
        Err(e) => {
            tracing::warn!(destination = %dest.name, error = %e, "request not sent");
            return Verdict::Retry {
                after: None,
                rate_limited: false,
            };
        }
    };
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            let outcome = if e.is_timeout() {
                Outcome::Timeout
            } else {
                Outcome::Network
            };
            dest.metrics.request(outcome);
            let error = error_chain(e);
            crate::push::record_failure(&dest.status, &dest.url, &error);
            tracing::warn!(destination = %dest.name, outcome = outcome.as_str(), %error, "push failed; will retry");
            return Verdict::Retry {
                after: None,
                rate_limited: false,
            };
        }
    };
    let status = response.status();
    if status.is_success() {
        dest.metrics.request(Outcome::Success);
        if batch.protocol == Protocol::V2 {
            return judge_written(dest, batch, response.headers());
        }
        return Verdict::Delivered;
    }
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let message = error_body(response, ERROR_BODY_LIMIT).await;
    if batch.protocol == Protocol::V2
        && dest.negotiation.may_fall_back()
        && negotiate::unsupported(status, &message)
    {
        dest.metrics.request(Outcome::Http4xx);
        tracing::info!(destination = %dest.name, status = status.as_u16(), receiver_says = %message, "remote-write 2.0 refused");
        return Verdict::FallBack("the receiver refused the 2.0 content type");
    }
    if negotiate::native_histograms_refused(status, &message) {
        dest.metrics.request(Outcome::Http5xx);
        tracing::debug!(destination = %dest.name, status = status.as_u16(), receiver_says = %message, "native histograms refused");
        return Verdict::ClassicOnly;
    }
    let (outcome, verdict) = if status == StatusCode::TOO_MANY_REQUESTS {
        if dest.retry_on_429 {
            (
                Outcome::Http429,
                Verdict::Retry {
                    after: retry_after,
                    rate_limited: true,
                },
            )
        } else {
            (Outcome::Http429, Verdict::Drop(DropReason::RateLimited))
        }
    } else if status.is_server_error() {
        (
            Outcome::Http5xx,
            Verdict::Retry {
                after: retry_after,
                rate_limited: false,
            },
        )
    } else {
        // Any other answer will not change on a retry: the spec says drop it.
        (Outcome::Http4xx, Verdict::Drop(DropReason::Rejected))
    };
    dest.metrics.request(outcome);
    crate::push::record_failure(
        &dest.status,
        &dest.url,
        &format!("HTTP {}: {message}", status.as_u16()),
    );
    match verdict {
        Verdict::Drop(_) => {
            tracing::warn!(destination = %dest.name, status = status.as_u16(), samples = batch.samples, receiver_says = %message, "push rejected; request dropped");
        }
        _ => {
            tracing::warn!(destination = %dest.name, status = status.as_u16(), receiver_says = %message, "push failed; will retry");
        }
    }
    verdict
}

/// A 2xx to a 2.0 request: what its `*-Written` headers say was written. When they add
/// up to fewer than it carried, the request is decoded to tell which kind fell short:
/// - samples (the spec forbids it, a receiver may do it): counted as rejected, logged;
/// - native histograms, none written: the receiver does not take them (or does not say it
///   does, which the spec requires). As after Prometheus' 500 `native histograms are
///   disabled`, the destination turns to classic for good. With `histograms = "native"`
///   the request is sent again at once as the classic `_count` and `_sum` of its native
///   series (`Verdict::ClassicOnly`); with `"both"` it is not (its classic series went in
///   requests of their own, and its bucket exemplars were written): the histograms are
///   counted as rejected. Some written: the rest is counted as rejected;
/// - exemplars: counted as rejected, logged once (a receiver without exemplar storage).
///
/// Never a retry: what was refused once will be refused again.
fn judge_written(dest: &Destination, batch: &Batch, headers: &HeaderMap) -> Verdict {
    let written = negotiate::written(headers);
    let Written::Counts {
        samples,
        histograms,
        exemplars,
    } = written
    else {
        if dest.negotiation.may_fall_back() {
            return Verdict::FallBack(
                "the receiver answered 2xx without any X-Prometheus-Remote-Write-*-Written header",
            );
        }
        // With protocol = "v2" the spec says to take this as a 415: nothing was written.
        tracing::warn!(destination = %dest.name, samples = batch.samples, "receiver answered a 2.0 request 2xx without any *-Written header: it did not read it (a 1.x receiver?); request dropped");
        return Verdict::Drop(DropReason::Rejected);
    };
    if written.total() >= batch.samples {
        return Verdict::Delivered;
    }
    let sent = transcode::contents(batch).unwrap_or(transcode::Contents {
        samples: batch.samples,
        ..Default::default()
    });
    let short = |sent: u64, written: u64| sent.saturating_sub(written);
    let samples_short = short(sent.samples, samples);
    if samples_short > 0 {
        tracing::warn!(destination = %dest.name, samples = sent.samples, written = samples, rejected = samples_short, "receiver answered 2xx but did not write every sample");
    }
    let mut histograms_short = short(sent.histograms, histograms);
    let mut verdict = Verdict::Delivered;
    if histograms_short > 0 && histograms == 0 {
        dest.refuse_native("the receiver answered 2xx with X-Prometheus-Remote-Write-Histograms-Written 0 or missing");
        if dest.native_only {
            // Sent again at once as the classic `_count` and `_sum` of its native series
            // (`without_native`): they were all it held besides their exemplars
            // (`histograms.rs`), which are not sent again.
            histograms_short = 0;
            verdict = Verdict::ClassicOnly;
        }
    } else if histograms_short > 0 {
        tracing::warn!(destination = %dest.name, histograms = sent.histograms, written = histograms, rejected = histograms_short, "receiver answered 2xx but did not write every native histogram");
    }
    let exemplars_short = short(sent.exemplars, exemplars);
    if exemplars_short > 0 && !dest.exemplars_short.swap(true, Ordering::AcqRel) {
        tracing::warn!(destination = %dest.name, exemplars = sent.exemplars, written = exemplars, "receiver answered 2xx but did not store every exemplar (no exemplar storage? Prometheus: --enable-feature=exemplar-storage); counted in codex_push_samples_rejected_total, logged once");
    }
    dest.metrics
        .rejected(samples_short + histograms_short + exemplars_short);
    verdict
}
