//! The process's allocator: mimalloc, and a way to hand back what set-up used.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns to the system the memory this thread freed and still holds: parsing a config of
/// thousands of functions leaves megabytes that mimalloc would keep, since the thread that
/// parsed it then only waits for the server.
pub fn release_unused() {
    // SAFETY: mi_collect only walks mimalloc's own heaps; it has no preconditions.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(true)
    };
}
