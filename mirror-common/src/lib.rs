//! Types shared by the kernel program (`mirror-ebpf`) and the daemon (`mirror-userspace`).
//!
//! Everything here is `#[repr(C)]` plain data: the kernel writes it into the perf ring, the daemon
//! reads it back with [`SegmentEvent::parse`]. Byte order of every integer is host order.
#![no_std]
#![warn(missing_docs)]

/// Name of the TC classifier program, as `bpftool prog`, `bpftool net` and `tc filter show` show it
/// (also the name by which netlink filters left by a killed daemon are found).
pub const PROGRAM_NAME: &str = "mirror_tc";

/// Array of the ports, indexed by port (the daemon looks maps up by these names). The value is a set of
/// `PORT_*` flags, 0 for a port not watched.
pub const MAP_PORTS: &str = "MIRROR_PORTS";
/// `MAP_PORTS` value flag: the port is watched (requests to it are captured).
pub const PORT_WATCHED: u8 = 1;
/// `MAP_PORTS` value flag: the primary's answers from this port are shipped with their payload
/// (`KIND_REVERSE` with bytes, `KIND_REVERSE_TAIL`), for comparing responses (issue 15). Without
/// it, answers are shipped as headers only.
pub const PORT_RESPONSES: u8 = 2;
/// Per-CPU counters map.
pub const MAP_STATS: &str = "MIRROR_STATS";
/// The perf event array the segments are shipped through.
pub const MAP_SEGMENTS: &str = "MIRROR_SEGMENTS";
/// Map of mirror endpoints whose traffic is never captured.
pub const MAP_SKIP: &str = "MIRROR_SKIP";
/// Map of the interfaces the daemon attached to (ifindex → `IFACE_*` flags): on which hook the
/// requests of each are captured. An interface not in it is not captured at all.
pub const MAP_IFACES: &str = "MIRROR_IFACES";
/// LPM trie of the IPv4 destinations captured (`capture.addresses`; `0.0.0.0/0` when empty).
pub const MAP_ADDRS4: &str = "MIRROR_ADDRS4";
/// LPM trie of the IPv6 destinations captured (`capture.addresses`; `::/0` when empty).
pub const MAP_ADDRS6: &str = "MIRROR_ADDRS6";
/// Connections the daemon gave up on ([`MuteKey`] → [`MuteValue`]): their segments are shipped
/// as headers only (sequence numbers, lengths, flags), without payload. An LRU hash of
/// [`MAX_MUTED`] entries.
pub const MAP_MUTED: &str = "MIRROR_MUTED";
/// Most connections muted at once (`MAP_MUTED`; beyond it the least recently used is forgotten,
/// and its bytes are shipped again).
pub const MAX_MUTED: u32 = 16384;
/// A muted connection's client segments are shipped without payload while their sequence number
/// is within this many bytes after [`MuteValue::from_seq`] (so is a server segment whose
/// acknowledgement is): 1 GiB. A new connection on the same 4-tuple starts with a SYN, which
/// takes the entry out; the span bounds what a stale entry could still mute.
pub const MUTE_SPAN: u32 = 1 << 30;
/// How far before where a given-up flow stood its mute begins ([`MuteValue::from_seq`] is that
/// far back): the client's retransmissions are muted too. A server segment's payload is muted
/// only from where the flow stood on (its acknowledgement at least `from_seq + MUTE_SLACK`): a
/// pipelined response to a request mirrored before is still compared.
pub const MUTE_SLACK: u32 = 1 << 24;
/// Largest number of interfaces attached at once (the size of `MAP_IFACES`).
pub const MAX_LINKS: u32 = 4096;
/// Largest number of prefixes per address family in `MAP_ADDRS4` / `MAP_ADDRS6`.
pub const MAX_PREFIXES: u32 = 1024;

/// `MAP_IFACES` flag: requests (client → primary) are captured as they arrive on the interface
/// (TC ingress), the primary's answers as they leave (egress). A NIC, or the primary's own
/// interface.
pub const IFACE_REQUESTS_INGRESS: u8 = 1;
/// `MAP_IFACES` flag: requests are captured as they leave the interface (TC egress), the
/// primary's answers as they arrive (ingress): the host side of a pod's veth, where packets to
/// the pod leave the node's namespace.
pub const IFACE_REQUESTS_EGRESS: u8 = 2;

/// `SegmentEvent::hook`: seen on TC ingress.
pub const HOOK_INGRESS: u8 = 0;
/// `SegmentEvent::hook`: seen on TC egress.
pub const HOOK_EGRESS: u8 = 1;

/// Largest number of packet bytes appended to one perf sample straight from the skb. A perf record
/// header's size is a `u16`, so a sample (header + our event + bytes) must stay below 64 KiB.
pub const MAX_INLINE_CAPTURE: u32 = 60_000;
/// Largest tail of an oversized (GSO/TSO) skb, beyond `MAX_INLINE_CAPTURE`, shipped as a second
/// event copied through a per-CPU scratch buffer. An skb larger than both together is counted as
/// `STAT_TRUNCATED` and its missing bytes become a gap that userspace sees and counts.
pub const MAX_TAIL_CAPTURE: u32 = 8192;

/// `SegmentEvent::kind`: the event is followed by the first `captured_len` bytes of the skb,
/// starting at the Ethernet header.
pub const KIND_PACKET: u8 = 0;
/// `SegmentEvent::kind`: the event is followed by `captured_len` TCP payload bytes only (the tail
/// of an skb too large for one sample); `seq` already points at the first of them.
pub const KIND_TAIL: u8 = 1;
/// `SegmentEvent::kind`: a segment from the primary back to a client (source port watched), header
/// only (`captured_len` is 0) unless its port has `PORT_RESPONSES`: then the first `captured_len`
/// bytes of the skb follow, as for `KIND_PACKET`; saddr/sport are the primary's, daddr/dport the client's; seq, ack,
/// tcp_flags and payload_len are the segment's.
pub const KIND_REVERSE: u8 = 2;

/// `SegmentEvent::kind`: the tail of an oversized primary → client skb (a port with
/// `PORT_RESPONSES`): `captured_len` TCP payload bytes only, `seq` at the first of them; addresses
/// and ports as in `KIND_REVERSE`.
pub const KIND_REVERSE_TAIL: u8 = 3;

/// TCP flag FIN, as in the TCP header.
pub const TCP_FIN: u8 = 0x01;
/// TCP flag SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP flag RST.
pub const TCP_RST: u8 = 0x04;
/// TCP flag PSH.
pub const TCP_PSH: u8 = 0x08;
/// TCP flag ACK.
pub const TCP_ACK: u8 = 0x10;

/// Counter index in `MAP_STATS`: segments to a watched port with something to ship.
pub const STAT_SEEN: u32 = 0;
/// Counter: segments shipped to the ring.
pub const STAT_SHIPPED: u32 = 1;
/// Counter: events lost because the ring was full (or a tail could not be copied).
pub const STAT_LOST: u32 = 2;
/// Counter: skbs larger than inline + tail capture (their rest is a gap).
pub const STAT_TRUNCATED: u32 = 3;
/// Counter: tails of oversized skbs shipped as `KIND_TAIL` events.
pub const STAT_TAILS: u32 = 4;
/// Counter: IPv4 fragments (not captured: the TCP header may not be in them).
pub const STAT_FRAGMENTS: u32 = 5;
/// Segments to a mirror endpoint (shadow traffic, ours or another node's): never captured.
pub const STAT_SKIPPED_MIRROR: u32 = 6;
/// Packets whose IP or TCP header could not be read or does not add up (passed, not captured).
pub const STAT_MALFORMED: u32 = 7;
/// Primary → client segments shipped (`KIND_REVERSE`: headers, and payload for `PORT_RESPONSES`).
pub const STAT_REVERSE: u32 = 8;
/// Segments to (or answers from) a watched port whose address is outside `capture.addresses`.
pub const STAT_OUTSIDE_ADDRESSES: u32 = 9;
/// Segments of a muted connection (`MAP_MUTED`) shipped as headers only, their payload left out.
pub const STAT_MUTED: u32 = 10;
/// Number of counters.
pub const STAT_COUNT: u32 = 11;
/// Counter names, by index, as the summary and the metrics show them.
pub const STAT_NAMES: [&str; STAT_COUNT as usize] = [
    "seen",
    "shipped",
    "lost",
    "truncated",
    "tail_pieces",
    "ip_fragments",
    "skipped_mirror_traffic",
    "malformed",
    "reverse_shipped",
    "outside_addresses",
    "muted",
];

/// Key of `MAP_SKIP`: a destination (address, port) whose traffic is never captured, because it is
/// a mirror endpoint. IPv4 addresses use the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkipKey {
    /// Address; IPv4 uses the first 4 bytes.
    pub addr: [u8; 16],
    /// Port, host byte order.
    pub port: u16,
    /// 4 or 6.
    pub family: u8,
    /// Padding (zero).
    pub _pad: u8,
}

/// Key of `MAP_MUTED`: one TCP connection, oriented (client, server) whichever way the segment
/// goes. IPv4 addresses use the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MuteKey {
    /// The client's address.
    pub client: [u8; 16],
    /// The server's (the primary's) address.
    pub server: [u8; 16],
    /// The client's port.
    pub client_port: u16,
    /// The server's port (a watched one).
    pub server_port: u16,
    /// 4 or 6.
    pub family: u8,
    /// Zero (the key is hashed as bytes).
    pub _pad: [u8; 3],
}

/// Value of `MAP_MUTED`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MuteValue {
    /// The client sequence number from which the connection is muted (see [`MUTE_SPAN`]).
    pub from_seq: u32,
    /// Nonzero once the daemon armed the entry, a capture round after it went in, if no SYN on
    /// the 4-tuple took it out meanwhile. An entry not armed mutes nothing (a SYN still takes it
    /// out): a connection whose SYN passed before the entry went in is never muted.
    pub armed: u32,
}

/// One TCP segment seen on a watched port. Followed in the perf sample by `captured_len` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentEvent {
    /// `bpf_ktime_get_ns()` when the classifier saw the packet: the daemon orders the samples of
    /// all CPUs' rings by it (a connection's packets may be handled on different CPUs).
    pub ts_ns: u64,
    /// Source and destination address; IPv4 uses the first 4 bytes.
    pub saddr: [u8; 16],
    /// Destination address; IPv4 uses the first 4 bytes.
    pub daddr: [u8; 16],
    /// TCP sequence number.
    pub seq: u32,
    /// TCP acknowledgement number.
    pub ack: u32,
    /// TCP source port.
    pub sport: u16,
    /// TCP destination port.
    pub dport: u16,
    /// 4 or 6.
    pub family: u8,
    /// TCP flags byte.
    pub tcp_flags: u8,
    /// `KIND_PACKET`, `KIND_TAIL` or `KIND_REVERSE`.
    pub kind: u8,
    /// `HOOK_INGRESS` or `HOOK_EGRESS`: where the packet was seen (with `ifindex`, the attach
    /// point; the daemon drops the copy of a packet seen again at a second attach point).
    pub hook: u8,
    /// Index of the interface the packet was seen on.
    pub ifindex: u32,
    /// Offset of the TCP payload inside the bytes that follow (0 for `KIND_TAIL`).
    pub payload_off: u32,
    /// TCP payload length of the whole segment (for `KIND_TAIL`, of this piece).
    pub payload_len: u32,
    /// Number of bytes that follow this header in the sample.
    pub captured_len: u32,
    /// `skb->len` of the packet this came from.
    pub skb_len: u32,
    /// The TCP header's checksum field as seen (big-endian bytes read as a host `u16`): two
    /// sightings of one packet carry the same; a copy with other payload bytes does not.
    pub tcp_csum: u16,
    /// The TCP header's window field (host order, unscaled): for a server→client segment, how
    /// much more the primary will take, which bounds what the daemon holds unacknowledged.
    pub window: u16,
}

impl SegmentEvent {
    /// Size of the header in a sample.
    pub const LEN: usize = core::mem::size_of::<SegmentEvent>();

    /// Reads an event header from the start of a sample. `None` if the sample is too short.
    pub fn parse(bytes: &[u8]) -> Option<SegmentEvent> {
        if bytes.len() < Self::LEN {
            return None;
        }
        // SAFETY: SegmentEvent is repr(C) plain data made only of integers and byte arrays, every
        // bit pattern is valid, and the read is unaligned-safe.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<SegmentEvent>()) })
    }
}

/// Per-CPU scratch record used to ship the tail of an oversized skb.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TailPiece {
    /// The event header (kind `KIND_TAIL`).
    pub event: SegmentEvent,
    /// The tail's bytes (the first `event.captured_len` are valid).
    pub bytes: [u8; MAX_TAIL_CAPTURE as usize],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, as above.
    unsafe impl aya::Pod for super::SegmentEvent {}
    // SAFETY: plain old data, as above.
    unsafe impl aya::Pod for super::SkipKey {}
    // SAFETY: plain old data, as above.
    unsafe impl aya::Pod for super::MuteKey {}
    // SAFETY: plain old data, as above.
    unsafe impl aya::Pod for super::MuteValue {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_stable() {
        assert_eq!(SegmentEvent::LEN, 80);
        assert_eq!(core::mem::align_of::<SegmentEvent>(), 8);
    }

    #[test]
    fn parse_round_trips_and_rejects_short() {
        let ev = SegmentEvent { seq: 7, sport: 1234, dport: 80, family: 4, captured_len: 3, ..Default::default() };
        let bytes: [u8; SegmentEvent::LEN] = unsafe { core::mem::transmute(ev) };
        assert_eq!(SegmentEvent::parse(&bytes), Some(ev));
        assert_eq!(SegmentEvent::parse(&bytes[..SegmentEvent::LEN - 1]), None);
    }
}
