use super::*;

fn one(text: &str) -> Family {
    let mut families = parse(text).unwrap_or_else(|e| panic!("{e}")).families;
    assert_eq!(families.len(), 1, "{families:?}");
    families.remove(0)
}

fn err(text: &str) -> ParseError {
    match parse(text) {
        Ok(f) => panic!("accepted: {f:?}"),
        Err(e) => e,
    }
}

fn labels(l: &Labels) -> Vec<(&str, &str)> {
    l.iter().map(|(n, v)| (&**n, &**v)).collect()
}

#[test]
fn counter_gauge_and_help_are_read() {
    let families = parse(
        "# HELP jobs_total Jobs run.\n# TYPE jobs_total counter\njobs_total{queue=\"a\"} 3\njobs_total{queue=\"b\"} 4.5\n\
         # TYPE temp gauge\ntemp -1.5e3\n",
    )
    .unwrap()
    .families;
    assert_eq!(families.len(), 2);
    let jobs = &families[0];
    assert_eq!(jobs.name, "jobs_total");
    assert_eq!(jobs.help, "Jobs run.");
    assert_eq!(jobs.kind, Kind::Counter);
    assert_eq!(jobs.labels.len(), 2);
    assert_eq!(labels(&jobs.labels[1]), [("queue", "b")]);
    assert_eq!(jobs.values[1], 4.5);
    assert_eq!(families[1].kind, Kind::Gauge);
    assert_eq!(families[1].values[0], -1500.0);
}

#[test]
fn samples_without_type_are_untyped_families() {
    let families = parse("a 1\nb{x=\"y\"} 2\n").unwrap().families;
    assert_eq!(families.len(), 2);
    assert_eq!(families[0].kind, Kind::Untyped);
    assert_eq!(families[1].values[0], 2.0);
    assert_eq!(one("# TYPE u untyped\nu 7\n").kind, Kind::Untyped);
}

#[test]
fn families_come_out_sorted_by_name_like_any_snapshot() {
    let families = parse("zeta 1\n# TYPE beta gauge\nbeta 2\nalpha 3\n")
        .unwrap()
        .families;
    let names: Vec<_> = families.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["alpha", "beta", "zeta"]);
}

#[test]
fn label_values_unescape_quotes_backslashes_and_newlines() {
    let mf = one(r#"m{path="C:\\dir",quote="say \"hi\"",nl="a\nb",plain="x,y}=z"} 1"#);
    assert_eq!(
        labels(&mf.labels[0]),
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
        one("# HELP m a\\\\b\\nc \"q\"\nm 1\n").help,
        "a\\b\nc \"q\""
    );
}

#[test]
fn blanks_trailing_comma_and_empty_braces_are_accepted() {
    let mf = one("  m { a = \"1\" , b=\"2\", }\t 3  \n");
    assert_eq!(labels(&mf.labels[0]), [("a", "1"), ("b", "2")]);
    assert_eq!(mf.values[0], 3.0);
    assert!(one("m{} 1\n").labels[0].is_empty());
}

#[test]
fn special_values_parse_like_go() {
    let families = parse("a NaN\nb +Inf\nc -Inf\nd inf\ne 1e-3\nf +2\n")
        .unwrap()
        .families;
    let v: Vec<f64> = families.iter().map(|f| f.values[0]).collect();
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
    assert_eq!(mf.help, "");
}

#[test]
fn histogram_lines_become_flat_values_with_implicit_inf_split_by_bucket_layout() {
    let families = parse(
        "# TYPE lat histogram\n\
         lat_bucket{route=\"/a\",le=\"0.1\"} 1\n\
         lat_bucket{route=\"/a\",le=\"1\"} 3\n\
         lat_bucket{route=\"/a\",le=\"+Inf\"} 4\n\
         lat_sum{route=\"/a\"} 2.5\n\
         lat_count{route=\"/a\"} 4\n\
         lat_bucket{route=\"/b\",le=\"+Inf\"} 0\n\
         lat_sum{route=\"/b\"} 0\n\
         lat_count{route=\"/b\"} 0\n",
    )
    .unwrap()
    .families;
    // Two metrics of one family whose buckets differ: consecutive families of one name.
    assert!(families
        .iter()
        .all(|f| f.name == "lat" && f.kind == Kind::Histogram));
    assert_eq!(families.iter().map(|f| f.labels.len()).sum::<usize>(), 2);
    assert_eq!(families.len(), 2);
    let a = &families[0];
    assert_eq!(labels(&a.labels[0]), [("route", "/a")]);
    // Finite bounds only; the +Inf bucket is the count.
    assert_eq!(*a.bounds, [0.1, 1.0]);
    assert_eq!(a.values, [1.0, 3.0, 2.5, 4.0]);
    let b = &families[1];
    assert_eq!(labels(&b.labels[0]), [("route", "/b")]);
    assert!(b.bounds.is_empty());
    assert_eq!(b.values, [0.0, 0.0]);
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
            "the +Inf bucket (2) differs from _count (3)",
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
    let e = err(
        "# TYPE h histogram\nh_bucket{a=\"x\",le=\"1\"} 1\nh_sum{a=\"x\"} 1\nh_count{a=\"x\"} 1\n",
    );
    assert!(e.message.contains("`h{a=\"x\"}`"), "{e}");
}

#[test]
fn summary_lines_become_one_family() {
    let mf = one(
        "# TYPE rpc summary\nrpc{quantile=\"0.5\"} 0.2\nrpc{quantile=\"0.99\"} 1.5\nrpc_sum 12\nrpc_count 30\n",
    );
    assert_eq!(mf.kind, Kind::Summary);
    assert_eq!(*mf.bounds, [0.5, 0.99]);
    // The value of each quantile, then the sum and the count.
    assert_eq!(mf.values, [0.2, 1.5, 12.0, 30.0]);
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
        .families
        .is_empty());
    assert!(parse("").unwrap().families.is_empty());
}

#[test]
fn labels_are_sorted_by_name() {
    let mf = one("m{b=\"2\",a=\"1\"} 1\n");
    assert_eq!(labels(&mf.labels[0]), [("a", "1"), ("b", "2")]);
}

#[test]
fn text_encoder_output_parses_back_to_the_snapshot_of_the_same_families() {
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
    assert_eq!(parse(&text).unwrap(), Snapshot::from_families(&gathered));
}

#[test]
fn the_exposition_encoder_output_parses_back_to_the_same_snapshot() {
    let text = "# HELP lat Latency.\n# TYPE lat histogram\n\
                lat_bucket{route=\"/a\",le=\"0.1\"} 1\nlat_bucket{route=\"/a\",le=\"+Inf\"} 2\n\
                lat_sum{route=\"/a\"} 0.3\nlat_count{route=\"/a\"} 2\n\
                lat_bucket{route=\"/b\",le=\"1\"} 0\nlat_bucket{route=\"/b\",le=\"2\"} 1\n\
                lat_bucket{route=\"/b\",le=\"+Inf\"} 1\nlat_sum{route=\"/b\"} 1.5\nlat_count{route=\"/b\"} 1\n\
                # TYPE rpc summary\nrpc{quantile=\"0.5\"} 0.2\nrpc_sum 12\nrpc_count 30\n\
                u{a=\"x\\\"y\"} 3\n# TYPE g gauge\ng -1.5\n";
    let snapshot = parse(text).unwrap();
    let mut encoded = String::new();
    crate::exposition::encode::encode(&snapshot, &mut encoded);
    assert_eq!(parse(&encoded).unwrap(), snapshot, "{encoded}");
}
