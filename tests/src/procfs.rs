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
