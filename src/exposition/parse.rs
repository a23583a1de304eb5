//! A small strict parser of the Prometheus text exposition format 0.0.4 into the
//! prometheus crate's plain model (`Vec<MetricFamily>`), for the one-shot `push` command.
//!
//! Strict on purpose: whatever the Pushgateway or a remote-write receiver would reject,
//! or silently reinterpret, is an error here that names the line. In particular:
//! - **Timestamps are rejected.** The Pushgateway refuses pushes that carry them, and the
//!   remote-write path stamps every sample with the time of the push.
//! - A family's lines must be contiguous, HELP and TYPE at most once each and before its
//!   first sample; a sample (name plus label set) at most once.
//! - Histograms need `_bucket` lines in increasing `le` order with non-decreasing counts,
//!   a `+Inf` bucket equal to `_count`, and `_sum`/`_count`; summaries need `_sum` and
//!   `_count` and quantiles in increasing order. Counts must be non-negative integers.
//! - LF line endings only (a CR is an error), label values escape only `\\`, `\"`, `\n`.
//!
//! Model conventions, the same as the prometheus crate's own collectors: the `+Inf`
//! bucket is implicit (its count is the histogram's sample count, not a bucket), labels
//! are sorted by name, and an untyped sample's value is in the `untyped` field. Families
//! declared but without samples are left out: there is nothing to push for them.
//!
//! Why not the `prometheus-parse` crate: it splits label sets on `,` and `=` without
//! unescaping (a value holding `,`, `}` or `\"` comes out wrong), silently skips lines
//! it cannot read, and pulls in regex, chrono, itertools and lazy_static.

use std::collections::{HashMap, HashSet};

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType, Quantile,
    Summary, Untyped,
};

use crate::config::is_valid_label_name;

/// What is wrong with the input, and on which line (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// Parses a whole exposition. Families come out in input order.
pub fn parse(text: &str) -> Result<Vec<MetricFamily>, ParseError> {
    let mut parser = Parser::default();
    for (index, line) in text.split('\n').enumerate() {
        parser.line_number = index + 1;
        parser.line(line)?;
    }
    parser.finish_current()?;
    Ok(parser.done)
}

/// Metric names: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

type Labels = Vec<(String, String)>;

#[derive(Default)]
struct Parser {
    done: Vec<MetricFamily>,
    current: Option<Family>,
    /// Names of families already finished, with the line they started on.
    finished: HashMap<String, usize>,
    /// The line being read (1-based).
    line_number: usize,
}

/// A family being read: header lines first, then its samples.
struct Family {
    name: String,
    started: usize,
    help: Option<String>,
    kind: Option<MetricType>,
    /// Metrics by label set (without `le`/`quantile`), in order of first appearance.
    metrics: Vec<(Labels, Partial)>,
    index: HashMap<Labels, usize>,
}

/// One metric of a family, as its lines arrive.
#[derive(Default)]
struct Partial {
    /// Counter, gauge or untyped value.
    value: Option<f64>,
    /// Histogram buckets or summary quantiles: (bound, value).
    points: Vec<(f64, f64)>,
    sum: Option<f64>,
    count: Option<f64>,
}

/// Which part of a histogram or summary a sample line carries.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    Value,
    Point,
    Sum,
    Count,
}

impl Parser {
    /// An error on the line being read.
    fn here(&self) -> impl Fn(String) -> ParseError {
        let line = self.line_number;
        move |message| ParseError { line, message }
    }

    fn line(&mut self, line: &str) -> Result<(), ParseError> {
        if line.contains('\r') {
            return Err(self.here()(
                "carriage return: the text format uses LF line endings".into(),
            ));
        }
        let trimmed = line.trim_start_matches([' ', '\t']);
        if trimmed.trim_end_matches([' ', '\t']).is_empty() {
            return Ok(());
        }
        match trimmed.strip_prefix('#') {
            Some(comment) => self.comment(comment),
            None => self.sample(trimmed),
        }
    }

    fn comment(&mut self, comment: &str) -> Result<(), ParseError> {
        let here = self.here();
        let mut c = Cursor::new(comment);
        c.skip_blanks();
        let keyword = c.token();
        if keyword != "HELP" && keyword != "TYPE" {
            return Ok(()); // an ordinary comment
        }
        if !c.skip_blanks() {
            return Err(here(format!("{keyword} needs a metric name")));
        }
        let name = c.token();
        if !is_valid_metric_name(name) {
            return Err(here(format!("`{name}` is not a valid metric name")));
        }
        let family = self.family_for_header(name)?;
        if keyword == "HELP" {
            if family.help.is_some() {
                return Err(here(format!("second HELP line for `{name}`")));
            }
            // One blank separates the name from the docstring; the rest is the docstring.
            let rest = c.rest();
            let doc = rest.strip_prefix([' ', '\t']).unwrap_or(rest);
            family.help = Some(unescape(doc, false).map_err(here)?);
            return Ok(());
        }
        if family.kind.is_some() {
            return Err(here(format!("second TYPE line for `{name}`")));
        }
        if !family.metrics.is_empty() {
            return Err(here(format!("TYPE line for `{name}` after its samples")));
        }
        c.skip_blanks();
        let kind = match c.token() {
            "counter" => MetricType::COUNTER,
            "gauge" => MetricType::GAUGE,
            "histogram" => MetricType::HISTOGRAM,
            "summary" => MetricType::SUMMARY,
            "untyped" => MetricType::UNTYPED,
            other => return Err(here(format!("unknown metric type `{other}`"))),
        };
        c.skip_blanks();
        if !c.at_end() {
            return Err(here(format!(
                "unexpected text after the type: `{}`",
                c.rest()
            )));
        }
        family.kind = Some(kind);
        Ok(())
    }

    /// The family a HELP or TYPE line for `name` belongs to: the current one, or a new one.
    fn family_for_header(&mut self, name: &str) -> Result<&mut Family, ParseError> {
        let is_current = self.current.as_ref().is_some_and(|f| f.name == name);
        if !is_current {
            self.start_family(name)?;
        }
        Ok(self.current.as_mut().expect("a family was just started"))
    }

    fn start_family(&mut self, name: &str) -> Result<(), ParseError> {
        self.finish_current()?;
        if let Some(first) = self.finished.get(name) {
            return Err(self.here()(format!(
                "`{name}` appears again (its family started on line {first}); a family's lines must be contiguous"
            )));
        }
        self.current = Some(Family {
            name: name.to_string(),
            started: self.line_number,
            help: None,
            kind: None,
            metrics: Vec::new(),
            index: HashMap::new(),
        });
        Ok(())
    }

    fn sample(&mut self, line: &str) -> Result<(), ParseError> {
        let here = self.here();
        let mut c = Cursor::new(line);
        let name = c.metric_name().map_err(&here)?;
        let mut blank = c.skip_blanks();
        let mut labels = Vec::new();
        if c.eat('{') {
            labels = c.labels().map_err(&here)?;
            blank = c.skip_blanks();
        }
        if !blank {
            return Err(here(format!("`{name}` needs a value after a blank")));
        }
        let value = parse_value(c.token()).map_err(&here)?;
        c.skip_blanks();
        if !c.at_end() {
            let rest = c.rest().trim_end_matches([' ', '\t']);
            return Err(here(if rest.parse::<i64>().is_ok() {
                format!("timestamp `{rest}` not allowed: the Pushgateway rejects timestamps and remote-write stamps the push time")
            } else {
                format!("unexpected text after the value: `{rest}`")
            }));
        }

        let part = match &self.current {
            Some(f) => match f.part_of(name) {
                Some(part) => Some(part),
                None if f.name == name => {
                    return Err(here(format!(
                        "sample `{name}` does not fit {} `{name}`",
                        type_name(f.kind)
                    )))
                }
                None => None,
            },
            None => None,
        };
        let part = match part {
            Some(part) => part,
            None => {
                self.start_family(name)?;
                Part::Value
            }
        };
        let family = self.current.as_mut().expect("a family is current");
        family.add(name, labels, part, value).map_err(here)
    }

    /// Turns the current family into a `MetricFamily`, checking what needs all its lines.
    fn finish_current(&mut self) -> Result<(), ParseError> {
        let Some(family) = self.current.take() else {
            return Ok(());
        };
        let started = family.started;
        self.finished.insert(family.name.clone(), started);
        if family.metrics.is_empty() {
            return Ok(());
        }
        let mf = family.build().map_err(|message| ParseError {
            line: started,
            message,
        })?;
        self.done.push(mf);
        Ok(())
    }
}

impl Family {
    /// Which part of this family a sample named `name` is, if it belongs here at all.
    fn part_of(&self, name: &str) -> Option<Part> {
        let suffix = name.strip_prefix(self.name.as_str())?;
        match (self.kind, suffix) {
            (Some(MetricType::HISTOGRAM), "_bucket") => Some(Part::Point),
            (Some(MetricType::SUMMARY), "") => Some(Part::Point),
            (Some(MetricType::HISTOGRAM | MetricType::SUMMARY), "_sum") => Some(Part::Sum),
            (Some(MetricType::HISTOGRAM | MetricType::SUMMARY), "_count") => Some(Part::Count),
            (Some(MetricType::HISTOGRAM | MetricType::SUMMARY), _) => None,
            (_, "") => Some(Part::Value),
            _ => None,
        }
    }

    fn add(
        &mut self,
        name: &str,
        mut labels: Labels,
        part: Part,
        value: f64,
    ) -> Result<(), String> {
        let point_label = match self.kind {
            Some(MetricType::HISTOGRAM) => "le",
            _ => "quantile",
        };
        let bound = if part == Part::Point {
            let i = labels
                .iter()
                .position(|(n, _)| n == point_label)
                .ok_or_else(|| format!("`{name}` needs a `{point_label}` label"))?;
            let (_, raw) = labels.remove(i);
            let bound = parse_value(&raw).map_err(|e| format!("`{point_label}` label: {e}"))?;
            if bound.is_nan() {
                return Err(format!("`{point_label}` label must not be NaN"));
            }
            Some(bound)
        } else {
            None
        };
        labels.sort();
        let next = self.metrics.len();
        let i = *self.index.entry(labels.clone()).or_insert(next);
        if i == next {
            self.metrics.push((labels, Partial::default()));
        }
        let partial = &mut self.metrics[i].1;
        let duplicate = || format!("duplicate sample `{name}` with the same labels");
        match part {
            Part::Value => {
                if partial.value.replace(value).is_some() {
                    return Err(duplicate());
                }
            }
            Part::Sum => {
                if partial.sum.replace(value).is_some() {
                    return Err(duplicate());
                }
            }
            Part::Count => {
                if partial.count.replace(value).is_some() {
                    return Err(duplicate());
                }
            }
            Part::Point => {
                let bound = bound.expect("a point has a bound");
                if let Some(&(last, _)) = partial.points.last() {
                    if bound == last {
                        return Err(duplicate());
                    }
                    if bound <= last {
                        return Err(format!(
                            "`{point_label}` values must increase within a series: {} after {}",
                            fmt_value(bound),
                            fmt_value(last)
                        ));
                    }
                }
                partial.points.push((bound, value));
            }
        }
        Ok(())
    }

    fn build(self) -> Result<MetricFamily, String> {
        let kind = self.kind.unwrap_or(MetricType::UNTYPED);
        let name = self.name;
        let mut metrics = Vec::with_capacity(self.metrics.len());
        for (labels, partial) in self.metrics {
            let series = || format!("`{name}{}`", render_labels(&labels));
            let mut m = Metric::from_label(
                labels
                    .iter()
                    .map(|(n, v)| {
                        let mut pair = LabelPair::default();
                        pair.set_name(n.clone());
                        pair.set_value(v.clone());
                        pair
                    })
                    .collect(),
            );
            match kind {
                MetricType::COUNTER => {
                    let mut c = Counter::default();
                    c.set_value(partial.value.unwrap_or_default());
                    m.set_counter(c);
                }
                MetricType::GAUGE => {
                    let mut g = Gauge::default();
                    g.set_value(partial.value.unwrap_or_default());
                    m.set_gauge(g);
                }
                #[allow(deprecated)] // the only place for an untyped value in prometheus 0.14
                MetricType::UNTYPED => {
                    let mut u = Untyped::default();
                    u.set_value(partial.value.unwrap_or_default());
                    m.set_untyped(u);
                }
                MetricType::HISTOGRAM => m.set_histogram(build_histogram(partial, &series)?),
                MetricType::SUMMARY => m.set_summary(build_summary(partial, &series)?),
            }
            metrics.push(m);
        }
        let mut mf = MetricFamily::default();
        mf.set_name(name);
        mf.set_help(self.help.unwrap_or_default());
        mf.set_field_type(kind);
        mf.set_metric(metrics);
        Ok(mf)
    }
}

fn build_histogram(p: Partial, series: &dyn Fn() -> String) -> Result<Histogram, String> {
    let (sum, count) = sum_and_count(&p, "histogram", series)?;
    let count = as_count(count).ok_or_else(|| {
        format!(
            "histogram {}: _count must be a non-negative integer",
            series()
        )
    })?;
    let mut buckets = Vec::with_capacity(p.points.len());
    let mut previous = 0;
    let mut inf = None;
    for (bound, value) in p.points {
        let cumulative = as_count(value).ok_or_else(|| {
            format!(
                "histogram {}: bucket le=\"{}\" must be a non-negative integer",
                series(),
                fmt_value(bound)
            )
        })?;
        if cumulative < previous {
            return Err(format!(
                "histogram {}: bucket counts must not decrease (le=\"{}\")",
                series(),
                fmt_value(bound)
            ));
        }
        previous = cumulative;
        if bound == f64::INFINITY {
            inf = Some(cumulative);
        } else {
            let mut b = Bucket::default();
            b.set_upper_bound(bound);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
    }
    match inf {
        None => return Err(format!("histogram {} has no le=\"+Inf\" bucket", series())),
        Some(inf) if inf != count => {
            return Err(format!(
                "histogram {}: the +Inf bucket ({inf}) differs from _count ({count})",
                series()
            ))
        }
        Some(_) => {}
    }
    let mut h = Histogram::default();
    h.set_bucket(buckets);
    h.set_sample_sum(sum);
    h.set_sample_count(count);
    Ok(h)
}

fn build_summary(p: Partial, series: &dyn Fn() -> String) -> Result<Summary, String> {
    let (sum, count) = sum_and_count(&p, "summary", series)?;
    let count = as_count(count).ok_or_else(|| {
        format!(
            "summary {}: _count must be a non-negative integer",
            series()
        )
    })?;
    let quantiles = p
        .points
        .into_iter()
        .map(|(q, v)| {
            if !(0.0..=1.0).contains(&q) {
                return Err(format!(
                    "summary {}: quantile {} is outside [0, 1]",
                    series(),
                    fmt_value(q)
                ));
            }
            let mut quantile = Quantile::default();
            quantile.set_quantile(q);
            quantile.set_value(v);
            Ok(quantile)
        })
        .collect::<Result<Vec<_>, String>>()?;
    let mut s = Summary::default();
    s.set_quantile(quantiles);
    s.set_sample_sum(sum);
    s.set_sample_count(count);
    Ok(s)
}

fn sum_and_count(
    p: &Partial,
    kind: &str,
    series: &dyn Fn() -> String,
) -> Result<(f64, f64), String> {
    match (p.sum, p.count) {
        (Some(sum), Some(count)) => Ok((sum, count)),
        (None, _) => Err(format!("{kind} {} has no _sum line", series())),
        (_, None) => Err(format!("{kind} {} has no _count line", series())),
    }
}

/// A float that is a whole, non-negative number that fits a u64.
fn as_count(v: f64) -> Option<u64> {
    (v >= 0.0 && v.fract() == 0.0 && v < u64::MAX as f64).then_some(v as u64)
}

fn type_name(kind: Option<MetricType>) -> &'static str {
    match kind {
        Some(MetricType::COUNTER) => "counter",
        Some(MetricType::GAUGE) => "gauge",
        Some(MetricType::HISTOGRAM) => "histogram",
        Some(MetricType::SUMMARY) => "summary",
        Some(MetricType::UNTYPED) | None => "untyped",
    }
}

/// A float as Go's `strconv.ParseFloat` reads it in this format: decimal or exponent
/// notation, `NaN`, `+Inf`, `-Inf` (any case, `Inf` or `Infinity`).
fn parse_value(token: &str) -> Result<f64, String> {
    let lower = token.to_ascii_lowercase();
    let unsigned = lower.trim_start_matches(['+', '-']);
    let negative = lower.starts_with('-');
    let special = match unsigned {
        "nan" => Some(f64::NAN),
        "inf" | "infinity" if negative => Some(f64::NEG_INFINITY),
        "inf" | "infinity" => Some(f64::INFINITY),
        _ => None,
    };
    // Only one sign, and only the characters of decimal/exponent notation.
    let well_formed = lower.len() - unsigned.len() <= 1
        && !unsigned.is_empty()
        && unsigned
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'+' | b'-'));
    match special {
        Some(v) if lower.len() - unsigned.len() <= 1 => Ok(v),
        _ if well_formed => lower
            .parse::<f64>()
            .map_err(|_| format!("`{token}` is not a number")),
        _ => Err(format!("`{token}` is not a number")),
    }
}

/// Undoes the format's escapes: `\\` and `\n` everywhere, `\"` in label values.
fn unescape(s: &str, quotes: bool) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if quotes => out.push('"'),
            Some(other) => return Err(format!("invalid escape sequence `\\{other}`")),
            None => return Err("a backslash ends the line".into()),
        }
    }
    Ok(out)
}

fn fmt_value(v: f64) -> String {
    match v {
        f64::INFINITY => "+Inf".into(),
        f64::NEG_INFINITY => "-Inf".into(),
        v => v.to_string(),
    }
}

fn render_labels(labels: &Labels) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{{{}}}", inner.join(","))
}

/// A position in one line.
struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str) -> Self {
        Cursor { s, pos: 0 }
    }

    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos == self.s.len()
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    /// Skips spaces and tabs; whether there were any.
    fn skip_blanks(&mut self) -> bool {
        let rest = self.rest();
        let skipped = rest.len() - rest.trim_start_matches([' ', '\t']).len();
        self.pos += skipped;
        skipped > 0
    }

    /// Everything up to the next blank.
    fn token(&mut self) -> &'a str {
        let rest = self.rest();
        let end = rest.find([' ', '\t']).unwrap_or(rest.len());
        self.pos += end;
        &rest[..end]
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let rest = self.rest();
        let end = rest.find(|c: char| !f(c)).unwrap_or(rest.len());
        self.pos += end;
        &rest[..end]
    }

    fn metric_name(&mut self) -> Result<&'a str, String> {
        let name = self.take_while(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        if is_valid_metric_name(name) {
            Ok(name)
        } else {
            let shown = if name.is_empty() { self.token() } else { name };
            Err(format!("`{shown}` is not a valid metric name"))
        }
    }

    /// The label set after `{`, up to and including `}`; a trailing comma is allowed.
    fn labels(&mut self) -> Result<Labels, String> {
        let mut labels: Labels = Vec::new();
        let mut seen = HashSet::new();
        loop {
            self.skip_blanks();
            if self.eat('}') {
                return Ok(labels);
            }
            let name = self.take_while(|c| c.is_ascii_alphanumeric() || c == '_');
            if !is_valid_label_name(name) {
                let shown = if name.is_empty() { self.rest() } else { name };
                return Err(format!("`{shown}` is not a valid label name"));
            }
            self.skip_blanks();
            if !self.eat('=') {
                return Err(format!("label `{name}` needs `=` and a quoted value"));
            }
            self.skip_blanks();
            if !self.eat('"') {
                return Err(format!(
                    "the value of label `{name}` must be in double quotes"
                ));
            }
            let value = self.quoted()?;
            if !seen.insert(name) {
                return Err(format!("label `{name}` appears twice"));
            }
            labels.push((name.to_string(), value));
            self.skip_blanks();
            if !self.eat(',') && self.peek() != Some('}') {
                return Err(format!(
                    "expected `,` or `}}` after the value of label `{name}`"
                ));
            }
        }
    }

    /// A label value after its opening quote, up to and including the closing one.
    fn quoted(&mut self) -> Result<String, String> {
        let rest = self.rest();
        let mut escaped = false;
        for (i, c) in rest.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    self.pos += i + 1;
                    return unescape(&rest[..i], true);
                }
                _ => {}
            }
        }
        Err("a label value has no closing quote".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> MetricFamily {
        let mut families = parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(families.len(), 1, "{families:?}");
        families.remove(0)
    }

    fn err(text: &str) -> ParseError {
        match parse(text) {
            Ok(f) => panic!("accepted: {f:?}"),
            Err(e) => e,
        }
    }

    #[allow(deprecated)] // the only accessor of an untyped value in prometheus 0.14
    fn untyped(m: &Metric) -> f64 {
        m.get_untyped().get_value()
    }

    fn labels(m: &Metric) -> Vec<(&str, &str)> {
        m.get_label()
            .iter()
            .map(|l| (l.name(), l.value()))
            .collect()
    }

    #[test]
    fn counter_gauge_and_help_are_read() {
        let families = parse(
            "# HELP jobs_total Jobs run.\n# TYPE jobs_total counter\njobs_total{queue=\"a\"} 3\njobs_total{queue=\"b\"} 4.5\n\
             # TYPE temp gauge\ntemp -1.5e3\n",
        )
        .unwrap();
        assert_eq!(families.len(), 2);
        let jobs = &families[0];
        assert_eq!(jobs.name(), "jobs_total");
        assert_eq!(jobs.help(), "Jobs run.");
        assert_eq!(jobs.get_field_type(), MetricType::COUNTER);
        assert_eq!(jobs.get_metric().len(), 2);
        assert_eq!(labels(&jobs.get_metric()[1]), [("queue", "b")]);
        assert_eq!(jobs.get_metric()[1].get_counter().get_value(), 4.5);
        assert_eq!(families[1].get_field_type(), MetricType::GAUGE);
        assert_eq!(families[1].get_metric()[0].get_gauge().get_value(), -1500.0);
    }

    #[test]
    fn samples_without_type_are_untyped_families() {
        let families = parse("a 1\nb{x=\"y\"} 2\n").unwrap();
        assert_eq!(families.len(), 2);
        assert_eq!(families[0].get_field_type(), MetricType::UNTYPED);
        assert_eq!(untyped(&families[1].get_metric()[0]), 2.0);
        assert_eq!(
            one("# TYPE u untyped\nu 7\n").get_field_type(),
            MetricType::UNTYPED
        );
    }

    #[test]
    fn label_values_unescape_quotes_backslashes_and_newlines() {
        let mf = one(r#"m{path="C:\\dir",quote="say \"hi\"",nl="a\nb",plain="x,y}=z"} 1"#);
        assert_eq!(
            labels(&mf.get_metric()[0]),
            [
                ("nl", "a\nb"),
                ("path", "C:\\dir"),
                ("plain", "x,y}=z"),
                ("quote", "say \"hi\""),
            ]
        );
    }

    #[test]
    fn help_unescapes_backslash_and_newline() {
        assert_eq!(
            one("# HELP m a\\\\b\\nc \"q\"\nm 1\n").help(),
            "a\\b\nc \"q\""
        );
    }

    #[test]
    fn blanks_trailing_comma_and_empty_braces_are_accepted() {
        let mf = one("  m { a = \"1\" , b=\"2\", }\t 3  \n");
        assert_eq!(labels(&mf.get_metric()[0]), [("a", "1"), ("b", "2")]);
        assert_eq!(untyped(&mf.get_metric()[0]), 3.0);
        assert!(one("m{} 1\n").get_metric()[0].get_label().is_empty());
    }

    #[test]
    fn special_values_parse_like_go() {
        let families = parse("a NaN\nb +Inf\nc -Inf\nd inf\ne 1e-3\nf +2\n").unwrap();
        let v: Vec<f64> = families
            .iter()
            .map(|f| untyped(&f.get_metric()[0]))
            .collect();
        assert!(v[0].is_nan());
        assert_eq!(
            &v[1..],
            [f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, 0.001, 2.0]
        );
        for bad in ["m 0x10\n", "m 1_000\n", "m ++1\n", "m one\n", "m --inf\n"] {
            assert!(err(bad).message.contains("not a number"), "{bad}");
        }
    }

    #[test]
    fn comments_and_blank_lines_are_ignored() {
        let mf = one("# just a comment\n\n   \n#\n# HELPFUL not a help line\nm 1\n");
        assert_eq!(mf.help(), "");
    }

    #[test]
    fn histogram_lines_become_one_family_with_implicit_inf() {
        let mf = one("# TYPE lat histogram\n\
             lat_bucket{route=\"/a\",le=\"0.1\"} 1\n\
             lat_bucket{route=\"/a\",le=\"1\"} 3\n\
             lat_bucket{route=\"/a\",le=\"+Inf\"} 4\n\
             lat_sum{route=\"/a\"} 2.5\n\
             lat_count{route=\"/a\"} 4\n\
             lat_bucket{route=\"/b\",le=\"+Inf\"} 0\n\
             lat_sum{route=\"/b\"} 0\n\
             lat_count{route=\"/b\"} 0\n");
        assert_eq!(mf.get_field_type(), MetricType::HISTOGRAM);
        assert_eq!(mf.get_metric().len(), 2);
        let a = &mf.get_metric()[0];
        assert_eq!(labels(a), [("route", "/a")]);
        let h = a.get_histogram();
        let buckets: Vec<(f64, u64)> = h
            .get_bucket()
            .iter()
            .map(|b| (b.upper_bound(), b.cumulative_count()))
            .collect();
        assert_eq!(buckets, [(0.1, 1), (1.0, 3)]);
        assert_eq!(h.get_sample_count(), 4);
        assert_eq!(h.get_sample_sum(), 2.5);
    }

    #[test]
    fn histogram_errors_name_the_series() {
        let head = "# TYPE h histogram\n";
        let cases = [
            (
                "h_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
                "no le=\"+Inf\" bucket",
            ),
            (
                "h_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
                "differs from _count",
            ),
            ("h_bucket{le=\"+Inf\"} 2\nh_count 2\n", "no _sum line"),
            ("h_bucket{le=\"+Inf\"} 2\nh_sum 1\n", "no _count line"),
            (
                "h_bucket{le=\"2\"} 2\nh_bucket{le=\"1\"} 1\n",
                "must increase",
            ),
            (
                "h_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n",
                "must not decrease",
            ),
            (
                "h_bucket{le=\"+Inf\"} 1.5\nh_sum 1\nh_count 1.5\n",
                "non-negative integer",
            ),
            ("h_bucket{x=\"1\"} 1\n", "needs a `le` label"),
            ("h_bucket{le=\"x\"} 1\n", "`le` label: `x` is not a number"),
            ("h_bucket{le=\"NaN\"} 1\n", "must not be NaN"),
            ("h 1\n", "does not fit histogram `h`"),
        ];
        for (body, expected) in cases {
            let e = err(&format!("{head}{body}"));
            assert!(e.message.contains(expected), "{body:?}: {e}");
        }
        let e = err("# TYPE h histogram\nh_bucket{a=\"x\",le=\"1\"} 1\nh_sum{a=\"x\"} 1\nh_count{a=\"x\"} 1\n");
        assert!(e.message.contains("`h{a=\"x\"}`"), "{e}");
    }

    #[test]
    fn summary_lines_become_one_family() {
        let mf = one(
            "# TYPE rpc summary\nrpc{quantile=\"0.5\"} 0.2\nrpc{quantile=\"0.99\"} 1.5\nrpc_sum 12\nrpc_count 30\n",
        );
        assert_eq!(mf.get_field_type(), MetricType::SUMMARY);
        let s = mf.get_metric()[0].get_summary();
        let q: Vec<(f64, f64)> = s
            .get_quantile()
            .iter()
            .map(|q| (q.quantile(), q.value()))
            .collect();
        assert_eq!(q, [(0.5, 0.2), (0.99, 1.5)]);
        assert_eq!((s.sample_sum(), s.sample_count()), (12.0, 30));
        // A summary without quantiles is valid.
        assert!(parse("# TYPE s summary\ns_sum 0\ns_count 0\n").is_ok());
        let e = err("# TYPE s summary\ns{quantile=\"2\"} 1\ns_sum 0\ns_count 0\n");
        assert!(e.message.contains("outside [0, 1]"), "{e}");
    }

    #[test]
    fn timestamps_are_rejected_with_the_line() {
        let e = err("a 1\nb 2 1700000000000\n");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("timestamp"), "{e}");
        let e = err("a 1 x\n");
        assert!(e.message.contains("unexpected text after the value"), "{e}");
    }

    #[test]
    fn structural_errors_are_reported_with_line_numbers() {
        let cases: [(&str, usize, &str); 14] = [
            ("a 1\r\n", 1, "LF line endings"),
            ("a 1\nb 1\na 2\n", 3, "must be contiguous"),
            ("# TYPE a counter\n# TYPE a gauge\n", 2, "second TYPE"),
            ("# HELP a x\n# HELP a y\n", 2, "second HELP"),
            ("a 1\n# TYPE a counter\n", 2, "after its samples"),
            ("# TYPE a meter\n", 1, "unknown metric type `meter`"),
            (
                "# TYPE a counter extra\n",
                1,
                "unexpected text after the type",
            ),
            ("a{x=\"1\"} 1\na{x=\"1\"} 2\n", 2, "duplicate sample"),
            ("a{x=\"1\",x=\"2\"} 1\n", 1, "appears twice"),
            ("a{__name__=\"b\"} 1\n", 1, "not a valid label name"),
            ("1a 1\n", 1, "not a valid metric name"),
            ("a{x=1} 1\n", 1, "double quotes"),
            ("a{x=\"1\" y=\"2\"} 1\n", 1, "expected `,` or `}`"),
            ("a{x=\"\\t\"} 1\n", 1, "invalid escape"),
        ];
        for (text, line, expected) in cases {
            let e = err(text);
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(expected), "{text:?}: {e}");
        }
        assert!(err("a{x=\"1} 1\n").message.contains("no closing quote"));
        assert!(err("a\n").message.contains("needs a value"));
        assert!(err("# TYPE\n").message.contains("needs a metric name"));
    }

    #[test]
    fn error_in_a_finished_family_names_its_first_line() {
        let e = err("a 1\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\nz 1\n");
        assert_eq!(e.line, 2, "{e}");
        assert!(e.to_string().starts_with("line 2: "), "{e}");
    }

    #[test]
    fn families_without_samples_are_left_out_and_empty_input_is_empty() {
        assert!(parse("# HELP a nothing\n# TYPE a gauge\n")
            .unwrap()
            .is_empty());
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn labels_are_sorted_by_name() {
        let mf = one("m{b=\"2\",a=\"1\"} 1\n");
        assert_eq!(labels(&mf.get_metric()[0]), [("a", "1"), ("b", "2")]);
    }

    #[test]
    fn text_encoder_output_parses_back_to_the_same_families() {
        let registry = prometheus::Registry::new();
        let c = prometheus::IntCounterVec::new(
            prometheus::Opts::new("c_total", "with \\ and\nnewline"),
            &["v"],
        )
        .unwrap();
        c.with_label_values(&["q\"b\\s\nn"]).inc_by(3);
        let h = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new("h_seconds", "h").buckets(vec![0.5, 1.0]),
        )
        .unwrap();
        h.observe(0.7);
        registry.register(Box::new(c)).unwrap();
        registry.register(Box::new(h)).unwrap();
        let gathered = registry.gather();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&gathered)
            .unwrap();
        assert_eq!(parse(&text).unwrap(), gathered);
    }
}
