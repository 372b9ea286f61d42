//! Test harness: network namespaces joined by veth pairs (client ↔ primary ↔ mirror), the
//! processes running in them, and a raw HTTP client that runs inside a namespace.
//!
//! Everything is named uniquely (prefix, pid, counter) and removed on drop, so a failing test
//! leaves nothing behind. Traffic only ever goes to addresses inside these namespaces. The helpers
//! the tests, the demo and the benchmark share are all here ([`load`] is the benchmark's load
//! generator).

pub mod attacks;
pub mod corpus;
pub mod load;
pub mod markdown;
pub mod node;
mod procfs;

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

pub use procfs::{BpfStats, anon_rss_kib, bpf_stats, cpu_seconds, machine, peak_rss_kib, rss_kib, thread_cpu_seconds};

/// Prefix of every namespace this harness creates (`cargo xtask test` sweeps leftovers by it).
pub const NS_PREFIX: &str = "mirrort";

/// The client's IPv4 address.
pub const CLIENT_V4: &str = "10.77.0.1";
/// The primary's IPv4 address (the client reaches it directly).
pub const PRIMARY_V4: &str = "10.77.0.2";
/// The mirror sits on its own link behind the primary, reached by a host route (so the examples in
/// `config/` work unchanged: `httpbin/v2: ["10.77.0.3:8000"]`).
pub const MIRROR_V4: &str = "10.77.0.3";
/// The client's IPv6 address.
pub const CLIENT_V6: &str = "fd77::1";
/// The primary's IPv6 address.
pub const PRIMARY_V6: &str = "fd77::2";
/// The primary's interface facing the client: where the classifier is attached.
pub const PRIMARY_IFACE: &str = "eth0";
/// The port the primary and the mirror serve HTTP on.
pub const PORT: u16 = 8000;

/// Moves the calling thread into network namespace `ns` (its sockets then live there).
pub fn enter_netns(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let file = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on this thread only, with a valid namespace fd.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    ensure!(rc == 0, "setns({path}): {}", std::io::Error::last_os_error());
    Ok(())
}

/// Fails loudly (never skips) when the tests cannot do what they must.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the namespace tests need root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF): run them as root");
}

/// Directory holding the workspace's built binaries (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MIRROR_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/<binary>, or target/<profile>/deps/<test-binary>
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("binary dir");
    if dir.file_name().is_some_and(|n| n == "deps") { dir.parent().expect("target dir") } else { dir }.to_path_buf()
}

/// The path of the workspace binary `name`; panics if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.exists(), "{} is missing: build the workspace first (`cargo xtask test` does)", p.display());
    p
}

fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd).args(args).output().with_context(|| format!("running {cmd}"))?;
    ensure!(out.status.success(), "{cmd} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command inside namespace `ns` and returns its stdout.
pub fn ns_run(ns: &str, cmd: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["netns", "exec", ns, cmd];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// A TC hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Arriving packets.
    Ingress,
    /// Leaving packets.
    Egress,
}

/// Names of the classifiers on `iface`'s `hook` in `ns`: TCX programs (where the kernel has TCX)
/// followed by the names of netlink `bpf` filters.
pub fn tc_programs(ns: &str, iface: &str, hook: Hook) -> Result<Vec<String>> {
    let (ns_owned, iface_owned) = (ns.to_string(), iface.to_string());
    let (attach_type, hook_name) = match hook {
        Hook::Ingress => (aya::programs::TcAttachType::Ingress, "ingress"),
        Hook::Egress => (aya::programs::TcAttachType::Egress, "egress"),
    };
    let mut names = std::thread::spawn(move || -> Result<Vec<String>> {
        enter_netns(&ns_owned)?;
        Ok(match aya::programs::SchedClassifier::query_tcx(&iface_owned, attach_type) {
            Ok((_, progs)) => progs.iter().map(|p| p.name_as_str().unwrap_or("?").to_string()).collect(),
            // No TCX on this kernel (before 6.6): nothing can be attached that way.
            Err(_) if !kernel_has_tcx() => Vec::new(),
            Err(e) => return Err(e.into()),
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread panicked"))??;
    let filters = ns_run(ns, "tc", &["filter", "show", "dev", iface, hook_name])?;
    // "filter protocol all pref 49152 bpf chain 0 handle 0x1 mirror_tc direct-action not_in_hw id 103
    // name mirror_tc tag ...": eBPF filters carry a program name; classic-BPF ones do not (skipped).
    for line in filters.lines().filter(|l| l.contains(" bpf ") && l.contains(" handle ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(i) = words.iter().position(|w| *w == "name") {
            names.push(words.get(i + 1).unwrap_or(&"?").to_string());
        }
    }
    Ok(names)
}

/// Whether the running kernel is Linux `major.minor` or later.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

/// Whether the running kernel has TCX (Linux 6.6 or later).
pub fn kernel_has_tcx() -> bool {
    kernel_at_least(6, 6)
}

/// How much slower than a native run this one is (`MIRROR_TEST_SLOWDOWN`, set by the VM runs:
/// software emulation); every wait of the harness is stretched by it.
pub fn slowdown() -> u32 {
    std::env::var("MIRROR_TEST_SLOWDOWN").ok().and_then(|s| s.parse().ok()).filter(|n| *n >= 1).unwrap_or(1)
}

/// A process that is killed when dropped.
pub struct Proc {
    /// The process (`ip netns exec` running the program).
    pub child: Child,
    /// Where its stderr goes.
    pub stderr_path: PathBuf,
    /// Where its stdout goes.
    pub stdout_path: PathBuf,
}

impl Proc {
    /// Its process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends it signal `sig`.
    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for the process to exit on its own, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let limit = limit * slowdown();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!("process {} did not exit within {limit:?}", self.pid());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Its stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Waits until stderr has `needle` `n` times (10 s at most, times [`slowdown`]); panics if not.
    pub fn wait_for_stderr_count(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10) * slowdown();
        while self.stderr().matches(needle).count() < n {
            assert!(Instant::now() < deadline, "no {n}× '{needle}':\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `needle` appears in stderr as a whole word (or the process dies): "ready" is
    /// not found in "Address already in use".
    pub fn wait_for_stderr(&mut self, needle: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit * slowdown();
        while Instant::now() < deadline {
            if contains_word(&self.stderr(), needle) {
                return Ok(());
            }
            if let Some(st) = self.child.try_wait()? {
                bail!("process exited ({st}) before '{needle}':\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("no '{needle}' within {limit:?}:\n{}", self.stderr())
    }
}

/// Whether `needle` occurs in `hay` with no letter or digit right before or after it.
fn contains_word(hay: &str, needle: &str) -> bool {
    let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    hay.match_indices(needle)
        .any(|(i, m)| !word(hay[..i].chars().next_back()) && !word(hay[i + m.len()..].chars().next()))
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three namespaces: client ↔ primary ↔ mirror.
pub struct Topology {
    /// The client's namespace.
    pub client: String,
    /// The primary's namespace (where the daemon runs).
    pub primary: String,
    /// The mirror's namespace.
    pub mirror: String,
    /// A scratch directory for configs, logs and outputs, removed on drop.
    pub dir: PathBuf,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Topology {
    /// Creates the namespaces, links and addresses (needs root).
    pub fn new() -> Result<Topology> {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{NS_PREFIX}{}x{n}", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let topo = Topology { client: format!("{id}c"), primary: format!("{id}p"), mirror: format!("{id}m"), dir };
        topo.build().with_context(|| format!("building namespaces {id}*"))?;
        Ok(topo)
    }

    fn build(&self) -> Result<()> {
        for ns in [&self.client, &self.primary, &self.mirror] {
            run("ip", &["netns", "add", ns])?;
            ns_run(ns, "ip", &["link", "set", "lo", "up"])?;
        }
        let (c, p, m) = (self.client.as_str(), self.primary.as_str(), self.mirror.as_str());
        run("ip", &["link", "add", "eth0", "netns", c, "type", "veth", "peer", "name", PRIMARY_IFACE, "netns", p])?;
        run("ip", &["link", "add", "to-mirror", "netns", p, "type", "veth", "peer", "name", "eth0", "netns", m])?;
        let addr = |ns: &str, a: &str, dev: &str| ns_run(ns, "ip", &["addr", "add", a, "dev", dev]);
        addr(c, &format!("{CLIENT_V4}/24"), "eth0")?;
        addr(p, &format!("{PRIMARY_V4}/24"), PRIMARY_IFACE)?;
        addr(m, &format!("{MIRROR_V4}/32"), "eth0")?;
        ns_run(c, "ip", &["-6", "addr", "add", &format!("{CLIENT_V6}/64"), "dev", "eth0", "nodad"])?;
        ns_run(p, "ip", &["-6", "addr", "add", &format!("{PRIMARY_V6}/64"), "dev", PRIMARY_IFACE, "nodad"])?;
        for (ns, dev) in [(c, "eth0"), (p, PRIMARY_IFACE), (p, "to-mirror"), (m, "eth0")] {
            ns_run(ns, "ip", &["link", "set", dev, "up"])?;
        }
        ns_run(p, "ip", &["route", "add", &format!("{MIRROR_V4}/32"), "dev", "to-mirror", "src", PRIMARY_V4])?;
        ns_run(m, "ip", &["route", "add", &format!("{PRIMARY_V4}/32"), "dev", "eth0"])?;
        Ok(())
    }

    /// A file in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Spawns `program` inside `ns`, output to files in the topology's directory.
    pub fn spawn(&self, ns: &str, label: &str, program: &Path, args: &[&str]) -> Result<Proc> {
        spawn_in(&self.dir, ns, label, program, args)
    }

    /// Starts the httpbin test server named `name` in `ns`, logging to `<name>.log`.
    pub fn httpbin(&self, ns: &str, name: &str, listen: &str, extra: &[&str]) -> Result<Proc> {
        httpbin_in(&self.dir, ns, name, listen, extra)
    }

    /// The usual pair: primary v1 on both address families, mirror v2.
    pub fn servers(&self) -> Result<(Proc, Proc)> {
        let v1 = self.httpbin(&self.primary, "v1", &format!("[::]:{PORT}"), &[])?;
        let v2 = self.httpbin(&self.mirror, "v2", &format!("{MIRROR_V4}:{PORT}"), &[])?;
        Ok((v1, v2))
    }

    /// Writes a daemon config mirroring `percent` of port 8000 to the mirror namespace.
    pub fn config(&self, percent: f64, extra_routes: &str) -> Result<PathBuf> {
        self.config_with(percent, extra_routes, "")
    }

    /// The same, with more top-level YAML at the end (a `replay:` section, say).
    pub fn config_with(&self, percent: f64, extra_routes: &str, tail: &str) -> Result<PathBuf> {
        let text = format!(
            "capture:\n  interfaces: [{PRIMARY_IFACE}]\n  ports: [{PORT}]\nroutes:\n{extra_routes}  - name: default\n    mirror: {{host: httpbin, subset: v2}}\n    mirrorPercentage: {{value: {percent}}}\nendpoints:\n  httpbin/v2: [\"{MIRROR_V4}:{PORT}\"]\n{tail}"
        );
        let path = self.path("mirror.yaml");
        fs::write(&path, text)?;
        Ok(path)
    }

    /// Starts the daemon in the primary namespace and waits until it is attached.
    pub fn daemon(&self, config: &Path) -> Result<Proc> {
        self.daemon_in(&self.primary, "daemon", config, &[])
    }

    /// Starts a daemon in `ns` (extra arguments after the config) and waits until it is attached.
    pub fn daemon_in(&self, ns: &str, label: &str, config: &Path, extra: &[&str]) -> Result<Proc> {
        let mut args = vec!["run", "--config", config.to_str().expect("utf-8")];
        args.extend_from_slice(extra);
        let mut d = self.spawn(ns, label, &bin("mirror"), &args)?;
        d.wait_for_stderr("ready", Duration::from_secs(30))?;
        Ok(d)
    }

    /// Stops the daemon with `sig` and returns its JSON summary.
    pub fn stop_daemon(&self, mut d: Proc, sig: i32) -> Result<Value> {
        d.signal(sig);
        let st = d.wait_exit(Duration::from_secs(15))?;
        ensure!(st.success(), "daemon exited with {st}:\n{}", d.stderr());
        let out = d.stdout();
        let line = out.lines().last().context("daemon printed no summary")?;
        serde_json::from_str(line).with_context(|| format!("summary: {line}"))
    }

    /// Names of the classifiers attached to the ingress hook of the primary's client-facing
    /// interface, however attached: TCX programs (BPF_PROG_QUERY, on kernels that have TCX) and
    /// netlink `bpf` filters (`tc filter show`), asked from inside the primary's namespace.
    pub fn ingress_programs(&self) -> Result<Vec<String>> {
        tc_programs(&self.primary, PRIMARY_IFACE, Hook::Ingress)
    }

    /// The same for the egress hook (where the classifier sees the primary's acknowledgements).
    pub fn egress_programs(&self) -> Result<Vec<String>> {
        tc_programs(&self.primary, PRIMARY_IFACE, Hook::Egress)
    }

    /// Whether the primary's client-facing interface has a clsact qdisc.
    pub fn has_clsact(&self) -> Result<bool> {
        Ok(ns_run(&self.primary, "tc", &["qdisc", "show", "dev", PRIMARY_IFACE])?.contains("clsact"))
    }

    /// Makes TCP in `ns` build GSO/TSO skbs of at least 44 segments (~63.7 KB with veth's 1448-byte
    /// MSS) where the window allows. Linux sizes them by the pacing rate (about a millisecond of
    /// data): on a slow machine (a software-emulated VM) that stays below 60 KB and the classifier
    /// never sees an skb large enough to need a tail, so a test of the tail path would test
    /// nothing. Not more: `tcp_min_tso_segs` overrides `gso_max_size`, and an skb beyond 64 KiB
    /// (what BIG TCP allows) is more than the classifier ships (counted `truncated`).
    pub fn large_skbs(&self, ns: &str) -> Result<()> {
        // /proc/sys/net is the network namespace of the thread that opens it.
        let set = self.in_ns(ns, || -> std::io::Result<String> {
            let path = "/proc/sys/net/ipv4/tcp_min_tso_segs";
            fs::write(path, "44")?;
            fs::read_to_string(path)
        })??;
        anyhow::ensure!(set.trim() == "44", "tcp_min_tso_segs in {ns} is {set:?}");
        Ok(())
    }

    /// Runs `f` on a thread that has entered namespace `ns` (so its sockets live there).
    pub fn in_ns<T: Send + 'static>(&self, ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let ns = ns.to_string();
        let handle = std::thread::spawn(move || -> Result<T> {
            enter_netns(&ns)?;
            Ok(f())
        });
        handle.join().map_err(|_| anyhow::anyhow!("thread panicked"))?
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.client, &self.primary, &self.mirror] {
            remove_netns(ns);
        }
        if std::env::var_os("MIRROR_KEEP_TEST_DIRS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Kills every process still inside namespace `ns`, then deletes it. Killing only the processes a
/// test started is not enough: an nginx master killed with SIGKILL leaves its workers running,
/// orphaned, in a namespace nobody can reach any more.
pub fn remove_netns(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: kill(2) on a pid that lives in a namespace this harness created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
}

/// Spawns `program` inside `ns`, output to `<label>.stdout` and `<label>.stderr` in `dir`.
pub fn spawn_in(dir: &Path, ns: &str, label: &str, program: &Path, args: &[&str]) -> Result<Proc> {
    let stdout_path = dir.join(format!("{label}.stdout"));
    let stderr_path = dir.join(format!("{label}.stderr"));
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path)?)
        .stderr(fs::File::create(&stderr_path)?)
        .spawn()
        .with_context(|| format!("spawning {}", program.display()))?;
    Ok(Proc { child, stderr_path, stdout_path })
}

/// Starts the httpbin test server named `name` in `ns`, logging to `<name>.log` in `dir`.
pub fn httpbin_in(dir: &Path, ns: &str, name: &str, listen: &str, extra: &[&str]) -> Result<Proc> {
    let log = dir.join(format!("{name}.log"));
    let mut args = vec!["--listen", listen, "--name", name, "--log", log.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    let mut p = spawn_in(dir, ns, name, &bin("httpbin"), &args)?;
    p.wait_for_stderr("listening", Duration::from_secs(10))?;
    Ok(p)
}

/// A response as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The test server's `X-Served-By` header (which server answered).
    pub served_by: String,
    /// The body.
    pub body: Vec<u8>,
}

/// Sends raw requests one after another on one kept-alive connection and reads each response
/// (the test server always answers with Content-Length).
pub fn exchange(addr: SocketAddr, requests: &[Vec<u8>]) -> Result<Vec<Response>> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut out = Vec::new();
    for req in requests {
        writer.write_all(req)?;
        out.push(read_response(&mut reader)?);
    }
    Ok(out)
}

/// A client that keeps one connection open in a namespace across calls (a flow that outlives a
/// config reload, say).
pub struct KeepAliveClient {
    tx: std::sync::mpsc::Sender<Vec<u8>>,
    rx: std::sync::mpsc::Receiver<Result<Response>>,
}

impl KeepAliveClient {
    /// Connects to `addr` from namespace `ns`.
    pub fn connect(ns: &str, addr: SocketAddr) -> Result<KeepAliveClient> {
        let (req_tx, req_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let (resp_tx, resp_rx) = std::sync::mpsc::channel();
        let ns = ns.to_string();
        std::thread::spawn(move || {
            let setup = || -> Result<(TcpStream, BufReader<TcpStream>)> {
                enter_netns(&ns)?;
                let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                Ok((stream.try_clone()?, BufReader::new(stream)))
            };
            match setup() {
                Ok((mut w, mut r)) => {
                    for req in req_rx {
                        let resp = w.write_all(&req).map_err(anyhow::Error::from).and_then(|_| read_response(&mut r));
                        if resp_tx.send(resp).is_err() {
                            break;
                        }
                    }
                }
                Err(e) => {
                    let _ = resp_tx.send(Err(e));
                }
            }
        });
        Ok(KeepAliveClient { tx: req_tx, rx: resp_rx })
    }

    /// Sends a raw request on the connection and reads its response.
    pub fn send(&self, request: Vec<u8>) -> Result<Response> {
        self.tx.send(request).map_err(|_| anyhow::anyhow!("client thread gone"))?;
        self.rx.recv_timeout(Duration::from_secs(15))?
    }
}

/// The daemon's Prometheus text, scraped from inside the primary namespace.
pub fn scrape_metrics(topo: &Topology) -> Result<String> {
    topo.in_ns(&topo.primary, || -> Result<String> {
        let mut s = TcpStream::connect_timeout(&"127.0.0.1:9464".parse()?, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out)?;
        Ok(out)
    })?
}

/// The value of one sample line (`name{labels}`) in Prometheus text, 0 if absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

/// Statuses and latencies of `n` GETs on one kept-alive connection from the client namespace.
pub fn timed_gets(topo: &Topology, n: usize, tag: &str) -> Result<(Vec<u16>, Vec<Duration>)> {
    let client = KeepAliveClient::connect(&topo.client, format!("{PRIMARY_V4}:{PORT}").parse()?)?;
    let mut statuses = Vec::new();
    let mut times = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let r = client.send(request("GET", &format!("/{tag}/{i}"), &[], b""))?;
        times.push(t.elapsed());
        statuses.push(r.status);
    }
    Ok((statuses, times))
}

/// The median of some durations.
pub fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// Writes every request in one go (pipelining), then reads one response per request.
pub fn exchange_pipelined(addr: SocketAddr, requests: &[Vec<u8>]) -> Result<Vec<Response>> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    writer.write_all(&requests.concat())?;
    let mut reader = BufReader::new(stream);
    requests.iter().map(|_| read_response(&mut reader)).collect()
}

/// Sends `head` (which carries `Expect: 100-continue`), waits for the interim 100 response, then
/// sends `body` in pieces of `piece` bytes, pausing `pause` between them; returns the final
/// response.
pub fn upload(
    addr: SocketAddr,
    head: &[u8],
    body: &[u8],
    expect_continue: bool,
    piece: usize,
    pause: Duration,
) -> Result<Response> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    writer.write_all(head)?;
    if expect_continue {
        let interim = read_response(&mut reader)?;
        ensure!(interim.status == 100, "expected 100 Continue, got {}", interim.status);
    }
    for chunk in body.chunks(piece.max(1)) {
        writer.write_all(chunk)?;
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    read_response(&mut reader)
}

fn read_response(reader: &mut impl BufRead) -> Result<Response> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let n = reader.read_until(b'\n', &mut head)?;
        ensure!(n > 0, "connection closed mid-response");
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(&head)?;
    let get = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let status = resp.code.context("no status")?;
    let len: usize = match get("content-length") {
        Some(v) => v.parse()?,
        None if status == 204 || status == 304 || (100..200).contains(&status) => 0,
        None => bail!("response without content-length"),
    };
    let served_by = get("x-served-by").unwrap_or_default();
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    Ok(Response { status, served_by, body })
}

/// A simple request with a Host header and optional body.
pub fn request(method: &str, path: &str, extra_headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: httpbin:{PORT}\r\n");
    for (k, v) in extra_headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Entries of a server's JSON-lines access log.
pub fn access_log(path: &Path) -> Vec<Value> {
    fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Polls a log until it has at least `n` entries, or `limit` passes; returns what it has.
pub fn wait_for_entries(path: &Path, n: usize, limit: Duration) -> Vec<Value> {
    let deadline = Instant::now() + limit * slowdown();
    loop {
        let entries = access_log(path);
        if entries.len() >= n || Instant::now() > deadline {
            return entries;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_lines_are_matched_by_whole_words() {
        use super::contains_word;
        let failed = "Error: binding the metrics address 127.0.0.1:9464\n\nCaused by:\n    Address already in use";
        assert!(!contains_word(failed, "ready"));
        assert!(contains_word("INFO mirror::daemon: ready interfaces=[]", "ready"));
        assert!(contains_word("ready", "ready"));
        assert!(contains_word("x=1 interface=cali2 y", "interface=cali2"));
        assert!(!contains_word("interface=cali23", "interface=cali2"));
        assert!(contains_word("already; then ready.", "ready"));
    }
}
