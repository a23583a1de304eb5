//! The text exposition format 0.0.4, byte for byte what `prometheus::TextEncoder`
//! writes (a test holds them equal), in fewer and larger writes: a series' label block
//! is formatted once and reused for each of its samples (a histogram has 12), whole
//! numbers skip float formatting, and nothing is allocated per sample. `/metrics` is
//! rendered on every scrape, so this is most of its cost.

use std::fmt::Write;

use super::snapshot::{Kind, Snapshot};

/// Appends `snapshot` to `out` in the text format.
pub fn encode(snapshot: &Snapshot, out: &mut String) {
    let mut labels = String::new();
    for family in &snapshot.families {
        let name = family.name.as_str();
        if !family.help.is_empty() {
            out.push_str("# HELP ");
            out.push_str(name);
            out.push(' ');
            escape(&family.help, false, out);
            out.push('\n');
        }
        out.push_str("# TYPE ");
        out.push_str(name);
        out.push_str(match family.kind {
            Kind::Counter => " counter\n",
            Kind::Gauge => " gauge\n",
            Kind::Summary => " summary\n",
            Kind::Histogram => " histogram\n",
            Kind::Untyped => " untyped\n",
        });
        let n = family.bounds.len();
        for (pairs, values) in family.metrics() {
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
            let sample = Sample {
                name,
                labels: &labels,
            };
            match family.kind {
                Kind::Counter | Kind::Gauge => sample.write(out, "", None, values[0]),
                // Nothing registered here is untyped (the crate's encoder cannot write it
                // either); its samples are left out rather than guessed at.
                Kind::Untyped => {}
                Kind::Histogram => {
                    for (&bound, &count) in family.bounds.iter().zip(values) {
                        sample.write(out, "_bucket", Some(("le", bound)), count);
                    }
                    sample.write(out, "_bucket", Some(("le", f64::INFINITY)), values[n + 1]);
                    sample.write(out, "_sum", None, values[n]);
                    sample.write(out, "_count", None, values[n + 1]);
                }
                Kind::Summary => {
                    for (&q, &v) in family.bounds.iter().zip(values) {
                        sample.write(out, "", Some(("quantile", q)), v);
                    }
                    sample.write(out, "_sum", None, values[n]);
                    sample.write(out, "_count", None, values[n + 1]);
                }
            }
        }
    }
}

struct Sample<'a> {
    name: &'a str,
    labels: &'a str,
}

impl Sample<'_> {
    /// One line: `name<suffix>{labels[,extra="v"]} value`.
    fn write(&self, out: &mut String, suffix: &str, extra: Option<(&str, f64)>, value: f64) {
        out.push_str(self.name);
        out.push_str(suffix);
        if !self.labels.is_empty() || extra.is_some() {
            out.push('{');
            out.push_str(self.labels);
            if let Some((name, v)) = extra {
                if !self.labels.is_empty() {
                    out.push(',');
                }
                out.push_str(name);
                out.push_str("=\"");
                number(v, out);
                out.push('"');
            }
            out.push('}');
        }
        out.push(' ');
        number(value, out);
        out.push('\n');
    }
}

/// A sample value or a `le`/`quantile` bound, as the text format spells it. Whole
/// numbers (counts, most of a scrape) print through the integer path, which gives the
/// same digits as `f64`'s `Display` without its float formatting.
fn number(v: f64, out: &mut String) {
    if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else if v.fract() == 0.0 && v.abs() < 1e15 && !(v == 0.0 && v.is_sign_negative()) {
        let _ = write!(out, "{}", v as i64);
    } else {
        // `NaN` and every other number: `Display`, like prometheus::TextEncoder.
        let _ = write!(out, "{v}");
    }
}

/// Escapes `\` and newline, and `"` in label values.
fn escape(v: &str, quote: bool, out: &mut String) {
    let needs = |c: char| c == '\\' || c == '\n' || (quote && c == '"');
    if !v.contains(needs) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exposition::snapshot::Family;
    use prometheus::{
        Counter, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
    };
    use std::sync::Arc;

    #[test]
    fn writes_what_the_crate_encoder_writes() {
        let r = Registry::new();
        let c = IntCounterVec::new(Opts::new("c_total", "A counter."), &["a", "b"]).unwrap();
        c.with_label_values(&["x", "y"]).inc_by(3);
        c.with_label_values(&["quote\"back\\slash", "new\nline"])
            .inc();
        let g = GaugeVec::new(Opts::new("g", "Help with \\ and\nnewline."), &["k"]).unwrap();
        g.with_label_values(&["v"]).set(-0.25);
        g.with_label_values(&["w"]).set(1e21);
        g.with_label_values(&["z"]).set(f64::NAN);
        let plain = Counter::new("plain_total", "p").unwrap();
        plain.inc_by(1.5);
        let h = HistogramVec::new(
            HistogramOpts::new("h_ms", "A histogram.").buckets(vec![0.5, 50.0, 1e4]),
            &["route"],
        )
        .unwrap();
        h.with_label_values(&["/v1"]).observe(7.25);
        let no_labels = prometheus::Histogram::with_opts(HistogramOpts::new("h2", "h")).unwrap();
        no_labels.observe(0.3);
        for collector in [
            Box::new(c) as Box<dyn prometheus::core::Collector>,
            Box::new(g),
            Box::new(plain),
            Box::new(h),
            Box::new(no_labels),
        ] {
            r.register(collector).unwrap();
        }
        let mut snapshot = Snapshot::from_families(&r.gather());
        // The crate has no summary type: one built by hand, with a NaN quantile.
        let mut s = Family::new("s_ms", "A summary.", Kind::Summary, Arc::new([0.5, 0.99]));
        s.push(
            Arc::new([("route".into(), "/v1".into())]),
            &[12.5, f64::NAN, 12.5, 1.0],
        );
        snapshot.merge(Snapshot { families: vec![s] });
        let expected = TextEncoder::new()
            .encode_to_string(&snapshot.to_families())
            .unwrap();
        let mut got = String::new();
        encode(&snapshot, &mut got);
        assert_eq!(got, expected);
    }

    #[test]
    fn infinities_are_spelled_as_prometheus_reads_them() {
        let mut out = String::new();
        number(f64::INFINITY, &mut out);
        out.push(' ');
        number(f64::NEG_INFINITY, &mut out);
        assert_eq!(out, "+Inf -Inf");
    }
}
