//! TC classifier, attached to both ingress and egress: copies TCP segments whose destination port is
//! watched (client → primary) into a perf ring for the daemon, with their bytes, and the headers of
//! segments whose source port is watched (primary → client: acknowledgements, flags, response
//! lengths; with their bytes too on ports whose responses are compared, `PORT_RESPONSES`), and
//! always lets the packet through untouched.
//!
//! Each interface says on which hook its requests are captured (`MIRROR_IFACES`): on ingress for
//! a NIC or the primary's own interface, on egress for the host side of a pod's veth (packets to
//! the pod leave the node's namespace there). Answers are taken on the other hook. So a request is
//! captured where it goes towards its server, never where it leaves a client on this node for a
//! server elsewhere. Addresses are checked against LPM tries (`capture.addresses`): the
//! destination of a request, the source of an answer. The hook is told by `ingress_ifindex`: on
//! ingress it is the interface itself; on egress it is where the packet came in (0 for a packet
//! this host sent), which differs unless the packet leaves by the interface it came in by
//! (hairpin), which is then taken as arriving.
//!
//! The verdict is `TC_ACT_UNSPEC` (`TCX_NEXT` under TCX): any program attached after ours (a CNI's,
//! for instance) still runs, and the packet is never dropped, rewritten or delayed.
//!
//! Payload bytes are not copied by a loop: `bpf_perf_event_output` on an skb appends the first N
//! bytes of the packet itself when N is put in the upper 32 bits of its flags. A perf sample is at
//! most 64 KiB, so a GSO/TSO skb larger than `MAX_INLINE_CAPTURE` ships its tail as a second event
//! (`KIND_TAIL`) copied through a per-CPU scratch buffer.
#![no_std]
#![no_main]
#![warn(clippy::undocumented_unsafe_blocks)]

use core::{ffi::c_void, mem::size_of, ptr};

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_CURRENT_CPU, TC_ACT_UNSPEC},
    helpers::{bpf_ktime_get_ns, bpf_perf_event_output, bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerfEventArray, lpm_trie::Key},
    programs::TcContext,
};
use aya_log_ebpf::debug;
use mirror_common::{
    HOOK_EGRESS, HOOK_INGRESS, IFACE_REQUESTS_EGRESS, IFACE_REQUESTS_INGRESS, KIND_PACKET, KIND_REVERSE,
    KIND_REVERSE_TAIL, KIND_TAIL, MAX_INLINE_CAPTURE, MAX_LINKS, MAX_MUTED, MAX_PREFIXES, MAX_TAIL_CAPTURE, MUTE_SLACK,
    MUTE_SPAN, MuteKey, MuteValue, PORT_RESPONSES, PORT_WATCHED, STAT_COUNT, STAT_FRAGMENTS, STAT_LOST, STAT_MALFORMED,
    STAT_MUTED, STAT_OUTSIDE_ADDRESSES, STAT_REVERSE, STAT_SEEN, STAT_SHIPPED, STAT_SKIPPED_MIRROR, STAT_TAILS,
    STAT_TRUNCATED, SegmentEvent, SkipKey, TCP_FIN, TCP_RST, TCP_SYN, TailPiece,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
};

const IPPROTO_TCP: u8 = 6;

/// `PORT_*` flags of each port (host byte order; 0: not watched), filled by the daemon from the
/// config. An array, not a hash: every TCP packet on an attached link looks up its destination
/// port and, unless it is watched, its source port, and an array lookup is a bounds check the
/// verifier inlines, where a hash lookup is a helper call that hashes the key (64 KiB for the
/// whole port space).
#[map(name = "MIRROR_PORTS")]
static MIRROR_PORTS: Array<u8> = Array::with_max_entries(65536, 0);

/// The `PORT_*` flags of `port` (0 if it is not watched).
#[inline(always)]
fn port_flags(port: u16) -> u8 {
    MIRROR_PORTS.get(u32::from(port)).copied().unwrap_or(0)
}

/// Mirror endpoints (address, port): their traffic is shadow traffic and is never captured, so a
/// mirror on a watched port (on this node or another one running the same config) does not loop.
#[map(name = "MIRROR_SKIP")]
static MIRROR_SKIP: HashMap<SkipKey, u8> = HashMap::with_max_entries(1024, 0);

/// The interfaces the daemon attached to: ifindex → `IFACE_REQUESTS_*` (the hook where requests
/// are captured). Filled before the program is attached to an interface, emptied after it is
/// detached; an interface not in it is not captured.
#[map(name = "MIRROR_IFACES")]
static MIRROR_IFACES: HashMap<u32, u8> = HashMap::with_max_entries(MAX_LINKS, 0);

/// IPv4 prefixes of the primaries (`capture.addresses`; `0.0.0.0/0` when none are given).
#[map(name = "MIRROR_ADDRS4")]
static MIRROR_ADDRS4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);

/// IPv6 prefixes of the primaries (`capture.addresses`; `::/0` when none are given).
#[map(name = "MIRROR_ADDRS6")]
static MIRROR_ADDRS6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);

/// Connections the daemon gave up on (a gap it cannot frame past, or picked up mid-stream): their
/// segments are shipped as headers only, so that a connection whose requests will never be
/// mirrored costs the ring and the daemon ~80 bytes a segment, not its payload. Filled and emptied
/// by the daemon; a SYN on the 4-tuple (a new connection) takes its entry out here, right after
/// the SYN's sample is published.
#[map(name = "MIRROR_MUTED")]
static MIRROR_MUTED: LruHashMap<MuteKey, MuteValue> = LruHashMap::with_max_entries(MAX_MUTED, 0);

/// Per-CPU counters, indexed by the `STAT_*` constants.
#[map(name = "MIRROR_STATS")]
static MIRROR_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// The ring the daemon reads: one buffer per CPU.
#[map(name = "MIRROR_SEGMENTS")]
static MIRROR_SEGMENTS: PerfEventArray<SegmentEvent> = PerfEventArray::new(0);

/// Scratch space for the tail of an oversized skb (a BPF stack is only 512 bytes).
#[map(name = "MIRROR_SCRATCH")]
static MIRROR_SCRATCH: PerCpuArray<TailPiece> = PerCpuArray::with_max_entries(1, 0);

#[classifier]
pub fn mirror_tc(ctx: TcContext) -> i32 {
    if capture(&ctx).is_err() {
        // A header that could not be read or does not add up (a short or malformed packet): the
        // packet still passes; the daemon sees the count.
        bump(STAT_MALFORMED);
    }
    TC_ACT_UNSPEC
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(counter) = MIRROR_STATS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from the map lookup and is valid for this CPU's slot; a per-CPU
        // value is written by no other CPU, and this program is not re-entered on one CPU.
        unsafe { *counter += 1 };
    }
}

/// Whether `addr` (of `family`) is within `capture.addresses`.
#[inline(always)]
fn address_watched(family: u8, addr: &[u8; 16]) -> bool {
    if family == 4 {
        MIRROR_ADDRS4.get(Key::new(32, [addr[0], addr[1], addr[2], addr[3]])).is_some()
    } else {
        MIRROR_ADDRS6.get(Key::new(128, *addr)).is_some()
    }
}

/// Where this packet is: (ifindex, seen on ingress?, `IFACE_REQUESTS_*` flags of the interface).
/// `None` for an interface the daemon did not attach to (or not yet: its entry goes in first).
#[inline(always)]
fn attach_point(ctx: &TcContext) -> Option<(u32, bool, u8)> {
    // SAFETY: the context's `__sk_buff` is valid for the program's run; these two fields are
    // readable by TC programs on every kernel this runs on.
    let (ifindex, ingress_ifindex) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).ingress_ifindex) };
    let flags = MIRROR_IFACES.get_ptr(ifindex)?;
    // SAFETY: a pointer from the map lookup, to a u8 value that lives as long as the entry.
    let flags = unsafe { *flags };
    Some((ifindex, ingress_ifindex == ifindex, flags))
}

#[inline(always)]
fn segments_map() -> *mut c_void {
    ptr::from_ref(&MIRROR_SEGMENTS).cast_mut().cast()
}

#[inline(always)]
fn capture(ctx: &TcContext) -> Result<(), ()> {
    let eth: EthHdr = ctx.load(0).map_err(|_| ())?;
    let skb_len = ctx.len();
    let mut ev = SegmentEvent::default();
    let l4_off: u32;
    let ip_end: u32;
    if eth.ether_type == EtherType::Ipv4 as u16 {
        let ip: Ipv4Hdr = ctx.load(EthHdr::LEN).map_err(|_| ())?;
        if ip.proto != IPPROTO_TCP {
            return Ok(());
        }
        let frags = u16::from_be_bytes(ip.frags);
        if frags & 0x3fff != 0 {
            // More-fragments set or a non-zero offset: the TCP header may not be here.
            bump(STAT_FRAGMENTS);
            return Ok(());
        }
        let ihl = u32::from(ip.vihl & 0x0f) * 4;
        if ihl < 20 {
            return Err(());
        }
        l4_off = EthHdr::LEN as u32 + ihl;
        let tot_len = u32::from(u16::from_be_bytes(ip.tot_len));
        // tot_len 0 is BIG TCP's marker for "see the skb length".
        ip_end = if tot_len == 0 { skb_len } else { EthHdr::LEN as u32 + tot_len };
        ev.family = 4;
        ev.saddr[..4].copy_from_slice(&ip.src_addr);
        ev.daddr[..4].copy_from_slice(&ip.dst_addr);
    } else if eth.ether_type == EtherType::Ipv6 as u16 {
        let ip: Ipv6Hdr = ctx.load(EthHdr::LEN).map_err(|_| ())?;
        if ip.next_hdr != IPPROTO_TCP {
            return Ok(());
        }
        l4_off = (EthHdr::LEN + Ipv6Hdr::LEN) as u32;
        let payload_len = u32::from(u16::from_be_bytes(ip.payload_len));
        ip_end = if payload_len == 0 { skb_len } else { l4_off + payload_len };
        ev.family = 6;
        ev.saddr = ip.src_addr;
        ev.daddr = ip.dst_addr;
    } else {
        return Ok(());
    }

    // Ports, sequence numbers, data offset, flags, window and checksum: the first 18 bytes of the
    // TCP header.
    let tcp: [u8; 18] = ctx.load(l4_off as usize).map_err(|_| ())?;
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    if port_flags(dport) & PORT_WATCHED == 0 {
        let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
        let flags = port_flags(sport);
        if flags & PORT_WATCHED != 0 {
            let responses = flags & PORT_RESPONSES != 0;
            let Some((ifindex, arrived, flags)) = attach_point(ctx) else { return Ok(()) };
            // Answers travel the other way: they arrive where requests leave, and leave where
            // requests arrive.
            let answers = if arrived { IFACE_REQUESTS_EGRESS } else { IFACE_REQUESTS_INGRESS };
            if flags & answers == 0 {
                return Ok(());
            }
            ev.ifindex = ifindex;
            ev.hook = if arrived { HOOK_INGRESS } else { HOOK_EGRESS };
            return ship_reverse(ctx, &mut ev, &tcp, l4_off, ip_end, skb_len, responses);
        }
        return Ok(());
    }
    let Some((ifindex, arrived, flags)) = attach_point(ctx) else { return Ok(()) };
    // Requests on the hook where they travel towards their server, only: on the other one they are
    // leaving a client of this node for a server elsewhere (whose own node captures them).
    let requests = if arrived { IFACE_REQUESTS_INGRESS } else { IFACE_REQUESTS_EGRESS };
    if flags & requests == 0 {
        return Ok(());
    }
    let payload_off = l4_off + u32::from(tcp[12] >> 4) * 4;
    // A bare ACK (no payload, no SYN/FIN/RST) tells the reassembler nothing: not shipped.
    if payload_off >= ip_end && tcp[13] & (TCP_SYN | TCP_FIN | TCP_RST) == 0 {
        return Ok(());
    }
    let skip = SkipKey { addr: ev.daddr, port: dport, family: ev.family, _pad: 0 };
    if MIRROR_SKIP.get_ptr(skip).is_some() {
        bump(STAT_SKIPPED_MIRROR);
        return Ok(());
    }
    if !address_watched(ev.family, &ev.daddr) {
        bump(STAT_OUTSIDE_ADDRESSES);
        return Ok(());
    }
    bump(STAT_SEEN);
    ev.ifindex = ifindex;
    ev.hook = if arrived { HOOK_INGRESS } else { HOOK_EGRESS };
    ev.tcp_csum = u16::from_ne_bytes([tcp[16], tcp[17]]);
    ev.window = u16::from_be_bytes([tcp[14], tcp[15]]);

    // Ethernet padding of short frames lies between ip_end and skb_len: never ship it as payload.
    let ip_end = if ip_end > skb_len { skb_len } else { ip_end };
    if payload_off > ip_end {
        return Err(());
    }
    let mut inline = if ip_end > MAX_INLINE_CAPTURE { MAX_INLINE_CAPTURE } else { ip_end };

    // SAFETY: a helper without arguments.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    ev.dport = dport;
    ev.seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let mut payload_at = payload_off;
    let key = MuteKey {
        client: ev.saddr,
        server: ev.daddr,
        client_port: ev.sport,
        server_port: dport,
        family: ev.family,
        _pad: [0; 3],
    };
    let syn = tcp[13] & TCP_SYN != 0;
    if payload_off < ip_end && !syn && muted(&key, ev.seq) {
        // Headers only: the length stays in `payload_len`, nothing is appended.
        inline = 0;
        payload_at = 0;
        bump(STAT_MUTED);
    }
    ev.ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    ev.tcp_flags = tcp[13];
    ev.kind = KIND_PACKET;
    ev.payload_off = payload_at;
    ev.payload_len = ip_end - payload_off;
    ev.captured_len = inline;
    ev.skb_len = skb_len;

    let flags = BPF_F_CURRENT_CPU | (u64::from(inline) << 32);
    // SAFETY: the context is the skb, the map is our perf event array, and `ev` is a live stack
    // value of the size passed; the kernel appends `inline` (≤ skb len) bytes of the skb itself.
    let ret = unsafe {
        bpf_perf_event_output(
            ctx.as_ptr(),
            segments_map(),
            flags,
            ptr::from_mut(&mut ev).cast(),
            size_of::<SegmentEvent>() as u64,
        )
    };
    if syn {
        // A new connection on this 4-tuple: whatever was muted was another one's. Taken out only
        // after the SYN's sample is published, so a mute the daemon puts in before this removal is
        // removed here, and one put in after it is put in after the SYN can be read: the daemon's
        // next drain sees the SYN (which ends the old flow) before it arms the entry.
        let _ = MIRROR_MUTED.remove(key);
    }
    if ret != 0 {
        bump(STAT_LOST);
        debug!(ctx, "perf ring full: segment to port {} lost", dport);
        return Ok(());
    }
    bump(STAT_SHIPPED);

    if ip_end > inline && inline >= payload_off && payload_at == payload_off {
        ship_tail(ctx, &ev, inline, ip_end, KIND_TAIL);
    }
    Ok(())
}

/// A segment from a watched port back to a client (the primary's side of a flow): its header
/// (`KIND_REVERSE`: acknowledgement, window), the header bytes themselves for a SYN-ACK (its
/// window scale option), and its payload only if the port has `PORT_RESPONSES` (responses being
/// compared), bounded exactly as the forward path's (inline bytes, then a `KIND_REVERSE_TAIL`).
/// The daemon releases a client byte to framing only once the primary's TCP has acknowledged it,
/// holds as many unacknowledged ones as the primary's window allows, and learns where the
/// primary's responses are from these.
#[inline(always)]
fn ship_reverse(
    ctx: &TcContext,
    ev: &mut SegmentEvent,
    tcp: &[u8; 18],
    l4_off: u32,
    ip_end: u32,
    skb_len: u32,
    responses: bool,
) -> Result<(), ()> {
    let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    // Responses of a mirror endpoint (shadow traffic) are not the primary's.
    let skip = SkipKey { addr: ev.saddr, port: sport, family: ev.family, _pad: 0 };
    if MIRROR_SKIP.get_ptr(skip).is_some() {
        bump(STAT_SKIPPED_MIRROR);
        return Ok(());
    }
    if !address_watched(ev.family, &ev.saddr) {
        bump(STAT_OUTSIDE_ADDRESSES);
        return Ok(());
    }
    let ip_end = if ip_end > skb_len { skb_len } else { ip_end };
    let payload_off = l4_off + u32::from(tcp[12] >> 4) * 4;
    // SAFETY: a helper without arguments.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.sport = sport;
    ev.dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    ev.seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    ev.ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    ev.tcp_flags = tcp[13];
    ev.kind = KIND_REVERSE;
    ev.tcp_csum = u16::from_ne_bytes([tcp[16], tcp[17]]);
    ev.window = u16::from_be_bytes([tcp[14], tcp[15]]);
    ev.payload_off = 0;
    ev.payload_len = ip_end.saturating_sub(payload_off);
    ev.captured_len = 0;
    ev.skb_len = skb_len;
    // Payload only for compared ports (not of a muted connection), and only when there is some: as
    // on the forward path, the kernel appends `inline` (≤ skb len) bytes of the skb itself.
    let mut inline = 0;
    let mute = responses
        && payload_off < ip_end
        && muted(
            &MuteKey {
                client: ev.daddr,
                server: ev.saddr,
                client_port: ev.dport,
                server_port: sport,
                family: ev.family,
                _pad: [0; 3],
            },
            // From where the flow stood when it was given up, not before (see MUTE_SLACK).
            ev.ack.wrapping_sub(MUTE_SLACK),
        );
    if mute {
        bump(STAT_MUTED);
    }
    let responses = responses && !mute;
    if responses && payload_off < ip_end {
        inline = if ip_end > MAX_INLINE_CAPTURE { MAX_INLINE_CAPTURE } else { ip_end };
        ev.payload_off = payload_off;
        ev.captured_len = inline;
    } else if tcp[13] & TCP_SYN != 0 && payload_off <= ip_end {
        // A SYN-ACK's headers, options included: the daemon reads the window scale from them
        // (the windows of the server's later segments are shifted by it).
        inline = payload_off;
        ev.payload_off = payload_off;
        ev.captured_len = inline;
    }
    let flags = BPF_F_CURRENT_CPU | (u64::from(inline) << 32);
    // SAFETY: as for the forward event: the skb context, our perf array, a live stack value of the
    // size passed; the kernel appends `inline` bytes of the skb (0: none).
    let ret = unsafe {
        bpf_perf_event_output(
            ctx.as_ptr(),
            segments_map(),
            flags,
            ptr::from_mut(ev).cast(),
            size_of::<SegmentEvent>() as u64,
        )
    };
    if ret != 0 {
        bump(STAT_LOST);
        return Ok(());
    }
    bump(STAT_REVERSE);
    // Only a compared port's payload goes on in a tail (a SYN-ACK's headers alone were shipped).
    if responses && inline > 0 && ip_end > inline && inline >= payload_off {
        ship_tail(ctx, ev, inline, ip_end, KIND_REVERSE_TAIL);
    }
    Ok(())
}

/// Whether connection `key` is muted at client sequence number `seq` (a client segment's own, a
/// server segment's acknowledgement): its entry is armed, and `seq` is within `MUTE_SPAN` after
/// where the entry starts.
#[inline(always)]
fn muted(key: &MuteKey, seq: u32) -> bool {
    match MIRROR_MUTED.get_ptr(key) {
        // SAFETY: a pointer from the map lookup, to a value that lives as long as the entry (an
        // LRU entry removed meanwhile is freed only after an RCU grace period).
        Some(v) => unsafe { (*v).armed != 0 && seq.wrapping_sub((*v).from_seq) < MUTE_SPAN },
        None => false,
    }
}

/// Ships bytes `[start, end)` of an oversized skb (all TCP payload) as a `kind` event
/// (`KIND_TAIL`, or `KIND_REVERSE_TAIL` for the primary's answers). A piece that cannot be
/// shipped is counted (`lost`) and becomes a gap the daemon sees.
#[inline(always)]
fn ship_tail(ctx: &TcContext, head: &SegmentEvent, start: u32, end: u32, kind: u8) {
    let mut want = end - start;
    if want > MAX_TAIL_CAPTURE {
        bump(STAT_TRUNCATED);
        debug!(ctx, "skb of {} bytes: {} beyond what is shipped", head.skb_len, want - MAX_TAIL_CAPTURE);
        want = MAX_TAIL_CAPTURE;
    }
    if want == 0 {
        return;
    }
    let Some(piece) = MIRROR_SCRATCH.get_ptr_mut(0) else {
        bump(STAT_LOST);
        return;
    };
    // The length handed to bpf_skb_load_bytes must be provably within [1, MAX_TAIL_CAPTURE].
    // Kernels before 6.8 lose the lower bound through a `n == 0` test (LLVM folds the two range
    // checks into one unsigned compare that 6.1's verifier cannot split), so derive the bound by
    // arithmetic the verifier tracks everywhere: a mask of a power of two, plus one. `want` is
    // laundered through memory so LLVM cannot prove the mask redundant and drop it.
    const _: () = assert!(MAX_TAIL_CAPTURE.is_power_of_two());
    // SAFETY: a volatile read of a live local.
    let want = unsafe { ptr::read_volatile(&want) };
    let n = ((want - 1) & (MAX_TAIL_CAPTURE - 1)) + 1;
    // SAFETY: `piece` is this CPU's scratch slot from the map lookup (no other CPU uses it and the
    // program is not re-entered on one CPU); the load writes `n ≤ MAX_TAIL_CAPTURE` bytes into
    // `piece.bytes`, and the output reads the event header plus those `n` bytes.
    unsafe {
        let piece = &mut *piece;
        piece.event = *head;
        piece.event.kind = kind;
        piece.event.seq = head.seq.wrapping_add(start - head.payload_off);
        piece.event.payload_off = 0;
        piece.event.payload_len = n;
        piece.event.captured_len = n;
        if bpf_skb_load_bytes(ctx.as_ptr(), start, piece.bytes.as_mut_ptr().cast(), n) != 0 {
            bump(STAT_LOST);
            return;
        }
        let ret = bpf_perf_event_output(
            ctx.as_ptr(),
            segments_map(),
            BPF_F_CURRENT_CPU,
            ptr::from_mut(piece).cast(),
            (size_of::<SegmentEvent>() as u32 + n) as u64,
        );
        if ret != 0 {
            bump(STAT_LOST);
            return;
        }
    }
    bump(STAT_TAILS);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
