use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use mirror::{
    capture::attach::{self, AttachPreference},
    config::Config,
};

/// mimalloc: per-thread heaps, and a free from another thread (a request is allocated on the
/// capture thread and freed on a replay worker) goes back without the arena lock glibc takes.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Shadow production HTTP traffic from the packet path.
#[derive(Parser)]
#[command(name = "mirror", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to the configured interfaces and mirror live traffic until SIGINT/SIGTERM; SIGHUP
    /// reloads the config (an invalid one is refused and the current one stays).
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Where Prometheus metrics are served (text format, any path).
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics_addr: std::net::SocketAddr,
        /// How to attach: tcx where the kernel has it and netlink otherwise (auto), or force one.
        #[arg(long, value_enum, default_value_t = Attach::Auto)]
        attach: Attach,
        /// Added to the daemon's nice value (0-19; every thread inherits it). 0 (the default)
        /// keeps the priority it was started with: on a saturated machine the daemon takes its
        /// share of the CPU and mirrors every request. Above 0, when the CPU is contended the
        /// primary's processes run first and the daemon may fall behind: what its kernel rings
        /// and queues cannot hold is lost and counted (README, "Priority").
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=19))]
        nice: i32,
        /// The daemon's scheduling policy (every thread inherits it). `batch` (the default):
        /// Linux's SCHED_BATCH, for work that is not interactive: a wake-up of the daemon never
        /// preempts the task running on that CPU (the primary, say); the daemon waits for it to
        /// block or for the scheduler's tick, and still gets its fair share of a busy CPU (the
        /// nice value applies as usual). `normal`: the policy it was started with (SCHED_OTHER
        /// as a rule).
        #[arg(long, value_enum, default_value_t = Sched::Batch)]
        sched: Sched,
        /// The time slice the scheduler gives the daemon's threads, in milliseconds (Linux 6.12
        /// and later: EEVDF's `sched_attr.sched_runtime`; older kernels ignore it). The default,
        /// 10, is longer than the kernel's (0.7 ms times 1 + log2 of the CPUs): a task that wakes
        /// with a shorter slice may preempt the daemon as soon as the scheduler finds it due,
        /// where a slice as short as its own would protect the daemon's run for up to that slice.
        /// The daemon's share of a busy CPU is the same. 0 keeps the kernel's default.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=100))]
        slice_ms: u64,
    },
    /// Remove the classifier's netlink filters left on interfaces by a daemon that was killed
    /// (SIGKILL, OOM): only filters named mirror_tc, and only where no live daemon owns them.
    /// TCX attachments need no cleanup: the kernel releases them with the daemon.
    Detach {
        /// Interfaces to clean (repeatable).
        #[arg(long = "interface", required_unless_present = "config")]
        interfaces: Vec<String>,
        /// Or: every interface of this config's `capture.interfaces`.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Replay a pcap/pcapng capture through the same path to the config's mirrors, then summarise.
    Replay {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        pcap: PathBuf,
        /// Print the counts as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Validate a config file and exit (non-zero with a message if it is invalid).
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Summarise a differences log (mirrorPolicies.*.compare.log) by route and field; with
    /// --html, also write a self-contained page with example pairs side by side.
    Report {
        /// The log; repeat for its rotated files (F.1, F.2…) or other logs, read together.
        #[arg(long, required = true)]
        log: Vec<PathBuf>,
        #[arg(long)]
        html: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Report { log, html } => mirror::compare::report::run(&log, html.as_deref()),
        Command::Check { config } => {
            let cfg = Config::load(&config)?;
            for w in &cfg.warnings {
                eprintln!("{}: warning: {w}", config.display());
            }
            println!(
                "{}: ok ({} routes, {} endpoints, ports {:?} on {:?})",
                config.display(),
                cfg.route_count(),
                cfg.endpoints.len(),
                cfg.capture.ports,
                cfg.capture.interfaces
            );
            Ok(())
        }
        Command::Replay { config, pcap, json } => {
            let cfg = Config::load(&config)?;
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            let summary = rt.block_on(mirror::offline::replay(&cfg, &pcap))?;
            if json {
                println!("{summary}");
            } else {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            }
            Ok(())
        }
        Command::Run { config, metrics_addr, attach, nice, sched, slice_ms } => {
            // Before any thread starts: the policy and the slice are per thread, inherited.
            if let Err(e) = set_scheduling(sched, slice_ms) {
                eprintln!("warning: could not set the scheduling policy or slice: {e}");
            }
            if nice > 0 {
                // Before any thread starts: on Linux the nice value is per thread, inherited.
                // SAFETY: a plain syscall on the calling thread.
                let ok = current_nice()
                    .is_ok_and(|now| unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, (now + nice).min(19)) } == 0);
                if !ok {
                    eprintln!("warning: could not lower the daemon's priority: {}", std::io::Error::last_os_error());
                }
            }
            // One runtime thread for replay and metrics (plus the capture thread): fewer cross-thread
            // wake-ups, which is most of what mirroring costs.
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            let result = rt.block_on(mirror::daemon::run(&config, metrics_addr, attach.into()));
            // A reload still being read (it runs off the signal loop) must not hold the exit up.
            rt.shutdown_timeout(std::time::Duration::from_millis(100));
            result
        }
        Command::Detach { mut interfaces, config } => {
            if let Some(path) = config {
                let selection = mirror::capture::select::Selection::new(&Config::load(&path)?.capture.interfaces);
                interfaces.extend(selection.matching_links()?);
            }
            detach(&interfaces)
        }
    }
}

/// Linux's `struct sched_attr` (`SCHED_ATTR_SIZE_VER1`, 56 bytes; not in the libc crate).
#[repr(C)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    /// The slice of a fair-class task since Linux 6.12 (clamped there to 0.1-100 ms).
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
    sched_util_min: u32,
    sched_util_max: u32,
}

const _: () = assert!(size_of::<SchedAttr>() == 56);

/// The calling thread's nice value.
fn current_nice() -> std::io::Result<i32> {
    // SAFETY: plain syscalls on the calling thread; errno is reset first because -1 is also a
    // valid nice value.
    unsafe {
        *libc::__errno_location() = 0;
        let n = libc::getpriority(libc::PRIO_PROCESS, 0);
        if n == -1 && *libc::__errno_location() != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n)
    }
}

/// Sets the calling thread's policy (`SCHED_BATCH` for `batch`; `normal` keeps the one it was
/// started with) and, unless `slice_ms` is 0, its slice, keeping its nice value
/// (`sched_setattr` sets both). A thread started under a policy other than SCHED_OTHER or
/// SCHED_BATCH (a real-time or idle one) keeps it with `normal`: no slice applies there.
fn set_scheduling(sched: Sched, slice_ms: u64) -> std::io::Result<()> {
    let policy = match sched {
        Sched::Batch => libc::SCHED_BATCH,
        Sched::Normal => {
            // SAFETY: a plain syscall on the calling thread.
            let now = unsafe { libc::sched_getscheduler(0) } & !libc::SCHED_RESET_ON_FORK;
            if slice_ms == 0 || (now != libc::SCHED_OTHER && now != libc::SCHED_BATCH) {
                return Ok(());
            }
            now
        }
    };
    let nice = current_nice()?;
    let attr = SchedAttr {
        size: size_of::<SchedAttr>() as u32,
        sched_policy: policy as u32,
        sched_flags: 0,
        sched_nice: nice,
        sched_priority: 0,
        sched_runtime: slice_ms * 1_000_000,
        sched_deadline: 0,
        sched_period: 0,
        sched_util_min: 0,
        sched_util_max: 0,
    };
    // SAFETY: `attr` is a live, fully initialised sched_attr of the size it declares.
    if unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &raw const attr, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Sched {
    Batch,
    Normal,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Attach {
    Auto,
    Tcx,
    Netlink,
}

impl From<Attach> for AttachPreference {
    fn from(a: Attach) -> Self {
        match a {
            Attach::Auto => AttachPreference::Auto,
            Attach::Tcx => AttachPreference::Tcx,
            Attach::Netlink => AttachPreference::Netlink,
        }
    }
}

/// `mirror detach`: every interface is tried; the exit status says whether all went well.
fn detach(interfaces: &[String]) -> Result<()> {
    let mut failed = 0;
    for iface in interfaces {
        let result = attach::owned_by_live_daemon(iface).and_then(|live| {
            if live {
                anyhow::bail!("a running mirror daemon is attached to {iface}: stop it (it detaches on exit)");
            }
            attach::remove_ours(iface)
        });
        match result {
            Ok(0) => println!("{iface}: nothing of mirror's attached"),
            Ok(n) => println!("{iface}: removed {n} mirror_tc filter(s)"),
            Err(e) => {
                eprintln!("{iface}: {e:#}");
                failed += 1;
            }
        }
    }
    anyhow::ensure!(failed == 0, "{failed} interface(s) could not be cleaned");
    Ok(())
}
