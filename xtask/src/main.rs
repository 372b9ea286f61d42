//! `cargo xtask setup | build | demo | test`: everything from a fresh machine, printing each step.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::{Parser, Subcommand};

mod tools;
mod vm;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need: nightly rust-src, LLVM dev files matching nightly's
    /// LLVM, bpf-linker built against them, and the test tools (iproute2, curl).
    Setup,
    /// Set up, then build the eBPF program, the daemon and the test binaries.
    Build,
    /// Run Istio's mirroring task in network namespaces with config/httpbin.yaml.
    Demo,
    /// Run every test: unit, property, config examples, the namespace integration tests on this
    /// kernel, then the namespace tests again in VMs booted with Debian 12's 6.1 and 6.12 kernels.
    Test {
        /// Only run the namespace tests in a VM with this installed kernel release (as in
        /// /boot/vmlinuz-<release>, e.g. 6.1.0-56-amd64).
        #[arg(long)]
        kernel: Option<String>,
    },
    /// Replay every capture of ../shared/corpus with `mirror replay` to a local recording server
    /// and compare what arrives with the ground truth.
    Corpus,
    /// Benchmarks in namespaces, our daemon side by side with GoReplay 1.3.3 and nginx's mirror
    /// module (primary latency in interleaved pairs, fidelity at stepped rates, closed-loop
    /// saturation, CPU and the classifier's kernel time) and offline framing throughput; writes
    /// BENCHMARKS.md and its plots.
    Bench {
        /// Seconds per latency run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Constant request rates of the latency pairs, comma-separated.
        #[arg(long, default_value = "2000,8000")]
        rates: String,
        /// What else the machine was doing during the run, for the report.
        #[arg(long)]
        note: Option<String>,
    },
    /// Run the cargo-fuzz targets (framer, reassembler, config, pairer), each for `seconds`; crashes land in
    /// fuzz/artifacts/ and should become regression tests.
    Fuzz {
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.command {
        Task::Setup => setup(),
        Task::Build => {
            setup()?;
            build()
        }
        Task::Demo => {
            setup()?;
            build()?;
            demo()
        }
        Task::Test { kernel } => {
            setup()?;
            build()?;
            match kernel {
                Some(release) => {
                    require_root("cargo xtask test --kernel")?;
                    build_release()?;
                    vm::test_in_vm(&root, &release)
                }
                None => test(&root),
            }
        }
        Task::Bench { seconds, rates, note } => {
            setup()?;
            bench(seconds, &rates, note)
        }
        Task::Fuzz { seconds } => {
            setup()?;
            fuzz(seconds)
        }
        Task::Corpus => {
            setup()?;
            build()?;
            run(&mut Command::new("target/debug/corpus"))
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn step(msg: &str) {
    println!("xtask: {msg}");
}

fn run(cmd: &mut Command) -> Result<()> {
    step(&format!("$ {}", display(cmd)));
    let st = cmd.status().with_context(|| format!("running {}", display(cmd)))?;
    ensure!(st.success(), "{} failed ({st})", display(cmd));
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {}", display(cmd)))?;
    ensure!(out.status.success(), "{} failed: {}", display(cmd), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn have(program: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|o| o.status.success())
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!("installing Debian packages: {}", missing.join(" ")));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// nightly's LLVM major version, from `rustc +nightly -vV`.
fn nightly_llvm_major() -> Result<u32> {
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let line = vv.lines().find_map(|l| l.strip_prefix("LLVM version: ")).context("no LLVM version in rustc -vV")?;
    line.split('.').next().unwrap_or("").trim().parse().with_context(|| format!("LLVM version {line:?}"))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"))
}

fn setup() -> Result<()> {
    ensure!(have("rustup"), "rustup is needed (the Rust toolchain manager)");
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        step("installing the nightly toolchain (the eBPF program builds core with -Z build-std)");
        run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let components =
        output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        step("adding rust-src to nightly");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    let llvm = nightly_llvm_major()?;
    let stamp = cargo_home().join(".mirror-bpf-linker-llvm");
    let linker_ok = have("bpf-linker") && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == llvm.to_string());
    if !linker_ok {
        step(&format!("nightly uses LLVM {llvm}: building bpf-linker against llvm-{llvm}"));
        apt_install(&[&format!("llvm-{llvm}-dev"), "libzstd-dev", "zlib1g-dev"])?;
        let bindir = output(Command::new(format!("llvm-config-{llvm}")).arg("--bindir"))?.trim().to_string();
        let path = format!("{bindir}:{}", std::env::var("PATH").unwrap_or_default());
        run(Command::new("cargo")
            .args(["install", "bpf-linker", "--locked", "--force", "--no-default-features", "--features"])
            .arg(format!("llvm-{llvm}"))
            .env("PATH", path))?;
        std::fs::write(&stamp, llvm.to_string())?;
    }
    // Every program the tests, the demo, the VM runs and the bench invoke: one list.
    apt_install(&tools::debian_packages())?;
    for pkg in tools::pypi_packages() {
        let program = tools::TOOLS.iter().find(|(_, s)| *s == tools::Source::Pypi(pkg)).map(|(p, _)| *p);
        if program.is_some_and(have) {
            continue;
        }
        step(&format!("installing {pkg} from PyPI"));
        run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "--root-user-action=ignore", pkg]))?;
    }
    for (module, pkg) in tools::PYTHON_MODULES {
        let present = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !present {
            step(&format!("installing {pkg} from PyPI (python module {module})"));
            run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "--root-user-action=ignore", pkg]))?;
        }
    }
    let kernels = vm::install_kernels()?;
    step(&format!("toolchain ready (nightly LLVM {llvm}, bpf-linker, rust-src); VM kernels {kernels:?}"));
    Ok(())
}

fn build() -> Result<()> {
    run(Command::new("cargo").args(["build", "--bins", "--tests"]))
}

/// Release binaries: what the VM runs use for the daemon and the servers (emulation is slow).
fn build_release() -> Result<()> {
    run(Command::new("cargo").args(["build", "--release", "--bins"]))
}

/// Namespaces left by a run that was killed before it could clean up.
fn sweep_namespaces() -> Result<()> {
    let list = output(Command::new("ip").args(["netns", "list"]))?;
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()).filter(|n| n.starts_with("mirrort")) {
        // mirrort<pid>x<n>...: leave the namespaces of a test process that is still running.
        let pid = ns["mirrort".len()..].split('x').next().unwrap_or("");
        if !pid.is_empty() && Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        step(&format!("removing leftover namespace {ns} and the processes left in it"));
        if let Ok(pids) = output(Command::new("ip").args(["netns", "pids", ns])) {
            for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                // SAFETY: kill(2) on a process inside a test namespace nobody uses any more.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
    Ok(())
}

fn require_root(what: &str) -> Result<()> {
    let uid = output(Command::new("id").arg("-u"))?;
    if uid.trim() != "0" {
        bail!("{what} needs root (network namespaces, loading and attaching eBPF): run it as root");
    }
    Ok(())
}

/// Every crate linted with warnings as errors: the userspace ones on the host, the eBPF one for
/// its BPF target (clippy would not see it otherwise: it is not a default member).
fn lint() -> Result<()> {
    run(Command::new("cargo").args(["fmt", "--all", "--", "--check"]))?;
    run(Command::new("cargo").args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    run(Command::new("cargo")
        .current_dir("mirror-ebpf")
        .args(["+nightly", "clippy", "--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--target-dir", "../target/ebpf-clippy", "--", "-D", "warnings"]))?;
    // The fuzz targets (their own workspace, nightly for cargo-fuzz) must keep compiling.
    run(Command::new("cargo").current_dir("fuzz").args(["+nightly", "check", "--bins"]))
}

fn test(root: &Path) -> Result<()> {
    require_root("cargo xtask test")?;
    lint()?;
    sweep_namespaces()?;
    let result = run(Command::new("cargo").args(["test", "--no-fail-fast"]));
    sweep_namespaces()?;
    result?;
    // Each fuzz target runs briefly from an empty corpus (a smoke run: `cargo xtask fuzz` is
    // the long one); a crash fails the test run.
    fuzz(FUZZ_SMOKE_SECONDS)?;
    // The benchmarks are not run here, only built.
    run(Command::new("cargo").args(["bench", "-p", "mirror-userspace", "--no-run"]))?;
    // End to end over the shared corpus: `mirror replay` to a loopback recording server.
    run(&mut Command::new("target/debug/corpus"))?;
    // The kernel matrix: the namespace tests again on Debian's kernels (netlink and TCX attach).
    build_release()?;
    let mut failed = Vec::new();
    for release in vm::install_kernels()? {
        if let Err(e) = vm::test_in_vm(root, &release) {
            println!("xtask: {e:#}");
            failed.push(release);
        }
    }
    ensure!(failed.is_empty(), "namespace tests failed in the VMs with kernels {failed:?}");
    Ok(())
}

fn bench(seconds: u64, rates: &str, note: Option<String>) -> Result<()> {
    require_root("cargo xtask bench")?;
    // GoReplay 1.3.3 is built from the vendored source in ../shared/peers (Go and libpcap from
    // Debian; go is on the tool list, setup installed it).
    apt_install(&["libpcap-dev"])?;
    let peers = Path::new("../shared/peers/build-goreplay.sh");
    ensure!(peers.exists(), "{} is missing: the bench runs GoReplay side by side", peers.display());
    run(Command::new("bash").arg(peers).arg("target/peers"))?;
    run(Command::new("cargo").args(["build", "--release", "--bins"]))?;
    run(Command::new("cargo").args(["bench", "-p", "mirror-userspace", "--bench", "framing"]))?;
    sweep_namespaces()?;
    let mut cmd = Command::new("target/release/bench");
    cmd.args(["--out", "BENCHMARKS.md", "--criterion", "target/criterion", "--gor", "target/peers/gor"])
        .args(["--seconds", &seconds.to_string(), "--rates", rates])
        .env("MIRROR_BIN_DIR", "target/release");
    if let Some(n) = note {
        cmd.args(["--note", &n]);
    }
    let result = run(&mut cmd)
        .and_then(|()| {
            // The daemon's memory and the mirror's delay under issue 12's attacks (its own section).
            run(Command::new("target/release/bench-memory")
                .args(["--out", "BENCHMARKS.md"])
                .env("MIRROR_BIN_DIR", "target/release"))
        })
        .and_then(|()| {
            // What comparing the mirror's responses with the primary's costs (issue 15, its own section).
            run(Command::new("target/release/bench-compare")
                .args(["--out", "BENCHMARKS.md"])
                .env("MIRROR_BIN_DIR", "target/release"))
        });
    sweep_namespaces()?;
    result
}

/// Seconds per fuzz target in `cargo xtask test`.
const FUZZ_SMOKE_SECONDS: u64 = 20;

fn fuzz(seconds: u64) -> Result<()> {
    if !have("cargo-fuzz") {
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    for target in ["framer", "reassembler", "config", "pairer"] {
        let corpus = format!("corpus/{target}");
        std::fs::create_dir_all(Path::new("fuzz").join(&corpus))?;
        run(Command::new("cargo")
            .current_dir("fuzz")
            .args(["+nightly", "fuzz", "run", target, &corpus, "--"])
            .arg(format!("-max_total_time={seconds}")))?;
    }
    Ok(())
}

fn demo() -> Result<()> {
    require_root("cargo xtask demo")?;
    sweep_namespaces()?;
    // Ctrl-C reaches the demo too; it cleans up and exits. We wait for it, then sweep.
    // SAFETY: ignoring SIGINT in this process; the demo installs its own handler.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let result = run(Command::new("target/debug/demo").args(["--config", "config/httpbin.yaml"]));
    sweep_namespaces()?;
    result
}
