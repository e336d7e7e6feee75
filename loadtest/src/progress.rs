//! A live progress line on a terminal, none otherwise (so logs and pipes stay clean).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Redraws `line()` on stderr every 200 ms until dropped, if stderr is a terminal.
    pub fn start(line: impl Fn() -> String + Send + 'static) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            return Ticker { stop, handle: None };
        }
        let flag = stop.clone();
        let started = Instant::now();
        let handle = std::thread::spawn(move || {
            while !flag.load(Relaxed) {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K  {:>6.1}s  {}", started.elapsed().as_secs_f64(), line());
                let _ = err.flush();
                drop(err);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Ticker { stop, handle: Some(handle) }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}
