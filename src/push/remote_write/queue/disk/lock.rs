//! The `lock` file, so two queues never share a directory.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::time::Duration;

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

use super::DiskError;

/// How long a busy `lock` is tried before the directory counts as used by another queue.
const LOCK_ATTEMPTS: u32 = 10;
const LOCK_RETRY: Duration = Duration::from_millis(50);

/// Takes an exclusive `flock` on `<dir>/lock`, held until the returned file is closed.
///
/// A child process being spawned (the worker, any command) shares our descriptors from its
/// fork until its exec closes them, and with them a lock we just released: a busy lock is
/// therefore tried again for a moment before it counts as held by another queue.
pub(super) fn lock_dir(dir: &Path) -> Result<File, DiskError> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(DiskError::io(&path))?;
    for attempt in 0..LOCK_ATTEMPTS {
        // Released when `file` is closed.
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(file),
            Err(Errno::WOULDBLOCK) => {}
            Err(e) => {
                return Err(DiskError::Io {
                    path,
                    source: e.into(),
                })
            }
        }
        if attempt + 1 < LOCK_ATTEMPTS {
            std::thread::sleep(LOCK_RETRY);
        }
    }
    Err(DiskError::Locked {
        path: dir.to_path_buf(),
    })
}
