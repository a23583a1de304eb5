//! OpenMetrics 1.0 text (`application/openmetrics-text;version=1.0.0`): what `/metrics`
//! answers a scraper that prefers it. The same samples as the text format 0.0.4
//! (`encode.rs`, whose number and escaping rules it shares), plus the exemplars of
//! histogram buckets, and OpenMetrics' own framing:
//!
//! - a counter family is named without `_total` in `# TYPE`/`# HELP` and its sample keeps
//!   it; a counter whose name lacks `_total` (none of codex-proxy's) goes out as `unknown`;
//! - untyped is `unknown`; help escapes `"` too;
//! - an exemplar follows its bucket line: ` # {labels} value timestamp` (seconds);
//! - `# EOF` ends the exposition.

use std::fmt::Write;

use super::encode::{escape, number};
use super::snapshot::{Exemplar, Family, Kind, Snapshot};

/// `Content-Type` of what [`encode`] writes.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Appends `snapshot` to `out` in OpenMetrics 1.0.
pub(crate) fn encode(snapshot: &Snapshot, out: &mut String) {
    let mut last_name: Option<&str> = None;
    let mut labels = String::new();
    for family in &snapshot.families {
        let counter_total = family.kind == Kind::Counter && family.name.ends_with("_total");
        if last_name != Some(family.name.as_str()) {
            header(family, counter_total, out);
        }
        last_name = Some(&family.name);
        let n = family.bounds.len();
        let exemplars = |i: usize| {
            if family.exemplars.is_empty() {
                None
            } else {
                family.exemplars[i].as_ref()
            }
        };
        for (m, (pairs, values)) in family.metrics().enumerate() {
            labels.clear();
            for (i, (label, value)) in pairs.iter().enumerate() {
                if i > 0 {
                    labels.push(',');
                }
                labels.push_str(label);
                labels.push_str("=\"");
                escape(value, true, &mut labels);
                labels.push('"');
            }
            let line = |out: &mut String, suffix, extra: Option<(&str, f64)>, v, e| {
                sample(out, &family.name, suffix, &labels, extra, v, e)
            };
            match family.kind {
                Kind::Counter | Kind::Gauge | Kind::Untyped => line(out, "", None, values[0], None),
                Kind::Histogram => {
                    let base = m * (n + 1);
                    for (i, (&bound, &count)) in family.bounds.iter().zip(values).enumerate() {
                        line(
                            out,
                            "_bucket",
                            Some(("le", bound)),
                            count,
                            exemplars(base + i),
                        );
                    }
                    let inf = exemplars(base + n);
                    line(
                        out,
                        "_bucket",
                        Some(("le", f64::INFINITY)),
                        values[n + 1],
                        inf,
                    );
                    line(out, "_count", None, values[n + 1], None);
                    line(out, "_sum", None, values[n], None);
                }
                Kind::Summary => {
                    for (&q, &v) in family.bounds.iter().zip(values) {
                        line(out, "", Some(("quantile", q)), v, None);
                    }
                    line(out, "_count", None, values[n + 1], None);
                    line(out, "_sum", None, values[n], None);
                }
            }
        }
    }
    out.push_str("# EOF\n");
}

fn header(family: &Family, counter_total: bool, out: &mut String) {
    let name = if counter_total {
        &family.name[..family.name.len() - "_total".len()]
    } else {
        family.name.as_str()
    };
    let kind = match family.kind {
        Kind::Counter if counter_total => "counter",
        Kind::Counter | Kind::Untyped => "unknown",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
        Kind::Summary => "summary",
    };
    if !family.help.is_empty() {
        let _ = write!(out, "# HELP {name} ");
        escape(&family.help, true, out);
        out.push('\n');
    }
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &str,
    extra: Option<(&str, f64)>,
    value: f64,
    exemplar: Option<&Exemplar>,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || extra.is_some() {
        out.push('{');
        out.push_str(labels);
        if let Some((label, v)) = extra {
            if !labels.is_empty() {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            number(v, out);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    number(value, out);
    if let Some(e) = exemplar {
        out.push_str(" # {");
        for (i, (label, value)) in e.labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape(value, true, out);
            out.push('"');
        }
        out.push_str("} ");
        number(e.value, out);
        let _ = write!(
            out,
            " {}.{:03}",
            e.timestamp_ms.div_euclid(1000),
            e.timestamp_ms.rem_euclid(1000)
        );
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counters_drop_total_in_the_header_and_buckets_carry_their_exemplars() {
        let mut c = Family::new("c_total", "A \"counter\".", Kind::Counter, Arc::new([]));
        c.push(Arc::new([("a".into(), "x".into())]), &[3.0]);
        let mut h = Family::new("h_seconds", "H.", Kind::Histogram, Arc::new([0.5, 1.0]));
        h.push(Arc::new([]), &[1.0, 1.0, 4.25, 2.0]);
        h.exemplars = vec![
            Some(Exemplar {
                labels: vec![("request_id", "chatcmpl-1".into())],
                value: 0.25,
                timestamp_ms: 1_700_000_000_123,
            }),
            None,
            None,
        ];
        let mut u = Family::new("u", "", Kind::Untyped, Arc::new([]));
        u.push(Arc::new([]), &[1.0]);
        let snapshot = Snapshot {
            families: vec![c, h, u],
        };
        let mut out = String::new();
        encode(&snapshot, &mut out);
        assert_eq!(
            out,
            "# HELP c A \\\"counter\\\".\n# TYPE c counter\nc_total{a=\"x\"} 3\n\
             # HELP h_seconds H.\n# TYPE h_seconds histogram\n\
             h_seconds_bucket{le=\"0.5\"} 1 # {request_id=\"chatcmpl-1\"} 0.25 1700000000.123\n\
             h_seconds_bucket{le=\"1\"} 1\nh_seconds_bucket{le=\"+Inf\"} 2\n\
             h_seconds_count 2\nh_seconds_sum 4.25\n\
             # TYPE u unknown\nu 1\n# EOF\n"
        );
    }
}
