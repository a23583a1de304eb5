//! The proxy's own secrets (`metrics.token`, `server.api_key`, `server.api_keys`,
//! `server.admin_token`), each written inline or read from a file (`*_file`). A file is read at start, then again
//! when its contents change (checked every second, which also follows the symlink swap
//! of a Kubernetes or Docker secret) or at once on SIGHUP, so that a rotated secret
//! takes effect without a restart.
//!
//! A file that turns empty or unreadable later keeps the last good value, with a warning:
//! an empty API key would mean "no key needed", which a failed rotation must never cause.
//! Values never reach a log, a metric or an error; only the key and the path do.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::Config;

/// How often the files are compared with what is in use.
const POLL: Duration = Duration::from_secs(1);

/// One secret as the guards read it. Cheap to clone; clones see rotations.
#[derive(Clone)]
pub(crate) struct Secret {
    /// `None`: not configured (the route needs no credential).
    value: Option<Arc<RwLock<Arc<str>>>>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.value.is_some() {
            "Secret(***)"
        } else {
            "Secret(unset)"
        })
    }
}

impl Secret {
    /// An inline value; empty means not configured.
    pub(crate) fn inline(value: &str) -> Secret {
        Secret {
            value: (!value.is_empty()).then(|| Arc::new(RwLock::new(Arc::from(value)))),
        }
    }

    /// The value in use, `None` when none is configured. A configured secret whose file
    /// could not be read at start is `Some("")`, which no credential matches.
    pub(crate) fn get(&self) -> Option<Arc<str>> {
        let cell = self.value.as_ref()?;
        Some(cell.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn set(&self, value: &str) {
        if let Some(cell) = &self.value {
            *cell.write().unwrap_or_else(|p| p.into_inner()) = Arc::from(value);
        }
    }

    fn configured() -> Secret {
        Secret {
            value: Some(Arc::new(RwLock::new(Arc::from("")))),
        }
    }
}

/// The API keys of `/v1/*` (`server.api_key` as `default` first, then
/// `server.api_keys`), in the order of `Config::key_names`. One lock and one `Arc` for
/// the whole set, so that a request reads every key with one atomic operation, however
/// many there are.
#[derive(Clone, Default)]
pub(crate) struct KeyRing {
    keys: Arc<RwLock<Arc<[Arc<str>]>>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyRing({} keys)", self.len())
    }
}

impl KeyRing {
    /// The keys in use; an entry is `""` (matching nothing) while its file could not be
    /// read since start.
    pub(crate) fn current(&self) -> Arc<[Arc<str>]> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many keys are configured; 0: `/v1/*` needs none.
    pub(crate) fn len(&self) -> usize {
        self.current().len()
    }

    fn set(&self, index: usize, value: &str) {
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let mut next: Vec<Arc<str>> = keys.iter().cloned().collect();
        if let Some(slot) = next.get_mut(index) {
            *slot = Arc::from(value);
        }
        *keys = next.into();
    }
}

/// Where a secret file's value goes.
#[derive(Debug)]
enum Target {
    Secret(Secret),
    /// One key of the ring, by index.
    Ring(KeyRing, usize),
}

impl Target {
    fn get(&self) -> Option<Arc<str>> {
        match self {
            Target::Secret(s) => s.get(),
            Target::Ring(ring, i) => ring.current().get(*i).cloned(),
        }
    }

    fn set(&self, value: &str) {
        match self {
            Target::Secret(s) => s.set(value),
            Target::Ring(ring, i) => ring.set(*i, value),
        }
    }
}

/// A secret file and the secret it feeds.
#[derive(Debug)]
struct Watched {
    /// The config key of the file, for logs.
    key: String,
    path: PathBuf,
    secret: Target,
    /// Whether the last read failed, so that a lasting failure is logged once.
    failing: bool,
}

/// Every secret of the proxy, and the files they come from.
#[derive(Debug, Clone)]
pub(crate) struct Secrets {
    pub(crate) metrics_token: Secret,
    /// Every API key of `/v1/*`, `server.api_key` (named `default`) first.
    pub(crate) api_keys: KeyRing,
    pub(crate) admin_token: Secret,
    files: Arc<std::sync::Mutex<Vec<Watched>>>,
}

impl Secrets {
    /// Reads the configured files now. `Config::load` has checked them already; one that
    /// fails here anyway (removed in between) leaves its secret matching nothing.
    pub(crate) fn from_config(config: &Config) -> Secrets {
        let mut files = Vec::new();
        // In the order of `secret_sources`.
        let [metrics_token, api_key, admin_token] =
            config.secret_sources().map(|(_, inline, file_key, file)| {
                let Some(path) = file else {
                    return Secret::inline(inline);
                };
                let secret = Secret::configured();
                let mut watched = Watched {
                    key: file_key.to_string(),
                    path: path.to_path_buf(),
                    secret: Target::Secret(secret.clone()),
                    failing: false,
                };
                watched.reload();
                files.push(watched);
                secret
            });
        // The ring starts with the inline values (or "" for files), in key-name order.
        let default = api_key.get();
        let mut initial: Vec<Arc<str>> = default.into_iter().collect();
        let offset = initial.len();
        initial.extend(
            config
                .server
                .api_keys
                .iter()
                .map(|k| Arc::from(k.key.as_str())),
        );
        let api_keys = KeyRing {
            keys: Arc::new(RwLock::new(initial.into())),
        };
        for watched in files.iter_mut() {
            if watched.key == "server.api_key_file" {
                watched.secret = Target::Ring(api_keys.clone(), 0);
                watched.reload();
            }
        }
        for (i, k) in config.server.api_keys.iter().enumerate() {
            if let Some(path) = &k.key_file {
                let mut watched = Watched {
                    key: format!("server.api_keys[{i}].key_file"),
                    path: path.clone(),
                    secret: Target::Ring(api_keys.clone(), offset + i),
                    failing: false,
                };
                watched.reload();
                files.push(watched);
            }
        }
        Secrets {
            metrics_token,
            api_keys,
            admin_token,
            files: Arc::new(std::sync::Mutex::new(files)),
        }
    }

    /// Re-reads every file now; returns how many secrets changed.
    pub(crate) fn reload(&self) -> usize {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files
            .iter_mut()
            .map(Watched::reload)
            .filter(|changed| *changed)
            .count()
    }

    /// Keeps the secrets in step with their files until the runtime ends: every second,
    /// and at once on SIGHUP. SIGHUP is handled even when no secret comes from a file, so
    /// that a reload signal never ends the process.
    pub(crate) fn watch(&self) {
        let polling = !self
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        let secrets = self.clone();
        tokio::spawn(async move {
            let mut hangup = hangup_signals();
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick(), if polling => {}
                    () = next_hangup(&mut hangup) => {
                        tracing::info!("SIGHUP: reading the secret files again");
                    }
                }
                // File reads are small but blocking.
                let s = secrets.clone();
                let _ = tokio::task::spawn_blocking(move || s.reload()).await;
            }
        });
    }
}

impl Watched {
    /// Reads the file; true when the secret changed.
    fn reload(&mut self) -> bool {
        match read_secret_file(&self.path) {
            Ok(value) => {
                self.failing = false;
                if self.secret.get().as_deref() == Some(value.as_str()) {
                    return false;
                }
                let first = self.secret.get().as_deref() == Some("");
                self.secret.set(&value);
                if !first {
                    tracing::info!(key = %self.key, path = %self.path.display(), "secret file changed; the new value is in effect");
                }
                true
            }
            Err(message) => {
                if !self.failing {
                    tracing::warn!(key = %self.key, "{message}; keeping the previous value");
                }
                self.failing = true;
                false
            }
        }
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

#[cfg(unix)]
fn hangup_signals() -> Hangups {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangup_signals() -> Hangups {
    None
}

/// The next SIGHUP; never, where there are none (or once the signal driver is gone).
async fn next_hangup(signals: &mut Hangups) {
    #[cfg(unix)]
    if let Some(s) = signals {
        if s.recv().await.is_some() {
            return;
        }
    }
    let _ = signals;
    std::future::pending().await
}

/// A secret file's contents without surrounding blanks (files usually end in a newline).
/// The error names the file and what is wrong, never what it holds.
pub(crate) fn read_secret_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    if !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{} holds blanks or characters a bearer token cannot have",
            path.display()
        ));
    }
    Ok(secret.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let c = Config::parse(text).unwrap();
        c.validate().unwrap();
        c
    }

    #[test]
    fn inline_secrets_are_used_and_empty_means_unset() {
        let s = Secrets::from_config(&config("[server]\napi_key = \"k1\"\n"));
        assert_eq!(&*s.api_keys.current()[0], "k1");
        assert_eq!(s.admin_token.get(), None);
        assert_eq!(s.metrics_token.get(), None);
        assert!(!format!("{s:?}").contains("k1"));
    }

    #[test]
    fn a_rotated_file_is_picked_up_and_a_broken_one_keeps_the_last_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let c = config(&format!(
            "[metrics]\ntoken_file = {:?}\n",
            path.display().to_string()
        ));
        let s = Secrets::from_config(&c);
        let reader = s.metrics_token.clone();
        assert_eq!(reader.get().as_deref(), Some("first"));
        assert_eq!(s.reload(), 0);
        std::fs::write(&path, "second").unwrap();
        assert_eq!(s.reload(), 1);
        assert_eq!(reader.get().as_deref(), Some("second"));
        for broken in ["", "  \n", "two words"] {
            std::fs::write(&path, broken).unwrap();
            assert_eq!(s.reload(), 0, "{broken:?}");
            assert_eq!(reader.get().as_deref(), Some("second"), "{broken:?}");
        }
        std::fs::remove_file(&path).unwrap();
        assert_eq!(s.reload(), 0);
        assert_eq!(reader.get().as_deref(), Some("second"));
    }

    #[test]
    fn a_file_unreadable_at_start_matches_nothing() {
        let mut c = Config::default();
        c.server.api_key_file = Some("/nonexistent/api-key".into());
        let s = Secrets::from_config(&c);
        assert_eq!(&*s.api_keys.current()[0], "");
    }

    #[test]
    fn named_keys_follow_their_files_beside_the_default_key() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "key-a1\n").unwrap();
        std::fs::write(&b, "key-b1").unwrap();
        let c = config(&format!(
            "[server]\napi_key_file = {:?}\n[[server.api_keys]]\nname = \"team-a\"\nkey = \"inline-a\"\n[[server.api_keys]]\nname = \"team-b\"\nkey_file = {:?}\n",
            a.display().to_string(),
            b.display().to_string()
        ));
        assert_eq!(c.key_names(), ["default", "team-a", "team-b"]);
        let s = Secrets::from_config(&c);
        let ring = s.api_keys.clone();
        let keys = |r: &KeyRing| {
            r.current()
                .iter()
                .map(|k| k.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&ring), ["key-a1", "inline-a", "key-b1"]);
        std::fs::write(&b, "key-b2").unwrap();
        std::fs::write(&a, "key-a2").unwrap();
        assert_eq!(s.reload(), 2);
        assert_eq!(keys(&ring), ["key-a2", "inline-a", "key-b2"]);
        std::fs::write(&b, "").unwrap();
        assert_eq!(s.reload(), 0);
        assert_eq!(keys(&ring), ["key-a2", "inline-a", "key-b2"]);
        assert!(!format!("{s:?}").contains("key-"));
    }

    #[test]
    fn errors_name_the_file_never_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "sk-live bad").unwrap();
        let err = read_secret_file(&path).unwrap_err();
        assert!(err.contains("key") && !err.contains("sk-live"), "{err}");
    }
}
