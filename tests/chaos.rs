//! The kill loop (scripts/chaos/kill-loop.sh), shortened: a minute of Prometheus stopped
//! and started at random and the real proxy SIGKILLed six times, pushing every second
//! through its durable queue. The script prints what arrived; this asserts it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

mod common;

use std::collections::HashMap;
use std::process::Command;

/// `key=value` pairs of the script's report.
fn report(out: &str) -> HashMap<String, String> {
    out.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn nothing_is_lost_or_rejected_while_prometheus_flaps_and_the_proxy_is_killed() {
    if common::require_binary("prometheus").is_none() || common::require_binary("python3").is_none()
    {
        return;
    }
    let seed = std::process::id() % 10_000;
    let out = Command::new("scripts/chaos/kill-loop.sh")
        .args(["60", "6", &seed.to_string()])
        .env("CODEX_PROXY_BIN", common::PROXY_BIN)
        .output()
        .expect("run scripts/chaos/kill-loop.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let r = report(&stdout);
    let n = |k: &str| -> u64 {
        r.get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in the report:\n{stdout}\n{stderr}"))
    };
    assert_eq!(n("kills"), 6, "{stdout}");
    assert!(n("prometheus_restarts") >= 1, "{stdout}");
    assert!(n("ticks_expected") >= 50, "{stdout}");
    assert_eq!(n("ticks_missing"), 0, "{stdout}");
    assert_eq!(n("rejects_logged"), 0, "{stdout}");
    assert_eq!(n("rejected_by_proxy"), 0, "{stdout}");
    assert!(n("queue_bytes") <= n("queue_cap"), "{stdout}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
}
