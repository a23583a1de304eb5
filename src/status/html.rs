//! The `/status` page: one HTML document rendered from the [`StatusView`] that
//! `/status.json` serves, charts as inline SVG drawn here (a polyline per series is a few
//! lines of path data; no chart crate needed). Nothing is loaded from anywhere: no
//! script, stylesheet, font or image but what is inline, and the response's
//! Content-Security-Policy forbids the rest. A five-line inline script reloads the page
//! every 5 s; without scripts the page is complete, just not refreshed.

use std::fmt::Write as _;

use super::history::{Point, FAMILIES};
use super::StatusView;
use crate::metrics::model_work::TOKEN_KINDS;
use crate::push::DestinationStatus;

/// What the page may load: nothing but itself.
pub(crate) const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'";

const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 130.0;
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 18.0;
const TOP: f64 = 8.0;
/// The charts' time span: the last hour, right edge now.
const SPAN_SECONDS: f64 = 3600.0;

const COLOURS: [&str; 5] = ["#2b7bb9", "#d4a017", "#7a7a7a", "#c0392b", "#27ae60"];

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}\
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.2em 0 .4em}\
table{border-collapse:collapse;margin:.3em 0}td,th{padding:.2em .7em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}\
th{font-weight:600;color:#555}.ok{color:#1e7b34}.retrying,.degraded{color:#a66a00}.failing,.down{color:#b00020}\
.state{font-weight:700}.charts{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0;background:#fff;border:1px solid #ddd;padding:.4em}\
figcaption{font-weight:600;font-size:.9em}svg text{font-size:10px;fill:#555}.legend span{margin-right:.8em;font-size:.85em}\
code{font-size:.9em}.muted{color:#777}";

/// Reloads every 5 s while the page is shown; no other script runs.
const SCRIPT: &str = "setTimeout(function(){location.reload()},5000);";

/// The page.
pub(crate) fn render(view: &StatusView) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let now = view.generated_at_unix_seconds;
    out.push_str("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width\">");
    let _ = write!(
        out,
        "<title>codex-proxy status: {}</title><style>{STYLE}</style></head><body>",
        esc(&view.process.instance)
    );
    let health = &view.health;
    let _ = write!(
        out,
        "<h1>codex-proxy {} <span class=\"state {}\">{}</span></h1>",
        esc(view.process.version),
        if health.status == "ok" { "ok" } else { "down" },
        health.status
    );
    process_table(&mut out, view);
    worker_table(&mut out, view, now);

    let points = &view.history.points;
    out.push_str("<h2>Last hour</h2><div class=\"charts\">");
    let family_series: Vec<Series> = FAMILIES
        .iter()
        .enumerate()
        .map(|(i, f)| Series::new(f, i, move |p: &Point| p.requests_per_second[i]))
        .collect();
    chart(
        &mut out,
        "Requests/s by status family",
        "/s",
        now,
        points,
        &family_series,
    );
    chart(
        &mut out,
        "Error ratio (5xx of all)",
        "",
        now,
        points,
        &[Series::new("5xx ratio", 3, |p: &Point| p.error_ratio)],
    );
    chart(
        &mut out,
        "Active streams",
        "",
        now,
        points,
        &[Series::new("streams", 0, |p: &Point| p.streams_active)],
    );
    chart(
        &mut out,
        "Time to first token",
        "s",
        now,
        points,
        &[
            Series::new("p50", 0, |p: &Point| p.ttft_p50_seconds),
            Series::new("p95", 3, |p: &Point| p.ttft_p95_seconds),
        ],
    );
    let token_series: Vec<Series> = TOKEN_KINDS
        .iter()
        .enumerate()
        .map(|(i, k)| Series::new(k, i, move |p: &Point| p.tokens_per_second[i]))
        .collect();
    chart(
        &mut out,
        "Tokens/s by kind",
        "/s",
        now,
        points,
        &token_series,
    );
    out.push_str("</div>");

    out.push_str("<h2>Push destinations</h2>");
    if health.push.is_empty() {
        out.push_str("<p class=\"muted\">None configured.</p>");
    }
    for (i, d) in health.push.iter().enumerate() {
        destination(&mut out, i, d, now, points);
    }
    let _ = write!(
        out,
        "<p class=\"muted\">Generated at {now} (unix seconds); history every {} s, {} points kept. \
         The same data: <a href=\"status.json\">status.json</a>.</p>",
        view.history.interval_seconds, view.history.capacity
    );
    let _ = write!(out, "<script>{SCRIPT}</script></body></html>");
    out
}

fn process_table(out: &mut String, view: &StatusView) {
    let p = &view.process;
    out.push_str("<table>");
    row(out, "Uptime", &duration(p.uptime_seconds));
    row(
        out,
        "Listening on",
        &format!("{}{}", p.listen, if p.tls { " (TLS)" } else { "" }),
    );
    row(out, "Instance", &p.instance);
    row(
        out,
        "Config file",
        p.config_file
            .as_deref()
            .unwrap_or("(none: built-in defaults)"),
    );
    row(
        out,
        "Maintenance",
        if view.health.maintenance { "on" } else { "off" },
    );
    out.push_str("</table>");
}

fn worker_table(out: &mut String, view: &StatusView, now: i64) {
    let w = &view.health.worker;
    let s = &w.status;
    out.push_str("<h2>Worker</h2><table>");
    let state = serde_json::to_value(s.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let _ = write!(
        out,
        "<tr><th>State</th><td class=\"state {}\">{}</td></tr>",
        if s.ready { "ok" } else { "down" },
        esc(&state)
    );
    row(out, "Restarts", &s.restarts.to_string());
    row(out, "Backoff", &format!("{} ms", s.backoff_ms));
    if let Some(e) = &s.last_error {
        row(out, "Last error", e);
    }
    row(
        out,
        "Models",
        &if s.models.is_empty() {
            "(not advertised)".to_string()
        } else {
            s.models.join(", ")
        },
    );
    for (name, window) in [
        ("primary", &s.rate_limits.primary),
        ("secondary", &s.rate_limits.secondary),
    ] {
        let Some(window) = window else { continue };
        let used = window
            .used_percent
            .map_or("?".to_string(), |p| format!("{p:.0}% used"));
        let resets = window.resets_at.map_or(String::new(), |at| {
            format!(", resets in {}", duration((at - now).max(0) as u64))
        });
        row(
            out,
            &format!("Rate limit ({name})"),
            &format!("{used}{resets}"),
        );
    }
    row(
        out,
        "In flight",
        &format!("{} of {}", w.in_flight, w.max_concurrency),
    );
    row(
        out,
        "Queue",
        &format!("{} of {} waiting", w.queue_depth, w.queue_max),
    );
    let streams = &view.health.streams;
    row(
        out,
        "Streams",
        &format!("{} of {}", streams.active, streams.max),
    );
    out.push_str("</table>");
}

fn destination(out: &mut String, index: usize, d: &DestinationStatus, now: i64, points: &[Point]) {
    let _ = write!(
        out,
        "<h2>{} <span class=\"muted\">{}</span> <span class=\"state {}\">{}</span></h2><div class=\"charts\"><table>",
        esc(&d.destination),
        d.kind,
        d.state,
        d.state
    );
    row(out, "URL", &d.url);
    if let Some(p) = d.protocol {
        row(out, "Protocol", &format!("remote-write {p}"));
    }
    row(
        out,
        "Last success",
        &d.last_success_unix_seconds
            .map_or("never".to_string(), |t| {
                format!("{} ago", duration((now - t).max(0) as u64))
            }),
    );
    row(
        out,
        "Queue",
        &format!(
            "{} in {} requests; oldest sample {}",
            bytes(d.queued_bytes),
            d.queued_requests,
            d.backlog_age_seconds.map_or("–".to_string(), |a| format!(
                "{} old",
                duration(a.max(0) as u64)
            ))
        ),
    );
    row(
        out,
        "In flight",
        &format!("{} of {}", d.requests_in_flight, d.in_flight_limit),
    );
    row(out, "Samples sent", &d.samples_sent.to_string());
    let dropped: Vec<String> = d
        .samples_dropped
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{r}: {n}"))
        .collect();
    row(
        out,
        "Samples dropped",
        &if dropped.is_empty() {
            "none".to_string()
        } else {
            dropped.join(", ")
        },
    );
    if let Some(r) = d.backlog_replay {
        row(
            out,
            "Backlog replay",
            &format!("{} of {} requests", r.done, r.total),
        );
    }
    if let Some(e) = &d.last_error {
        let when = d.last_error_unix_seconds.map_or(String::new(), |t| {
            format!(" ({} ago)", duration((now - t).max(0) as u64))
        });
        row(out, "Last error", &format!("{e}{when}"));
    }
    out.push_str("</table>");
    chart(
        out,
        "Queue",
        "B",
        now,
        points,
        &[Series::new("queued bytes", 0, move |p: &Point| {
            p.destinations.get(index).map_or(f32::NAN, |d| d[0])
        })],
    );
    out.push_str("</div>");
}

/// One line of a chart.
struct Series<'a> {
    name: &'a str,
    colour: &'static str,
    value: Box<dyn Fn(&Point) -> f32 + 'a>,
}

impl<'a> Series<'a> {
    fn new(name: &'a str, colour: usize, value: impl Fn(&Point) -> f32 + 'a) -> Series<'a> {
        Series {
            name,
            colour: COLOURS[colour % COLOURS.len()],
            value: Box::new(value),
        }
    }
}

/// An SVG line chart of the last hour: one path per series, broken where a value is
/// missing, a dot on each series' latest value, the scale's top value on the left.
fn chart(out: &mut String, title: &str, unit: &str, now: i64, points: &[Point], series: &[Series]) {
    let plot_w = WIDTH - LEFT - 4.0;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let max = points
        .iter()
        .flat_map(|p| series.iter().map(move |s| (s.value)(p)))
        .filter(|v| v.is_finite())
        .fold(0.0f32, f32::max);
    let top = nice_ceiling(f64::from(max));
    let x = |t: i64| LEFT + (plot_w * (1.0 - (now - t) as f64 / SPAN_SECONDS)).clamp(0.0, plot_w);
    let y = |v: f32| TOP + plot_h * (1.0 - (f64::from(v) / top).clamp(0.0, 1.0));
    let _ = write!(
        out,
        "<figure><figcaption>{}</figcaption><svg class=\"chart\" role=\"img\" aria-label=\"{}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\">",
        esc(title),
        esc(title)
    );
    let (bottom, right) = (TOP + plot_h, LEFT + plot_w);
    let _ = write!(
        out,
        "<path d=\"M{LEFT} {TOP}V{bottom}H{right}\" stroke=\"#999\" fill=\"none\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>\
         <text x=\"{LEFT}\" y=\"{}\">-60 min</text><text x=\"{right}\" y=\"{}\" text-anchor=\"end\">now</text>",
        LEFT - 4.0,
        TOP + 8.0,
        number(top, unit),
        LEFT - 4.0,
        bottom,
        HEIGHT - 4.0,
        HEIGHT - 4.0,
    );
    if points.is_empty() {
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\">collecting: a point every 10 s</text>",
            LEFT + 10.0,
            TOP + plot_h / 2.0
        );
    }
    // Path coordinates in tenths of a pixel, as integers: formatting thousands of floats
    // was most of the page's CPU time (benches/status.rs).
    let tenths = |v: f64| (v * 10.0).round() as i32;
    out.push_str("<g transform=\"scale(0.1)\">");
    for s in series {
        let mut d = String::new();
        let mut pen_down = false;
        let mut last = None;
        for p in points {
            let v = (s.value)(p);
            if !v.is_finite() {
                pen_down = false;
                continue;
            }
            let (px, py) = (tenths(x(p.t)), tenths(y(v)));
            let _ = write!(d, "{}{px} {py}", if pen_down { "L" } else { "M" });
            pen_down = true;
            last = Some((px, py));
        }
        if !d.is_empty() {
            let _ = write!(
                out,
                "<path class=\"line\" d=\"{d}\" stroke=\"{}\" stroke-width=\"15\" fill=\"none\"/>",
                s.colour
            );
        }
        if let Some((cx, cy)) = last {
            let _ = write!(
                out,
                "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"25\" fill=\"{}\"/>",
                s.colour
            );
        }
    }
    out.push_str("</g>");
    out.push_str("</svg><div class=\"legend\">");
    for s in series {
        let latest = points
            .last()
            .map(|p| (s.value)(p))
            .filter(|v| v.is_finite())
            .map_or("–".to_string(), |v| number(f64::from(v), unit));
        let _ = write!(
            out,
            "<span style=\"color:{}\">■</span><span>{} {}</span>",
            s.colour,
            esc(s.name),
            latest
        );
    }
    out.push_str("</div></figure>");
}

/// 1, 2 or 5 times a power of ten, at least `v` (1 for 0).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * magnitude)
}

fn number(v: f64, unit: &str) -> String {
    if unit == "B" {
        return bytes(v as u64);
    }
    let text = if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    };
    format!("{text}{unit}")
}

fn bytes(b: u64) -> String {
    match b {
        0..1024 => format!("{b} B"),
        1024..1_048_576 => format!("{:.1} KiB", b as f64 / 1024.0),
        _ => format!("{:.1} MiB", b as f64 / 1_048_576.0),
    }
}

/// `3d 4h`, `5m 12s`, `42s`.
pub(crate) fn duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

fn row(out: &mut String, name: &str, value: &str) {
    let _ = write!(
        out,
        "<tr><th>{}</th><td>{}</td></tr>",
        esc(name),
        esc(value)
    );
}

/// Text safe in HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_scales_are_round() {
        assert_eq!(
            esc("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(0.013), 0.02);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
        assert_eq!(duration(3725), "1h 2m");
        assert_eq!(duration(59), "59s");
    }
}
