//! The per-CPU perf rings the classifier writes to, opened without a wake-up per sample.
//!
//! aya's `PerfEventArray::open` asks the kernel for a wake-up after every sample
//! (`wakeup_events = 1`): each `bpf_perf_event_output` then queues an irq_work, which on x86 is a
//! self-IPI, inside the classifier's run, in the primary's packet path (softirq). On a virtualised
//! host an IPI is a VM exit; measured here (nested virtualisation) it was nearly all of the
//! classifier's ≈ 7 µs per shipped packet. These rings are opened with a byte watermark instead
//! ([`PerfRing::open`]): a poller is woken only when that much has gathered, and the daemon
//! otherwise finds the data on its own schedule: [`wait`] looks at the rings at a given interval
//! while nothing flows (the daemon's `capture.batchMs`), so a lone request is read at most that
//! long (plus the daemon's batching wait, 5 ms) after it was captured.
//!
//! Reading follows the kernel's protocol (`include/uapi/linux/perf_event.h`): `data_head` is read
//! with acquire ordering, the records between `data_tail` and it are consumed, then `data_tail` is
//! written back with release ordering. [`walk`] does the middle part over any memory, so the record
//! parsing (samples split by the ring's end, lost records, bad headers) is tested without a kernel.

use std::{
    io,
    mem::{size_of, zeroed},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
    ptr::{self, NonNull},
    slice,
    sync::{
        Arc,
        atomic::{Ordering, fence},
    },
    time::{Duration, Instant},
};

use aya::maps::MapData;
use aya_obj::generated::{
    PERF_EVENT_IOC_DISABLE, PERF_EVENT_IOC_ENABLE, PERF_FLAG_FD_CLOEXEC, bpf_attr, bpf_cmd, perf_event_attr,
    perf_event_mmap_page, perf_event_sample_format, perf_event_type, perf_sw_ids, perf_type_id,
};

/// A poller is woken when this fraction of a ring (1/N) has filled since the last wake-up.
pub const WAKEUP_FRACTION: usize = 4;

/// One record of a ring.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// A sample from `bpf_perf_event_output`: its bytes (with the kernel's alignment padding at
    /// the end), in two pieces when it runs past the end of the ring (`tail` is empty otherwise).
    Sample {
        /// The sample, or its part before the end of the ring.
        head: &'a [u8],
        /// The part that continues at the start of the ring.
        tail: &'a [u8],
    },
    /// Samples the kernel dropped because the ring was full.
    Lost(u64),
}

/// What [`walk`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walked {
    /// The new consumer position (`data_tail`).
    pub tail: u64,
    /// A record header did not add up (a size shorter than a header, or past `head`): the rest,
    /// up to `head`, was skipped.
    pub corrupt: bool,
}

const HEADER: usize = 8;
const PERF_RECORD_SAMPLE: u32 = perf_event_type::PERF_RECORD_SAMPLE as u32;
const PERF_RECORD_LOST: u32 = perf_event_type::PERF_RECORD_LOST as u32;

/// The bytes `[pos, pos + len)` of a ring of `data.len()` bytes, as (up to the end, from the start).
fn span(data: &[u8], pos: u64, len: usize) -> (&[u8], &[u8]) {
    let start = (pos % data.len() as u64) as usize;
    let first = len.min(data.len() - start);
    (&data[start..start + first], &data[..len - first])
}

/// `N` bytes of the ring from `pos`, joined.
fn array<const N: usize>(data: &[u8], pos: u64) -> [u8; N] {
    let (a, b) = span(data, pos, N);
    let mut out = [0u8; N];
    out[..a.len()].copy_from_slice(a);
    out[a.len()..].copy_from_slice(b);
    out
}

/// Hands each record between `tail` and `head` of the ring `data` (its data pages) to `f`, and
/// returns the position after the last one. `data.len()` must be a power of two, at least one
/// record header.
pub fn walk(data: &[u8], mut tail: u64, head: u64, mut f: impl FnMut(Record<'_>)) -> Walked {
    while tail < head {
        let available = head - tail;
        let hdr: [u8; HEADER] = array(data, tail);
        let kind = u32::from_ne_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let size = u64::from(u16::from_ne_bytes([hdr[6], hdr[7]]));
        if size < HEADER as u64 || size > available {
            return Walked { tail: head, corrupt: true };
        }
        match kind {
            PERF_RECORD_SAMPLE => {
                // { header, u32 size, u8 data[size] }
                if size < HEADER as u64 + 4 {
                    return Walked { tail: head, corrupt: true };
                }
                let len = u32::from_ne_bytes(array(data, tail + HEADER as u64)) as u64;
                if HEADER as u64 + 4 + len > size {
                    return Walked { tail: head, corrupt: true };
                }
                let (head, tail) = span(data, tail + HEADER as u64 + 4, len as usize);
                f(Record::Sample { head, tail });
            }
            PERF_RECORD_LOST => {
                // { header, u64 id, u64 lost }
                if size < HEADER as u64 + 16 {
                    return Walked { tail: head, corrupt: true };
                }
                f(Record::Lost(u64::from_ne_bytes(array(data, tail + HEADER as u64 + 8))));
            }
            // No other record is asked for; one would be skipped whole.
            _ => {}
        }
        tail += size;
    }
    Walked { tail, corrupt: false }
}

/// One CPU's ring: a `PERF_COUNT_SW_BPF_OUTPUT` event whose descriptor sits in the classifier's
/// perf event array at the CPU's index, and its mapping (one header page, then the data pages).
pub struct PerfRing {
    fd: OwnedFd,
    /// The whole mapping (header page first).
    mmap: NonNull<u8>,
    page_size: usize,
    /// Bytes of data pages (a power of two).
    size: usize,
    /// The map the descriptor was written into: its entries go when this descriptor of the map is
    /// closed, so it is held as long as the ring.
    _map: Arc<MapData>,
}

// SAFETY: the mapping is owned by this value alone (the kernel writes the data pages and
// `data_head`, and reads `data_tail`, whichever thread the ring is read on).
unsafe impl Send for PerfRing {}

/// The kernel refused to map a ring of this size: beyond what the user may lock (a share of
/// `kernel.perf_event_mlock_kb`, then `RLIMIT_MEMLOCK`) without `CAP_IPC_LOCK`.
#[derive(Debug)]
pub struct LockedMemory {
    /// Data pages asked for.
    pub pages: usize,
    cause: io::Error,
}

impl std::fmt::Display for LockedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mapping {} pages: {} (locked memory: RLIMIT_MEMLOCK, or CAP_IPC_LOCK)", self.pages, self.cause)
    }
}

impl std::error::Error for LockedMemory {}

/// Whether `e` is a [`LockedMemory`] refusal.
pub fn is_locked_memory(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<LockedMemory>())
}

impl PerfRing {
    /// Opens CPU `cpu`'s ring of `pages` data pages (a power of two), waking a poller when
    /// 1/[`WAKEUP_FRACTION`] of it has filled, and puts it in `map` at index `cpu`.
    pub fn open(map: &Arc<MapData>, cpu: u32, pages: usize) -> io::Result<PerfRing> {
        if !pages.is_power_of_two() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{pages} pages: not a power of two")));
        }
        // SAFETY: sysconf has no preconditions.
        let page_size =
            usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).map_err(|_| io::Error::last_os_error())?;
        let size = page_size * pages;
        // SAFETY: perf_event_attr is plain data; all-zero is its "nothing asked" value.
        let mut attr: perf_event_attr = unsafe { zeroed() };
        attr.size = size_of::<perf_event_attr>() as u32;
        attr.type_ = perf_type_id::PERF_TYPE_SOFTWARE as u32;
        attr.config = perf_sw_ids::PERF_COUNT_SW_BPF_OUTPUT as u64;
        attr.sample_type = perf_event_sample_format::PERF_SAMPLE_RAW as u64;
        attr.__bindgen_anon_1.sample_period = 1;
        attr.set_watermark(1);
        attr.__bindgen_anon_2.wakeup_watermark = u32::try_from(size / WAKEUP_FRACTION).unwrap_or(u32::MAX);
        // SAFETY: a valid attr for the call's duration; pid -1 with a CPU: every process there.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                ptr::from_ref(&attr),
                -1 as libc::pid_t,
                cpu as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC as libc::c_ulong,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: perf_event_open returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // SAFETY: mapping a fresh perf event's ring: 1 + 2^n pages, shared, read-write (so that
        // data_tail can be written back).
        let addr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                size + page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) {
                return Err(io::Error::other(LockedMemory { pages, cause: e }));
            }
            return Err(e);
        }
        let mmap = NonNull::new(addr.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        let ring = PerfRing { fd, mmap, page_size, size, _map: map.clone() };
        ring.ioctl(PERF_EVENT_IOC_ENABLE)?;
        map_update(map, cpu, ring.fd.as_raw_fd())?;
        Ok(ring)
    }

    fn ioctl(&self, request: u32) -> io::Result<()> {
        // SAFETY: an ioctl without argument on a perf event descriptor this value owns.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), request as _, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn page(&self) -> *mut perf_event_mmap_page {
        self.mmap.as_ptr().cast()
    }

    /// The producer position; the records before it are complete (acquire, pairing with the
    /// kernel's write barrier before it publishes `data_head`): [`PerfRing::read_to`] reads up
    /// to it.
    pub fn data_head(&self) -> u64 {
        // SAFETY: the header page is mapped for the ring's lifetime; the kernel writes this field
        // concurrently, hence the volatile read.
        let head = unsafe { ptr::read_volatile(&raw const (*self.page()).data_head) };
        fence(Ordering::Acquire);
        head
    }

    fn data_tail(&self) -> u64 {
        // SAFETY: mapped for the ring's lifetime; only this process writes data_tail.
        unsafe { ptr::read_volatile(&raw const (*self.page()).data_tail) }
    }

    /// How full the ring is at producer position `head` (a [`PerfRing::data_head`] of it): the
    /// share of its bytes written and not read yet, 0 to 1. At 1 the kernel drops samples.
    pub fn fill(&self, head: u64) -> f64 {
        head.wrapping_sub(self.data_tail()).min(self.size as u64) as f64 / self.size as f64
    }

    /// Whether records are waiting.
    pub fn readable(&self) -> bool {
        self.data_head() != self.data_tail()
    }

    /// Hands every waiting record to `f`, then gives their space back to the kernel.
    pub fn read(&mut self, f: impl FnMut(Record<'_>)) -> Walked {
        let head = self.data_head();
        self.read_to(head, f)
    }

    /// Hands the waiting records up to `head` (a [`PerfRing::data_head`] of this ring, taken earlier)
    /// to `f`, then gives their space back to the kernel.
    pub fn read_to(&mut self, head: u64, f: impl FnMut(Record<'_>)) -> Walked {
        let tail = self.data_tail();
        // SAFETY: the data pages follow the header page in the mapping, `size` bytes. The kernel
        // does not write [tail, head) until data_tail moves past it, below; it may write the
        // rest of the ring meanwhile, which `walk` does not read.
        let data = unsafe { slice::from_raw_parts(self.mmap.as_ptr().add(self.page_size), self.size) };
        let walked = walk(data, tail, head, f);
        if walked.tail != tail {
            // Every read of the records happens before the kernel may reuse their space.
            fence(Ordering::SeqCst);
            // SAFETY: mapped for the ring's lifetime; this process is data_tail's only writer.
            unsafe { ptr::write_volatile(&raw mut (*self.page()).data_tail, walked.tail) };
        }
        walked
    }
}

impl AsRawFd for PerfRing {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for PerfRing {
    fn drop(&mut self) {
        let _ = self.ioctl(PERF_EVENT_IOC_DISABLE);
        // SAFETY: the mapping made in `open`, with its length; nothing borrows it past `read`.
        unsafe { libc::munmap(self.mmap.as_ptr().cast(), self.size + self.page_size) };
    }
}

/// Waits until a ring has records, `other` (a descriptor, if any) is readable, or `timeout`
/// passes. A ring's descriptor becomes readable only at its watermark, so the rings are also
/// looked at every `look_every`: a record written while nothing else flows is found within that
/// time.
pub fn wait(rings: &[PerfRing], other: Option<RawFd>, timeout: Duration, look_every: Duration) {
    let mut fds: Vec<libc::pollfd> = rings
        .iter()
        .map(AsRawFd::as_raw_fd)
        .chain(other)
        .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
        .collect();
    let deadline = Instant::now() + timeout;
    let every = i32::try_from(look_every.as_millis()).unwrap_or(i32::MAX).max(1);
    loop {
        let left = i32::try_from(deadline.saturating_duration_since(Instant::now()).as_millis()).unwrap_or(i32::MAX);
        // SAFETY: fds is a valid array of pollfd for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, left.min(every)) };
        if ready != 0 || left <= every || rings.iter().any(PerfRing::readable) {
            return;
        }
    }
}

/// Sleeps `timeout`, or less if a ring reaches its watermark (a burst: reading it early keeps
/// room in the ring).
pub fn wait_watermark(rings: &[PerfRing], timeout: Duration) {
    let mut fds: Vec<libc::pollfd> =
        rings.iter().map(|r| libc::pollfd { fd: r.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: fds is a valid array of pollfd for the duration of the call.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
}

/// Writes perf event descriptor `fd` into the perf event array `map` at `cpu`.
fn map_update(map: &MapData, cpu: u32, fd: RawFd) -> io::Result<()> {
    let key = cpu;
    let value = fd as u32;
    // SAFETY: bpf_attr is plain data; all-zero is the neutral value of every command's fields.
    let mut attr: bpf_attr = unsafe { zeroed() };
    // SAFETY: writing the fields of the union member BPF_MAP_UPDATE_ELEM reads.
    unsafe {
        let u = &mut attr.__bindgen_anon_2;
        u.map_fd = map.fd().as_fd().as_raw_fd() as u32;
        u.key = ptr::from_ref(&key) as u64;
        u.__bindgen_anon_1.value = ptr::from_ref(&value) as u64;
        u.flags = 0;
    }
    // SAFETY: attr and the key and value it points to live for the call's duration.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_MAP_UPDATE_ELEM as libc::c_int,
            ptr::from_mut(&mut attr),
            size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `bytes` into the ring `data` from `pos`, wrapping at its end.
    fn put(data: &mut [u8], pos: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            let n = data.len() as u64;
            data[((pos + i as u64) % n) as usize] = *b;
        }
    }

    fn header(kind: u32, size: u16) -> Vec<u8> {
        let mut h = kind.to_ne_bytes().to_vec();
        h.extend_from_slice(&0u16.to_ne_bytes());
        h.extend_from_slice(&size.to_ne_bytes());
        h
    }

    /// A sample record as the kernel writes it: header, u32 size, bytes padded to 8.
    fn sample(bytes: &[u8]) -> Vec<u8> {
        let raw = (bytes.len() + 4).next_multiple_of(8) - 4;
        let mut r = header(PERF_RECORD_SAMPLE, (HEADER + 4 + raw) as u16);
        r.extend_from_slice(&(raw as u32).to_ne_bytes());
        r.extend_from_slice(bytes);
        r.resize(HEADER + 4 + raw, 0);
        r
    }

    fn lost(n: u64) -> Vec<u8> {
        let mut r = header(PERF_RECORD_LOST, 24);
        r.extend_from_slice(&7u64.to_ne_bytes());
        r.extend_from_slice(&n.to_ne_bytes());
        r
    }

    /// Everything `walk` hands over, samples joined.
    fn collect(data: &[u8], tail: u64, head: u64) -> (Vec<Result<Vec<u8>, u64>>, Walked) {
        let mut out = Vec::new();
        let w = walk(data, tail, head, |r| match r {
            Record::Sample { head, tail } => out.push(Ok([head, tail].concat())),
            Record::Lost(n) => out.push(Err(n)),
        });
        (out, w)
    }

    #[test]
    fn reads_samples_and_lost_records_in_order() {
        let mut data = vec![0u8; 128];
        let mut pos = 0u64;
        for rec in [sample(b"first"), lost(3), sample(b"second sample")] {
            put(&mut data, pos, &rec);
            pos += rec.len() as u64;
        }
        let (out, w) = collect(&data, 0, pos);
        assert_eq!(w, Walked { tail: pos, corrupt: false });
        assert_eq!(out.len(), 3);
        assert!(out[0].as_ref().unwrap().starts_with(b"first"));
        assert_eq!(out[1], Err(3));
        let second = out[2].as_ref().unwrap();
        assert!(second.starts_with(b"second sample"));
        assert_eq!(second.len() % 8, 4, "raw bytes with the u32 size make a multiple of 8");
        // Nothing waiting: nothing handed, position unchanged.
        assert_eq!(collect(&data, pos, pos), (vec![], Walked { tail: pos, corrupt: false }));
    }

    #[test]
    fn a_sample_across_the_end_of_the_ring_comes_in_two_pieces() {
        let mut data = vec![0u8; 64];
        // Positions keep counting past the ring's size; the record starts 16 bytes before the end.
        let start = 3 * 64 + 48;
        let payload: Vec<u8> = (0u8..28).collect();
        let rec = sample(&payload);
        put(&mut data, start, &rec);
        let mut pieces = Vec::new();
        let w = walk(&data, start, start + rec.len() as u64, |r| {
            if let Record::Sample { head, tail } = r {
                pieces.push((head.to_vec(), tail.to_vec()));
            }
        });
        assert_eq!(w, Walked { tail: start + rec.len() as u64, corrupt: false });
        let (head, tail) = &pieces[0];
        // 16 bytes to the end: 8 of header, 4 of size, then 4 of the sample.
        assert_eq!(head, &payload[..4]);
        assert_eq!(tail, &payload[4..]);
    }

    #[test]
    fn a_lost_record_and_a_header_across_the_end_are_read_whole() {
        let mut data = vec![0u8; 64];
        // The lost record's count (its last 8 bytes) wraps to the start of the ring.
        let start = 48u64;
        let first = lost(41);
        let second = sample(b"abcdefgh");
        put(&mut data, start, &first);
        put(&mut data, start + 24, &second);
        let end = start + 24 + second.len() as u64;
        let (out, w) = collect(&data, start, end);
        assert_eq!(w.tail, end);
        assert_eq!(out[0], Err(41));
        assert!(out[1].as_ref().unwrap().starts_with(b"abcdefgh"));
    }

    #[test]
    fn a_record_that_does_not_add_up_skips_the_rest() {
        let mut data = vec![0u8; 64];
        // A zero size would never advance; a size past head was not written whole.
        for bad in [header(PERF_RECORD_SAMPLE, 0), header(PERF_RECORD_SAMPLE, 40), header(PERF_RECORD_LOST, 16)] {
            put(&mut data, 0, &bad);
            put(&mut data, 8, &24u32.to_ne_bytes());
            let (out, w) = collect(&data, 0, 32);
            assert_eq!((out, w), (vec![], Walked { tail: 32, corrupt: true }));
        }
        // A sample whose size field says more than its record holds.
        let mut rec = sample(b"abc");
        rec[8..12].copy_from_slice(&100u32.to_ne_bytes());
        put(&mut data, 0, &rec);
        assert_eq!(collect(&data, 0, rec.len() as u64).1, Walked { tail: rec.len() as u64, corrupt: true });
        // A record of another type is skipped, and what follows is read.
        let mut other = header(3, 16);
        other.resize(16, 0);
        put(&mut data, 0, &other);
        put(&mut data, 16, &lost(5));
        assert_eq!(collect(&data, 0, 40), (vec![Err(5)], Walked { tail: 40, corrupt: false }));
    }
}
