//! This process's heap, counted, to weigh objects as the controller holds
//! them: the same types, built from the same JSON the API server serves.
//!
//! Bytes are counted as glibc's malloc hands them out (the request plus 8,
//! rounded up to 16, at least 32), which is what they cost in RSS before
//! fragmentation.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

use serde::de::DeserializeOwned;

pub struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

fn chunk(size: usize) -> isize {
    ((size + 8).div_ceil(16) * 16).max(32) as isize
}

// SAFETY: every call is passed on to the system allocator unchanged; only a
// counter is kept beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(chunk(layout.size()), Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(chunk(layout.size()), Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(chunk(layout.size()), Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(chunk(new_size) - chunk(layout.size()), Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// What `make`'s result keeps allocated, in bytes (other threads' allocations
/// in the meantime count too: measure while the process is quiet).
pub fn retained<T>(make: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Relaxed);
    let value = make();
    let after = LIVE.load(Relaxed);
    (value, (after - before).max(0) as usize)
}

/// The heap bytes `T`s parsed from `texts` take, all together.
pub fn weigh<T: DeserializeOwned>(texts: &[String]) -> usize {
    let (held, bytes) = retained(|| {
        texts
            .iter()
            .map(|t| serde_json::from_str::<T>(t).expect("an object the API server served"))
            .collect::<Vec<T>>()
    });
    drop(held);
    bytes
}
