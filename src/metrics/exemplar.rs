//! Exemplars: which request an observation came from, kept beside its histogram bucket.
//!
//! Every request gets an id, the completion id (`chatcmpl-` and 16 hex digits) that the
//! client sees as `x-request-id` (and as the completion's `id`), and that the request's log
//! line carries. An observation's exemplar holds the W3C trace context the request carried
//! (`trace_id`, `span_id`) when its `traceparent` header is valid, else that id
//! (`request_id`). Nothing else: never a prompt, a user or a key, and never a label of a
//! series. At most 63 characters of labels, within OpenMetrics' 128.
//!
//! Recording must stay cheap: ids are plain bytes (trace ids as bytes, the request id's 25
//! characters in a fixed array), so making, copying and keeping one allocates nothing and
//! touches no reference count; a bucket keeps the observation's `Instant`, and the
//! wall-clock timestamp is derived from it and one anchor taken once, when a snapshot reads
//! it, with no clock read per observation.

use std::fmt::{self, Write as _};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::exposition::snapshot::Exemplar;

/// The response header that carries the request id (contract).
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The W3C trace context request header.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// A request's id: `chatcmpl-` and 16 lowercase hex digits, the completion id the client
/// sees. Every request makes one, metrics on or off, so it is written without the
/// formatting machinery and kept inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequestId([u8; 25]);

impl RequestId {
    /// A new, random id.
    pub fn random() -> RequestId {
        RequestId::from_u64(fastrand::u64(..))
    }

    /// The id whose hex digits are `n`'s.
    pub fn from_u64(n: u64) -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = *b"chatcmpl-0000000000000000";
        for (i, digit) in id[9..].iter_mut().enumerate() {
            *digit = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
        }
        RequestId(id)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // ASCII by construction: the fallback is never taken.
        std::str::from_utf8(&self.0).unwrap_or("chatcmpl-")
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// What an exemplar names: the request's trace and span, or its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExemplarId {
    Trace {
        trace_id: [u8; 16],
        span_id: [u8; 8],
    },
    Request(RequestId),
}

impl ExemplarId {
    /// The trace context of a valid `traceparent` (W3C Trace Context: `version-traceid-
    /// parentid-flags`, lowercase hex, neither id all zeros, version `ff` invalid, version
    /// `00` exactly 55 characters), else the request id. A malformed header is ignored.
    pub fn for_request(traceparent: Option<&[u8]>, request_id: RequestId) -> ExemplarId {
        traceparent
            .and_then(parse_traceparent)
            .unwrap_or(ExemplarId::Request(request_id))
    }

    /// The exemplar labels, in name order.
    pub fn labels(&self) -> Vec<(&'static str, String)> {
        match self {
            ExemplarId::Trace { trace_id, span_id } => {
                vec![("span_id", hex(span_id)), ("trace_id", hex(trace_id))]
            }
            ExemplarId::Request(id) => vec![("request_id", id.to_string())],
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn parse_traceparent(header: &[u8]) -> Option<ExemplarId> {
    let version = header.get(..2)?;
    if version == b"ff" || header.len() < 55 || (version == b"00" && header.len() != 55) {
        return None;
    }
    // Later versions may append fields after a dash.
    if header.len() > 55 && header[55] != b'-' {
        return None;
    }
    if header[2] != b'-' || header[35] != b'-' || header[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    let mut flags = [0u8; 1];
    let mut version_byte = [0u8; 1];
    decode_hex(version, &mut version_byte)?;
    decode_hex(&header[3..35], &mut trace_id)?;
    decode_hex(&header[36..52], &mut span_id)?;
    decode_hex(&header[53..55], &mut flags)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(ExemplarId::Trace { trace_id, span_id })
}

/// Lowercase hex only, as the spec requires.
fn decode_hex(text: &[u8], out: &mut [u8]) -> Option<()> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

/// An exemplar as recorded: the id, the observed value, and when (converted to wall-clock
/// time only when read).
#[derive(Debug, Clone)]
pub(crate) struct StoredExemplar {
    id: ExemplarId,
    value: f64,
    at: Instant,
}

impl StoredExemplar {
    pub(crate) fn new(id: &ExemplarId, value: f64, at: Instant) -> StoredExemplar {
        StoredExemplar { id: *id, value, at }
    }

    pub(crate) fn to_snapshot(&self) -> Exemplar {
        Exemplar {
            labels: self.id.labels(),
            value: self.value,
            timestamp_ms: unix_ms(self.at),
        }
    }
}

/// Milliseconds since the epoch at `at`, from one (Instant, SystemTime) pair taken once.
fn unix_ms(at: Instant) -> i64 {
    static ANCHOR: OnceLock<(Instant, i64)> = OnceLock::new();
    let &(instant, ms) = ANCHOR.get_or_init(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        (Instant::now(), now)
    });
    match at.checked_duration_since(instant) {
        Some(d) => ms + d.as_millis() as i64,
        None => ms - instant.duration_since(at).as_millis() as i64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> RequestId {
        RequestId::from_u64(0x0123_4567_89ab_cdef)
    }

    #[test]
    fn a_valid_traceparent_gives_trace_and_span_ids() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let e = ExemplarId::for_request(Some(tp), id());
        assert_eq!(
            e.labels(),
            vec![
                ("span_id", "00f067aa0ba902b7".to_string()),
                ("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736".to_string())
            ]
        );
        // A later version may carry more fields.
        let future = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz";
        assert!(matches!(
            ExemplarId::for_request(Some(future), id()),
            ExemplarId::Trace { .. }
        ));
    }

    #[test]
    fn a_malformed_traceparent_falls_back_to_the_request_id() {
        let bad: [&[u8]; 8] = [
            b"",
            b"garbage",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for tp in bad {
            let e = ExemplarId::for_request(Some(tp), id());
            assert_eq!(
                e,
                ExemplarId::Request(id()),
                "{:?}",
                String::from_utf8_lossy(tp)
            );
        }
        let labels = ExemplarId::Request(id()).labels();
        assert_eq!(
            labels,
            vec![("request_id", "chatcmpl-0123456789abcdef".to_string())]
        );
        let chars: usize = labels.iter().map(|(n, v)| n.len() + v.len()).sum();
        assert!(chars <= 128);
    }

    #[test]
    fn request_ids_look_like_completion_ids() {
        let a = RequestId::random().to_string();
        assert_eq!(a.len(), 25);
        assert!(a.starts_with("chatcmpl-"));
        assert!(
            a[9..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{a}"
        );
        assert_ne!(a, RequestId::random().to_string());
        assert_eq!(
            RequestId::from_u64(0xaa).as_str(),
            "chatcmpl-00000000000000aa"
        );
    }

    #[test]
    fn a_stored_exemplar_reads_back_as_the_id_it_was_given() {
        let at = Instant::now();
        let ids = [
            ExemplarId::Request(id()),
            ExemplarId::for_request(
                Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                id(),
            ),
        ];
        for e in &ids {
            let read = StoredExemplar::new(e, 2.5, at).to_snapshot();
            assert_eq!(read.labels, e.labels());
            assert_eq!((read.value, read.timestamp_ms), (2.5, unix_ms(at)));
        }
    }

    #[test]
    fn timestamps_follow_the_wall_clock() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let t = unix_ms(Instant::now());
        assert!((t - now).abs() < 60_000, "{t} vs {now}");
    }
}
