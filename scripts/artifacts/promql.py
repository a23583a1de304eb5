"""Metric names in PromQL expressions, and the names a deployment really exports.

Used by scripts/artifacts/dashboard.py and scripts/artifacts/rules.py. Parsing itself is
promtool's job (`promtool check rules`); this only finds which metric names an
expression selects, which is enough for expressions we write ourselves: functions,
aggregations, keywords, label lists, label matchers, strings and durations are skipped.
"""

import re

# Operators and modifiers spelled as words.
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "atan2", "offset", "inf", "nan",
}

# Series the Prometheus/Pushgateway stack adds on its own (not in the proxy's /metrics).
STACK_NAMES = {
    # Prometheus, for every scrape target.
    "up", "scrape_duration_seconds", "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling", "scrape_series_added",
    # Prometheus, for alerting rules.
    "ALERTS", "ALERTS_FOR_STATE",
    # The Pushgateway, for every group it holds.
    "push_time_seconds", "push_failure_time_seconds",
}

STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
TOKEN = re.compile(r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[a-zA-Z]*|[a-zA-Z_:][a-zA-Z0-9_:]*|\S")


class UncheckableExpr(ValueError):
    """An expression whose metric names cannot be told without a full parser."""


def metric_names(expr):
    """The metric names an expression selects."""
    text = STRING.sub('""', expr)
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = LABEL_LIST.sub(" ", text)
    tokens = TOKEN.findall(text)
    names = set()
    depth = 0  # inside {...}: label names, not metric names
    for i, tok in enumerate(tokens):
        if tok == "{":
            if i == 0 or not re.match(r"[a-zA-Z_:]", tokens[i - 1]):
                raise UncheckableExpr(f"a selector without a metric name: {expr!r}")
            depth += 1
        elif tok == "}":
            depth -= 1
        elif depth == 0 and re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", tok):
            is_call = i + 1 < len(tokens) and tokens[i + 1] == "("
            if not is_call and tok.lower() not in KEYWORDS:
                names.add(tok)
    return names


def scrape_names(text):
    """Every sample name a Prometheus text exposition holds or implies by its TYPE lines."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4:
                name, kind = parts[2], parts[3]
                names.add(name)
                if kind == "histogram":
                    names.update({name + "_bucket", name + "_sum", name + "_count"})
                elif kind == "summary":
                    names.update({name + "_sum", name + "_count"})
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def source_names(paths):
    """`codex_*` family names written as string literals in the Rust sources (the contract).

    Families without a child yet are missing from a scrape (the pusher's, before any push);
    the sources still name them. Histogram and summary suffixes come from the scrape.
    """
    names = set()
    for path in paths:
        with open(path, encoding="utf-8") as f:
            names.update(re.findall(r'"(codex_[a-z0-9_]+)"', f.read()))
    return names
