//! Captures built in memory for tests: raw IPv4 packets (LINKTYPE_RAW) written as a pcap file.

use std::{io::Write, path::Path, time::Duration};

/// An IPv4 header (20 bytes, TTL 64, TCP, no checksum) from `src` to `dst` with IP id `id` and
/// flags/fragment offset field `frag` (MF is 0x2000, the offset in 8-byte units), then `payload`.
pub(crate) fn ipv4(src: [u8; 4], dst: [u8; 4], id: u16, frag: u16, payload: &[u8]) -> Vec<u8> {
    let len = (20 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&len.to_be_bytes());
    ip.extend_from_slice(&id.to_be_bytes());
    ip.extend_from_slice(&frag.to_be_bytes());
    ip.extend_from_slice(&[64, 6, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    ip.extend_from_slice(payload);
    ip
}

/// A TCP header (20 bytes, window 65535, no checksum), then `payload`.
pub(crate) fn tcp(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + payload.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

/// Writes `packets` (raw IP, with their capture times) as a pcap file at `path`.
pub(crate) fn write_pcap(path: &Path, packets: impl IntoIterator<Item = (Duration, Vec<u8>)>) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    // Magic, version 2.4, zone, sigfigs, snaplen, LINKTYPE_RAW.
    for field in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65_535, 101] {
        w.write_all(&field.to_le_bytes())?;
    }
    for (ts, p) in packets {
        let len = p.len() as u32;
        for field in [ts.as_secs() as u32, ts.subsec_micros(), len, len] {
            w.write_all(&field.to_le_bytes())?;
        }
        w.write_all(&p)?;
    }
    w.flush()
}
