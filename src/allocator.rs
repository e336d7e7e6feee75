//! The process's allocator: mimalloc, and a way to hand back what set-up used.

use std::sync::atomic::{AtomicI64, Ordering::SeqCst};

use libmimalloc_sys::{mi_collect, mi_option_get, mi_option_set, mi_option_t};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in the mimalloc (v3) libmimalloc-sys builds (the crate names no
/// constant for it): how long freed memory waits before it goes back to the system (1 s).
const PURGE_DELAY: mi_option_t = 15;

/// The purge delay to restore after set-up (`i64::MIN`: set-up not begun).
static DELAY_AFTER_SETUP: AtomicI64 = AtomicI64::new(i64::MIN);

/// From here until [`end_setup`], memory freed goes back to the system at once. Parsing a
/// config of thousands of functions frees megabytes among the objects kept; with mimalloc's
/// purge delay they stayed resident (measured: about 450 B per configured function of a
/// 10,000-function config, about 40% of what an idle function cost).
#[allow(clippy::useless_conversion)] // c_long is i64 here, not everywhere
pub fn begin_setup() {
    // SAFETY: option reads and writes touch only mimalloc's own state.
    #[allow(unsafe_code)]
    unsafe {
        let delay = i64::from(mi_option_get(PURGE_DELAY));
        if DELAY_AFTER_SETUP.compare_exchange(i64::MIN, delay, SeqCst, SeqCst).is_ok() {
            mi_option_set(PURGE_DELAY, 0);
        }
    }
}

/// Returns to the system the memory this thread freed and still holds (the thread that set up
/// then only waits for the server, and a collection is per thread).
pub fn release_unused() {
    // SAFETY: mi_collect walks only mimalloc's own heaps; it has no preconditions.
    #[allow(unsafe_code)]
    unsafe {
        mi_collect(true)
    };
}

/// [`release_unused`], and the end of set-up: the purge delay comes back, so the request path
/// keeps mimalloc's batching of purges.
#[allow(clippy::unnecessary_cast)] // c_long is i64 here, not everywhere
pub fn end_setup() {
    release_unused();
    let delay = DELAY_AFTER_SETUP.swap(i64::MIN, SeqCst);
    if delay != i64::MIN {
        // SAFETY: an option write touches only mimalloc's own state.
        #[allow(unsafe_code)]
        unsafe {
            mi_option_set(PURGE_DELAY, delay as std::ffi::c_long)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(unsafe_code, clippy::useless_conversion)]
    fn purge_delay() -> i64 {
        // SAFETY: a read of an option.
        i64::from(unsafe { mi_option_get(PURGE_DELAY) })
    }

    #[test]
    fn set_up_purges_at_once_and_the_delay_comes_back_after() {
        // mimalloc v3's default is 1000 ms (src/options.c); another value would mean the
        // option's index moved, unless the environment set it.
        let default = purge_delay();
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(default, 1000, "mi_option_purge_delay is not option {PURGE_DELAY} in this mimalloc");
        }
        begin_setup();
        assert_eq!(purge_delay(), 0);
        release_unused();
        assert_eq!(purge_delay(), 0, "a collection during set-up does not end it");
        end_setup();
        assert_eq!(purge_delay(), default);
        end_setup();
        assert_eq!(purge_delay(), default, "a second end leaves it");
    }
}
