//! The operator artifacts hold together: every path docker-compose.yml mounts or builds
//! from exists, every alert carries a severity, a summary and a runbook link whose anchor
//! exists in docs/runbooks.md, every alert has a firing and a quiet unit test, and every
//! dashboard panel links to an existing runbook section through the datasource variable.
//!
//! The YAML files are read line by line (no YAML crate for a test): the readers below
//! understand the layout these files use, and fail loudly when they find nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The value after `key:` on a line, unquoted; `None` when the line holds another key.
fn value_of<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.trim_start().trim_start_matches("- ");
    let v = rest.strip_prefix(key)?.strip_prefix(':')?.trim();
    Some(v.trim_matches(|c| c == '"' || c == '\''))
}

/// Host paths a compose file refers to: bind-mount sources, build contexts and
/// Dockerfiles, `file:` of secrets/configs and `env_file:`, relative to `base`.
fn compose_paths(compose: &str, base: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    let mut context = base.to_path_buf();
    for line in compose.lines() {
        let line = line.split(" #").next().unwrap_or(line);
        if line.trim_start().starts_with('#') {
            continue;
        }
        if let Some(mount) = line.trim_start().strip_prefix("- ") {
            let source = mount.trim().split(':').next().unwrap_or("");
            if source.starts_with("./") || source.starts_with("../") || source.starts_with('/') {
                paths.push(base.join(source));
            }
        } else if let Some(dir) = value_of(line, "context") {
            context = base.join(dir);
            paths.push(context.clone());
        } else if let Some(file) = value_of(line, "dockerfile") {
            paths.push(context.join(file));
        } else if let Some(file) = value_of(line, "file").or_else(|| value_of(line, "env_file")) {
            paths.push(base.join(file));
        }
    }
    paths
}

/// Sources of `COPY`/`ADD` in a Dockerfile, except copies from another stage.
fn dockerfile_sources(dockerfile: &str) -> Vec<String> {
    let mut sources = Vec::new();
    for line in dockerfile.lines() {
        let mut words = line.split_whitespace();
        if !matches!(words.next(), Some("COPY") | Some("ADD")) {
            continue;
        }
        let args: Vec<&str> = words.collect();
        if args.iter().any(|a| a.starts_with("--from=")) {
            continue;
        }
        let args: Vec<&str> = args.into_iter().filter(|a| !a.starts_with("--")).collect();
        if let Some((_dest, srcs)) = args.split_last() {
            sources.extend(srcs.iter().map(|s| s.to_string()));
        }
    }
    sources
}

/// GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        seen.insert(slug);
    }
    seen
}

#[derive(Debug, Default)]
struct Alert {
    name: String,
    severity: Option<String>,
    summary: Option<String>,
    runbook_url: Option<String>,
}

/// The alerting rules of a rule file, with the fields this test checks.
fn alerts(rules: &str) -> Vec<Alert> {
    let mut alerts: Vec<Alert> = Vec::new();
    for line in rules.lines() {
        if let Some(name) = value_of(line, "alert") {
            alerts.push(Alert {
                name: name.to_string(),
                ..Alert::default()
            });
            continue;
        }
        if value_of(line, "record").is_some() || value_of(line, "name").is_some() {
            alerts.push(Alert::default()); // a rule or group that is no alert ends the last one
            continue;
        }
        let Some(alert) = alerts.last_mut() else {
            continue;
        };
        for (key, field) in [
            ("severity", &mut alert.severity),
            ("summary", &mut alert.summary),
            ("runbook_url", &mut alert.runbook_url),
        ] {
            if let Some(v) = value_of(line, key) {
                *field = Some(v.to_string());
            }
        }
    }
    alerts.retain(|a| !a.name.is_empty());
    alerts
}

/// For each alert name of a promtool test file: (has a firing case, has a quiet case).
fn test_cases(tests: &str) -> BTreeMap<String, (bool, bool)> {
    let mut cases: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in tests.lines() {
        if let Some(name) = value_of(line, "alertname") {
            current = Some(name.to_string());
        } else if let Some(expected) = value_of(line, "exp_alerts") {
            let Some(name) = current.take() else { continue };
            let entry = cases.entry(name).or_default();
            if expected == "[]" {
                entry.1 = true;
            } else {
                entry.0 = true;
            }
        }
    }
    cases
}

#[test]
fn compose_reader_finds_every_kind_of_path() {
    let compose = "services:\n  a:\n    build:\n      context: ./app\n      dockerfile: Dockerfile.dev\n    env_file: ./a.env\n    volumes:\n      - ./conf/x.yml:/etc/x.yml:ro   # comment\n      - named-volume:/data\n    ports:\n      - 127.0.0.1:80:80\nsecrets:\n  s:\n    file: ./secret\n";
    let found = compose_paths(compose, Path::new("/r"));
    let expected: Vec<PathBuf> = [
        "/r/./app",
        "/r/./app/Dockerfile.dev",
        "/r/./a.env",
        "/r/./conf/x.yml",
        "/r/./secret",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    assert_eq!(found, expected);
}

#[test]
fn every_path_docker_compose_mounts_or_builds_from_exists() {
    let compose = read("docker-compose.yml");
    let paths = compose_paths(&compose, repo());
    let missing: Vec<_> = paths.iter().filter(|p| !p.exists()).collect();
    assert!(
        missing.is_empty(),
        "docker-compose.yml refers to missing paths: {missing:?}"
    );
    // The reader saw the stack's files (it would pass vacuously if it saw nothing).
    for must in [
        "deploy/prometheus/prometheus.yml",
        "alerts/codex-proxy.rules.yml",
        "deploy/grafana/provisioning",
        "dashboards",
        "deploy/codex-proxy.toml",
        "deploy/mimir.yaml",
        "Dockerfile",
    ] {
        assert!(
            paths.iter().any(|p| p.ends_with(must)),
            "docker-compose.yml no longer refers to {must}; found {paths:?}"
        );
    }
}

#[test]
fn every_path_the_dockerfile_copies_exists() {
    let sources = dockerfile_sources(&read("Dockerfile"));
    assert!(!sources.is_empty(), "no COPY in the Dockerfile");
    for source in sources {
        assert!(
            repo().join(&source).exists(),
            "Dockerfile copies missing {source}"
        );
    }
}

#[test]
fn every_alert_has_severity_summary_and_a_runbook_anchor_that_exists() {
    let alerts = alerts(&read("alerts/codex-proxy.rules.yml"));
    let anchors = anchors(&read("docs/runbooks.md"));
    assert!(alerts.len() >= 10, "found only {} alerts", alerts.len());
    for alert in &alerts {
        let severity = alert.severity.as_deref();
        assert!(
            matches!(severity, Some("critical" | "warning" | "info")),
            "{}: severity {severity:?} is not critical, warning or info",
            alert.name
        );
        assert!(
            alert.summary.as_deref().is_some_and(|s| !s.is_empty()),
            "{}: no summary",
            alert.name
        );
        let url = alert.runbook_url.as_deref().unwrap_or("");
        let (page, anchor) = url.split_once('#').unwrap_or((url, ""));
        assert!(
            page.ends_with("docs/runbooks.md"),
            "{}: runbook_url {url:?} does not point into docs/runbooks.md",
            alert.name
        );
        assert!(
            anchors.contains(anchor),
            "{}: anchor #{anchor} is no heading of docs/runbooks.md",
            alert.name
        );
        assert_eq!(
            anchor,
            alert.name.to_lowercase(),
            "{}: the runbook section should be named after the alert",
            alert.name
        );
    }
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_unit_test() {
    let alerts = alerts(&read("alerts/codex-proxy.rules.yml"));
    let cases = test_cases(&read("alerts/codex-proxy.rules.test.yml"));
    for alert in &alerts {
        let (fires, quiet) = cases.get(&alert.name).copied().unwrap_or_default();
        assert!(fires, "{}: no unit test where it fires", alert.name);
        assert!(quiet, "{}: no unit test where it stays quiet", alert.name);
    }
    let names: BTreeSet<_> = alerts.iter().map(|a| a.name.as_str()).collect();
    for tested in cases.keys() {
        assert!(
            names.contains(tested.as_str()),
            "test for unknown alert {tested}"
        );
    }
}

#[test]
fn every_dashboard_panel_links_to_an_existing_runbook_section() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("dashboards/codex-proxy.json")).expect("dashboard JSON");
    let anchors = anchors(&read("docs/runbooks.md"));
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut checked = 0;
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap_or("?");
        let links = panel["links"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        assert!(!links.is_empty(), "panel {title:?} links to no runbook");
        for link in links {
            let url = link["url"].as_str().unwrap_or("");
            let anchor = url.strip_prefix("${runbook_base}#").unwrap_or_else(|| {
                panic!("panel {title:?}: link {url:?} is not ${{runbook_base}}#<section>")
            });
            assert!(
                anchors.contains(anchor),
                "panel {title:?}: #{anchor} is no heading of docs/runbooks.md"
            );
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} panels");
    let base = dashboard["templating"]["list"]
        .as_array()
        .and_then(|vars| vars.iter().find(|v| v["name"] == "runbook_base"))
        .and_then(|v| v["query"].as_str())
        .unwrap_or("");
    assert!(
        base.ends_with("docs/runbooks.md"),
        "runbook_base is {base:?}"
    );
}

#[test]
fn every_dashboard_query_uses_the_datasource_variable() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("dashboards/codex-proxy.json")).expect("dashboard JSON");
    let variable = dashboard["templating"]["list"]
        .as_array()
        .and_then(|vars| vars.iter().find(|v| v["name"] == "datasource"))
        .expect("a `datasource` template variable");
    assert_eq!(variable["type"], "datasource");
    assert_eq!(variable["query"], "prometheus");
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap_or("?");
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {title:?}"
        );
        for target in panel["targets"].as_array().expect("targets") {
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "panel {title:?}"
            );
        }
    }
}

#[test]
fn runbook_anchors_follow_github_headings() {
    let md = "# Runbooks\n## Alerts\n### CodexProxyWorkerNotReady\n```\n# not a heading\n```\n### Active streams\n";
    let expected: BTreeSet<String> = [
        "runbooks",
        "alerts",
        "codexproxyworkernotready",
        "active-streams",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(anchors(md), expected);
}
