//! Label rules: every label value comes from a bounded set, whatever the traffic.

/// Turns raw request facts into bounded label values.
pub struct LabelRules {
    allowed_models: Vec<String>,
}

impl LabelRules {
    pub fn new(models: &[String]) -> Self {
        LabelRules {
            allowed_models: models.to_vec(),
        }
    }

    /// `unknown` when absent, the value when allowed, else `other`.
    pub fn model(&self, raw: Option<&str>) -> &str {
        match raw {
            None => "unknown",
            Some(m) => self
                .allowed_models
                .iter()
                .find(|a| a.as_str() == m)
                .map(|s| s.as_str())
                .unwrap_or("other"),
        }
    }
}

/// The output mode label: one of a fixed set.
pub fn output_mode(raw: &str) -> &'static str {
    match raw {
        "obsidian-xml" => "obsidian-xml",
        "text" | "" => "text",
        _ => "other",
    }
}
