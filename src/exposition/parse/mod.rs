//! A small strict parser of the Prometheus text exposition format 0.0.4 into a
//! [`Snapshot`], for the one-shot `push` command: what it reads goes out through the same
//! encoder (Pushgateway) or series conversion (remote-write) as the proxy's own metrics.
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
//! The snapshot is the one [`Snapshot::from_families`] makes of the same text read by the
//! prometheus crate: families sorted by name, labels sorted by name, the `+Inf` bucket
//! implicit (it is the count), and the series of one family whose bounds differ in
//! consecutive families of that name. Families declared but without samples are left
//! out: there is nothing to push for them.
//!
//! Why not the `prometheus-parse` crate: it splits label sets on `,` and `=` without
//! unescaping (a value holding `,`, `}` or `\"` comes out wrong), silently skips lines
//! it cannot read, and pulls in regex, chrono, itertools and lazy_static.

mod cursor;

use std::collections::HashMap;

use super::names::is_valid_metric_name;
use super::snapshot::{Family, Kind, Labels, Snapshot};
use cursor::{fmt_value, parse_value, unescape, Cursor, RawLabels};

/// What is wrong with the input, and on which line (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub(crate) line: usize,
    pub(crate) message: String,
}

/// Parses a whole exposition.
pub fn parse(text: &str) -> Result<Snapshot, ParseError> {
    let mut parser = Parser::default();
    for (index, line) in text.split('\n').enumerate() {
        parser.line_number = index + 1;
        parser.line(line)?;
    }
    let last = parser.current.take();
    parser.finish(last)?;
    let mut families = parser.done;
    // Stable: the parts of one family split by their bounds keep their order.
    families.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Snapshot { families })
}

#[derive(Default)]
struct Parser {
    done: Vec<Family>,
    current: Option<Pending>,
    /// Names of families already finished, with the line they started on.
    finished: HashMap<String, usize>,
    /// The line being read (1-based).
    line_number: usize,
}

/// A family being read: header lines first, then its samples.
struct Pending {
    name: String,
    started: usize,
    help: Option<String>,
    kind: Option<Kind>,
    /// Metrics by label set (without `le`/`quantile`), in order of first appearance.
    metrics: Vec<(RawLabels, Partial)>,
    index: HashMap<RawLabels, usize>,
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
        let family = self.family_named(name)?;
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
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "summary" => Kind::Summary,
            "untyped" => Kind::Untyped,
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
    fn family_named(&mut self, name: &str) -> Result<&mut Pending, ParseError> {
        let family = match self.current.take() {
            Some(current) if current.name == name => current,
            other => {
                self.finish(other)?;
                self.new_family(name)?
            }
        };
        Ok(self.current.insert(family))
    }

    /// A family that starts on this line; its name must not have been seen before.
    fn new_family(&self, name: &str) -> Result<Pending, ParseError> {
        if let Some(first) = self.finished.get(name) {
            return Err(self.here()(format!(
                "`{name}` appears again (its family started on line {first}); a family's lines must be contiguous"
            )));
        }
        Ok(Pending {
            name: name.to_string(),
            started: self.line_number,
            help: None,
            kind: None,
            metrics: Vec::new(),
            index: HashMap::new(),
        })
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

        let (family, part) = match self.current.take() {
            Some(f) => match f.part_of(name) {
                Some(part) => (f, part),
                None if f.name == name => {
                    return Err(here(format!(
                        "sample `{name}` does not fit {} `{name}`",
                        type_name(f.kind)
                    )))
                }
                None => {
                    self.finish(Some(f))?;
                    (self.new_family(name)?, Part::Value)
                }
            },
            None => (self.new_family(name)?, Part::Value),
        };
        let family = self.current.insert(family);
        family.add(name, labels, part, value).map_err(here)
    }

    /// Turns a family that is complete into snapshot families, checking what needs all
    /// its lines.
    fn finish(&mut self, family: Option<Pending>) -> Result<(), ParseError> {
        let Some(family) = family else {
            return Ok(());
        };
        let started = family.started;
        self.finished.insert(family.name.clone(), started);
        family.build(&mut self.done).map_err(|message| ParseError {
            line: started,
            message,
        })
    }
}

impl Pending {
    /// Which part of this family a sample named `name` is, if it belongs here at all.
    fn part_of(&self, name: &str) -> Option<Part> {
        let suffix = name.strip_prefix(self.name.as_str())?;
        match (self.kind, suffix) {
            (Some(Kind::Histogram), "_bucket") => Some(Part::Point),
            (Some(Kind::Summary), "") => Some(Part::Point),
            (Some(Kind::Histogram | Kind::Summary), "_sum") => Some(Part::Sum),
            (Some(Kind::Histogram | Kind::Summary), "_count") => Some(Part::Count),
            (Some(Kind::Histogram | Kind::Summary), _) => None,
            (_, "") => Some(Part::Value),
            _ => None,
        }
    }

    fn add(
        &mut self,
        name: &str,
        mut labels: RawLabels,
        part: Part,
        value: f64,
    ) -> Result<(), String> {
        let point_label = match self.kind {
            Some(Kind::Histogram) => "le",
            _ => "quantile",
        };
        let bound = match part {
            Part::Point => Some(take_bound(name, point_label, &mut labels)?),
            Part::Value | Part::Sum | Part::Count => None,
        };
        labels.sort();
        let next = self.metrics.len();
        let i = *self.index.entry(labels.clone()).or_insert(next);
        if i == next {
            self.metrics.push((labels, Partial::default()));
        }
        let partial = &mut self.metrics[i].1;
        let duplicate = || format!("duplicate sample `{name}` with the same labels");
        let Some(bound) = bound else {
            let slot = match part {
                Part::Sum => &mut partial.sum,
                Part::Count => &mut partial.count,
                Part::Value | Part::Point => &mut partial.value,
            };
            return match slot.replace(value) {
                Some(_) => Err(duplicate()),
                None => Ok(()),
            };
        };
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
        Ok(())
    }

    /// Appends this family to `out`: one snapshot family, or several of the same name
    /// when the bounds of its metrics differ (as [`Snapshot::from_families`] splits them).
    fn build(self, out: &mut Vec<Family>) -> Result<(), String> {
        let kind = self.kind.unwrap_or(Kind::Untyped);
        let (name, help) = (self.name, self.help.unwrap_or_default());
        let mut current: Option<Family> = None;
        for (labels, partial) in self.metrics {
            let series = || format!("`{name}{}`", render_labels(&labels));
            let (bounds, values) = match kind {
                Kind::Counter | Kind::Gauge | Kind::Untyped => {
                    (Vec::new(), vec![partial.value.unwrap_or_default()])
                }
                Kind::Histogram => histogram(partial, &series)?,
                Kind::Summary => summary(partial, &series)?,
            };
            if current.as_ref().is_some_and(|f| *f.bounds != *bounds) {
                out.extend(current.take());
            }
            let family =
                current.get_or_insert_with(|| Family::new(&name, &help, kind, bounds.into()));
            family.push(snapshot_labels(labels), &values);
        }
        out.extend(current);
        Ok(())
    }
}

/// Removes the `le` or `quantile` label of a bucket or quantile line; its value.
fn take_bound(name: &str, point_label: &str, labels: &mut RawLabels) -> Result<f64, String> {
    let i = labels
        .iter()
        .position(|(n, _)| n == point_label)
        .ok_or_else(|| format!("`{name}` needs a `{point_label}` label"))?;
    let (_, raw) = labels.remove(i);
    let bound = parse_value(&raw).map_err(|e| format!("`{point_label}` label: {e}"))?;
    if bound.is_nan() {
        return Err(format!("`{point_label}` label must not be NaN"));
    }
    Ok(bound)
}

fn snapshot_labels(labels: RawLabels) -> Labels {
    let pairs: Vec<(Box<str>, Box<str>)> = labels
        .into_iter()
        .map(|(n, v)| (n.into_boxed_str(), v.into_boxed_str()))
        .collect();
    pairs.into()
}

/// A histogram's finite bounds, and its values as the snapshot holds them: the
/// cumulative count of each bound, the sum, the count.
fn histogram(p: Partial, series: &dyn Fn() -> String) -> Result<(Vec<f64>, Vec<f64>), String> {
    let (sum, count) = sum_and_count(&p, "histogram", series)?;
    if !is_count(count) {
        return Err(format!(
            "histogram {}: _count must be a non-negative integer",
            series()
        ));
    }
    let mut bounds = Vec::with_capacity(p.points.len());
    let mut values = Vec::with_capacity(p.points.len() + 2);
    let mut previous = 0.0;
    let mut inf = None;
    for (bound, cumulative) in p.points {
        if !is_count(cumulative) {
            return Err(format!(
                "histogram {}: bucket le=\"{}\" must be a non-negative integer",
                series(),
                fmt_value(bound)
            ));
        }
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
            bounds.push(bound);
            values.push(cumulative);
        }
    }
    match inf {
        None => return Err(format!("histogram {} has no le=\"+Inf\" bucket", series())),
        Some(inf) if inf != count => {
            return Err(format!(
                "histogram {}: the +Inf bucket ({}) differs from _count ({})",
                series(),
                fmt_value(inf),
                fmt_value(count)
            ))
        }
        Some(_) => {}
    }
    values.extend([sum, count]);
    Ok((bounds, values))
}

/// A summary's quantiles, and its values as the snapshot holds them: the value of each
/// quantile, the sum, the count.
fn summary(p: Partial, series: &dyn Fn() -> String) -> Result<(Vec<f64>, Vec<f64>), String> {
    let (sum, count) = sum_and_count(&p, "summary", series)?;
    if !is_count(count) {
        return Err(format!(
            "summary {}: _count must be a non-negative integer",
            series()
        ));
    }
    let mut quantiles = Vec::with_capacity(p.points.len());
    let mut values = Vec::with_capacity(p.points.len() + 2);
    for (q, v) in p.points {
        if !(0.0..=1.0).contains(&q) {
            return Err(format!(
                "summary {}: quantile {} is outside [0, 1]",
                series(),
                fmt_value(q)
            ));
        }
        quantiles.push(q);
        values.push(v);
    }
    values.extend([sum, count]);
    Ok((quantiles, values))
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

/// A whole, non-negative number that fits a u64, as counts must be.
fn is_count(v: f64) -> bool {
    v >= 0.0 && v.fract() == 0.0 && v < u64::MAX as f64
}

fn type_name(kind: Option<Kind>) -> &'static str {
    match kind {
        Some(Kind::Counter) => "counter",
        Some(Kind::Gauge) => "gauge",
        Some(Kind::Histogram) => "histogram",
        Some(Kind::Summary) => "summary",
        Some(Kind::Untyped) | None => "untyped",
    }
}

fn render_labels(labels: &RawLabels) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{{{}}}", inner.join(","))
}

#[cfg(test)]
mod tests;
