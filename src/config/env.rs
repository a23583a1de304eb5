//! Environment variables that override keys of the file, with the Node proxy's names.
//!
//! [`ENV_OVERRIDES`] is the only list: it applies each variable, and docs/configuration.md's
//! table of variables is checked against it by a test. Adding a variable is adding a row.

use std::fmt;
use std::str::FromStr;

use super::{Config, ConfigError};

/// One environment variable and the key it overrides.
pub(crate) struct EnvOverride {
    /// The variable's name.
    pub(crate) var: &'static str,
    /// The dotted key it sets.
    pub(crate) key: &'static str,
    /// Parses the (trimmed) value into the key; the error says what was expected.
    set: fn(&mut Config, &str) -> Result<(), String>,
}

impl EnvOverride {
    const fn new(
        var: &'static str,
        key: &'static str,
        set: fn(&mut Config, &str) -> Result<(), String>,
    ) -> EnvOverride {
        EnvOverride { var, key, set }
    }
}

impl fmt::Debug for EnvOverride {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} → {}", self.var, self.key)
    }
}

/// Every environment override, in the order they are applied.
pub(crate) const ENV_OVERRIDES: &[EnvOverride] = &[
    EnvOverride::new("PROXY_ENABLE_METRICS", "metrics.enabled", |c, v| {
        boolean(&mut c.metrics.enabled, v)
    }),
    EnvOverride::new("PROXY_METRICS_TOKEN", "metrics.token", |c, v| {
        text(&mut c.metrics.token, v)
    }),
    EnvOverride::new(
        "PROXY_METRICS_ALLOW_LOOPBACK",
        "metrics.allow_loopback",
        |c, v| boolean(&mut c.metrics.allow_loopback, v),
    ),
    EnvOverride::new(
        "PROXY_METRICS_ALLOW_UNAUTH",
        "metrics.allow_unauth",
        |c, v| boolean(&mut c.metrics.allow_unauth, v),
    ),
    EnvOverride::new("PROXY_MAINTENANCE_MODE", "maintenance.enabled", |c, v| {
        boolean(&mut c.maintenance.enabled, v)
    }),
    EnvOverride::new(
        "PROXY_SSE_MAX_CONCURRENCY",
        "streams.max_concurrency",
        |c, v| parsed(&mut c.streams.max_concurrency, v),
    ),
    EnvOverride::new("PROXY_SSE_KEEPALIVE_MS", "streams.keepalive_ms", |c, v| {
        parsed(&mut c.streams.keepalive_ms, v)
    }),
    EnvOverride::new("PROXY_SSE_ON_FULL", "streams.on_full", |c, v| {
        parsed(&mut c.streams.on_full, v)
    }),
    EnvOverride::new("PROXY_API_KEY", "server.api_key", |c, v| {
        text(&mut c.server.api_key, v)
    }),
    EnvOverride::new("PROXY_LISTEN", "server.listen", |c, v| {
        parsed(&mut c.server.listen, v)
    }),
    EnvOverride::new("CODEX_BIN", "worker.command", |c, v| {
        app_server_binary(&mut c.worker.command, v)
    }),
    EnvOverride::new(
        "WORKER_MAX_CONCURRENCY",
        "worker.max_concurrency",
        |c, v| parsed(&mut c.worker.max_concurrency, v),
    ),
    EnvOverride::new(
        "WORKER_BACKOFF_INITIAL_MS",
        "worker.backoff_initial_ms",
        |c, v| parsed(&mut c.worker.backoff_initial_ms, v),
    ),
    EnvOverride::new("WORKER_BACKOFF_MAX_MS", "worker.backoff_max_ms", |c, v| {
        parsed(&mut c.worker.backoff_max_ms, v)
    }),
    EnvOverride::new("WORKER_RESTART_MAX", "worker.restart_max", |c, v| {
        parsed(&mut c.worker.restart_max, v)
    }),
    EnvOverride::new(
        "WORKER_STARTUP_TIMEOUT_MS",
        "worker.startup_timeout_ms",
        |c, v| parsed(&mut c.worker.startup_timeout_ms, v),
    ),
    EnvOverride::new(
        "WORKER_HANDSHAKE_TIMEOUT_MS",
        "worker.handshake_timeout_ms",
        |c, v| parsed(&mut c.worker.handshake_timeout_ms, v),
    ),
    EnvOverride::new(
        "WORKER_SHUTDOWN_GRACE_MS",
        "worker.shutdown_grace_ms",
        |c, v| parsed(&mut c.worker.shutdown_grace_ms, v),
    ),
    EnvOverride::new("PROXY_METRICS_TOKEN_FILE", "metrics.token_file", |c, v| {
        path(&mut c.metrics.token_file, v)
    }),
    EnvOverride::new("PROXY_API_KEY_FILE", "server.api_key_file", |c, v| {
        path(&mut c.server.api_key_file, v)
    }),
    EnvOverride::new(
        "PROXY_ADMIN_TOKEN_FILE",
        "server.admin_token_file",
        |c, v| path(&mut c.server.admin_token_file, v),
    ),
    EnvOverride::new("PROXY_LOG_FORMAT", "log.format", |c, v| {
        parsed(&mut c.log.format, v)
    }),
    EnvOverride::new("WORKER_LOG_LEVEL", "worker.log_level", |c, v| {
        text(&mut c.worker.log_level, v)
    }),
];

/// Variables read by the command line rather than a key: documented in the same table.
#[cfg(test)]
pub(crate) const COMMAND_LINE_VARIABLES: &[(&str, &str)] = &[
    ("CODEX_PROXY_CONFIG", "--config"),
    ("RUST_LOG", "the proxy's log filter"),
];

impl Config {
    /// Applies every variable `env` has a value for; the error names the variable.
    pub(super) fn apply_env(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        for row in ENV_OVERRIDES {
            let Some(raw) = env(row.var) else { continue };
            (row.set)(self, raw.trim()).map_err(|message| {
                ConfigError::invalid(row.var, format!("{message} (it sets {})", row.key))
            })?;
        }
        Ok(())
    }
}

/// The Node proxy's booleans: `1/true/yes/on`, `0/false/no/off` or empty, any case.
fn boolean(key: &mut bool, v: &str) -> Result<(), String> {
    *key = match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => true,
        "0" | "false" | "no" | "off" | "" => false,
        _ => return Err(format!("`{v}` is not a boolean")),
    };
    Ok(())
}

/// A file path; empty unsets it.
fn path(key: &mut Option<std::path::PathBuf>, v: &str) -> Result<(), String> {
    *key = (!v.is_empty()).then(|| v.into());
    Ok(())
}

fn text(key: &mut String, v: &str) -> Result<(), String> {
    *key = v.to_string();
    Ok(())
}

/// Numbers and addresses: whatever `FromStr` accepts.
fn parsed<T: FromStr>(key: &mut T, v: &str) -> Result<(), String>
where
    T::Err: fmt::Display,
{
    *key = v.parse().map_err(|e| format!("`{v}`: {e}"))?;
    Ok(())
}

/// `CODEX_BIN=<bin>` runs `<bin> app-server`; empty leaves the command as it is.
fn app_server_binary(command: &mut Vec<String>, v: &str) -> Result<(), String> {
    if !v.is_empty() {
        *command = vec![v.to_string(), "app-server".to_string()];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// Every key of `config` as rendered by `check-config`, dotted, with its value.
    fn rendered_keys(config: &Config) -> BTreeMap<String, String> {
        fn walk(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
            match value {
                toml::Value::Table(table) => {
                    for (k, v) in table {
                        let key = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(&key, v, out);
                    }
                }
                other => {
                    out.insert(prefix.to_string(), other.to_string());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk("", &toml::Value::try_from(config).unwrap(), &mut out);
        out
    }

    #[test]
    fn env_overrides_file_and_bad_env_names_the_variable() {
        let env = |k: &str| (k == "WORKER_BACKOFF_INITIAL_MS").then(|| "50".to_string());
        let mut c = Config::parse("[worker]\nbackoff_initial_ms = 900\n").unwrap();
        c.apply_env(env).unwrap();
        assert_eq!(c.worker.backoff_initial_ms, 50);
        let bad = |k: &str| (k == "PROXY_ENABLE_METRICS").then(|| "perhaps".to_string());
        let err = c.apply_env(bad).unwrap_err();
        assert!(err.to_string().contains("PROXY_ENABLE_METRICS"), "{err}");
        assert!(err.to_string().contains("metrics.enabled"), "{err}");
    }

    #[test]
    fn each_variable_sets_exactly_the_key_its_row_names() {
        let default = rendered_keys(&Config::default());
        // Each row gets the first of these its parser accepts and that changes something.
        let candidates = ["0", "1", "7", "127.0.0.1:9", "codex", "json", "reject"];
        for row in ENV_OVERRIDES {
            // (An unset optional key, such as a `_file`, is not rendered by default: the
            // assertion below, on what the variable changed, names any typo.)
            let changed = candidates.iter().find_map(|value| {
                let mut c = Config::default();
                c.apply_env(|k| (k == row.var).then(|| value.to_string()))
                    .ok()?;
                let after = rendered_keys(&c);
                let changed: BTreeSet<&String> = after
                    .iter()
                    .filter(|(k, v)| default.get(*k) != Some(v))
                    .map(|(k, _)| k)
                    .collect();
                (!changed.is_empty()).then(|| changed.into_iter().cloned().collect::<Vec<_>>())
            });
            assert_eq!(changed, Some(vec![row.key.to_string()]), "{row:?}");
        }
    }

    #[test]
    fn codex_bin_runs_the_app_server_and_empty_keeps_the_command() {
        let mut c = Config::parse("[worker]\ncommand = [\"node\", \"w.js\"]\n").unwrap();
        c.apply_env(|k| (k == "CODEX_BIN").then(String::new))
            .unwrap();
        assert_eq!(c.worker.command, ["node", "w.js"]);
        c.apply_env(|k| (k == "CODEX_BIN").then(|| " /opt/codex ".to_string()))
            .unwrap();
        assert_eq!(c.worker.command, ["/opt/codex", "app-server"]);
    }

    #[test]
    fn the_documented_table_lists_every_variable_with_its_key() {
        let docs = include_str!("../../docs/configuration.md");
        for row in ENV_OVERRIDES {
            let line = format!("| `{}` | `{}` |", row.var, row.key);
            assert!(docs.contains(&line), "docs/configuration.md lacks `{line}`");
        }
        // And the docs name no variable the code does not know.
        let documented = docs
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .filter(|name| name.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
        for (var, what) in COMMAND_LINE_VARIABLES {
            let line = format!("| `{var}` | {what} |");
            assert!(docs.contains(&line), "docs/configuration.md lacks `{line}`");
        }
        for var in documented {
            assert!(
                ENV_OVERRIDES.iter().any(|row| row.var == var)
                    || COMMAND_LINE_VARIABLES.iter().any(|(v, _)| *v == var),
                "docs/configuration.md documents `{var}`, which the code does not read"
            );
        }
    }
}
