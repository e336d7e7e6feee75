//! The one thread instances are started from.
//!
//! `PR_SET_PDEATHSIG` (an instance dies with its Wavelet) fires when the *thread* that started
//! the child exits, not the process. Started from tokio's blocking pool, whose idle threads exit
//! after 10 s, Emergency Instances were killed 10 s after the thread that started them fell idle
//! — in the middle of requests, and long before their keepalive (found by the simulator's
//! validation run: `fast-only`, with a 60 s keepalive, lost 20 of 5,203 requests to 502s). A
//! thread that lives as long as the runtime starts them all instead; starting one takes well
//! under a millisecond (`clone(CLONE_VM | CLONE_VFORK)`), so one thread is enough.

use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

pub struct Spawner {
    jobs: mpsc::Sender<Job>,
}

impl Spawner {
    pub fn new() -> std::io::Result<Self> {
        let (jobs, receive) = mpsc::channel::<Job>();
        // Lives until the runtime (and with it the sender) is dropped.
        std::thread::Builder::new().name("instance-spawner".into()).spawn(move || {
            for job in receive {
                job();
            }
        })?;
        Ok(Spawner { jobs })
    }

    /// Runs `job` on the spawner thread and waits for its result; `None` if the thread is gone.
    pub async fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(job());
        });
        self.jobs.send(job).ok()?;
        result.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_one_thread_that_outlives_its_callers() {
        let spawner = Spawner::new().unwrap();
        let first = spawner.run(|| std::thread::current().id()).await.unwrap();
        // From another thread, later: the same thread runs it.
        let second = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(async move { spawner.run(|| std::thread::current().id()).await.unwrap() })
        })
        .join()
        .unwrap();
        assert_eq!(first, second);
        assert_ne!(first, std::thread::current().id());
    }
}
