//! What serde cannot check: ranges, cron expressions, header and label names. Every error
//! names the key (`remote_write[0].max_backoff`). URLs are checked as they are parsed
//! (`HttpUrl`), units likewise (`units.rs`).

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use super::destinations::HttpDestination;
use super::{Config, ConfigError};
use crate::exposition::names::is_valid_label_name;

impl Config {
    /// Checks what serde cannot: ranges, cron expressions, header and label names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let w = &self.worker;
        positive("worker.max_concurrency", w.max_concurrency as u64)?;
        positive("worker.backoff_initial_ms", w.backoff_initial_ms)?;
        if w.backoff_max_ms < w.backoff_initial_ms {
            return Err(ConfigError::invalid(
                "worker.backoff_max_ms",
                "must be at least worker.backoff_initial_ms",
            ));
        }
        positive("worker.handshake_timeout_ms", w.handshake_timeout_ms)?;
        positive("worker.startup_timeout_ms", w.startup_timeout_ms)?;
        positive(
            "streams.max_concurrency",
            self.streams.max_concurrency as u64,
        )?;
        positive("streams.keepalive_ms", self.streams.keepalive_ms)?;
        positive("server.max_body_bytes", self.server.max_body_bytes.0)?;
        positive("server.max_connections", self.server.max_connections as u64)?;
        positive(
            "server.header_read_timeout",
            self.server.header_read_timeout.0.as_millis() as u64,
        )?;
        positive(
            "server.idle_timeout",
            self.server.idle_timeout.0.as_millis() as u64,
        )?;
        if let Some(tls) = &self.server.tls {
            if tls.client_auth != super::ClientAuth::None && tls.client_ca_file.is_none() {
                return Err(ConfigError::invalid(
                    "server.tls.client_ca_file",
                    "client_auth request or require needs the CA that client certificates chain to",
                ));
            }
        }
        for (inline_key, inline, file_key, file) in self.secret_sources() {
            if !inline.is_empty() && file.is_some() {
                return Err(ConfigError::invalid(
                    file_key,
                    format!("set either {inline_key} or {file_key}, not both"),
                ));
            }
        }
        self.validate_accounting()?;
        if self.metrics.summary_window.0 < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "metrics.summary_window",
                "must be at least 1s",
            ));
        }
        for (name, hash) in &self.metrics.basic_auth_users {
            let key = format!("metrics.basic_auth_users.{name}");
            if name.is_empty() || name.contains(':') {
                return Err(ConfigError::invalid(
                    key,
                    "a user name must be non-empty and without `:`",
                ));
            }
            if !crate::auth::is_bcrypt_hash(hash) {
                return Err(ConfigError::invalid(
                    key,
                    "must be a bcrypt hash (e.g. from `htpasswd -nbBC 10 \"\" PASSWORD`), not a password",
                ));
            }
        }
        for (i, m) in self.metrics.models.iter().enumerate() {
            if m.is_empty() || m.len() > 64 {
                return Err(ConfigError::invalid(
                    format!("metrics.models[{i}]"),
                    "must be 1 to 64 characters",
                ));
            }
        }
        for (i, rw) in self.remote_write.iter().enumerate() {
            let k = |f: &str| format!("remote_write[{i}].{f}");
            destination(&k, &rw.destination)?;
            positive(&k("max_queue_bytes"), rw.max_queue_bytes.0)?;
            positive(
                &k("max_series_per_request"),
                rw.max_series_per_request as u64,
            )?;
            positive(&k("max_in_flight"), rw.max_in_flight as u64)?;
            if rw.max_sample_age.is_some_and(|a| a.0.is_zero()) {
                return Err(ConfigError::invalid(
                    k("max_sample_age"),
                    "must be positive (empty turns it off)",
                ));
            }
            if rw.max_bytes_per_second.is_some_and(|b| b.0 == 0) {
                return Err(ConfigError::invalid(
                    k("max_bytes_per_second"),
                    "must be positive (empty turns it off)",
                ));
            }
            if rw.max_backoff.0 < rw.min_backoff.0 {
                return Err(ConfigError::invalid(
                    k("max_backoff"),
                    "must be at least min_backoff",
                ));
            }
            for (name, value) in &rw.external_labels {
                require_label_name(&k("external_labels"), name)?;
                if value.is_empty() {
                    return Err(ConfigError::invalid(
                        format!("{}.{name}", k("external_labels")),
                        "empty label values are not allowed in remote-write",
                    ));
                }
            }
        }
        for (i, pg) in self.pushgateway.iter().enumerate() {
            let k = |f: &str| format!("pushgateway[{i}].{f}");
            destination(&k, &pg.destination)?;
            if pg.job.is_empty() {
                return Err(ConfigError::invalid(k("job"), "must not be empty"));
            }
            for name in pg.grouping.keys() {
                require_label_name(&k("grouping"), name)?;
                if name == "job" {
                    return Err(ConfigError::invalid(
                        k("grouping"),
                        "`job` is set by pushgateway.job, not in grouping",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The keys every destination shares; `key` turns a field into its dotted key.
fn destination(key: &dyn Fn(&str) -> String, d: &HttpDestination) -> Result<(), ConfigError> {
    match &d.cron {
        Some(expr) => {
            cron::Schedule::from_str(expr)
                .map_err(|e| ConfigError::invalid(key("cron"), format!("`{expr}`: {e}")))?;
        }
        None => positive(&key("interval"), d.interval.0.as_millis() as u64)?,
    }
    positive(&key("timeout"), d.timeout.0.as_millis() as u64)?;
    match (&d.tls_cert_file, &d.tls_key_file) {
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                key("tls_key_file"),
                "tls_cert_file needs its key",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                key("tls_cert_file"),
                "tls_key_file needs its certificate",
            ))
        }
        _ => {}
    }
    header_names(&key("headers"), &d.headers)
}

impl Config {
    /// Each secret that may come from a file: its inline key and value, its file key and
    /// path.
    pub(crate) fn secret_sources(&self) -> [(&'static str, &str, &'static str, Option<&Path>); 3] {
        [
            (
                "metrics.token",
                &self.metrics.token,
                "metrics.token_file",
                self.metrics.token_file.as_deref(),
            ),
            (
                "server.api_key",
                &self.server.api_key,
                "server.api_key_file",
                self.server.api_key_file.as_deref(),
            ),
            (
                "server.admin_token",
                &self.server.admin_token,
                "server.admin_token_file",
                self.server.admin_token_file.as_deref(),
            ),
        ]
    }

    /// Reads every configured secret file once, so that a missing, unreadable or empty
    /// one stops start-up (exit 2) naming its key; the contents are never shown. The TLS
    /// files are loaded as the server would.
    pub(crate) fn check_secret_files(&self) -> Result<(), ConfigError> {
        if let Some(tls) = &self.server.tls {
            crate::tls::TlsFiles::new(tls)
                .load()
                .map_err(|e| ConfigError::invalid(e.key, e.message))?;
        }
        for (_, _, file_key, file) in self.secret_sources() {
            if let Some(path) = file {
                crate::secrets::read_secret_file(path)
                    .map_err(|message| ConfigError::invalid(file_key, message))?;
            }
        }
        for (i, k) in self.server.api_keys.iter().enumerate() {
            if let Some(path) = &k.key_file {
                crate::secrets::read_secret_file(path).map_err(|message| {
                    ConfigError::invalid(format!("server.api_keys[{i}].key_file"), message)
                })?;
            }
        }
        Ok(())
    }
}

fn positive(key: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(ConfigError::invalid(key, "must be greater than zero"));
    }
    Ok(())
}

/// A label name configured under `key` (`external_labels`, `grouping`); the error names it.
fn require_label_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if is_valid_label_name(name) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            format!("{key}.{name}"),
            "not a valid label name",
        ))
    }
}

fn header_names(key: &str, headers: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (name, value) in headers {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(ConfigError::invalid(
                format!("{key}.{name}"),
                "not a valid header name",
            ));
        }
        if reqwest::header::HeaderValue::from_str(value).is_err() {
            return Err(ConfigError::invalid(
                format!("{key}.{name}"),
                "not a valid header value",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config, ConfigError> {
        let c = Config::parse(text)?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn validation_rejects_cron_and_url_errors_by_key() {
        let err = check("[[pushgateway]]\nurl = \"ftp://x\"\n").unwrap_err();
        assert!(err.to_string().contains("pushgateway[0].url"), "{err}");
        let c = Config::parse("[[remote_write]]\nurl = \"http://x/\"\ncron = \"nope\"\n").unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("remote_write[0].cron"), "{err}");
    }

    #[test]
    fn shared_destination_keys_are_checked_under_each_kind() {
        for kind in ["remote_write", "pushgateway"] {
            let cases = [
                ("interval = \"0s\"", "interval"),
                ("timeout = \"0s\"", "timeout"),
                ("headers = { \"bad header\" = \"x\" }", "headers.bad header"),
            ];
            for (line, key) in cases {
                let text = format!("[[{kind}]]\nurl = \"http://x/\"\n{line}\n");
                let err = check(&text).unwrap_err().to_string();
                assert!(err.contains(&format!("`{kind}[0].{key}`")), "{text}: {err}");
            }
        }
    }

    #[test]
    fn a_url_that_is_not_one_is_named_and_never_echoed() {
        let err = check("[[remote_write]]\nurl = \"https//user:s3cret@host\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("remote_write[0].url"), "{err}");
        assert!(err.contains("not a URL"), "{err}");
    }

    #[test]
    fn basic_auth_users_take_bcrypt_hashes_and_a_plain_password_is_named_not_echoed() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        check(&format!(
            "[metrics]\nbasic_auth_users = {{ alice = \"{hash}\" }}\n"
        ))
        .unwrap();
        let err = check("[metrics]\nbasic_auth_users = { alice = \"hunter2\" }\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`metrics.basic_auth_users.alice`"), "{err}");
        assert!(err.contains("bcrypt") && !err.contains("hunter2"), "{err}");
        let c = check(&format!(
            "[metrics]\nbasic_auth_users = {{ alice = \"{hash}\" }}\n"
        ))
        .unwrap();
        let shown = c.to_masked_toml();
        assert!(shown.contains("alice") && !shown.contains(&hash), "{shown}");
    }

    #[test]
    fn a_bad_label_name_is_refused_naming_its_key() {
        let err = check("[[pushgateway]]\nurl = \"http://x/\"\ngrouping = { \"a-b\" = \"1\" }\n")
            .unwrap_err();
        assert!(
            err.to_string().contains("pushgateway[0].grouping.a-b"),
            "{err}"
        );
    }
}
