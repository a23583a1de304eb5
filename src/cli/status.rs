//! `codex-proxy status`: `/status.json` as a terminal table (docs/status.md). Colours only
//! when stdout is a terminal. Exit 0 when all is well, 1 when the worker is not ready or a
//! destination is failing, 2 when the proxy cannot be asked.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;

use crate::push::http::{error_chain, HttpClient, HttpSettings};

/// Time between two views with `--watch`.
const WATCH_EVERY: Duration = Duration::from_secs(5);

/// What `codex-proxy status` was asked.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The `/status.json` URL; default: on the configured server.listen (https with
    /// `[server.tls]`). Basic auth as `http://user:password@host:port/status.json`.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Print the JSON as served instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Show it again every 5 s until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// A CA certificate (PEM) to trust beside the system's, for a proxy with `[server.tls]`.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// How long to wait for the answer, e.g. 3s.
    #[arg(long, default_value = "5s")]
    pub timeout: crate::config::HumanDuration,
}

/// Runs `codex-proxy status` against `url`.
pub fn status(args: &StatusArgs, url: &str) -> ExitCode {
    let url = match url.parse::<crate::config::HttpUrl>() {
        Ok(u) => u.as_url().clone(),
        Err(e) => {
            eprintln!("codex-proxy status: --url: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("codex-proxy status: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let colour = std::io::stdout().is_terminal();
    loop {
        let code = match runtime.block_on(fetch(args, url.clone())) {
            Ok(text) => {
                let shown = if args.json {
                    Ok((text.clone(), verdict(&text)))
                } else {
                    table(&text, colour)
                };
                match shown {
                    Ok((out, code)) => {
                        if args.watch && colour {
                            print!("\x1b[2J\x1b[H");
                        }
                        println!("{}", out.trim_end());
                        code
                    }
                    Err(e) => {
                        eprintln!("codex-proxy status: {e}");
                        2
                    }
                }
            }
            Err(e) => {
                eprintln!("codex-proxy status: {e}");
                2
            }
        };
        if !args.watch {
            return ExitCode::from(code);
        }
        if !colour {
            println!();
        }
        std::thread::sleep(WATCH_EVERY);
    }
}

async fn fetch(args: &StatusArgs, mut url: reqwest::Url) -> Result<String, String> {
    // URL userinfo is percent-encoded (`correct%20horse`).
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .to_string()
    };
    let user = decode(url.username());
    let password = url.password().map(decode);
    let _ = url.set_username("");
    let _ = url.set_password(None);
    let settings = HttpSettings {
        timeout: args.timeout.0,
        headers: &BTreeMap::new(),
        bearer_token_file: None,
        basic_auth: None,
        tls_ca_file: args.cacert.as_deref(),
    };
    let client = HttpClient::new(&settings, HeaderMap::new()).map_err(|e| e.to_string())?;
    let mut request = client
        .request(Method::GET, url)
        .map_err(|e| e.to_string())?;
    if !user.is_empty() {
        request = request.basic_auth(user, password);
    }
    let response = request.send().await.map_err(error_chain)?;
    let status = response.status();
    let text = response.text().await.map_err(error_chain)?;
    if !status.is_success() {
        let mut message = text;
        message.truncate(200);
        return Err(format!("the proxy answered {status}: {}", message.trim()));
    }
    Ok(text)
}

/// 0 when all is well, 1 when the worker is not ready or a destination is failing.
fn verdict(text: &str) -> u8 {
    let Ok(view) = serde_json::from_str::<Value>(text) else {
        return 2;
    };
    exit_code(&view)
}

fn exit_code(view: &Value) -> u8 {
    let worker_ready = view["worker"]["ready"].as_bool() == Some(true);
    let failing = view["push"]
        .as_array()
        .is_some_and(|p| p.iter().any(|d| d["state"] == "failing"));
    u8::from(!worker_ready || failing)
}

/// ANSI colours, or none.
struct Paint(bool);

impl Paint {
    fn state(&self, state: &str) -> String {
        let code = match state {
            "ok" | "ready" => "32",
            "retrying" | "degraded" => "33",
            _ => "31",
        };
        if self.0 {
            format!("\x1b[{code}m{state}\x1b[0m")
        } else {
            state.to_string()
        }
    }

    fn bold(&self, text: &str) -> String {
        if self.0 {
            format!("\x1b[1m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// The table and the exit code.
fn table(text: &str, colour: bool) -> Result<(String, u8), String> {
    let view: Value = serde_json::from_str(text).map_err(|e| format!("not a status.json: {e}"))?;
    if view["version"] != 1 {
        return Err(format!(
            "status.json version {} is not the 1 this command reads",
            view["version"]
        ));
    }
    let paint = Paint(colour);
    let now = view["generated_at_unix_seconds"].as_i64().unwrap_or(0);
    let ago = |t: &Value| {
        t.as_i64().map_or("never".to_string(), |t| {
            format!(
                "{} ago",
                crate::status::html::duration((now - t).max(0) as u64)
            )
        })
    };
    let p = &view["process"];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {}  up {}  {}{}  instance {}  config {}",
        paint.bold("codex-proxy"),
        s(&p["version"]),
        crate::status::html::duration(p["uptime_seconds"].as_u64().unwrap_or(0)),
        s(&p["listen"]),
        if p["tls"] == true { " (TLS)" } else { "" },
        s(&p["instance"]),
        p["config_file"].as_str().unwrap_or("(defaults)"),
    );
    let w = &view["worker"];
    let state = s(&w["state"]);
    let _ = writeln!(
        out,
        "worker  {}  restarts {}  backoff {} ms  in flight {}/{}  queue {}/{}  models {}{}",
        if w["ready"] == true {
            paint.state(&state)
        } else {
            paint.state(&format!("{state} (down)"))
        },
        w["restarts"],
        w["backoff_ms"],
        w["in_flight"],
        w["max_concurrency"],
        w["queue_depth"],
        w["queue_max"],
        w["models"]
            .as_array()
            .map(|m| m.iter().map(s).collect::<Vec<_>>().join(","))
            .unwrap_or_default(),
        if view["maintenance"] == true {
            "  MAINTENANCE"
        } else {
            ""
        },
    );
    for window in ["primary", "secondary"] {
        let r = &w["rate_limits"][window];
        if r.is_null() {
            continue;
        }
        let used = r["used_percent"]
            .as_f64()
            .map_or("?".to_string(), |u| format!("{u:.0}%"));
        let resets = r["resets_at"].as_i64().map_or(String::new(), |at| {
            format!(
                ", resets in {}",
                crate::status::html::duration((at - now).max(0) as u64)
            )
        });
        let _ = writeln!(out, "        rate limit {window}: {used} used{resets}");
    }
    let destinations = view["push"].as_array().cloned().unwrap_or_default();
    if destinations.is_empty() {
        let _ = writeln!(out, "no push destinations");
    } else {
        let rows: Vec<[String; 8]> = destinations
            .iter()
            .map(|d| {
                let dropped: u64 = d["samples_dropped"]
                    .as_object()
                    .map(|m| m.values().filter_map(Value::as_u64).sum())
                    .unwrap_or(0);
                let replay = if d["backlog_replay"].is_object() {
                    format!(
                        " replay {}/{}",
                        d["backlog_replay"]["done"], d["backlog_replay"]["total"]
                    )
                } else {
                    String::new()
                };
                [
                    s(&d["destination"]),
                    s(&d["kind"]),
                    s(&d["state"]),
                    ago(&d["last_success_unix_seconds"]),
                    format!(
                        "{} B/{} req{replay}",
                        d["queued_bytes"], d["queued_requests"]
                    ),
                    format!("{}/{}", d["requests_in_flight"], d["in_flight_limit"]),
                    format!("{}/{}", d["samples_sent"], dropped),
                    s(&d["url"]),
                ]
            })
            .collect();
        let header = [
            "DESTINATION",
            "KIND",
            "STATE",
            "LAST SUCCESS",
            "QUEUE",
            "IN FLIGHT",
            "SENT/DROPPED",
            "URL",
        ];
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].chars().count())
                    .chain([header[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<String>, plain: &[String]| {
            let mut l = String::new();
            for (i, (cell, raw)) in cells.iter().zip(plain).enumerate() {
                let pad = widths[i].saturating_sub(raw.chars().count());
                let _ = write!(l, "{cell}{}  ", " ".repeat(pad));
            }
            l.trim_end().to_string()
        };
        let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
        let _ = writeln!(
            out,
            "{}",
            line(header.iter().map(|h| paint.bold(h)).collect(), &header)
        );
        for (row, d) in rows.iter().zip(&destinations) {
            let mut cells = row.to_vec();
            cells[2] = paint.state(&row[2]);
            let _ = writeln!(out, "{}", line(cells, row));
            if let Some(e) = d["last_error"].as_str() {
                if d["state"] != "ok" {
                    let _ = writeln!(out, "  last error: {e}");
                }
            }
        }
    }
    Ok((out, exit_code(&view)))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(ready: bool, state: &str) -> String {
        serde_json::json!({
            "version": 1, "generated_at_unix_seconds": 100,
            "process": {"version": "0.1.0", "uptime_seconds": 5, "listen": "127.0.0.1:1", "tls": false, "instance": "h:1", "config_file": null},
            "worker": {"state": if ready {"ready"} else {"restarting"}, "ready": ready, "restarts": 0, "backoff_ms": 0, "models": [], "rate_limits": {"primary": {"used_percent": 42.0, "resets_at": 3700}, "secondary": null}, "in_flight": 0, "max_concurrency": 4, "queue_depth": 0, "queue_max": 8},
            "push": [{"destination": "prom", "kind": "remote_write", "state": state, "url": "http://x/api/v1/write", "last_success_unix_seconds": 90, "queued_bytes": 10, "queued_requests": 1, "requests_in_flight": 0, "in_flight_limit": 4, "samples_sent": 7, "samples_dropped": {"rejected": 2}, "last_error": "HTTP 500: boom", "backlog_replay": null}]
        })
        .to_string()
    }

    #[test]
    fn the_exit_code_says_whether_all_is_well() {
        assert_eq!(table(&view(true, "ok"), false).unwrap().1, 0);
        assert_eq!(table(&view(true, "retrying"), false).unwrap().1, 0);
        assert_eq!(table(&view(true, "failing"), false).unwrap().1, 1);
        assert_eq!(table(&view(false, "ok"), false).unwrap().1, 1);
        assert_eq!(verdict(&view(true, "failing")), 1);
    }

    #[test]
    fn the_table_is_plain_unless_coloured_and_shows_each_destination() {
        let (plain, _) = table(&view(true, "failing"), false).unwrap();
        assert!(!plain.contains('\x1b'), "{plain}");
        assert!(
            plain.contains("prom") && plain.contains("failing"),
            "{plain}"
        );
        assert!(
            plain.contains("10s ago") && plain.contains("7/2"),
            "{plain}"
        );
        assert!(plain.contains("last error: HTTP 500: boom"), "{plain}");
        assert!(
            plain.contains("primary: 42% used, resets in 1h 0m"),
            "{plain}"
        );
        let (coloured, _) = table(&view(true, "failing"), true).unwrap();
        assert!(coloured.contains("\x1b[31mfailing\x1b[0m"), "{coloured}");
    }
}
