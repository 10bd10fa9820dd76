//! The global allocator: mimalloc, entered through its plain `malloc` where a layout allows.
//!
//! The proxy allocates and frees small objects per request on every worker thread; measured
//! with bench/compare.py, mimalloc costs less CPU per request than glibc malloc here. The
//! `mimalloc` crate passes every allocation through `mi_malloc_aligned`, whose extra checks
//! and fallback path cost about 30 instructions more a call than `mi_malloc` (callgrind,
//! ~6 allocations a request). Every mimalloc block is at least word-aligned, so layouts
//! asking for no more than that take the plain entry points, as Rust's own `System` does
//! with `malloc`; larger alignments keep the aligned ones.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Alignment every mimalloc block has: sizes are rounded to whole words.
const WORD: usize = std::mem::size_of::<usize>();

pub struct Mimalloc;

/// Returns this thread's free memory to the system. mimalloc purges freed pages only when the
/// thread that owns them allocates again: a worker that served a burst of connections and then
/// went quiet would keep their memory resident for good. Called from each worker's periodic
/// sweep; cheap when there is nothing to give back.
pub fn release_free_memory() {
    // SAFETY: mi_collect has no preconditions; it works on the calling thread's heap.
    unsafe { mi::mi_collect(true) };
}

// SAFETY: each method forwards to the mimalloc function of the same contract; plain entry
// points are used only when the requested alignment is one every mimalloc block meets.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_malloc(layout.size()).cast()
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_zalloc(layout.size()).cast()
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}
