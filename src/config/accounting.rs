//! Who used what and what it cost: named API keys (`[[server.api_keys]]`), prices per
//! model (`[pricing."<model>"]`) and budgets per key (`[[budgets]]`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::schema::mask;

/// One named API key. The name, never the key, becomes the `key` label.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The `key` label value and the name budgets refer to (1 to 64 characters of
    /// `[A-Za-z0-9_.-]`; `default` and `none` are taken).
    pub name: String,
    /// The key itself; or `key_file`, not both.
    #[serde(default, serialize_with = "mask")]
    pub key: String,
    /// File holding the key (surrounding blanks trimmed), re-read when it changes.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// Prices of one model in USD per million tokens.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// Uncached input tokens.
    pub input: f64,
    /// Input tokens read from the prompt cache (priced once, at this rate only).
    pub cached_input: f64,
    /// Output tokens (reasoning included unless `reasoning_output` is given).
    pub output: f64,
    /// Reasoning output tokens; `output` when not given.
    #[serde(default)]
    pub reasoning_output: Option<f64>,
    /// Input tokens written to the prompt cache; `input` when not given.
    #[serde(default)]
    pub cache_write_input: Option<f64>,
}

/// A spending limit of one key for a calendar period.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// The key's name (`default` for `server.api_key`).
    pub key: String,
    /// The limit in USD for each period.
    pub usd: f64,
    /// The calendar period (UTC) the limit applies to.
    #[serde(default)]
    pub period: Period,
    /// When true, the key's requests get 429 `insufficient_quota` once the period's spend
    /// has reached the limit, until the period ends.
    #[serde(default)]
    pub enforce: bool,
}

/// A calendar period in UTC: days start at 00:00, weeks on Monday, months on the 1st.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Week,
    #[default]
    Month,
}

/// The name `server.api_key` goes by.
pub const DEFAULT_KEY_NAME: &str = "default";
/// The `key` label value when no key is configured.
pub const NO_KEY_NAME: &str = "none";

impl super::Config {
    /// The names of every configured key, `server.api_key` (as `default`) first; empty
    /// when `/v1/*` needs no key.
    pub fn key_names(&self) -> Vec<&str> {
        let default = !self.server.api_key.is_empty() || self.server.api_key_file.is_some();
        default
            .then_some(DEFAULT_KEY_NAME)
            .into_iter()
            .chain(self.server.api_keys.iter().map(|k| k.name.as_str()))
            .collect()
    }

    pub(super) fn validate_accounting(&self) -> Result<(), ConfigError> {
        let default = !self.server.api_key.is_empty() || self.server.api_key_file.is_some();
        for (i, k) in self.server.api_keys.iter().enumerate() {
            let key = |f: &str| format!("server.api_keys[{i}].{f}");
            let valid = (1..=64).contains(&k.name.len())
                && k.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !valid {
                return Err(ConfigError::invalid(
                    key("name"),
                    "must be 1 to 64 characters of A-Z a-z 0-9 _ . -",
                ));
            }
            if k.name == NO_KEY_NAME || (k.name == DEFAULT_KEY_NAME && default) {
                return Err(ConfigError::invalid(
                    key("name"),
                    format!("`{}` is taken", k.name),
                ));
            }
            if self.server.api_keys[..i].iter().any(|o| o.name == k.name) {
                return Err(ConfigError::invalid(
                    key("name"),
                    format!("`{}` is used twice", k.name),
                ));
            }
            match (k.key.is_empty(), &k.key_file) {
                (false, Some(_)) => {
                    return Err(ConfigError::invalid(
                        key("key_file"),
                        "set either key or key_file, not both",
                    ))
                }
                (true, None) => {
                    return Err(ConfigError::invalid(key("key"), "set key or key_file"))
                }
                _ => {}
            }
        }
        for (model, price) in &self.pricing {
            // A priced model is an allowed `model` label value, and its price is found
            // through that value: it must be one (and not a catch-all).
            if model.is_empty() || model.len() > 64 || model == "other" || model == "unknown" {
                return Err(ConfigError::invalid(
                    format!("pricing.\"{model}\""),
                    "a model name of 1 to 64 characters, not `other` or `unknown`",
                ));
            }
            let fields = [
                ("input", Some(price.input)),
                ("cached_input", Some(price.cached_input)),
                ("output", Some(price.output)),
                ("reasoning_output", price.reasoning_output),
                ("cache_write_input", price.cache_write_input),
            ];
            for (field, value) in fields {
                if value.is_some_and(|v| !v.is_finite() || v < 0.0) {
                    return Err(ConfigError::invalid(
                        format!("pricing.\"{model}\".{field}"),
                        "must be a number of USD per million tokens, 0 or more",
                    ));
                }
            }
        }
        let names = self.key_names();
        for (i, b) in self.budgets.iter().enumerate() {
            let key = |f: &str| format!("budgets[{i}].{f}");
            if !names.contains(&b.key.as_str()) {
                return Err(ConfigError::invalid(
                    key("key"),
                    format!("`{}` is not a configured key name", b.key),
                ));
            }
            if self.budgets[..i].iter().any(|o| o.key == b.key) {
                return Err(ConfigError::invalid(
                    key("key"),
                    format!("`{}` has a budget already", b.key),
                ));
            }
            if !b.usd.is_finite() || b.usd <= 0.0 {
                return Err(ConfigError::invalid(
                    key("usd"),
                    "must be a positive number",
                ));
            }
        }
        Ok(())
    }
}

use super::ConfigError;
