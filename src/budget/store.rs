//! The budgets' spend on disk, so that it survives restarts, kill -9 included: one small
//! file, `<state_dir>/budgets.state`, replaced atomically (temp file, fsync, rename, fsync
//! of the directory) by one writer thread whenever a turn adds spend.
//!
//! The file is a header line with a CRC-32 of the rest, then JSON:
//! `codex-proxy-budgets v1 crc32=<8 hex digits>\n{"budgets":[{"key":..,"period":..,
//! "period_start":<unix s>,"spent_usd":..}]}`. A file that is unreadable, torn or altered
//! is reported (error level) and ignored: the budgets start from zero, never a crash.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use crate::config::Period;

const FILE: &str = "budgets.state";
const MAGIC: &str = "codex-proxy-budgets v1 crc32=";

/// One budget's spend in one period, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub(crate) key: String,
    pub(crate) period: Period,
    /// Unix seconds of the period's start (UTC).
    pub(crate) period_start: i64,
    pub(crate) spent_usd: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Contents {
    budgets: Vec<Stored>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The file of `dir`.
pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// What the file holds; `Ok(empty)` when there is none yet.
pub(crate) fn load(dir: &Path) -> Result<Vec<Stored>, StoreError> {
    let path = path(dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(StoreError::Read { path, source }),
    };
    let corrupt = |why: &str| StoreError::Corrupt {
        path: path.clone(),
        why: why.to_string(),
    };
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("no header line"))?;
    let (header, body) = (&bytes[..newline], &bytes[newline + 1..]);
    let crc = std::str::from_utf8(header)
        .ok()
        .and_then(|h| h.strip_prefix(MAGIC))
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .ok_or_else(|| corrupt("not a budgets state header"))?;
    if crc32fast::hash(body) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    let contents: Contents =
        serde_json::from_slice(body).map_err(|e| corrupt(&format!("bad contents: {e}")))?;
    Ok(contents.budgets)
}

/// Replaces the file with `budgets`, durably: after this returns, a crash leaves either
/// the new file or the old one, never a torn one.
pub(crate) fn save(dir: &Path, budgets: &[Stored]) -> Result<(), StoreError> {
    let path = path(dir);
    let err = |source| StoreError::Write {
        path: path.clone(),
        source,
    };
    let body = serde_json::to_vec(&Contents {
        budgets: budgets.to_vec(),
    })
    .map_err(|e| err(std::io::Error::other(e)))?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(err)?;
    writeln!(file, "{MAGIC}{:08x}", crc32fast::hash(&body)).map_err(err)?;
    file.write_all(&body).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(err)?;
    // The rename itself is durable once the directory is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}

/// The writer thread's inbox: each message is the whole state to store; the thread
/// stores only the newest of those waiting, so a burst of turns costs one write.
pub(crate) struct Writer {
    tx: mpsc::Sender<Vec<Stored>>,
}

impl Writer {
    pub(crate) fn start(dir: PathBuf) -> Result<Writer, std::io::Error> {
        let (tx, rx) = mpsc::channel::<Vec<Stored>>();
        std::thread::Builder::new()
            .name("budget-store".into())
            .spawn(move || {
                let mut failing = false;
                while let Ok(mut latest) = rx.recv() {
                    while let Ok(newer) = rx.try_recv() {
                        latest = newer;
                    }
                    match save(&dir, &latest) {
                        Ok(()) => failing = false,
                        Err(e) if !failing => {
                            failing = true;
                            tracing::error!("budgets: {e}; the spend since the last good write will be lost on restart");
                        }
                        Err(_) => {}
                    }
                }
            })?;
        Ok(Writer { tx })
    }

    pub(crate) fn send(&self, state: Vec<Stored>) {
        let _ = self.tx.send(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(spent: f64) -> Vec<Stored> {
        vec![Stored {
            key: "team-a".into(),
            period: Period::Day,
            period_start: 1_765_065_600,
            spent_usd: spent,
        }]
    }

    #[test]
    fn what_is_saved_loads_back_exactly_and_no_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), Vec::new());
        save(dir.path(), &stored(0.1 + 0.2)).unwrap();
        assert_eq!(load(dir.path()).unwrap(), stored(0.1 + 0.2));
        save(dir.path(), &stored(7.5)).unwrap();
        assert_eq!(load(dir.path()).unwrap(), stored(7.5));
        assert!(!dir.path().join("budgets.state.tmp").exists());
    }

    #[test]
    fn a_flipped_byte_a_torn_file_or_garbage_is_an_error_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &stored(1.0)).unwrap();
        let good = std::fs::read(path(dir.path())).unwrap();
        let mut flipped = good.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x01;
        let cases: Vec<Vec<u8>> = vec![
            flipped,
            good[..good.len() / 2].to_vec(),
            b"garbage".to_vec(),
            Vec::new(),
            b"codex-proxy-budgets v1 crc32=zz\n{}".to_vec(),
        ];
        for bytes in cases {
            std::fs::write(path(dir.path()), &bytes).unwrap();
            let err = load(dir.path()).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        }
    }
}
