//! Bytes copied by the framer for one 60,000-byte segment of pipelined small
//! uploads (each request: a head and a 1-byte body). Counted with a counting allocator (this test
//! binary has one test, so nothing else allocates meanwhile).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
};

use bytes::Bytes;
use mirror::http::{FramerConfig, HttpEvent, RequestFramer};

struct Counting;
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCATED.fetch_add(n, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn pipelined_uploads_in_one_segment_are_not_copied_over_and_over() {
    let one = b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx";
    let n = 60_000 / one.len();
    let seg = Bytes::from(one.repeat(n));
    let mut framer = RequestFramer::new(FramerConfig::default(), false);
    let mut out: Vec<HttpEvent> = Vec::with_capacity(4 * n);
    let before = ALLOCATED.load(Ordering::Relaxed);
    framer.on_data(seg.clone(), &mut out);
    let copied = ALLOCATED.load(Ordering::Relaxed) - before;
    let ends = out.iter().filter(|e| matches!(e, HttpEvent::End)).count();
    assert_eq!(ends, n);
    // What copying the rest of the segment at each request costs, once.
    let once: usize = (1..n).map(|i| seg.len() - i * one.len()).sum();
    eprintln!(
        "{n} requests in {} bytes: {copied} bytes allocated; the rest of the segment once per request: {once}",
        seg.len()
    );
    // Linear would be a few segments' worth plus each request's own head (a few hundred bytes).
    assert!(copied < 4 * seg.len() + n * 1024, "{copied} bytes allocated for one {}-byte segment", seg.len());
}
