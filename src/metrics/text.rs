//! The text exposition format 0.0.4, byte for byte what `prometheus::TextEncoder`
//! writes (a test holds them equal), in fewer and larger writes: a series' label block
//! is formatted once and reused for each of its samples (a histogram has 12), whole
//! numbers skip float formatting, and nothing is allocated per sample. `/metrics` is
//! rendered on every scrape, so this is most of its cost.

use std::fmt::Write;

use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType};

/// Appends `families` to `out` in the text format.
pub fn encode(families: &[MetricFamily], out: &mut String) {
    let mut labels = String::new();
    for family in families {
        let name = family.name();
        if !family.help().is_empty() {
            out.push_str("# HELP ");
            out.push_str(name);
            out.push(' ');
            escape(family.help(), false, out);
            out.push('\n');
        }
        let kind = family.get_field_type();
        out.push_str("# TYPE ");
        out.push_str(name);
        out.push_str(match kind {
            MetricType::COUNTER => " counter\n",
            MetricType::GAUGE => " gauge\n",
            MetricType::SUMMARY => " summary\n",
            MetricType::HISTOGRAM => " histogram\n",
            MetricType::UNTYPED => " untyped\n",
        });
        for metric in family.get_metric() {
            labels.clear();
            label_block(metric.get_label(), &mut labels);
            let sample = Sample {
                name,
                labels: &labels,
                metric,
            };
            match kind {
                MetricType::COUNTER => {
                    sample.write(out, "", None, metric.get_counter().get_value())
                }
                MetricType::GAUGE => sample.write(out, "", None, metric.get_gauge().get_value()),
                // Nothing registered here is untyped (the crate's encoder cannot write it
                // either); its samples are left out rather than guessed at.
                MetricType::UNTYPED => {}
                MetricType::HISTOGRAM => {
                    let h = metric.get_histogram();
                    let mut inf_seen = false;
                    for bucket in h.get_bucket() {
                        let bound = bucket.upper_bound();
                        inf_seen |= bound == f64::INFINITY;
                        let count = bucket.cumulative_count() as f64;
                        sample.write(out, "_bucket", Some(("le", bound)), count);
                    }
                    if !inf_seen {
                        let count = h.get_sample_count() as f64;
                        sample.write(out, "_bucket", Some(("le", f64::INFINITY)), count);
                    }
                    sample.write(out, "_sum", None, h.get_sample_sum());
                    sample.write(out, "_count", None, h.get_sample_count() as f64);
                }
                MetricType::SUMMARY => {
                    let s = metric.get_summary();
                    for q in s.get_quantile() {
                        sample.write(out, "", Some(("quantile", q.quantile())), q.value());
                    }
                    sample.write(out, "_sum", None, s.sample_sum());
                    sample.write(out, "_count", None, s.sample_count() as f64);
                }
            }
        }
    }
}

/// `a="x",b="y"` without braces: the part every sample of one series shares.
fn label_block(pairs: &[LabelPair], out: &mut String) {
    for (i, pair) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(pair.name());
        out.push_str("=\"");
        escape(pair.value(), true, out);
        out.push('"');
    }
}

struct Sample<'a> {
    name: &'a str,
    labels: &'a str,
    metric: &'a Metric,
}

impl Sample<'_> {
    /// One line: `name<suffix>{labels[,extra="v"]} value[ timestamp]`.
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
        let timestamp = self.metric.timestamp_ms();
        if timestamp != 0 {
            let _ = write!(out, " {timestamp}");
        }
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
    use crate::metrics::summary::SlidingSummaryVec;
    use prometheus::{
        Counter, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
    };
    use std::time::Duration;

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
        let s = SlidingSummaryVec::new(
            "s_ms",
            "A summary.",
            &["route"],
            &[0.5, 0.99],
            Duration::from_secs(60),
        )
        .unwrap();
        s.observe(&["/v1"], 12.5);
        s.observe(&["/v2"], f64::NAN); // a series whose quantiles are NaN
        for collector in [
            Box::new(c) as Box<dyn prometheus::core::Collector>,
            Box::new(g),
            Box::new(plain),
            Box::new(h),
            Box::new(no_labels),
            Box::new(s),
        ] {
            r.register(collector).unwrap();
        }
        let families = r.gather();
        let expected = TextEncoder::new().encode_to_string(&families).unwrap();
        let mut got = String::new();
        encode(&families, &mut got);
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
