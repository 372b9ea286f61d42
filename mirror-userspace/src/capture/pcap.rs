//! Offline capture: pcap and pcapng files into the same [`Segment`]s the kernel program produces.
//!
//! Link types: Ethernet (with 802.1Q/802.1ad tags), Linux SLL and SLL2, BSD loopback (DLT_NULL and
//! DLT_LOOP), raw IPv4/IPv6 (DLT 12, 14, 101, 228, 229). IPv4 fragments are reassembled, with
//! bounded buffers and a timeout in capture time ([`Defrag`]); the fragments given up are
//! counted ([`PcapCounts::fragments_dropped`]). TCP checksums are not checked (offloaded or
//! anonymised captures have bad ones).
//!
//! Both directions are decoded, as the kernel ships them: a segment to a watched port is a
//! client→server [`Segment`] with its payload, one from a watched port a server→client segment
//! (its length in [`Segment::len`]; its payload kept by [`read_segments`] only when responses are
//! compared). A capture without any of the latter holds one direction only
//! ([`PcapCounts::to_client`] is 0).

use std::{
    collections::HashSet,
    fs::File,
    io::{BufReader, Read},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use pcap_file::{
    pcap::PcapReader,
    pcapng::{Block, PcapNgReader},
};

use crate::flow::{Direction, FlowKey, Segment};

pub mod defrag;
pub use defrag::Defrag;
#[cfg(test)]
pub(crate) mod testdata;

/// One captured frame with its link type.
pub struct Frame {
    /// Capture time.
    pub timestamp: Duration,
    /// The link type (LINKTYPE_*) of the interface it was captured on.
    pub linktype: u32,
    /// The frame's bytes.
    pub data: Vec<u8>,
}

/// Reads every frame of a pcap or pcapng file (told apart by their magic numbers).
pub fn read_frames(path: &Path) -> Result<Vec<Frame>> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic).with_context(|| format!("{}: too short for a capture", path.display()))?;
    let file = File::open(path)?;
    let mut frames = Vec::new();
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut reader = PcapNgReader::new(BufReader::new(file)).context("reading pcapng header")?;
        let mut linktypes: Vec<u32> = Vec::new();
        while let Some(block) = reader.next_block() {
            match block.context("reading pcapng block")? {
                Block::SectionHeader(_) => linktypes.clear(),
                Block::InterfaceDescription(idb) => linktypes.push(u32::from(idb.linktype)),
                Block::EnhancedPacket(epb) => {
                    let linktype =
                        *linktypes.get(epb.interface_id as usize).context("packet of an unknown interface")?;
                    frames.push(Frame { timestamp: epb.timestamp, linktype, data: epb.data.into_owned() });
                }
                Block::SimplePacket(spb) => {
                    let linktype = *linktypes.first().context("packet before any interface")?;
                    let timestamp = frames.last().map_or(Duration::ZERO, |f: &Frame| f.timestamp);
                    frames.push(Frame { timestamp, linktype, data: spb.data.into_owned() });
                }
                _ => {}
            }
        }
    } else {
        let mut reader = PcapReader::new(BufReader::new(file)).context("reading pcap header")?;
        let linktype = u32::from(reader.header().datalink);
        while let Some(pkt) = reader.next_packet() {
            let pkt = pkt.context("reading pcap packet")?;
            frames.push(Frame { timestamp: pkt.timestamp, linktype, data: pkt.data.into_owned() });
        }
    }
    Ok(frames)
}

/// Why a frame did not yield a segment (only what matters for counting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not IP/TCP, or not to a watched port: not ours.
    NotWatched,
    /// Cut short or malformed.
    Malformed,
    /// An IPv4 fragment waiting for the rest.
    FragmentPending,
    /// A link type this reader does not decode.
    UnsupportedLinkType(u32),
}

/// Decodes one frame into a segment if its destination port (client→server) or else its source
/// port (server→client, headers only) is watched.
pub fn decode_frame(linktype: u32, data: &[u8], ports: &HashSet<u16>, defrag: &mut Defrag) -> Result<Segment, Skip> {
    let (ethertype, l3) = match linktype {
        // Ethernet
        1 => {
            let mut off = 12;
            let mut et = be16(data, off).ok_or(Skip::Malformed)?;
            while et == 0x8100 || et == 0x88a8 {
                off += 4;
                et = be16(data, off).ok_or(Skip::Malformed)?;
            }
            (et, data.get(off + 2..).ok_or(Skip::Malformed)?)
        }
        // BSD loopback: the address family in the capturing host's order (NULL) or network order (LOOP).
        0 | 108 => {
            let raw: [u8; 4] = data.get(..4).ok_or(Skip::Malformed)?.try_into().expect("4 bytes");
            let fam = if linktype == 108 {
                u32::from_be_bytes(raw)
            } else if u32::from_le_bytes(raw) < 256 {
                u32::from_le_bytes(raw)
            } else {
                u32::from_be_bytes(raw)
            };
            let et = match fam {
                2 => 0x0800,
                24 | 28 | 30 => 0x86dd,
                _ => return Err(Skip::NotWatched),
            };
            (et, &data[4..])
        }
        // Raw IP: the version nibble tells.
        12 | 14 | 101 | 228 | 229 => {
            let v = data.first().ok_or(Skip::Malformed)? >> 4;
            (if v == 6 { 0x86dd } else { 0x0800 }, data)
        }
        // Linux cooked v1: protocol at 14; v2: protocol at 0, header 20 bytes.
        113 => (be16(data, 14).ok_or(Skip::Malformed)?, data.get(16..).ok_or(Skip::Malformed)?),
        276 => (be16(data, 0).ok_or(Skip::Malformed)?, data.get(20..).ok_or(Skip::Malformed)?),
        other => return Err(Skip::UnsupportedLinkType(other)),
    };
    match ethertype {
        0x0800 => decode_ipv4(l3, ports, defrag),
        0x86dd => decode_ipv6(l3, ports),
        _ => Err(Skip::NotWatched),
    }
}

fn be16(d: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes(d.get(off..off + 2)?.try_into().ok()?))
}

fn decode_ipv4(ip: &[u8], ports: &HashSet<u16>, defrag: &mut Defrag) -> Result<Segment, Skip> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return Err(Skip::Malformed);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(be16(ip, 2).ok_or(Skip::Malformed)?);
    // tot_len 0 appears in captures of TSO'd packets: take what was captured.
    let end = if total == 0 { ip.len() } else { total.min(ip.len()) };
    if ihl < 20 || end < ihl {
        return Err(Skip::Malformed);
    }
    if ip[9] != 6 {
        return Err(Skip::NotWatched);
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let frag = be16(ip, 6).ok_or(Skip::Malformed)?;
    let more = frag & 0x2000 != 0;
    let offset = usize::from(frag & 0x1fff) * 8;
    if more || offset != 0 {
        let id = be16(ip, 4).ok_or(Skip::Malformed)?;
        let whole = defrag.add((src, dst, id, 6), offset, more, &ip[ihl..end]).ok_or(Skip::FragmentPending)?;
        return decode_tcp(IpAddr::V4(src), IpAddr::V4(dst), &whole, ports);
    }
    decode_tcp(IpAddr::V4(src), IpAddr::V4(dst), &ip[ihl..end], ports)
}

fn decode_ipv6(ip: &[u8], ports: &HashSet<u16>) -> Result<Segment, Skip> {
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return Err(Skip::Malformed);
    }
    let plen = usize::from(be16(ip, 4).ok_or(Skip::Malformed)?);
    let end = if plen == 0 { ip.len() } else { (40 + plen).min(ip.len()) };
    let src: [u8; 16] = ip[8..24].try_into().expect("16 bytes");
    let dst: [u8; 16] = ip[24..40].try_into().expect("16 bytes");
    let mut next = ip[6];
    let mut off = 40;
    // Skip extension headers (hop-by-hop, routing, destination options); fragments are not reassembled.
    while matches!(next, 0 | 43 | 60) {
        let h = ip.get(off..off + 2).ok_or(Skip::Malformed)?;
        next = h[0];
        off += (usize::from(h[1]) + 1) * 8;
    }
    if next != 6 || off > end {
        return Err(Skip::NotWatched);
    }
    decode_tcp(IpAddr::V6(Ipv6Addr::from(src)), IpAddr::V6(Ipv6Addr::from(dst)), &ip[off..end], ports)
}

fn decode_tcp(src: IpAddr, dst: IpAddr, tcp: &[u8], ports: &HashSet<u16>) -> Result<Segment, Skip> {
    if tcp.len() < 20 {
        return Err(Skip::Malformed);
    }
    let sport = be16(tcp, 0).ok_or(Skip::Malformed)?;
    let dport = be16(tcp, 2).ok_or(Skip::Malformed)?;
    let to_server = ports.contains(&dport);
    if !to_server && !ports.contains(&sport) {
        return Err(Skip::NotWatched);
    }
    let doff = usize::from(tcp[12] >> 4) * 4;
    if doff < 20 || doff > tcp.len() {
        return Err(Skip::Malformed);
    }
    let seq = u32::from_be_bytes(tcp[4..8].try_into().expect("4 bytes"));
    let ack = u32::from_be_bytes(tcp[8..12].try_into().expect("4 bytes"));
    let flags = tcp[13];
    let window = be16(tcp, 14).ok_or(Skip::Malformed)?;
    let seg = if to_server {
        let key = FlowKey { client: SocketAddr::new(src, sport), server: SocketAddr::new(dst, dport) };
        Segment::to_server(key, seq, ack, flags, Bytes::copy_from_slice(&tcp[doff..]))
    } else {
        let key = FlowKey { client: SocketAddr::new(dst, dport), server: SocketAddr::new(src, sport) };
        let mut s = Segment::to_client(key, seq, ack, flags, (tcp.len() - doff) as u32);
        s.payload = Bytes::copy_from_slice(&tcp[doff..]);
        s
    };
    Ok(seg.with_window(window, &tcp[20..doff]))
}

/// Reads a capture and decodes the watched segments, with their timestamps; the server's segments
/// keep their payload only with `responses` (their responses are compared).
pub fn read_segments(
    path: &Path,
    ports: &HashSet<u16>,
    responses: bool,
) -> Result<(Vec<(Duration, Segment)>, PcapCounts)> {
    let frames = read_frames(path)?;
    let mut defrag = Defrag::default();
    let mut counts = PcapCounts { packets: frames.len() as u64, ..Default::default() };
    let mut segs = Vec::new();
    for f in frames {
        defrag.advance(f.timestamp);
        match decode_frame(f.linktype, &f.data, ports, &mut defrag) {
            Ok(mut s) => {
                if s.dir == Direction::ToClient {
                    counts.to_client += 1;
                    if !responses {
                        s.payload = Bytes::new();
                    }
                }
                segs.push((f.timestamp, s));
            }
            Err(Skip::NotWatched) => counts.not_watched += 1,
            Err(Skip::FragmentPending) => counts.fragments += 1,
            Err(Skip::Malformed) => counts.malformed += 1,
            Err(Skip::UnsupportedLinkType(l)) => bail!("{}: link type {l} is not supported", path.display()),
        }
    }
    defrag.finish();
    counts.fragments_dropped = defrag.dropped();
    counts.segments = segs.len() as u64;
    Ok((segs, counts))
}

/// What reading a capture found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PcapCounts {
    /// Frames in the file.
    pub packets: u64,
    /// Segments of watched connections, both directions.
    pub segments: u64,
    /// Of those, server→client segments: 0 means the capture holds one direction only, and
    /// nothing confirms which client bytes the primary accepted.
    pub to_client: u64,
    /// Frames not of a watched TCP port.
    pub not_watched: u64,
    /// IPv4 fragments held for reassembly (the whole datagram counts once as a segment).
    pub fragments: u64,
    /// Of those, fragments given up without making a whole datagram: waiting longer than
    /// [`defrag::TIMEOUT`] of capture time, pushed out by the bounds on datagrams waiting, bytes
    /// held and pieces per datagram ([`defrag::MAX_DATAGRAMS`], [`defrag::MAX_BYTES`],
    /// [`defrag::MAX_PIECES`]), impossible (beyond 64 KiB, two ends), or still waiting at the end
    /// of the capture.
    pub fragments_dropped: u64,
    /// Frames cut short or malformed.
    pub malformed: u64,
}

impl PcapCounts {
    /// Whether the capture holds server→client segments (their acknowledgements).
    pub fn two_way(&self) -> bool {
        self.to_client > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_tcp(frag: u16, id: u16, payload: &[u8]) -> Vec<u8> {
        let mut ip = vec![0x45, 0, 0, 0, (id >> 8) as u8, id as u8, (frag >> 8) as u8, frag as u8, 64, 6, 0, 0];
        ip.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        ip.extend_from_slice(payload);
        let len = ip.len() as u16;
        ip[2..4].copy_from_slice(&len.to_be_bytes());
        ip
    }

    fn tcp(dport: u16, payload: &[u8]) -> Vec<u8> {
        tcp_ports(40000, dport, payload)
    }

    /// A TCP header (seq 7, ack 9, ACK|PSH) from `sport` to `dport`, then `payload`.
    fn tcp_ports(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut t = vec![0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 9, 0x50, 0x18, 0, 0, 0, 0, 0, 0];
        t[..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(payload);
        t
    }

    /// Every TCP data offset (0..=15) over segments of every length up to 64 bytes, SYN or not,
    /// both directions: never a panic; a scale only from a SYN whose options hold one.
    #[test]
    fn odd_data_offsets_and_short_tcp_headers_never_panic() {
        let ports: HashSet<u16> = [80].into();
        for flags in [mirror_common::TCP_SYN, mirror_common::TCP_SYN | mirror_common::TCP_ACK, mirror_common::TCP_ACK] {
            for (sport, dport) in [(40000u16, 80u16), (80, 40000)] {
                for doff in 0u8..16 {
                    for len in 0..64usize {
                        let mut t = tcp_ports(sport, dport, &[3, 3, 14, 3, 3, 200, 1, 0, 8, 0, 3, 3, 1]);
                        t.resize(len.max(4), 3);
                        t.truncate(len);
                        if len > 13 {
                            t[12] = doff << 4;
                            t[13] = flags;
                        }
                        if let Ok(s) = decode_ipv4(&ipv4_tcp(0, 1, &t), &ports, &mut Defrag::default()) {
                            if flags & mirror_common::TCP_SYN == 0 {
                                assert_eq!(s.wscale, None);
                            }
                            if doff <= 5 {
                                assert_eq!(s.wscale, None, "no options: doff {doff}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_syns_window_and_window_scale_are_read() {
        let ports: HashSet<u16> = [80].into();
        // A SYN with window 65,535 and options NOP, window scale 7, end of list.
        let mut t = tcp(80, &[1, 3, 3, 7, 0, 0, 0, 0]);
        t[12] = 0x70;
        t[13] = mirror_common::TCP_SYN;
        t[14..16].copy_from_slice(&65_535u16.to_be_bytes());
        let s = decode_ipv4(&ipv4_tcp(0, 1, &t), &ports, &mut Defrag::default()).unwrap();
        assert_eq!((s.window, s.wscale, s.payload.len()), (65_535, Some(7), 0));
    }

    #[test]
    fn linktypes_decode_to_the_same_segment() {
        let ports: HashSet<u16> = [80].into();
        let ip = ipv4_tcp(0, 1, &tcp(80, b"GET"));
        let mut eth = vec![0u8; 12];
        eth.extend_from_slice(&[0x08, 0x00]);
        eth.extend_from_slice(&ip);
        let mut null = 2u32.to_le_bytes().to_vec();
        null.extend_from_slice(&ip);
        let mut sll = vec![0u8; 14];
        sll.extend_from_slice(&[0x08, 0x00]);
        sll.extend_from_slice(&ip);
        let mut d = Defrag::default();
        let want = decode_frame(101, &ip, &ports, &mut d).unwrap();
        assert_eq!(&want.payload[..], b"GET");
        assert_eq!((want.dir, want.seq, want.ack, want.len), (Direction::ToServer, 7, 9, 3));
        for (lt, frame) in [(1, &eth), (0, &null), (113, &sll), (228, &ip)] {
            assert_eq!(decode_frame(lt, frame, &ports, &mut d).unwrap(), want, "linktype {lt}");
        }
        assert_eq!(decode_frame(1, &eth, &[81].into(), &mut d), Err(Skip::NotWatched));
        assert_eq!(decode_frame(1, &eth[..20], &ports, &mut d), Err(Skip::Malformed));
        assert_eq!(decode_frame(147, &eth, &ports, &mut d), Err(Skip::UnsupportedLinkType(147)));
    }

    #[test]
    fn ipv4_fragments_are_reassembled_in_any_order() {
        let ports: HashSet<u16> = [80].into();
        let seg = tcp(80, b"0123456789abcdefXYZ");
        let (a, b) = seg.split_at(24);
        let first = ipv4_tcp(0x2000, 9, a); // MF, offset 0
        let second = ipv4_tcp(3, 9, b); // offset 3*8 = 24
        let mut d = Defrag::default();
        assert_eq!(decode_frame(101, &second, &ports, &mut d), Err(Skip::FragmentPending));
        let s = decode_frame(101, &first, &ports, &mut d).unwrap();
        assert_eq!(&s.payload[..], b"0123456789abcdefXYZ");
    }

    #[test]
    fn server_to_client_segments_come_with_their_payload_and_the_key_oriented_to_the_server() {
        let ports: HashSet<u16> = [80].into();
        // 10.0.0.1:80 -> 10.0.0.2:40000, 5 payload bytes.
        let ip = ipv4_tcp(0, 1, &tcp_ports(80, 40000, b"HTTP/"));
        let mut d = Defrag::default();
        let s = decode_frame(101, &ip, &ports, &mut d).unwrap();
        assert_eq!((s.dir, s.seq, s.ack, s.len, &s.payload[..]), (Direction::ToClient, 7, 9, 5, &b"HTTP/"[..]));
        assert_eq!(s.key.client, "10.0.0.2:40000".parse().unwrap());
        assert_eq!(s.key.server, "10.0.0.1:80".parse().unwrap());
        // Neither port watched: not ours.
        let ip = ipv4_tcp(0, 1, &tcp_ports(81, 40000, b""));
        assert_eq!(decode_frame(101, &ip, &ports, &mut d), Err(Skip::NotWatched));
    }
}
