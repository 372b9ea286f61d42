//! The capture thread's clock: the `now` the flow core is fed.
//!
//! A segment is timed by the kernel (`bpf_ktime_get_ns`, `CLOCK_MONOTONIC`, the clock `Instant`
//! uses on Linux) when it passed the hook, not when the daemon got round to reading it: the
//! reorder timeout is about the network (a client's retransmission comes after its RTO, ≥ 200 ms
//! on Linux), and a daemon that was descheduled, or took long over a large batch, must not find
//! every hole "old" and give it up while the bytes that fill it sit in another CPU's ring.
//!
//! Timers are judged at the *horizon*: the instant taken before the rings are read, so every
//! sample the kernel wrote before it has been handed to the flow core when the timers run. A hole
//! made by a segment timed `t` is given up at a horizon ≥ `t` + the reorder timeout: by then the
//! segment that fills it, if the kernel shipped it at all, has been read (the per-CPU rings are
//! read one after the other, so a sample written to one ring after it was read comes in the next
//! round, with its own earlier time).
//!
//! Times never go backwards: a segment is timed at most at the horizon and at least at the last
//! time handed out (a sample read a round late keeps the order of the stream, not its kernel
//! time).

use std::time::{Duration, Instant};

/// Kernel timestamps mapped onto the daemon's timeline (time since the clock was made).
#[derive(Debug)]
pub struct PacketClock {
    /// `CLOCK_MONOTONIC` in ns when `start` was taken.
    origin_ns: u64,
    start: Instant,
    /// The current round's horizon.
    horizon: Duration,
    /// The last segment time handed out, or the previous round's horizon (its timers ran there).
    last: Duration,
}

impl PacketClock {
    /// A clock whose time 0 is now.
    pub fn new() -> Self {
        let start = Instant::now();
        Self::with_origin(start, monotonic_ns())
    }

    /// A clock whose time 0 is `start`, when `CLOCK_MONOTONIC` read `origin_ns`.
    pub fn with_origin(start: Instant, origin_ns: u64) -> Self {
        Self { origin_ns, start, horizon: Duration::ZERO, last: Duration::ZERO }
    }

    /// The time since the clock was made (wall, monotonic): for deadlines that are not about
    /// packets (publishing, waiting).
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Begins a round: its horizon, to be taken before the rings are read (every sample written
    /// before it will have been read when the round's timers run at it).
    pub fn horizon(&mut self) -> Duration {
        self.round_at(self.start.elapsed())
    }

    /// [`PacketClock::horizon`] with the elapsed time given (for tests).
    pub fn round_at(&mut self, elapsed: Duration) -> Duration {
        self.last = self.last.max(self.horizon);
        self.horizon = elapsed.max(self.last);
        self.horizon
    }

    /// The time of a segment the kernel timed `ts_ns`, read in the current round; a round's
    /// segments must be handed in the kernel's order.
    pub fn segment(&mut self, ts_ns: u64) -> Duration {
        let t = Duration::from_nanos(ts_ns.saturating_sub(self.origin_ns));
        self.last = t.clamp(self.last, self.horizon);
        self.last
    }
}

impl Default for PacketClock {
    fn default() -> Self {
        Self::new()
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds (what `bpf_ktime_get_ns` returns).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a live, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_segment_keeps_the_kernel_time_it_was_seen_at_not_the_time_it_was_read() {
        // The kernel's clock read 1,000 ms when the daemon's began.
        let mut c = PacketClock::with_origin(Instant::now(), 1_000 * MS);
        // Read in a round that began 900 ms in (the daemon was late): the segments keep 100 and
        // 150 ms, the round's timers run at 900.
        assert_eq!(c.round_at(ms(900)), ms(900));
        assert_eq!(c.segment(1_100 * MS), ms(100));
        assert_eq!(c.segment(1_150 * MS), ms(150));
    }

    #[test]
    fn times_are_clamped_to_the_horizon_and_never_go_backwards() {
        let mut c = PacketClock::with_origin(Instant::now(), 1_000 * MS);
        assert_eq!(c.round_at(ms(200)), ms(200));
        // Timed after the horizon (written while the rings were read): the horizon.
        assert_eq!(c.segment(1_250 * MS), ms(200));
        // Next round: a sample read a round late, timed before the last round's timers ran: the
        // last round's horizon.
        assert_eq!(c.round_at(ms(260)), ms(260));
        assert_eq!(c.segment(1_150 * MS), ms(200));
        assert_eq!(c.segment(1_255 * MS), ms(255));
        // Out of the kernel's order, or before the clock's origin (impossible, but not a
        // panic): the last time.
        assert_eq!(c.segment(1_240 * MS), ms(255));
        assert_eq!(c.segment(3), ms(255));
        // A round whose elapsed time is earlier than what was handed out does not go back.
        assert_eq!(c.round_at(ms(250)), ms(260));
        assert_eq!(c.segment(1_258 * MS), ms(260));
    }

    #[test]
    fn the_origin_matches_the_kernel_clock() {
        let c = PacketClock::new();
        let now = monotonic_ns();
        // A timestamp taken now maps to about the clock's elapsed time.
        let t = Duration::from_nanos(now - c.origin_ns);
        assert!(t <= c.elapsed() + ms(1), "{t:?} vs {:?}", c.elapsed());
    }
}
