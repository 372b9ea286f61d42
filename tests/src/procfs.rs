//! What `/proc` says about a process: memory and CPU time (the streaming test's flat-RSS check,
//! the benchmark's cost figures).

use std::fs;

use anyhow::{Context as _, Result};

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: i32) -> Result<u64> {
    proc_status_kib(pid, "VmRSS")
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
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit(')').next().context("stat")?.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    Ok(ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
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
