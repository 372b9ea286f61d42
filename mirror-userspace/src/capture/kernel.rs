//! What the running kernel must offer, checked before anything is loaded or attached, so that a
//! kernel that lacks a feature gets a message naming it (and the version that brought it) instead
//! of a verifier dump or a netlink error. The README's kernel table lists the same features.

use anyhow::{Result, bail};
use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
    util::KernelVersion,
};

/// A kernel feature the classifier or the daemon relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// What it is, as the error message names it.
    pub name: &'static str,
    /// The Linux release that brought it.
    pub since: &'static str,
    /// Whether mirroring works without it (with what the fallback is).
    pub fallback: Option<&'static str>,
}

/// TC classifier programs (`BPF_PROG_TYPE_SCHED_CLS`).
pub const SCHED_CLS: Feature =
    Feature { name: "eBPF TC classifier programs (BPF_PROG_TYPE_SCHED_CLS)", since: "4.1", fallback: None };
/// Per-CPU perf event arrays, the segment ring.
pub const PERF_EVENT_ARRAY: Feature = Feature { name: "BPF perf event array maps", since: "4.3", fallback: None };
/// Hash maps (skipped endpoints, attached interfaces).
pub const HASH_MAP: Feature = Feature { name: "BPF hash maps", since: "3.19", fallback: None };
/// Arrays (the watched ports' flags).
pub const ARRAY_MAP: Feature = Feature { name: "BPF array maps", since: "3.19", fallback: None };
/// Longest-prefix-match tries (`capture.addresses`).
pub const LPM_TRIE: Feature = Feature { name: "BPF LPM trie maps", since: "4.11", fallback: None };
/// LRU hash maps (muted connections).
pub const LRU_HASH: Feature = Feature { name: "BPF LRU hash maps", since: "4.10", fallback: None };
/// Per-CPU arrays (counters, tail scratch space).
pub const PERCPU_ARRAY: Feature = Feature { name: "BPF per-CPU array maps", since: "4.6", fallback: None };
/// The ring buffer that carries the classifier's aya-log records.
pub const RINGBUF: Feature = Feature { name: "BPF ring buffer maps (aya-log records)", since: "5.8", fallback: None };
/// `bpf_perf_event_output` from a TC program, with skb bytes appended (`BPF_F_CTXLEN_MASK`).
pub const PERF_OUTPUT: Feature =
    Feature { name: "bpf_perf_event_output from TC programs (skb payload appended)", since: "4.8", fallback: None };
/// `bpf_skb_load_bytes`, for headers and the tail of a GSO skb.
pub const SKB_LOAD_BYTES: Feature = Feature { name: "bpf_skb_load_bytes", since: "4.5", fallback: None };
/// `bpf_ktime_get_ns`, to order samples across CPU rings.
pub const KTIME: Feature = Feature { name: "bpf_ktime_get_ns", since: "4.1", fallback: None };
/// TCX: BPF links on the TC hooks, released by the kernel when the daemon dies.
pub const TCX: Feature = Feature {
    name: "TCX (BPF links on TC hooks)",
    since: "6.6",
    fallback: Some("netlink: a clsact qdisc and a named direct-action filter, removed at exit or at the next start"),
};

/// What the running kernel offers, as far as capture is concerned.
#[derive(Debug, Clone)]
pub struct Support {
    /// `uname -r`.
    pub release: String,
    /// TCX attachment is available (Linux ≥ 6.6).
    pub tcx: bool,
}

/// The running kernel's release string (`uname -r`).
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into())
}

/// Checks every feature the classifier needs; the first missing one is named in the error.
pub fn check() -> Result<Support> {
    let release = release();
    let missing = |f: Feature| -> anyhow::Error {
        anyhow::anyhow!(
            "this kernel ({release}) lacks {} (Linux {} or later); mirror needs it. See the README's kernel table.",
            f.name,
            f.since
        )
    };
    let probe = |f: Feature, r: Result<bool, String>| -> Result<()> {
        match r {
            Ok(true) => Ok(()),
            Ok(false) => Err(missing(f)),
            Err(e) => bail!(
                "could not check for {} on kernel {release}: {e} (the daemon needs CAP_BPF, or root on kernels before 5.8)",
                f.name
            ),
        }
    };
    probe(SCHED_CLS, is_program_supported(ProgramType::SchedClassifier).map_err(|e| e.to_string()))?;
    for (f, map) in [
        (HASH_MAP, MapType::Hash),
        (ARRAY_MAP, MapType::Array),
        (LRU_HASH, MapType::LruHash),
        (LPM_TRIE, MapType::LpmTrie),
        (PERCPU_ARRAY, MapType::PerCpuArray),
        (PERF_EVENT_ARRAY, MapType::PerfEventArray),
        (RINGBUF, MapType::RingBuf),
    ] {
        probe(f, is_map_supported(map).map_err(|e| e.to_string()))?;
    }
    for (f, helper) in [
        (PERF_OUTPUT, BpfHelper::BPF_FUNC_perf_event_output),
        (SKB_LOAD_BYTES, BpfHelper::BPF_FUNC_skb_load_bytes),
        (KTIME, BpfHelper::BPF_FUNC_ktime_get_ns),
    ] {
        probe(f, is_helper_supported(ProgramType::SchedClassifier, helper).map_err(|e| e.to_string()))?;
    }
    let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
    Ok(Support { release, tcx })
}
