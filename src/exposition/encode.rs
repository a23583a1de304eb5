//! The text exposition format 0.0.4, byte for byte what `prometheus::TextEncoder`
//! writes (a test holds them equal), in fewer and larger writes: a series' label block
//! is formatted once and reused for each of its samples (a histogram has 12), whole
//! numbers skip float formatting, and nothing is allocated per sample. `/metrics` is
//! rendered on every scrape, so this is most of its cost.

use std::fmt::Write;

use super::snapshot::{Family, Kind, Snapshot};

/// `Content-Type` of what [`encode`] writes: a scrape's answer and a Pushgateway body.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Appends `snapshot` to `out` in the text format.
pub(crate) fn encode(snapshot: &Snapshot, out: &mut String) {
    let mut encoder = Encoder::default();
    for family in &snapshot.families {
        encoder.family(family, out);
    }
}

/// Writes families one at a time, for callers that choose which ones (the Pushgateway
/// body skips empty families); one family after another gives what [`encode`] gives.
#[derive(Debug, Default)]
pub(crate) struct Encoder<'a> {
    /// The name of the last family written: the next one of that name (a family split by
    /// its bounds) continues it without a second HELP and TYPE, which parsers refuse.
    last_name: Option<&'a str>,
    /// One series' label block, reused.
    labels: String,
}

impl<'a> Encoder<'a> {
    /// Appends `family` to `out`.
    pub(crate) fn family(&mut self, family: &'a Family, out: &mut String) {
        let name = family.name.as_str();
        if self.last_name != Some(name) {
            header(family, out);
        }
        self.last_name = Some(name);
        let labels = &mut self.labels;
        let n = family.bounds.len();
        for (pairs, values) in family.metrics() {
            labels.clear();
            for (i, (label, value)) in pairs.iter().enumerate() {
                if i > 0 {
                    labels.push(',');
                }
                labels.push_str(label);
                labels.push_str("=\"");
                escape(value, true, labels);
                labels.push('"');
            }
            let sample = Sample {
                name,
                labels: labels.as_str(),
            };
            match family.kind {
                Kind::Counter | Kind::Gauge | Kind::Untyped => {
                    sample.write(out, "", None, values[0])
                }
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

/// `# HELP` (when there is help) and `# TYPE`.
fn header(family: &Family, out: &mut String) {
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
pub(super) fn number(v: f64, out: &mut String) {
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
pub(super) fn escape(v: &str, quote: bool, out: &mut String) {
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
    fn untyped_samples_are_written_like_gauges_under_an_untyped_type_line() {
        let mut u = Family::new("u", "", Kind::Untyped, Arc::new([]));
        u.push(Arc::new([("a".into(), "1".into())]), &[3.0]);
        let mut out = String::new();
        encode(&Snapshot { families: vec![u] }, &mut out);
        assert_eq!(out, "# TYPE u untyped\nu{a=\"1\"} 3\n");
    }

    #[test]
    fn a_family_split_by_its_bounds_is_written_under_one_header() {
        let mut wide = Family::new("h", "H.", Kind::Histogram, Arc::new([1.0, 2.0]));
        wide.push(Arc::new([("r".into(), "a".into())]), &[0.0, 1.0, 1.5, 1.0]);
        let mut narrow = Family::new("h", "H.", Kind::Histogram, Arc::new([]));
        narrow.push(Arc::new([("r".into(), "b".into())]), &[0.5, 1.0]);
        let mut out = String::new();
        encode(
            &Snapshot {
                families: vec![wide, narrow],
            },
            &mut out,
        );
        assert_eq!(
            out,
            "# HELP h H.\n# TYPE h histogram\n\
             h_bucket{r=\"a\",le=\"1\"} 0\nh_bucket{r=\"a\",le=\"2\"} 1\n\
             h_bucket{r=\"a\",le=\"+Inf\"} 1\nh_sum{r=\"a\"} 1.5\nh_count{r=\"a\"} 1\n\
             h_bucket{r=\"b\",le=\"+Inf\"} 1\nh_sum{r=\"b\"} 0.5\nh_count{r=\"b\"} 1\n"
        );
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
