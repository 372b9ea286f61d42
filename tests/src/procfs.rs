//! What `/proc` says about a process: memory, CPU time (the whole process or one named thread)
//! and its BPF programs' run time (the streaming test's flat-RSS check, the benchmarks' cost
//! figures).

use std::fs;

use anyhow::{Context as _, Result};

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: i32) -> Result<u64> {
    proc_status_kib(pid, "VmRSS")
}

/// Anonymous resident memory of a process (its heap and stacks), in KiB: without the pages of
/// shared mappings, such as the perf rings, which Linux 6.1 counts in `VmRSS` once they are
/// touched (up to 64 MiB) and 6.18 does not.
pub fn anon_rss_kib(pid: i32) -> Result<u64> {
    proc_status_kib(pid, "RssAnon")
}

/// Peak resident memory of a process (its high-water mark), in KiB.
pub fn peak_rss_kib(pid: i32) -> Result<u64> {
    proc_status_kib(pid, "VmHWM")
}

/// A `field: N kB` line of `/proc/<pid>/status`.
fn proc_status_kib(pid: i32, field: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|rest| rest.starts_with(':')))
        .with_context(|| format!("no {field}"))?;
    Ok(line.split_whitespace().nth(1).with_context(|| format!("{field} value"))?.parse()?)
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_seconds(pid: i32) -> Result<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// CPU seconds (user + system) the threads of process `pid` named `name` have used (0 if none
/// is, or was, so named).
pub fn thread_cpu_seconds(pid: i32, name: &str) -> Result<f64> {
    let mut total = 0.0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        if fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim_end() == name) {
            total += stat_cpu_seconds(&task.path().join("stat").to_string_lossy())?;
        }
    }
    Ok(total)
}

/// utime + stime of a `stat` file (a process's or a thread's), in seconds.
fn stat_cpu_seconds(path: &str) -> Result<f64> {
    let stat = fs::read_to_string(path)?;
    let fields: Vec<&str> = stat.rsplit(')').next().context("stat")?.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    Ok(ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
}

/// Total `run_time_ns` and `run_cnt` of the BPF programs process `pid` holds (its fdinfo; counted
/// while `kernel.bpf_stats_enabled` is 1).
pub fn bpf_stats(pid: i32) -> (u64, u64) {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return (0, 0) };
    let mut total = (0, 0);
    for e in dir.flatten() {
        let Ok(text) = fs::read_to_string(e.path()) else { continue };
        if !text.contains("prog_tag:") {
            continue;
        }
        let field = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0)
        };
        total.0 += field("run_time_ns:");
        total.1 += field("run_cnt:");
    }
    total
}

/// Turns `kernel.bpf_stats_enabled` on for its lifetime (restored on drop).
pub struct BpfStats(Option<String>);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    /// Enables the counters.
    pub fn enable() -> Result<BpfStats> {
        let old = fs::read_to_string(BPF_STATS).context("reading kernel.bpf_stats_enabled")?;
        fs::write(BPF_STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(BpfStats(Some(old.trim().to_string())))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(old) = self.0.take() {
            let _ = fs::write(BPF_STATS, old);
        }
    }
}

/// This machine, for benchmark reports: cores, CPU model, memory and kernel.
pub fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_kib = proc_meminfo_kib("MemTotal").unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    format!("{cores} cores ({cpu}), {:.0} GiB, Linux {}", mem_kib as f64 / 1048576.0, kernel.trim())
}

/// A `field: N kB` line of `/proc/meminfo`.
fn proc_meminfo_kib(field: &str) -> Option<u64> {
    let m = fs::read_to_string("/proc/meminfo").ok()?;
    m.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.split_whitespace().next()?.parse().ok())
}
