//! Label rules: every label value comes from a bounded set, whatever the traffic.
//!
//! The rules and the series bound they give are documented in docs/metrics.md
//! ("Cardinality"). Nothing here ever copies a raw path, a query string or a request
//! identifier into a label: the route is the matched template, and a client-supplied
//! model name survives only when it is on a list the operator or the worker gave.

use std::sync::{Mutex, OnceLock};

use axum::http::{Method, StatusCode};

use super::label_map::same_value;

/// No label value is longer than this many bytes.
pub(crate) const MAX_LABEL_VALUE_LEN: usize = 64;
/// At most this many model names advertised by the worker become label values over the
/// life of the process; later ones become `other`.
pub(crate) const MAX_WORKER_MODELS: usize = 32;
/// `route` of every request that matched no route (scanners, typos, 404s).
pub(crate) const UNMATCHED_ROUTE: &str = "unmatched";
/// `model` when the request named none.
pub(crate) const MODEL_UNKNOWN: &str = "unknown";
/// `model` when the request named one that is on neither list.
pub(crate) const MODEL_OTHER: &str = "other";
/// Every value of the `method` label.
pub(crate) const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "OTHER",
];
/// Every value of the `status_family` label.
pub(crate) const STATUS_FAMILIES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The `route` rule: a request's path matched against the router's route templates;
/// `unmatched` when none matches.
///
/// The recording service wraps the whole router once, so it learns the route from the
/// path before routing rather than from axum's `MatchedPath` after it: reading that one
/// needs a layer on every route, and axum then clones each route's service for every
/// request, which on a cheap route cost more than the recording. A template is literal
/// segments and `{name}` parameters, a parameter matching one non-empty segment; as in
/// axum, a literal template wins over one with parameters. Wildcards (`{*rest}`) are not
/// supported: the proxy has none, and such a template matches only itself, literally.
#[derive(Debug, Clone)]
pub(crate) struct RouteTemplates {
    literal: Vec<&'static str>,
    with_parameters: Vec<(&'static str, Vec<Segment>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(&'static str),
    Parameter,
}

impl RouteTemplates {
    /// `templates` are the router's route templates, as given to `Router::route`.
    pub(crate) fn new<I: IntoIterator<Item = &'static str>>(templates: I) -> Self {
        let mut routes = RouteTemplates {
            literal: Vec::new(),
            with_parameters: Vec::new(),
        };
        for template in templates {
            let segments: Vec<Segment> = template
                .split('/')
                .map(
                    |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                        Some(name) if !name.starts_with('*') => Segment::Parameter,
                        _ => Segment::Literal(s),
                    },
                )
                .collect();
            if segments.contains(&Segment::Parameter) {
                routes.with_parameters.push((template, segments));
            } else {
                routes.literal.push(template);
            }
        }
        routes
    }

    /// `route` of a request for `path` (without the query): its template, cut to
    /// [`MAX_LABEL_VALUE_LEN`], or [`UNMATCHED_ROUTE`].
    pub(crate) fn label(&self, path: &str) -> &'static str {
        if let Some(template) = self.literal.iter().find(|t| same_value(t, path)) {
            return truncate(template);
        }
        self.with_parameters
            .iter()
            .find(|(_, segments)| matches(segments, path))
            .map_or(UNMATCHED_ROUTE, |(template, _)| truncate(template))
    }
}

fn matches(segments: &[Segment], path: &str) -> bool {
    let mut parts = path.split('/');
    for segment in segments {
        match (segment, parts.next()) {
            (Segment::Literal(l), Some(p)) if same_value(l, p) => {}
            (Segment::Parameter, Some(p)) if !p.is_empty() => {}
            _ => return false,
        }
    }
    parts.next().is_none()
}

/// `method`, as an index into [`METHODS`]: one of the seven common methods, `OTHER` for
/// the rest (WebDAV, custom verbs). An index, so that the middleware keys its cache by
/// a number instead of hashing a string.
pub fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::OPTIONS => 5,
        Method::PATCH => 6,
        _ => 7,
    }
}

/// `status_family`, as an index into [`STATUS_FAMILIES`]. The `http` crate admits codes
/// up to 999; those past 599 are nobody's standard, so they count as server errors
/// rather than as a sixth family.
pub(crate) fn status_family_index(status: StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// The output mode label: `obsidian-xml`, `text` (also for no header), else `other`.
pub(crate) fn output_mode(raw: &str) -> &'static str {
    match raw {
        "obsidian-xml" => "obsidian-xml",
        "text" | "" => "text",
        _ => "other",
    }
}

/// Cuts a value to [`MAX_LABEL_VALUE_LEN`] bytes at a character boundary. Route
/// templates come from the code and are short; this is the last line of defence.
fn truncate(value: &str) -> &str {
    if value.len() <= MAX_LABEL_VALUE_LEN {
        return value;
    }
    let mut end = MAX_LABEL_VALUE_LEN;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// The `model` rule: the configured allowlist plus the models the worker advertised.
pub(crate) struct LabelRules {
    allowed_models: Vec<String>,
    /// Filled in order, never emptied, at most [`MAX_WORKER_MODELS`]: a name that once
    /// was a label value stays one, so the bound holds across worker restarts that
    /// advertise different models. Reading takes no lock (one acquire load per slot),
    /// which matters because every request with a model reads it.
    worker_models: [OnceLock<Box<str>>; MAX_WORKER_MODELS],
    /// Serialises `add_worker_models` (rare: once per worker handshake).
    adding: Mutex<()>,
}

impl LabelRules {
    /// `models` is `metrics.models`; config validation keeps each 1..=64 bytes.
    pub(crate) fn new(models: &[String]) -> Self {
        LabelRules {
            allowed_models: models.to_vec(),
            worker_models: std::array::from_fn(|_| OnceLock::new()),
            adding: Mutex::new(()),
        }
    }

    fn worker_models(&self) -> impl Iterator<Item = &str> {
        self.worker_models
            .iter()
            .map_while(|slot| slot.get().map(|m| &**m))
    }

    /// Adds the models the worker advertises (e.g. after its handshake). Names that are
    /// empty, longer than 64 bytes, or beyond the first [`MAX_WORKER_MODELS`] distinct
    /// names ever added are ignored; returns how many were ignored.
    pub(crate) fn add_worker_models<I, S>(&self, models: I) -> usize
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let _adding = self.adding.lock().unwrap_or_else(|p| p.into_inner());
        let mut ignored = 0;
        for model in models {
            let model = model.as_ref();
            if self.allowed_models.iter().any(|a| a == model)
                || self.worker_models().any(|k| k == model)
            {
                continue;
            }
            let free = self.worker_models.iter().find(|slot| slot.get().is_none());
            match free {
                Some(slot) if !model.is_empty() && model.len() <= MAX_LABEL_VALUE_LEN => {
                    // Only this thread (holding `adding`) fills slots, so it is still free.
                    let _ = slot.set(model.into());
                }
                _ => ignored += 1,
            }
        }
        ignored
    }

    /// `model`: `unknown` when absent, the value itself when it is on the allowlist or
    /// among the worker's models, else `other`; borrowed from `raw`, so an allowed name
    /// costs no allocation. With it, the value's place among every value the rule can
    /// give, a dense index below [`model_value_bound`](Self::model_value_bound): the
    /// allowlist in order, the worker's models in the order they came, `unknown`, `other`.
    pub(crate) fn model_slot<'a>(&self, raw: Option<&'a str>) -> (usize, &'a str) {
        let allowed = self.allowed_models.len();
        let Some(raw) = raw else {
            return (allowed + MAX_WORKER_MODELS, MODEL_UNKNOWN);
        };
        if let Some(i) = self.allowed_models.iter().position(|a| same_value(a, raw)) {
            return (i, raw);
        }
        match self.worker_models().position(|w| same_value(w, raw)) {
            Some(i) => (allowed + i, raw),
            None => (allowed + MAX_WORKER_MODELS + 1, MODEL_OTHER),
        }
    }

    /// How many values the `model` label can take: the allowlist, the worker's share,
    /// `unknown` and `other`.
    pub(crate) fn model_value_bound(&self) -> usize {
        self.allowed_models.len() + MAX_WORKER_MODELS + 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn model<'a>(rules: &LabelRules, raw: Option<&'a str>) -> &'a str {
        rules.model_slot(raw).1
    }

    #[test]
    fn a_path_gets_its_route_template_or_unmatched() {
        let routes = RouteTemplates::new(["/v1/models", "/v1/models/{id}", "/healthz", "/"]);
        assert_eq!(routes.label("/v1/models"), "/v1/models");
        assert_eq!(routes.label("/v1/models/gpt-5"), "/v1/models/{id}");
        assert_eq!(routes.label("/healthz"), "/healthz");
        assert_eq!(routes.label("/"), "/");
        for path in [
            "",
            "/v1/models/",
            "/v1/models//",
            "/v1/models/a/b",
            "/v1/Models",
            "/healthz/",
            "//healthz",
            "/wp-login.php",
            "*",
        ] {
            assert_eq!(routes.label(path), "unmatched", "{path}");
        }
    }

    #[test]
    fn a_literal_template_wins_over_a_parameter() {
        let routes = RouteTemplates::new(["/v1/models/{id}", "/v1/models/default"]);
        assert_eq!(routes.label("/v1/models/default"), "/v1/models/default");
        assert_eq!(routes.label("/v1/models/other"), "/v1/models/{id}");
    }

    #[test]
    fn a_wildcard_template_matches_only_itself() {
        let routes = RouteTemplates::new(["/files/{*rest}"]);
        assert_eq!(routes.label("/files/a/b"), "unmatched");
        assert_eq!(routes.label("/files/{*rest}"), "/files/{*rest}");
    }

    #[test]
    fn methods_outside_the_list_become_other() {
        let method = |m: &str| METHODS[method_index(&Method::from_bytes(m.as_bytes()).unwrap())];
        for m in ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
            assert_eq!(method(m), m);
        }
        for m in ["PROPFIND", "TRACE", "CONNECT", "BREW", "get"] {
            assert_eq!(method(m), "OTHER");
        }
    }

    #[test]
    fn status_codes_fall_into_five_families() {
        let cases = [
            (100, "1xx"),
            (101, "1xx"),
            (200, "2xx"),
            (204, "2xx"),
            (304, "3xx"),
            (404, "4xx"),
            (429, "4xx"),
            (500, "5xx"),
            (503, "5xx"),
            (599, "5xx"),
            (999, "5xx"),
        ];
        for (code, family) in cases {
            let index = status_family_index(StatusCode::from_u16(code).unwrap());
            assert_eq!(STATUS_FAMILIES[index], family);
        }
    }

    #[test]
    fn output_mode_is_one_of_three_values() {
        assert_eq!(output_mode("obsidian-xml"), "obsidian-xml");
        assert_eq!(output_mode(""), "text");
        assert_eq!(output_mode("text"), "text");
        assert_eq!(output_mode("<script>"), "other");
    }

    #[test]
    fn model_is_unknown_allowed_or_other() {
        let rules = LabelRules::new(&["gpt-5".to_string()]);
        assert_eq!(model(&rules, None), "unknown");
        assert_eq!(model(&rules, Some("gpt-5")), "gpt-5");
        assert_eq!(model(&rules, Some("GPT-5")), "other");
        assert_eq!(model(&rules, Some("my-secret-prompt")), "other");
        assert_eq!(model(&rules, Some("")), "other");
    }

    #[test]
    fn worker_models_become_values_up_to_the_cap() {
        let rules = LabelRules::new(&["gpt-5".to_string()]);
        assert_eq!(rules.add_worker_models(["codex-mini", "gpt-5"]), 0);
        assert_eq!(model(&rules, Some("codex-mini")), "codex-mini");

        let long = "m".repeat(65);
        assert_eq!(rules.add_worker_models(["", long.as_str()]), 2);
        assert_eq!(model(&rules, Some(long.as_str())), "other");

        let many: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
        // codex-mini already holds one of the 32 places.
        assert_eq!(rules.add_worker_models(&many), 40 - 31);
        assert_eq!(model(&rules, Some("w30")), "w30");
        assert_eq!(model(&rules, Some("w31")), "other");
        // A later worker advertising new names cannot push the count past the cap.
        assert_eq!(rules.add_worker_models(["fresh"]), 1);
        assert_eq!(model(&rules, Some("fresh")), "other");
    }

    #[test]
    fn long_route_templates_are_cut_at_a_character_boundary() {
        let long = format!("/{}", "é".repeat(40));
        let cut = truncate(&long);
        assert!(cut.len() <= MAX_LABEL_VALUE_LEN);
        assert!(long.starts_with(cut));
        assert_eq!(truncate("/v1/models"), "/v1/models");
    }

    /// A printable random string of 0..200 bytes, with path-ish characters.
    fn random_string(rng: &mut fastrand::Rng) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_./?=&%{}";
        let len = rng.usize(0..200);
        (0..len)
            .map(|_| ALPHABET[rng.usize(0..ALPHABET.len())] as char)
            .collect()
    }

    #[test]
    fn ten_thousand_random_models_give_at_most_the_configured_values() {
        let allow: Vec<String> = vec!["gpt-5".into(), "gpt-5-codex".into()];
        let rules = LabelRules::new(&allow);
        rules.add_worker_models(["codex-mini"]);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut seen = HashSet::new();
        let mut slots = std::collections::HashMap::new();
        for i in 0..10_000 {
            let raw = match i % 10 {
                0 => None,
                1 => Some("gpt-5".to_string()),
                2 => Some("codex-mini".to_string()),
                _ => Some(random_string(&mut rng)),
            };
            let (slot, value) = rules.model_slot(raw.as_deref());
            assert!(value.len() <= MAX_LABEL_VALUE_LEN);
            assert!(slot < rules.model_value_bound());
            // One slot per value, one value per slot.
            assert_eq!(
                *slots.entry(slot).or_insert_with(|| value.to_string()),
                value
            );
            seen.insert(value.to_string());
        }
        let expected: HashSet<String> = ["unknown", "other", "gpt-5", "codex-mini"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(seen, expected);
        assert!(seen.len() <= rules.model_value_bound());
        assert_eq!(slots.len(), seen.len());
    }
}
