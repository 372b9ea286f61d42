//! One memory budget over everything held for requests in progress, shared by the capture thread
//! (flow reassembly, HTTP framing, buffered bodies) and the replay workers (queued requests).
//!
//! Each holder reports what it holds, by [`Held`] kind; the budget is the sum. The capture side
//! reports after the fact (the bytes already arrived) and then sheds the largest work until the
//! sum is back within the limit (see `Pipeline`); replay asks before it queues (`try_charge`) and
//! drops what does not fit. Both count what they shed as
//! [`DropReason::MemoryBudget`](crate::stats::DropReason::MemoryBudget).

use std::{
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

/// Gives what the calling thread's allocator holds freed back to the system. mimalloc (the
/// daemon's allocator, see `main.rs`) purges freed pages only as the thread allocates again, so a
/// thread that goes idle after a burst keeps them until then. Under another allocator (the
/// library's tests) this collects mimalloc's empty heap: nothing.
pub fn give_back() {
    // SAFETY: a plain call into the allocator, valid at any time on any thread.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// What the bytes are held for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Client bytes waiting for a hole to fill or for the server's acknowledgement.
    Reassembly,
    /// Partial request heads in the framers.
    Heads,
    /// Bodies of requests buffered until complete.
    Bodies,
    /// Requests queued for the mirrors.
    Replay,
    /// Responses held for comparison (issue 15): the primary's being paired on the capture
    /// thread, and the sides waiting in the compare task's join.
    Compare,
}

impl Held {
    /// Every kind, in the order of [`Memory::snapshot`].
    pub const ALL: [Held; 5] = [Held::Reassembly, Held::Heads, Held::Bodies, Held::Replay, Held::Compare];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Held::Reassembly => "reassembly",
            Held::Heads => "heads",
            Held::Bodies => "bodies",
            Held::Replay => "replay",
            Held::Compare => "compare",
        }
    }
}

/// The budget and what is held against it.
#[derive(Debug)]
pub struct Memory {
    limit: AtomicUsize,
    held: [AtomicUsize; 5],
    /// The most held since memory was last given back to the system (see [`Memory::give_back`]).
    high: AtomicUsize,
    /// The most flows open since then.
    high_flows: AtomicUsize,
    /// When it was last given back, in milliseconds since `epoch` ([`NEVER`] before).
    trimmed_ms: AtomicU64,
    epoch: Instant,
}

/// Held bytes that must have been freed since the last time before freed memory is given back.
const GIVE_BACK_AFTER: usize = 8 << 20;
/// Or flows that must have closed (a flow and its HTTP state take a few hundred bytes).
const GIVE_BACK_AFTER_FLOWS: usize = 8192;
/// `trimmed_ms` before the first time.
const NEVER: u64 = u64::MAX;
/// Freed memory is given back at most this often (a trim walks the allocator's arenas).
const GIVE_BACK_EVERY: Duration = Duration::from_secs(1);

impl Memory {
    /// A budget of `limit` bytes, nothing held.
    pub fn new(limit: usize) -> Self {
        Self {
            limit: AtomicUsize::new(limit),
            held: Default::default(),
            high: AtomicUsize::new(0),
            high_flows: AtomicUsize::new(0),
            trimmed_ms: AtomicU64::new(NEVER),
            epoch: Instant::now(),
        }
    }

    /// The budget in bytes.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// A new budget (config reload); a lower one is met by shedding as bytes next arrive.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes held, all kinds together.
    pub fn used(&self) -> usize {
        self.held.iter().map(|h| h.load(Ordering::Relaxed)).sum()
    }

    /// Bytes held of one kind.
    pub fn held(&self, kind: Held) -> usize {
        self.held[kind as usize].load(Ordering::Relaxed)
    }

    /// Bytes that may still be taken before the budget is spent.
    pub fn room(&self) -> usize {
        self.limit().saturating_sub(self.used())
    }

    /// Bytes above the budget (0 within it).
    pub fn excess(&self) -> usize {
        self.used().saturating_sub(self.limit())
    }

    /// Takes `n` bytes for `kind` if they fit in the budget. Concurrent callers may overshoot
    /// the budget by what they take at the same instant; never by more.
    pub fn try_charge(&self, kind: Held, n: usize) -> bool {
        if self.used() + n > self.limit() {
            return false;
        }
        self.held[kind as usize].fetch_add(n, Ordering::Relaxed);
        true
    }

    /// Records that `kind` now holds `before - after` bytes less (or more): for holders that
    /// learn what they hold after the bytes arrived.
    pub fn adjust(&self, kind: Held, before: usize, after: usize) {
        let h = &self.held[kind as usize];
        if after > before {
            h.fetch_add(after - before, Ordering::Relaxed);
        } else if before > after {
            h.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// Gives back `n` bytes taken for `kind`.
    pub fn release(&self, kind: Held, n: usize) {
        self.held[kind as usize].fetch_sub(n, Ordering::Relaxed);
    }

    /// Gives memory freed by the allocator back to the system once what is held fell by
    /// [`GIVE_BACK_AFTER`] since the last time, or the `flows` open by
    /// [`GIVE_BACK_AFTER_FLOWS`] (after a SYN flood), at most every [`GIVE_BACK_EVERY`].
    /// Returns whether it did. Called periodically (the daemon: with each metrics update).
    ///
    /// Why: glibc's malloc keeps freed memory in its per-thread arenas; after an attack shed at
    /// the budget the daemon stayed at ~100 MB resident with nothing held (measured by
    /// tests/tests/memory.rs; mimalloc 0.1 kept ~180 MB). `malloc_trim` returns every free
    /// page of every arena (madvise), which brings it back near its idle size.
    pub fn give_back(&self, flows: usize) -> bool {
        let used = self.used();
        let high = self.high.fetch_max(used, Ordering::Relaxed).max(used);
        let high_flows = self.high_flows.fetch_max(flows, Ordering::Relaxed).max(flows);
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.trimmed_ms.load(Ordering::Relaxed);
        let due = last == NEVER || now.saturating_sub(last) >= GIVE_BACK_EVERY.as_millis() as u64;
        if (high - used < GIVE_BACK_AFTER && high_flows - flows < GIVE_BACK_AFTER_FLOWS) || !due {
            return false;
        }
        self.high.store(used, Ordering::Relaxed);
        self.high_flows.store(flows, Ordering::Relaxed);
        self.trimmed_ms.store(now, Ordering::Relaxed);
        trim();
        true
    }

    /// `(kind, bytes)` for every kind.
    pub fn snapshot(&self) -> [(Held, usize); 5] {
        Held::ALL.map(|k| (k, self.held(k)))
    }
}

/// Returns free memory of every malloc arena to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks the allocator's own structures, under its locks.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// Room a buffered body starts with.
pub(crate) const FIRST_BODY_ROOM: usize = 16 * 1024;

/// Appends `b` to `body`, growing it at most to `max` (`b` must fit): what is held stays within
/// twice what arrived (or [`FIRST_BODY_ROOM`]), and never beyond the buffer. The room grows by
/// doubling, except that a body of `declared` length (its Content-Length) whose missing part is at
/// most a quarter of what arrived gets all of it at once: the rest then comes without moving what
/// is there (a 64 KiB upload in a 60,000-byte sample and its tail was copied twice before).
pub(crate) fn hold(body: &mut bytes::BytesMut, b: &[u8], max: usize, declared: Option<usize>) {
    let need = body.len() + b.len();
    if need > body.capacity() {
        let target = match declared {
            Some(d) if d >= need && d - need <= need / 4 => d,
            // (Never more than the body declared.)
            _ => (body.capacity() * 2).max(FIRST_BODY_ROOM).min(declared.unwrap_or(usize::MAX)),
        };
        // Exactly that room (`reserve` would round it up to twice the old one).
        let mut grown = bytes::BytesMut::with_capacity(target.min(max).max(need));
        grown.extend_from_slice(body);
        *body = grown;
    }
    body.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_held_within_twice_what_arrived_and_a_declared_one_moves_at_most_once() {
        // A 64 KiB upload: 60,000 bytes, then its tail. Half has come: all of it is reserved,
        // and the tail lands without a move.
        let mut body = bytes::BytesMut::new();
        hold(&mut body, &[1; 60_000], 1 << 20, Some(65_536));
        assert_eq!(body.capacity(), 65_536);
        let at = body.as_ptr();
        hold(&mut body, &[2; 5_536], 1 << 20, Some(65_536));
        assert_eq!((body.len(), body.capacity(), body.as_ptr()), (65_536, 65_536, at));
        // More missing than a quarter of what came: exactly what came, then doubling.
        let mut body = bytes::BytesMut::new();
        hold(&mut body, &[1; 500_000], 1 << 20, Some(900_000));
        assert_eq!(body.capacity(), 500_000);
        hold(&mut body, &[1; 200_000], 1 << 20, Some(900_000));
        assert_eq!(body.capacity(), 900_000);
        // A Content-Length far beyond what arrived is a promise, not bytes: the room doubles.
        let mut body = bytes::BytesMut::new();
        hold(&mut body, &[1; 10], 1 << 20, Some(1 << 30));
        assert_eq!(body.capacity(), FIRST_BODY_ROOM);
        hold(&mut body, &[1; 20_000], 1 << 20, Some(1 << 30));
        assert_eq!(body.capacity(), 2 * FIRST_BODY_ROOM);
        // A small declared body gets its size, never more; a chunked one starts at the first
        // room; nothing grows beyond the buffer.
        let mut body = bytes::BytesMut::new();
        hold(&mut body, b"abc", 1 << 20, Some(5));
        assert!((5..64).contains(&body.capacity()), "{}", body.capacity());
        let mut body = bytes::BytesMut::new();
        hold(&mut body, b"abc", 1 << 20, None);
        assert_eq!(body.capacity(), FIRST_BODY_ROOM);
        hold(&mut body, &[0; FIRST_BODY_ROOM], FIRST_BODY_ROOM + 100, None);
        assert_eq!(body.capacity(), FIRST_BODY_ROOM + 100);
    }

    #[test]
    fn charges_fit_the_budget_and_adjustments_follow_the_holder() {
        let m = Memory::new(100);
        assert!(m.try_charge(Held::Replay, 60));
        assert!(!m.try_charge(Held::Replay, 41), "over the budget");
        assert!(m.try_charge(Held::Replay, 40));
        assert_eq!((m.used(), m.room(), m.excess()), (100, 0, 0));
        m.adjust(Held::Bodies, 0, 30);
        assert_eq!((m.used(), m.excess(), m.held(Held::Bodies)), (130, 30, 30));
        m.adjust(Held::Bodies, 30, 10);
        m.release(Held::Replay, 100);
        assert_eq!((m.used(), m.room()), (10, 90));
        assert_eq!(m.snapshot()[2], (Held::Bodies, 10));
    }

    #[test]
    fn memory_is_given_back_after_a_fall_not_at_every_call() {
        let m = Memory::new(1 << 30);
        m.adjust(Held::Bodies, 0, 20 << 20);
        assert!(!m.give_back(0), "nothing was freed");
        m.adjust(Held::Bodies, 20 << 20, 1 << 20);
        assert!(m.give_back(0), "19 MiB freed");
        assert!(!m.give_back(0), "nothing freed since");
        m.adjust(Held::Bodies, 1 << 20, 30 << 20);
        m.adjust(Held::Bodies, 30 << 20, 0);
        assert!(!m.give_back(0), "freed again, but within a second of the last time");
        let m = Memory::new(1 << 30);
        assert!(!m.give_back(65_536));
        assert!(m.give_back(100), "a flood's flows went");
    }
}
