//! Configuration: a TOML file (every key optional), then environment variables on top,
//! then validation. Every error names the key (`remote_write[0].interval`) or the
//! environment variable.
//!
//! - `schema.rs`: the proxy's own sections (`[server]`, `[worker]`, ...) and their defaults;
//! - `destinations.rs`: `[[remote_write]]` and `[[pushgateway]]`, sharing [`HttpDestination`];
//! - `env.rs`: the table of environment overrides;
//! - `accounting.rs`: named API keys, prices and budgets;
//! - `validate.rs`: ranges, cron expressions, header and label names;
//! - `units.rs`: durations (`"15s"`) and sizes (`"256MiB"`).

mod accounting;
mod destinations;
mod env;
mod schema;
mod units;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use accounting::{
    ApiKeyConfig, BudgetConfig, Period, PriceConfig, DEFAULT_KEY_NAME, NO_KEY_NAME,
};
pub use destinations::{
    BasicAuthConfig, HistogramMode, HttpDestination, HttpUrl, PushMethod, PushgatewayConfig,
    RemoteWriteConfig, RemoteWriteProtocol,
};
pub use schema::{
    ClientAuth, LogConfig, LogFormat, MaintenanceConfig, MetricsConfig, OnFull, ServerConfig,
    StatusConfig, StreamsConfig, TlsServerConfig, WorkerConfig,
};
pub use units::{ByteSize, HumanDuration};

/// A configuration problem; `key` is the dotted path of the offending key or the env var.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl fmt::Display) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.to_string(),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub streams: StreamsConfig,
    #[serde(default)]
    pub maintenance: MaintenanceConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Zero or more remote-write destinations, each with its own queue.
    #[serde(default)]
    pub remote_write: Vec<RemoteWriteConfig>,
    /// Zero or more Pushgateway destinations.
    #[serde(default)]
    pub pushgateway: Vec<PushgatewayConfig>,
    #[serde(default)]
    pub log: LogConfig,
    /// Prices per model name (as the worker reports it), USD per million tokens.
    #[serde(default)]
    pub pricing: std::collections::BTreeMap<String, PriceConfig>,
    /// Spending limits per key name.
    #[serde(default)]
    pub budgets: Vec<BudgetConfig>,
    #[serde(default)]
    pub status: StatusConfig,
    /// The file this was read from (shown on `/status`); not a key.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

schema::default_from_empty_table!(Config);

impl Config {
    /// Reads the file (when given), applies the environment, validates.
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                let mut config = Config::parse(&text)?;
                config.source = Some(path.to_path_buf());
                config
            }
            None => Config::default(),
        };
        config.apply_env(env)?;
        config.validate()?;
        config.check_secret_files()?;
        Ok(config)
    }

    /// Parses TOML; the error names the dotted key path. It does not validate.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            // The message alone: the error's Display would quote the line, which may hold
            // a secret (a token, a URL with credentials).
            let message = e.into_inner().message().to_string();
            ConfigError::invalid(error_key(text, &path, &message), message)
        })
    }

    /// The effective configuration as TOML, secrets masked.
    pub fn to_masked_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// The dotted key a parse error is about. serde_path_to_error's path is it, except where
/// serde gives the path no chance: an unknown top-level key (path `.`), and a destination's
/// flattened [`HttpDestination`], whose keys are buffered and whose errors, like the
/// kinds' unknown keys, surface at the section (`remote_write[0]`).
fn error_key(text: &str, path: &str, message: &str) -> String {
    let unknown = unknown_field_name(message);
    if path == "." || path.is_empty() {
        return unknown.unwrap_or_else(|| "<file>".to_string());
    }
    if let Some(key) = flattened_key(text, path) {
        return key;
    }
    match unknown {
        Some(field) if !path.ends_with(&format!(".{field}")) => format!("{path}.{field}"),
        _ => path.to_string(),
    }
}

/// When `section` is a destination (`pushgateway[1]`) and its shared keys hold the error,
/// their dotted key, found by reading that part of the section again on its own.
fn flattened_key(text: &str, section: &str) -> Option<String> {
    let (kind, index) = section.strip_suffix(']')?.split_once('[')?;
    if kind != "remote_write" && kind != "pushgateway" {
        return None;
    }
    let document: toml::Table = text.parse().ok()?;
    let table = document
        .get(kind)?
        .as_array()?
        .get(index.parse::<usize>().ok()?)?;
    let error = serde_path_to_error::deserialize::<_, HttpDestination>(table.clone()).err()?;
    match error.path().to_string().as_str() {
        // Missing `url`: the section is the right place.
        "." | "" => None,
        inner => Some(format!("{section}.{inner}")),
    }
}

fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.split("unknown field `").nth(1)?;
    Some(rest.split('`').next()?.to_string())
}

#[cfg(test)]
mod tests;
