//! Capture: the kernel side's events, and the thin aya shell that loads, attaches and reads them.
//!
//! [`decode_sample`] is pure (turns one perf sample into a [`Segment`]); [`Capture`] owns the loaded
//! program, its attachments (`attach`: TCX or netlink; `points`: which links, kept in step with
//! `select`, the compiled `capture.interfaces`, and with `links`, the namespace's links as they
//! come and go) and the per-CPU perf buffers. Dropping it detaches everything. `kernel` checks
//! what the running kernel offers before anything is loaded. `dedupe` drops the second sighting
//! of a packet seen at two attach points.

pub mod attach;
pub mod clock;
pub mod dedupe;
pub mod kernel;
pub mod links;
pub mod mute;
pub mod pcap;
mod points;
pub mod ring;
pub mod select;
pub mod tc;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{
        Array, HashMap as BpfHashMap, Map, PerCpuArray,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
    programs::SchedClassifier,
    util::online_cpus,
};
use bytes::Bytes;
use mirror_common::{
    IFACE_REQUESTS_EGRESS, IFACE_REQUESTS_INGRESS, KIND_PACKET, KIND_REVERSE, KIND_REVERSE_TAIL, KIND_TAIL, MAP_ADDRS4,
    MAP_ADDRS6, MAP_MUTED, MAP_PORTS, MAP_SEGMENTS, MAP_SKIP, MAP_STATS, PORT_RESPONSES, PORT_WATCHED, PROGRAM_NAME,
    STAT_COUNT, STAT_NAMES, SegmentEvent, SkipKey,
};

pub use self::points::LinkStats;
use self::{
    attach::{AttachMode, AttachPreference},
    dedupe::Dedupe,
    links::Watcher,
    points::Point,
    ring::{PerfRing, Record},
    select::Selection,
};
use crate::flow::{FlowKey, Mute, Segment};

/// Why a sample could not be turned into a segment (counted, never fatal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its header or than the bytes it says follow.
    Short,
    /// An address family other than 4 or 6.
    BadFamily,
    /// An unknown event kind.
    BadKind,
    /// A payload offset beyond the captured bytes.
    BadOffsets,
}

/// Turns one perf sample (event header + bytes) into a segment, with the kernel timestamp of the
/// packet it came from (`bpf_ktime_get_ns`, for ordering samples across CPU rings).
///
/// `KIND_PACKET` and `KIND_TAIL` are client→server segments (source = client); `KIND_REVERSE` is
/// a server→client segment (source = server), decoded with its key oriented (client, server): its
/// header alone (empty payload), or with its payload on a port whose responses are compared;
/// `KIND_REVERSE_TAIL` is the rest of such a segment's payload.
pub fn decode_sample(sample: &[u8]) -> Result<(u64, Segment), DecodeError> {
    let ev = SegmentEvent::parse(sample).ok_or(DecodeError::Short)?;
    let data = &sample[SegmentEvent::LEN..];
    let captured = ev.captured_len as usize;
    if data.len() < captured {
        return Err(DecodeError::Short);
    }
    let reverse = matches!(ev.kind, KIND_REVERSE | KIND_REVERSE_TAIL);
    let payload = match ev.kind {
        KIND_PACKET | KIND_REVERSE => {
            let start = ev.payload_off as usize;
            if start > captured {
                return Err(DecodeError::BadOffsets);
            }
            // The payload may extend past what was captured inline; that rest came (or was lost)
            // as a KIND_TAIL event of its own.
            let end = start.saturating_add(ev.payload_len as usize).min(captured);
            &data[start..end]
        }
        KIND_TAIL | KIND_REVERSE_TAIL => &data[..captured],
        _ => return Err(DecodeError::BadKind),
    };
    let (src, dst): (IpAddr, IpAddr) = match ev.family {
        4 => {
            let s: [u8; 4] = ev.saddr[..4].try_into().expect("4 bytes");
            let d: [u8; 4] = ev.daddr[..4].try_into().expect("4 bytes");
            (Ipv4Addr::from(s).into(), Ipv4Addr::from(d).into())
        }
        6 => (Ipv6Addr::from(ev.saddr).into(), Ipv6Addr::from(ev.daddr).into()),
        _ => return Err(DecodeError::BadFamily),
    };
    let (src, dst) = (SocketAddr::new(src, ev.sport), SocketAddr::new(dst, ev.dport));
    // Only a SYN's options are read (its window scale).
    let options = match ev.kind {
        KIND_PACKET | KIND_REVERSE if ev.tcp_flags & mirror_common::TCP_SYN != 0 => {
            tcp_options(ev.family, &data[..(ev.payload_off as usize).min(captured)])
        }
        _ => &[],
    };
    let seg = if reverse {
        let key = FlowKey { client: dst, server: src };
        let mut seg = Segment::to_client(key, ev.seq, ev.ack, ev.tcp_flags, ev.payload_len);
        seg.payload = Bytes::copy_from_slice(payload);
        seg
    } else {
        let key = FlowKey { client: src, server: dst };
        let mut seg = Segment::to_server(key, ev.seq, ev.ack, ev.tcp_flags, Bytes::copy_from_slice(payload));
        // The wire length, which the captured payload may fall short of (a lost or oversize tail).
        seg.len = seg.len.max(ev.payload_len);
        seg
    };
    Ok((ev.ts_ns, seg.with_window(ev.window, options)))
}

/// The TCP options among a captured packet's `headers` (Ethernet, IP, TCP: up to the payload),
/// empty if they were not captured (the classifier ships a server's headers only for a SYN-ACK).
fn tcp_options(family: u8, headers: &[u8]) -> &[u8] {
    const ETH: usize = 14;
    let l4 = match family {
        4 => headers.get(ETH).map_or(usize::MAX, |vihl| ETH + usize::from(vihl & 0x0f) * 4),
        _ => ETH + 40,
    };
    headers.get(l4.saturating_add(20)..).unwrap_or(&[])
}

/// The object file built from `mirror-ebpf` by build.rs.
static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mirror"));

/// The loaded, attached classifier and its perf buffers.
pub struct Capture {
    /// Where the classifier is attached, by interface index; detached on drop, before the program
    /// is unloaded.
    points: BTreeMap<u32, Point>,
    /// The compiled `capture.interfaces`.
    selection: Selection,
    /// Link notifications (`None` only if subscribing failed: then links are not followed).
    watcher: Option<Watcher>,
    preference: AttachPreference,
    /// The kernel has TCX.
    tcx: bool,
    stats: LinkStats,
    /// Second sightings of a packet, dropped when it may be seen at more than one point.
    dedupe: Dedupe,
    ebpf: Ebpf,
    /// Kernel-side log records (aya-log), forwarded to `log`/`tracing` at debug level.
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// One perf ring per online CPU (no wake-up per sample: see [`ring`]).
    pub buffers: Vec<PerfRing>,
    /// Where each ring ended when the current drain began.
    heads: Vec<u64>,
    /// How full the fullest ring was when the last drain began (0 to 1).
    fill: f64,
    /// The highest [`Capture::fill`] so far.
    peak_fill: f64,
    /// `capture.batchMs`: the longest a sample waits in a ring to be read.
    batch: std::time::Duration,
    /// The ports marked watched in the kernel's port array.
    ports: Vec<u16>,
    /// The kernel's muted connections ([`Capture::apply_mutes`]).
    mutes: mute::Mutes,
}

impl Capture {
    /// Checks the kernel, loads the program, fills the port and address maps, attaches to each
    /// link `capture.interfaces` matches (TCX on kernels ≥ 6.6 unless `attach` says otherwise,
    /// netlink before), and opens one perf buffer per online CPU. Links named (not globbed) must
    /// exist; links that a glob matches later are attached as they appear ([`Capture::watch_links`]).
    /// On any error nothing stays attached.
    pub fn start(config: &crate::config::Capture, skip: &[SocketAddr], attach: AttachPreference) -> Result<Capture> {
        let support = kernel::check()?;
        tracing::info!(kernel = %support.release, tcx = support.tcx, "kernel checked");
        if attach == AttachPreference::Tcx && !support.tcx {
            bail!(
                "TCX attach was asked for, but this kernel ({}) has no TCX (Linux 6.6 or later): use auto or netlink",
                support.release
            );
        }
        bump_memlock_rlimit();
        let mut ebpf = Ebpf::load(PROGRAM_OBJECT).context("loading the eBPF object")?;
        let logger = aya_log::EbpfLogger::init(&mut ebpf)
            .map_err(|e| tracing::debug!("kernel-side logging not available: {e}"))
            .ok();
        set_ports(&mut ebpf, &[], &config.ports, config.responses)?;
        set_addresses(&mut ebpf, &config.addresses)?;
        set_skip(&mut ebpf, skip)?;
        let prog: &mut SchedClassifier =
            ebpf.program_mut(PROGRAM_NAME).context("classifier missing from the object")?.try_into()?;
        prog.load().context("loading the classifier into the kernel (verifier)")?;
        let perf_map = ebpf.take_map(MAP_SEGMENTS).context("segments map missing")?;
        // Subscribed before the first dump: a link that appears in between is not missed.
        let watcher = match Watcher::open() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!("subscribing to link notifications: {e}; links that appear later are not attached");
                None
            }
        };
        // From here on, dropping `capture` detaches whatever was attached.
        let mut capture = Capture {
            points: BTreeMap::new(),
            selection: Selection::new(&config.interfaces),
            watcher,
            preference: attach,
            tcx: support.tcx,
            stats: LinkStats::default(),
            dedupe: Dedupe::default(),
            ebpf,
            logger,
            buffers: Vec::new(),
            heads: Vec::new(),
            fill: 0.0,
            peak_fill: 0.0,
            mutes: mute::Mutes::default(),
            batch: config.batch,
            ports: config.ports.clone(),
        };
        let all = links::dump().context("listing the links")?;
        for name in capture.selection.names() {
            if !all.iter().any(|l| l.name == name) {
                bail!("no interface named {name:?} in this network namespace");
            }
        }
        capture.reconcile(&all, "start");
        for name in capture.selection.names() {
            if !capture.points.values().any(|p| p.attached.interface == name) {
                bail!("could not attach to {name} (see the log above)");
            }
        }
        for entry in capture.selection.entries().filter(|e| e.is_glob()) {
            let n = capture.points.values().filter(|p| glob_matches(&entry.name, &p.attached.interface)).count();
            tracing::info!(glob = %entry.name, direction = entry.direction.as_str(), links = n, "watching for links");
        }
        let Map::PerfEventArray(perf) = perf_map else { bail!("{MAP_SEGMENTS} is not a perf event array") };
        let perf = Arc::new(perf);
        let cpus = online_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        let mut pages = config.perf_pages_for(cpus.len());
        let buffers = loop {
            match cpus
                .iter()
                .map(|&cpu| PerfRing::open(&perf, cpu, pages).map_err(|e| (cpu, e)))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(buffers) => break buffers,
                // The default size is more than this process may lock (without CAP_IPC_LOCK, as
                // the DaemonSet runs): smaller rings rather than none. A size asked for is kept.
                Err((_, e)) if ring::is_locked_memory(&e) && config.perf_pages.is_none() && pages > 64 => {
                    tracing::warn!(pages_per_cpu = pages, error = %e, "perf ring too large to lock here; halving it (raise RLIMIT_MEMLOCK or grant CAP_IPC_LOCK for bursts)");
                    pages /= 2;
                }
                Err((cpu, e)) => return Err(perf_open_error(cpu, e)),
            }
        };
        tracing::info!(cpus = cpus.len(), pages_per_cpu = pages, "perf ring");
        if buffers.is_empty() {
            bail!("no online CPUs");
        }
        capture.buffers = buffers;
        Ok(capture)
    }

    fn classifier(&mut self) -> Result<&mut SchedClassifier> {
        Ok(self.ebpf.program_mut(PROGRAM_NAME).context("classifier missing from the object")?.try_into()?)
    }

    /// Where the classifier is attached, and how: (interface, mode).
    pub fn attachments(&self) -> impl Iterator<Item = (&str, AttachMode)> {
        self.points.values().map(|p| (p.attached.interface.as_str(), p.attached.mode))
    }

    /// Applies a reloaded `capture` section: ports, addresses and interface entries (links
    /// matched before and now keep their attachment, and their flows), and the mirror endpoints.
    pub fn reconfigure(&mut self, config: &crate::config::Capture, skip: &[SocketAddr]) -> Result<()> {
        // Until every write is done, ports of either set may be marked: if one fails, the next
        // reload clears whichever are not wanted then.
        for &p in &config.ports {
            if !self.ports.contains(&p) {
                self.ports.push(p);
            }
        }
        set_ports(&mut self.ebpf, &self.ports, &config.ports, config.responses)?;
        self.ports.clone_from(&config.ports);
        set_addresses(&mut self.ebpf, &config.addresses)?;
        self.set_skip(skip)?;
        self.set_interfaces(Selection::new(&config.interfaces));
        self.batch = config.batch;
        Ok(())
    }

    /// Copies dropped as a second sighting of one packet.
    pub fn duplicates_dropped(&self) -> u64 {
        self.dedupe.dropped
    }

    /// Whether a packet may be seen at more than one attach point: more than one link, or one
    /// whose requests are captured on both hooks.
    fn may_see_twice(&self) -> bool {
        self.points.len() > 1 || self.points.values().any(|p| p.flags == IFACE_REQUESTS_INGRESS | IFACE_REQUESTS_EGRESS)
    }

    /// Replaces the mirror endpoints whose traffic is never captured.
    pub fn set_skip(&mut self, skip: &[SocketAddr]) -> Result<()> {
        set_skip(&mut self.ebpf, skip)
    }

    /// The kernel's per-CPU counters, summed: (name, value).
    pub fn kernel_stats(&self) -> Result<Vec<(&'static str, u64)>> {
        let map: PerCpuArray<_, u64> = PerCpuArray::try_from(self.ebpf.map(MAP_STATS).context("stats map missing")?)?;
        (0..STAT_COUNT).map(|i| Ok((STAT_NAMES[i as usize], map.get(&i, 0)?.iter().sum()))).collect()
    }

    /// Drains every buffer that has data: samples go to `on_sample`, losses to `on_lost`.
    pub fn drain(&mut self, mut on_sample: impl FnMut(&[u8]), mut on_lost: impl FnMut(u64)) {
        if let Some(logger) = self.logger.as_mut() {
            logger.flush();
        }
        let mut scratch = Vec::new();
        let dedupe = self.may_see_twice();
        let seen = &mut self.dedupe;
        let mut pass = |sample: &[u8]| {
            if !dedupe || SegmentEvent::parse(sample).is_none_or(|ev| seen.first_sighting(&ev)) {
                on_sample(sample);
            }
        };
        // Where each ring ends, taken for all of them before any is read: the batch is then what
        // the kernel had written by (about) one instant. Were each ring read to its end in turn,
        // a segment written to the first ring while the second was read would miss the batch
        // that holds the segments after it from the second: a hole in a flow (given up, as a
        // gap, once a megabyte is held behind it; seen on a slow VM with 2 MB responses).
        self.heads.clear();
        self.heads.extend(self.buffers.iter().map(PerfRing::data_head));
        self.fill = self.buffers.iter().zip(&self.heads).map(|(b, &h)| b.fill(h)).fold(0.0, f64::max);
        self.peak_fill = self.peak_fill.max(self.fill);
        let mut lost = false;
        for (buf, &head) in self.buffers.iter_mut().zip(&self.heads) {
            // (An empty ring reads nothing and gives nothing back.)
            let walked = buf.read_to(head, |record| match record {
                Record::Sample { head, tail } => {
                    if tail.is_empty() {
                        pass(head);
                    } else {
                        scratch.clear();
                        scratch.extend_from_slice(head);
                        scratch.extend_from_slice(tail);
                        pass(&scratch);
                    }
                }
                Record::Lost(count) => {
                    lost = true;
                    on_lost(count);
                }
            });
            if walked.corrupt {
                tracing::warn!("a perf record that does not add up: the rest of that ring was skipped");
            }
        }
        if lost {
            // A ring was full since the last read (the kernel dropped samples), whatever its fill
            // now: the read that finds the loss counts as full.
            self.fill = 1.0;
            self.peak_fill = 1.0;
        }
    }

    /// Mutes or unmutes given-up flows in the kernel as the flow table asked, and arms the
    /// last round's mutes (see [`mute`]); empties `changes`. Called every round in which
    /// `changes` is not empty or [`Capture::mutes_pending`].
    pub fn apply_mutes(&mut self, changes: &mut Vec<Mute>) {
        match self.ebpf.map_mut(MAP_MUTED).map(BpfHashMap::try_from) {
            Some(Ok(mut map)) => self.mutes.apply(&mut map, changes),
            _ => {
                self.mutes.stats.skipped += changes.len() as u64;
                changes.clear();
            }
        }
    }

    /// Whether mutes put in last round wait to be armed, or mutes were put off to this round.
    pub fn mutes_pending(&self) -> bool {
        self.mutes.has_pending()
    }

    /// What became of the flow table's mutes.
    pub fn mute_stats(&self) -> mute::MuteStats {
        self.mutes.stats
    }

    /// How full the fullest ring was when the last [`Capture::drain`] began, 0 to 1: how near
    /// the capture came to losing samples (at 1 the kernel drops them: `kernel.lost`). A drain
    /// that found a loss record says 1: the ring filled between two reads.
    pub fn fill(&self) -> f64 {
        self.fill
    }

    /// The highest [`Capture::fill`] since the start.
    pub fn peak_fill(&self) -> f64 {
        self.peak_fill
    }

    /// The longest a sample waits in a ring before it is read (`capture.batchMs`).
    pub fn batch(&self) -> std::time::Duration {
        self.batch
    }

    /// Waits until a buffer has data, a link notification arrives, or `timeout` passes. The rings
    /// wake a poller only once a quarter full, so while little flows they are looked at every
    /// [`Capture::batch`]: a lone sample waits at most that long.
    pub fn wait(&self, timeout: std::time::Duration) {
        ring::wait(&self.buffers, self.watcher.as_ref().map(Watcher::fd), timeout, self.batch);
    }

    /// Lets a batch gather for `timeout`, woken early if a ring reaches its watermark.
    pub fn gather(&self, timeout: std::time::Duration) {
        ring::wait_watermark(&self.buffers, timeout);
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // Links that went while nobody was reading the notifications are forgotten, not detached.
        self.watch_links();
        let indexes: Vec<u32> = self.points.keys().copied().collect();
        for index in indexes {
            self.detach_link(index, "stop");
        }
    }
}

/// Whether glob `pattern` matches `name` (a glob that does not parse matches nothing).
fn glob_matches(pattern: &str, name: &str) -> bool {
    glob::Pattern::new(pattern).is_ok_and(|p| p.matches(name))
}

/// Marks `ports` watched in the kernel's port array (with `PORT_RESPONSES` if `responses`), then
/// clears the ports of `old` that are no longer watched: a port in both sets is never briefly out.
fn set_ports(ebpf: &mut Ebpf, old: &[u16], ports: &[u16], responses: bool) -> Result<()> {
    let mut map: Array<_, u8> = Array::try_from(ebpf.map_mut(MAP_PORTS).context("ports map missing")?)?;
    let flags = PORT_WATCHED | if responses { PORT_RESPONSES } else { 0 };
    for &p in ports {
        map.set(u32::from(p), flags, 0).with_context(|| format!("watching port {p}"))?;
    }
    for &p in old.iter().filter(|p| !ports.contains(p)) {
        map.set(u32::from(p), 0, 0).with_context(|| format!("unwatching port {p}"))?;
    }
    Ok(())
}

/// Fills the kernel's prefix tries with `capture.addresses` (each family's `/0` when none are
/// given: every address). Prefixes are added before stale ones are removed, so that an address
/// in both the old and the new set is never briefly outside.
fn set_addresses(ebpf: &mut Ebpf, addresses: &[ipnet::IpNet]) -> Result<()> {
    let all = [ipnet::IpNet::from(ipnet::Ipv4Net::default()), ipnet::IpNet::from(ipnet::Ipv6Net::default())];
    let want = if addresses.is_empty() { &all[..] } else { addresses };
    let mut v4: Vec<LpmKey<[u8; 4]>> = Vec::new();
    let mut v6: Vec<LpmKey<[u8; 16]>> = Vec::new();
    for net in want {
        match net {
            ipnet::IpNet::V4(n) => v4.push(LpmKey::new(u32::from(n.prefix_len()), n.network().octets())),
            ipnet::IpNet::V6(n) => v6.push(LpmKey::new(u32::from(n.prefix_len()), n.network().octets())),
        }
    }
    replace_prefixes(ebpf, MAP_ADDRS4, &v4)?;
    replace_prefixes(ebpf, MAP_ADDRS6, &v6)
}

fn replace_prefixes<const N: usize>(ebpf: &mut Ebpf, name: &str, want: &[LpmKey<[u8; N]>]) -> Result<()>
where
    [u8; N]: aya::Pod,
{
    let mut trie: LpmTrie<_, [u8; N], u8> =
        LpmTrie::try_from(ebpf.map_mut(name).with_context(|| format!("{name} map missing"))?)?;
    let same = |a: &LpmKey<[u8; N]>, b: &LpmKey<[u8; N]>| a.prefix_len() == b.prefix_len() && a.data() == b.data();
    let old: Vec<LpmKey<[u8; N]>> = trie.keys().collect::<Result<_, _>>()?;
    for k in want {
        trie.insert(k, 1, 0).context("adding a prefix of capture.addresses")?;
    }
    for k in old.iter().filter(|k| !want.iter().any(|w| same(w, k))) {
        trie.remove(k)?;
    }
    Ok(())
}

/// Explains a failed `perf_event_open`: Debian and Ubuntu kernels default to
/// `kernel.perf_event_paranoid = 3`, which refuses it to everyone without CAP_SYS_ADMIN, CAP_PERFMON
/// included.
fn perf_open_error(cpu: u32, e: impl std::error::Error + Send + Sync + 'static) -> anyhow::Error {
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid").unwrap_or_default();
    let err = anyhow::Error::new(e).context(format!("perf buffer for CPU {cpu}"));
    match paranoid.trim().parse::<i32>() {
        Ok(level) if level > 2 => err.context(format!(
            "kernel.perf_event_paranoid is {level} (Debian's and Ubuntu's default): perf_event_open is refused              to every process without CAP_SYS_ADMIN, CAP_PERFMON included. Set it to 2              (sysctl kernel.perf_event_paranoid=2) or run with CAP_SYS_ADMIN"
        )),
        _ => err,
    }
}

/// The skip-map key of an endpoint address.
pub fn skip_key(addr: &SocketAddr) -> SkipKey {
    let (addr_bytes, family) = key_addr(addr.ip());
    SkipKey { addr: addr_bytes, port: addr.port(), family, _pad: 0 }
}

/// An address as the kernel maps' keys hold it (IPv4 in the first 4 bytes, the rest zero), with
/// its family (4 or 6).
pub fn key_addr(ip: IpAddr) -> ([u8; 16], u8) {
    match ip {
        IpAddr::V4(v4) => {
            let mut a = [0; 16];
            a[..4].copy_from_slice(&v4.octets());
            (a, 4)
        }
        IpAddr::V6(v6) => (v6.octets(), 6),
    }
}

fn set_skip(ebpf: &mut Ebpf, skip: &[SocketAddr]) -> Result<()> {
    let mut map: BpfHashMap<_, SkipKey, u8> =
        BpfHashMap::try_from(ebpf.map_mut(MAP_SKIP).context("skip map missing")?)?;
    let want: Vec<SkipKey> = skip.iter().map(skip_key).collect();
    let old: Vec<SkipKey> = map.keys().collect::<Result<_, _>>()?;
    for k in old.iter().filter(|k| !want.contains(k)) {
        map.remove(k)?;
    }
    for k in &want {
        map.insert(k, 1, 0).context("adding a mirror endpoint to the skip map")?;
    }
    Ok(())
}

fn bump_memlock_rlimit() {
    // Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; harmless on newer ones.
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ev: SegmentEvent, bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; SegmentEvent::LEN];
        // SAFETY: SegmentEvent is plain data.
        unsafe { std::ptr::write_unaligned(v.as_mut_ptr().cast::<SegmentEvent>(), ev) };
        v.extend_from_slice(bytes);
        v
    }

    #[test]
    fn decodes_ipv4_packet_payload_without_padding() {
        let mut frame = vec![0u8; 54];
        frame.extend_from_slice(b"GET / HTTP/1.1\r\n");
        frame.extend_from_slice(&[0, 0]); // Ethernet padding beyond the IP length
        let mut ev =
            SegmentEvent { family: 4, sport: 40000, dport: 80, seq: 9, kind: KIND_PACKET, ..Default::default() };
        ev.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        ev.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        ev.payload_off = 54;
        ev.payload_len = 16;
        ev.captured_len = frame.len() as u32;
        let (ts, s) = decode_sample(&sample(SegmentEvent { ts_ns: 42, ack: 77, ..ev }, &frame)).unwrap();
        assert_eq!(ts, 42);
        assert_eq!((s.seq, s.ack, s.len), (9, 77, 16));
        assert_eq!(&s.payload[..], b"GET / HTTP/1.1\r\n");
        assert_eq!(s.key.client, "10.0.0.1:40000".parse().unwrap());
        assert_eq!(s.key.server, "10.0.0.2:80".parse().unwrap());
    }

    /// Linux's SYN options: MSS 1460, SACK permitted, timestamps, NOP, window scale `shift`.
    fn linux_syn_options(shift: u8) -> Vec<u8> {
        vec![2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, shift]
    }

    #[test]
    fn the_window_and_a_syns_window_scale_come_from_the_headers() {
        // A SYN-ACK from 10.0.0.2:80 shipped with its headers (Ethernet, IPv4 with 4 bytes of
        // options, TCP with Linux's options): window 65,160, scale 7.
        let opts = linux_syn_options(7);
        let mut frame = vec![0u8; 14];
        frame.extend_from_slice(&[0x46; 1]);
        frame.extend_from_slice(&[0u8; 23]);
        frame.extend_from_slice(&[0u8; 20]);
        frame.extend_from_slice(&opts);
        let mut ev = SegmentEvent {
            family: 4,
            sport: 80,
            dport: 40000,
            tcp_flags: mirror_common::TCP_SYN | mirror_common::TCP_ACK,
            kind: KIND_REVERSE,
            window: 65_160,
            payload_off: frame.len() as u32,
            captured_len: frame.len() as u32,
            ..Default::default()
        };
        ev.saddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        ev.daddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        let (_, s) = decode_sample(&sample(ev, &frame)).unwrap();
        assert_eq!((s.window, s.wscale, s.payload.len()), (65_160, Some(7), 0));
        // An ACK carries its window; its options are never read for a scale.
        let ack = SegmentEvent { tcp_flags: mirror_common::TCP_ACK, ..ev };
        assert_eq!(decode_sample(&sample(ack, &frame)).map(|(_, s)| (s.window, s.wscale)), Ok((65_160, None)));
        // A SYN-ACK whose headers were not shipped (an older daemon's classifier): no scale.
        let bare = SegmentEvent { payload_off: 0, captured_len: 0, ..ev };
        assert_eq!(decode_sample(&sample(bare, b"")).map(|(_, s)| s.wscale), Ok(None));
        // A client's IPv6 SYN, whole, as the forward path ships it.
        let mut frame = vec![0u8; 14 + 40 + 20];
        frame.extend_from_slice(&linux_syn_options(9));
        let syn = SegmentEvent {
            family: 6,
            sport: 40000,
            dport: 80,
            tcp_flags: mirror_common::TCP_SYN,
            kind: KIND_PACKET,
            window: 64_800,
            payload_off: frame.len() as u32,
            captured_len: frame.len() as u32,
            ..Default::default()
        };
        let (_, s) = decode_sample(&sample(syn, &frame)).unwrap();
        assert_eq!((s.dir, s.window, s.wscale), (crate::flow::Direction::ToServer, 64_800, Some(9)));
    }

    #[test]
    fn window_scale_options_that_do_not_add_up_are_not_read() {
        use crate::flow::window_scale;
        assert_eq!(window_scale(&linux_syn_options(14)), Some(14));
        assert_eq!(window_scale(&[3, 3, 2]), Some(2));
        assert_eq!(window_scale(&[]), None);
        // Without the option, after an end-of-list, or past a length that does not add up.
        assert_eq!(window_scale(&[2, 4, 5, 180, 1, 1, 1, 1]), None);
        assert_eq!(window_scale(&[0, 3, 3, 7]), None);
        assert_eq!(window_scale(&[8, 0, 3, 3, 7]), None, "a zero length would loop forever");
        assert_eq!(window_scale(&[8, 1, 3, 3, 7]), None);
        assert_eq!(window_scale(&[8, 12, 3, 3, 7]), None, "past the end");
        assert_eq!(window_scale(&[3, 4, 7, 0]), None, "a scale option is 3 bytes long");
        assert_eq!(window_scale(&[3, 3]), None, "cut short");
        assert_eq!(window_scale(&[1, 1, 3]), None, "a kind without its length");
    }

    #[test]
    fn decodes_ipv6_tail_and_rejects_garbage() {
        let mut ev = SegmentEvent {
            family: 6,
            sport: 1,
            dport: 2,
            kind: KIND_TAIL,
            captured_len: 3,
            payload_len: 3,
            ..Default::default()
        };
        ev.saddr[15] = 1;
        ev.daddr[15] = 2;
        let (_, s) = decode_sample(&sample(ev, b"abc")).unwrap();
        assert_eq!(s.key.client, "[::1]:1".parse().unwrap());
        assert_eq!(&s.payload[..], b"abc");
        assert_eq!((s.dir, s.len), (crate::flow::Direction::ToServer, 3));
        assert_eq!(decode_sample(&[1, 2, 3]), Err(DecodeError::Short));
        assert_eq!(decode_sample(&sample(ev, b"ab")), Err(DecodeError::Short));
        assert_eq!(decode_sample(&sample(SegmentEvent { kind: 9, ..ev }, b"abc")), Err(DecodeError::BadKind));
        assert_eq!(decode_sample(&sample(SegmentEvent { family: 5, ..ev }, b"abc")), Err(DecodeError::BadFamily));
        let bad = SegmentEvent { kind: KIND_PACKET, payload_off: 10, ..ev };
        assert_eq!(decode_sample(&sample(bad, b"abc")), Err(DecodeError::BadOffsets));
    }

    #[test]
    fn decodes_a_reverse_header_as_a_server_to_client_segment() {
        // The server 10.0.0.2:80 acknowledges up to 1234 and sends 7 payload bytes (not shipped).
        let mut ev = SegmentEvent {
            family: 4,
            sport: 80,
            dport: 40000,
            seq: 5000,
            ack: 1234,
            tcp_flags: mirror_common::TCP_ACK,
            kind: KIND_REVERSE,
            payload_len: 7,
            ts_ns: 9,
            ..Default::default()
        };
        ev.saddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        ev.daddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        let (ts, s) = decode_sample(&sample(ev, b"")).unwrap();
        assert_eq!(ts, 9);
        assert_eq!(s.dir, crate::flow::Direction::ToClient);
        assert_eq!(s.key.client, "10.0.0.1:40000".parse().unwrap());
        assert_eq!(s.key.server, "10.0.0.2:80".parse().unwrap());
        assert_eq!((s.seq, s.ack, s.flags, s.len, s.payload.len()), (5000, 1234, mirror_common::TCP_ACK, 7, 0));
        // A port whose responses are compared: the payload follows (after 2 header bytes here),
        // then the rest of an oversized skb as a reverse tail.
        let with = SegmentEvent { captured_len: 5, payload_off: 2, payload_len: 7, ..ev };
        let (_, s) = decode_sample(&sample(with, b"hdabc")).unwrap();
        assert_eq!((s.dir, &s.payload[..], s.len), (crate::flow::Direction::ToClient, &b"abc"[..], 7));
        let tail = SegmentEvent { kind: KIND_REVERSE_TAIL, captured_len: 4, payload_len: 4, seq: 5003, ..ev };
        let (_, s) = decode_sample(&sample(tail, b"defg")).unwrap();
        assert_eq!(
            (s.dir, &s.payload[..], s.seq, s.key.server),
            (crate::flow::Direction::ToClient, &b"defg"[..], 5003, "10.0.0.2:80".parse().unwrap())
        );
    }

    // ---- Adversarial tests of the window/window-scale decode (review of 0976cc5) ----

    /// Every event kind, family and flag set over frames of every length up to 160 bytes, with
    /// every IHL, TCP data offset, payload offset and captured length (within and beyond the
    /// bytes that follow): never a panic, and a scale read only from a SYN.
    #[test]
    fn decode_never_panics_on_odd_headers_offsets_and_lengths() {
        use mirror_common::{TCP_ACK, TCP_SYN};
        let mut decoded = 0u32;
        for kind in [KIND_PACKET, KIND_REVERSE, KIND_TAIL, KIND_REVERSE_TAIL, 9] {
            for family in [4u8, 6, 0] {
                for flags in [TCP_SYN, TCP_SYN | TCP_ACK, TCP_ACK] {
                    for vihl in [0x40u8, 0x41, 0x45, 0x46, 0x4f, 0xff, 0x00] {
                        for len in (0..=160usize).step_by(7) {
                            // A frame of option-like bytes: window scale kinds and lengths.
                            let mut frame: Vec<u8> = (0..len).map(|i| [3u8, 3, 14, 1, 0, 2, 255][i % 7]).collect();
                            if len > 14 {
                                frame[14] = vihl;
                            }
                            for payload_off in [0u32, 1, 14, 33, 34, 53, 54, 74, 94, 134, 160, 161, u32::MAX] {
                                for captured in
                                    [0u32, len as u32, (len as u32).saturating_sub(1), len as u32 + 1, u32::MAX]
                                {
                                    let ev = SegmentEvent {
                                        family,
                                        sport: 80,
                                        dport: 40000,
                                        tcp_flags: flags,
                                        kind,
                                        window: 0xffff,
                                        payload_off,
                                        payload_len: u32::MAX,
                                        captured_len: captured,
                                        ..Default::default()
                                    };
                                    if let Ok((_, s)) = decode_sample(&sample(ev, &frame)) {
                                        decoded += 1;
                                        assert_eq!(s.window, 0xffff);
                                        if flags & TCP_SYN == 0 {
                                            assert_eq!(s.wscale, None);
                                        }
                                        if let Some(w) = s.wscale {
                                            assert!([3, 14, 1, 0, 2, 255].contains(&w));
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(decoded > 0);
        // And a sample shorter than the event header.
        assert_eq!(decode_sample(&[0u8; 3]).map(|_| ()), Err(DecodeError::Short));
    }

    /// A SYN-ACK whose captured headers stop inside the TCP header or its options (a classifier
    /// that shipped fewer bytes than the header says): no scale, no panic.
    #[test]
    fn a_syn_ack_cut_inside_its_headers_has_no_scale() {
        let mut frame = vec![0u8; 14];
        frame.push(0x45);
        frame.extend_from_slice(&[0u8; 19]);
        frame.extend_from_slice(&[0u8; 20]);
        frame.extend_from_slice(&[1, 3, 3, 7]);
        let whole = SegmentEvent {
            family: 4,
            sport: 80,
            dport: 40000,
            tcp_flags: mirror_common::TCP_SYN | mirror_common::TCP_ACK,
            kind: KIND_REVERSE,
            window: 100,
            payload_off: frame.len() as u32,
            captured_len: frame.len() as u32,
            ..Default::default()
        };
        for cut in 0..frame.len() {
            let ev = SegmentEvent { captured_len: cut as u32, ..whole };
            let got = decode_sample(&sample(ev, &frame[..cut]));
            // payload_off beyond what was captured: refused, never read past the bytes.
            assert_eq!(got.map(|_| ()), Err(DecodeError::BadOffsets), "cut at {cut}");
        }
        assert_eq!(decode_sample(&sample(whole, &frame)).map(|(_, s)| s.wscale), Ok(Some(7)));
        // The same headers with the option cut off (payload_off inside the options).
        let cut = SegmentEvent { payload_off: frame.len() as u32 - 1, ..whole };
        assert_eq!(decode_sample(&sample(cut, &frame)).map(|(_, s)| s.wscale), Ok(None));
    }

    /// Every option list of up to 4 bytes over the kinds and lengths that matter, and random
    /// longer ones: the walk ends, and a scale it returns is the third byte of a 3, 3 option.
    #[test]
    fn window_scale_walks_every_short_option_list_safely() {
        use crate::flow::window_scale;
        let alphabet = [0u8, 1, 2, 3, 4, 5, 8, 10, 14, 40, 255];
        let mut lists: Vec<Vec<u8>> = vec![vec![]];
        let mut last: Vec<Vec<u8>> = vec![vec![]];
        for _ in 0..4 {
            last = last.iter().flat_map(|l| alphabet.iter().map(move |&b| [&l[..], &[b]].concat())).collect();
            lists.extend(last.iter().cloned());
        }
        for l in &lists {
            if let Some(w) = window_scale(l) {
                assert!(l.windows(3).any(|o| o[0] == 3 && o[1] == 3 && o[2] == w), "{l:?}");
            }
        }
        // A 40-byte option area of NOPs then the option: found.
        let mut l = vec![1u8; 37];
        l.extend_from_slice(&[3, 3, 9]);
        assert_eq!(window_scale(&l), Some(9));
        // A length of 255 in a 40-byte area: past the end, not read.
        assert_eq!(window_scale(&[8, 255, 3, 3, 9]), None);
    }

    proptest::proptest! {
        #[test]
        fn window_scale_never_panics(opts in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = crate::flow::window_scale(&opts);
        }
    }
}
