//! Puts appended records on stable storage without making the caller wait for it.
//!
//! `fdatasync` costs milliseconds (4-7 ms per call measured here, docs/performance.md);
//! the pusher must not stall on it. One thread per durable queue syncs as soon as an
//! append marks the segment dirty; appends made while a sync runs are covered by the next
//! one (group commit). A record is in the page cache, safe from a process kill, when
//! `append` returns, and on disk a few milliseconds later.

use std::fs::File;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

pub(crate) struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// Files with writes not yet synced (the segment being written, and a rotated one).
    dirty: Vec<Arc<File>>,
    /// The first sync failure since the caller last asked.
    error: Option<std::io::Error>,
    stop: bool,
}

impl Flusher {
    pub(crate) fn start(name: String) -> std::io::Result<Flusher> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || worker.run())?;
        Ok(Flusher {
            shared,
            thread: Some(thread),
        })
    }

    /// `file` got writes that must reach the disk.
    pub(crate) fn mark_dirty(&self, file: &Arc<File>) {
        let mut state = self.shared.lock();
        if !state.dirty.iter().any(|f| Arc::ptr_eq(f, file)) {
            state.dirty.push(Arc::clone(file));
        }
        self.shared.wake.notify_one();
    }

    /// A sync failure since the last call: the disk can no longer be trusted.
    pub(crate) fn take_error(&self) -> Option<std::io::Error> {
        self.shared.lock().error.take()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self) {
        loop {
            let files = {
                let mut state = self.lock();
                while state.dirty.is_empty() && !state.stop {
                    state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                if state.dirty.is_empty() {
                    return; // stopped, nothing left to sync
                }
                std::mem::take(&mut state.dirty)
            };
            for file in files {
                if let Err(e) = file.sync_data() {
                    let mut state = self.lock();
                    if state.error.is_none() {
                        state.error = Some(e);
                    }
                }
            }
        }
    }
}

impl Drop for Flusher {
    /// Syncs what is still dirty, then ends the thread.
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn dirty_files_are_synced_and_the_thread_ends_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = File::create(dir.path().join("f")).unwrap();
        file.write_all(b"data").unwrap();
        let file = Arc::new(file);
        let flusher = Flusher::start("test-flusher".into()).unwrap();
        flusher.mark_dirty(&file);
        flusher.mark_dirty(&file);
        drop(flusher); // joins: would hang if the thread missed the stop
        assert_eq!(
            Arc::strong_count(&file),
            1,
            "the thread still holds the file"
        );
    }
}
