//! The kernel matrix: the namespace integration tests run again inside virtual machines booted
//! with Debian's own kernel packages (virtme-ng, this machine's root filesystem shared read-only).
//!
//! KVM is tried first; on a nested host where it cannot run stock kernels the VM is booted again
//! under software emulation, which takes ~40 s a boot. Such a host either makes qemu abort
//! ("failed to set MSR") or leaves the guest spinning without a line of output (seen on an Intel
//! host: 30 minutes, nothing): a KVM boot that has not started the tests within
//! [`KVM_BOOT_LIMIT`] is killed and counts as one that failed. Every VM run is also killed at
//! [`VM_RUN_LIMIT`], so that a hung guest fails CI instead of stalling it.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{apt_install, output, step};

/// A Debian kernel series tested in a VM: the newest package whose name matches is installed.
pub struct Series {
    /// What the README calls it.
    pub label: &'static str,
    /// Package-name shape: `linux-image-<prefix><N><suffix>`.
    prefix: &'static str,
    suffix: &'static str,
}

/// Debian 12's stock kernel (netlink attach) and Debian 12's 6.12 (TCX attach).
pub const SERIES: &[Series] = &[
    Series { label: "Debian 12 stock 6.1", prefix: "6.1.0-", suffix: "-amd64" },
    Series { label: "Debian 12 6.12", prefix: "6.12.", suffix: "+deb12-amd64" },
];

/// Integration test binaries of the `mirror-tests` crate that do not run in the VMs, and why.
/// Every other one does: a new test file is in the matrix unless it is listed here.
const NOT_IN_VMS: &[(&str, &str)] = &[
    // The rules they check live in the sans-IO flow module, identical on every kernel; the
    // kernel's part (the egress hook shipping the primary's ACKs) is what every other namespace
    // test needs to mirror anything. Scapy's sniffing under software emulation misses its timeouts.
    ("crafted", "kernel-independent rules; scapy too slow under emulation"),
    // A load test: 20,000 SYN/s cannot be generated in a software-emulated VM.
    ("flood", "load test, not meaningful under emulation"),
    // Hundreds of MB pushed through the daemon and RSS figures: a load test too (the VM has 2 GB).
    ("memory", "load test, not meaningful under emulation"),
    // A browser reading a file the report wrote: no kernel involved.
    ("report", "no kernel involved (mirror report and a headless browser)"),
];

/// The newest installable release of a series (e.g. `6.1.0-56-amd64`).
fn newest(series: &Series) -> Result<String> {
    let list = output(Command::new("apt-cache").args(["search", "--names-only", "^linux-image-"]))?;
    let mut best: Option<(u32, String)> = None;
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rel) = name.strip_prefix("linux-image-") else { continue };
        let Some(mid) = rel.strip_prefix(series.prefix).and_then(|r| r.strip_suffix(series.suffix)) else {
            continue;
        };
        if let Ok(n) = mid.parse::<u32>()
            && best.as_ref().is_none_or(|(b, _)| n > *b)
        {
            best = Some((n, rel.to_string()));
        }
    }
    best.map(|(_, r)| r).with_context(|| format!("no Debian package linux-image-{}N{}", series.prefix, series.suffix))
}

/// Installs (if missing) the newest kernel of every series; returns their releases.
pub fn install_kernels() -> Result<Vec<String>> {
    let mut releases = Vec::new();
    for s in SERIES {
        let installed = installed_release(s);
        let rel = match installed {
            Some(r) => r,
            None => {
                let r = newest(s)?;
                step(&format!("installing Debian's kernel {r} ({}) for the VM tests", s.label));
                apt_install(&[&format!("linux-image-{r}")])?;
                r
            }
        };
        ensure!(Path::new(&format!("/boot/vmlinuz-{rel}")).exists(), "/boot/vmlinuz-{rel} missing after install");
        releases.push(rel);
    }
    Ok(releases)
}

/// A release of `series` already in /boot.
fn installed_release(series: &Series) -> Option<String> {
    let mut found: Vec<(u32, String)> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = name.strip_prefix("vmlinuz-")?.to_string();
            let n = rel.strip_prefix(series.prefix)?.strip_suffix(series.suffix)?.parse().ok()?;
            Some((n, rel))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, r)| r)
}

/// Paths of the namespace test executables, built already (`cargo test --no-run`).
fn test_executables() -> Result<Vec<PathBuf>> {
    let json = output(Command::new("cargo").args(["test", "-p", "mirror-tests", "--no-run", "--message-format=json"]))?;
    let mut exes = Vec::new();
    for line in json.lines() {
        let Some(i) = line.find("\"executable\":\"") else { continue };
        let rest = &line[i + 14..];
        let exe = &rest[..rest.find('"').context("unterminated executable path")?];
        let name = Path::new(exe).file_name().and_then(|n| n.to_str()).unwrap_or("");
        // Integration tests only (tests/tests/*.rs), not the library's or the binaries' unit tests.
        if !line.contains("\"kind\":[\"test\"]") {
            continue;
        }
        let stem = name.rsplit_once('-').map_or(name, |(s, _)| s);
        if NOT_IN_VMS.iter().any(|(t, _)| *t == stem) {
            continue;
        }
        exes.push(PathBuf::from(exe));
    }
    ensure!(exes.len() >= 5, "expected the namespace test binaries, found {exes:?}");
    Ok(exes)
}

/// How long a first KVM boot may take to start the tests (a working one takes seconds).
const KVM_BOOT_LIMIT: Duration = Duration::from_secs(120);

/// The longest a VM may run the namespace tests (they take ~13 minutes under emulation).
const VM_RUN_LIMIT: Duration = Duration::from_secs(40 * 60);

/// Runs `cmd` (vng) in a process group of its own until it exits, or kills the group (qemu with
/// it) when `give_up` says so or [`VM_RUN_LIMIT`] passed. Returns the exit status, `None` if
/// it was killed.
fn run_vm(cmd: &mut Command, give_up: impl Fn(Duration) -> bool) -> Result<Option<std::process::ExitStatus>> {
    use std::os::unix::process::CommandExt as _;
    let mut child = cmd.process_group(0).spawn().context("running vng (virtme-ng)")?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let elapsed = started.elapsed();
        if give_up(elapsed) || elapsed >= VM_RUN_LIMIT {
            let pgid = child.id() as libc::pid_t;
            // SAFETY: a plain syscall; the group is the child's own (process_group(0)).
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Whether KVM can boot a stock kernel here (decided by the first boot, then remembered).
static KVM_WORKS: std::sync::Mutex<Option<bool>> = std::sync::Mutex::new(None);

/// Runs every namespace test inside a VM booted with `/boot/vmlinuz-<release>`.
pub fn test_in_vm(root: &Path, release: &str) -> Result<()> {
    let kernel = format!("/boot/vmlinuz-{release}");
    ensure!(Path::new(&kernel).exists(), "{kernel} is not installed (`cargo xtask setup` installs the matrix)");
    let exes = test_executables()?;
    let out = root.join("target").join("vm").join(release);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    // Inside the VM: release binaries for the daemon and servers (debug ones are slow under
    // emulation), generous timeouts, one test at a time (2 emulated vCPUs).
    let mut script =
        String::from("set -u\nmount -t bpf bpf /sys/fs/bpf 2>/dev/null\nuname -r > \"$OUT/uname\"\nrc=0\n");
    script.push_str(&format!(
        "cd {}\nexport MIRROR_BIN_DIR={} MIRROR_TEST_SLOWDOWN=8 RUST_BACKTRACE=0\n",
        root.display(),
        root.join("target/release").display()
    ));
    for exe in &exes {
        let name = exe.file_name().unwrap().to_string_lossy();
        script.push_str(&format!(
            "echo \"== {name}\"; {} --test-threads=1 > \"$OUT/{name}.log\" 2>&1; r=$?; echo \"$r\" > \"$OUT/{name}.rc\"; [ $r -eq 0 ] || rc=1\n",
            exe.display()
        ));
    }
    script.push_str("echo $rc > \"$OUT/rc\"\n");
    std::fs::write(out.join("run.sh"), script)?;

    let started = Instant::now();
    let mut kvm = *KVM_WORKS.lock().unwrap();
    loop {
        let use_kvm = kvm.unwrap_or(true);
        step(&format!(
            "booting {release} ({}) to run the namespace tests",
            if use_kvm { "KVM" } else { "software emulation" }
        ));
        let mut cmd = Command::new("vng");
        cmd.args(["--run", &kernel, "--cpus", "2", "--memory", "2G", "--rwdir"]).arg(&out).arg("--exec").arg(format!(
            "OUT={} sh {}",
            out.display(),
            out.join("run.sh").display()
        ));
        if !use_kvm {
            cmd.arg("--disable-kvm");
        }
        let log = std::fs::File::create(out.join("console.log"))?;
        cmd.stdout(log.try_clone()?).stderr(log);
        let uname = out.join("uname");
        // A first KVM boot that has not started the tests in time is taken for one that failed.
        let probing = use_kvm && kvm.is_none();
        let status = run_vm(&mut cmd, |elapsed| probing && elapsed >= KVM_BOOT_LIMIT && !uname.exists())?;
        let booted = uname.exists();
        if status.is_none() && booted {
            bail!(
                "the VM with {release} ran past {} min and was killed; see {}",
                VM_RUN_LIMIT.as_secs() / 60,
                out.display()
            );
        }
        let status = status.map_or_else(|| "killed: no boot in time".to_string(), |s| s.to_string());
        if !booted && use_kvm && kvm.is_none() {
            step("KVM cannot boot this kernel here; using software emulation");
            kvm = Some(false);
            *KVM_WORKS.lock().unwrap() = kvm;
            continue;
        }
        if booted && kvm.is_none() {
            *KVM_WORKS.lock().unwrap() = Some(use_kvm);
        }
        ensure!(booted, "the VM with {release} did not boot ({status}); see {}", out.join("console.log").display());
        break;
    }
    let uname = std::fs::read_to_string(out.join("uname"))?;
    ensure!(uname.trim() == release, "the VM ran kernel {uname:?}, not {release}");
    let mut failed = Vec::new();
    for exe in &exes {
        let name = exe.file_name().unwrap().to_string_lossy().into_owned();
        let log = std::fs::read_to_string(out.join(format!("{name}.log"))).unwrap_or_default();
        let summary = log.lines().filter(|l| l.starts_with("test result:")).collect::<Vec<_>>().join(" ");
        let rc = std::fs::read_to_string(out.join(format!("{name}.rc"))).unwrap_or_default();
        println!("xtask: [{release}] {name}: {summary}");
        if rc.trim() != "0" || summary.is_empty() {
            println!("{log}");
            failed.push(name);
        }
    }
    step(&format!("[{release}] namespace tests took {:.0} s in the VM", started.elapsed().as_secs_f64()));
    if !failed.is_empty() {
        bail!("namespace tests failed on kernel {release}: {failed:?} (logs in {})", out.display());
    }
    Ok(())
}
