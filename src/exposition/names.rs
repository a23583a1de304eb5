//! Prometheus naming rules, for everything this crate sends or reads: metric names
//! `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names `[a-zA-Z_][a-zA-Z0-9_]*` without the `__`
//! prefix that Prometheus reserves for its own labels (`__name__` among them).

/// A character that may appear in a metric name (the first one has a narrower rule).
pub(crate) fn is_metric_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// A character that may appear in a label name (the first one has a narrower rule).
pub(crate) fn is_label_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub(crate) fn is_valid_metric_name(name: &str) -> bool {
    name.starts_with(|c: char| !c.is_ascii_digit()) && name.chars().all(is_metric_name_char)
}

/// Label name a user may set: `[a-zA-Z_][a-zA-Z0-9_]*`, not reserved (`__` prefix).
pub(crate) fn is_valid_label_name(name: &str) -> bool {
    name.starts_with(|c: char| !c.is_ascii_digit())
        && name.chars().all(is_label_name_char)
        && !name.starts_with("__")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_allow_colons_and_no_leading_digit() {
        for good in ["a", "_", ":", "a:b_c9", "job:rate5m", "_private", "A_Z"] {
            assert!(is_valid_metric_name(good), "{good}");
        }
        for bad in ["", "9a", "a-b", "a.b", "a b", "é", "a{", "le\n"] {
            assert!(!is_valid_metric_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn label_names_refuse_colons_leading_digits_and_the_reserved_prefix() {
        for good in ["a", "_", "_a", "le", "quantile", "a9_B"] {
            assert!(is_valid_label_name(good), "{good}");
        }
        for bad in ["", "1x", "a-b", "a:b", "__", "__name__", "__reserved", "é"] {
            assert!(!is_valid_label_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn name_characters_follow_the_name_rules() {
        assert!(is_metric_name_char(':') && !is_label_name_char(':'));
        assert!(is_metric_name_char('7') && is_label_name_char('7'));
        assert!(!is_metric_name_char('-') && !is_label_name_char('-'));
        assert!(!is_metric_name_char('é') && !is_label_name_char('é'));
    }
}
