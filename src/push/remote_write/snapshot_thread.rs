//! A thread of its own for one destination's snapshot work (snapshot, convert, encode).
//!
//! tokio's blocking pool would run successive snapshots on whichever pool thread is free,
//! and the C allocator gives each thread its own arena: a large registry's short-lived
//! buffers would then be held once per thread. One thread per destination keeps them in
//! one arena, reused from snapshot to snapshot.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

pub(crate) struct SnapshotThread {
    jobs: mpsc::Sender<Job>,
}

impl SnapshotThread {
    /// The thread ends when this handle is dropped.
    pub(crate) fn spawn(name: String) -> std::io::Result<SnapshotThread> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new().name(name).spawn(move || {
            for job in queue {
                // A panicking job is a bug; its caller sees it as no answer, and the thread
                // stays up for the next one.
                let _ = catch_unwind(AssertUnwindSafe(job));
            }
        })?;
        Ok(SnapshotThread { jobs })
    }

    /// Runs `work` on the thread; `None` if it panicked.
    pub(crate) async fn run<R: Send + 'static>(
        &self,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(work());
        });
        self.jobs.send(job).ok()?;
        result.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_the_thread_and_a_panic_does_not_end_it() {
        let t = SnapshotThread::spawn("test-snapshots".into()).unwrap();
        let name = t
            .run(|| std::thread::current().name().map(str::to_string))
            .await;
        assert_eq!(name, Some(Some("test-snapshots".to_string())));
        assert_eq!(t.run(|| -> u8 { panic!("a bug") }).await, None);
        assert_eq!(t.run(|| 7).await, Some(7));
    }
}
