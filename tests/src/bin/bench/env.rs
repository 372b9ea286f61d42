//! The bench's world: namespaces, the primary and mirror nginx, the nginx proxy (the nginx mirror
//! module peer and its plain-proxy reference), and the subjects attached in turn (nothing, our
//! daemon, GoReplay, nginx's mirror module), with their CPU and the classifier's kernel time.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use mirror_tests::*;
use serde_json::Value;

/// Who mirrors (or, for the references, who is in the path without mirroring).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Peer {
    /// Nothing attached: the primary alone.
    Nothing,
    /// Our daemon, default config, 100%.
    Ours,
    /// GoReplay 1.3.3, libpcap engine, in the primary's namespace.
    GoReplay,
    /// nginx's mirror module as a proxy in front of the primary.
    Nginx,
    /// The same nginx proxying without mirroring: the reference the nginx row compares with.
    NginxPlain,
    /// No tool: the same requests, at the same rate, sent straight to the mirror by a second
    /// paced client in the primary's namespace. A reference for the latency pairs: what the
    /// mirror's own work on this machine costs the primary, whoever sends it the copies.
    DirectCopy,
}

impl Peer {
    /// Its name in the tables.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Nothing => "nothing attached",
            Peer::Ours => "mirror daemon (this build)",
            Peer::GoReplay => "GoReplay 1.3.3",
            Peer::Nginx => "nginx mirror module",
            Peer::NginxPlain => "nginx plain proxy (reference)",
            Peer::DirectCopy => "copies sent straight to the mirror (reference, no tool)",
        }
    }

    /// What the same traffic costs without this peer mirroring.
    pub fn baseline(self) -> Peer {
        match self {
            Peer::Nginx => Peer::NginxPlain,
            _ => Peer::Nothing,
        }
    }

    /// Whether it sends anything to the mirror.
    pub fn mirrors(self) -> bool {
        matches!(self, Peer::Ours | Peer::GoReplay | Peer::Nginx | Peer::DirectCopy)
    }
}

/// The port the nginx proxy mirrors on, and the one it only proxies on.
const NGINX_MIRROR_PORT: u16 = 8080;
const NGINX_PLAIN_PORT: u16 = 8081;

/// The nginx proxy's configuration: what an nginx operator would write for mirroring (see the
/// report for each choice and why).
pub const NGINX_PROXY_CONF: &str = "upstream primary { server 127.0.0.1:8001; keepalive 64; }
  upstream shadow { server MIRROR:PORT; keepalive 64; }
  server { listen PRIMARY:8080 reuseport backlog=4096; access_log off;
    location / { mirror /__mirror; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_pass http://primary; }
    location = /__mirror { internal; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host httpbin-shadow:PORT; proxy_pass http://shadow$request_uri; } }
  server { listen PRIMARY:8081 reuseport backlog=4096; access_log off;
    location / { proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_pass http://primary; } }";

/// Namespaces and servers for the whole run.
pub struct Env {
    pub topo: Topology,
    pub mirror_log: PathBuf,
    proxy: Proc,
    _primary: Proc,
    _mirror: Proc,
    gor: PathBuf,
    /// `capture.batchMs` for our daemon (`None`: its default).
    pub batch_ms: Option<u64>,
    /// `--nice` for our daemon (`None`: its default).
    pub nice: Option<u32>,
    /// `--sched` for our daemon (`None`: its default).
    pub sched: Option<String>,
    /// `--slice-ms` for our daemon (`None`: its default).
    pub slice_ms: Option<u64>,
    /// `replay.pace` for our daemon (`None`: its default).
    pub pace: Option<String>,
}

/// An nginx in `ns` with `workers` worker processes and the given `http` content; killed on drop.
pub fn nginx(topo: &Topology, ns: &str, name: &str, workers: &str, servers: &str) -> Result<Proc> {
    let dir = topo.path(name);
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes {workers};\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 4096; }}\nhttp {{\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  keepalive_requests 1000000;\n  client_max_body_size 16m;\n  client_body_buffer_size 128k;\n  log_format counts '$request_method $request_length $connection_requests';\n{servers}\n}}\n",
            d = dir.display()
        ),
    )?;
    let p = topo.spawn(ns, name, Path::new("/usr/sbin/nginx"), &["-c", conf.to_str().unwrap(), "-g", "daemon off;"])?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(p)
}

/// The worker processes of an nginx (its children).
pub fn nginx_workers(master: &Proc) -> Result<Vec<i32>> {
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", master.pid()))?;
    let v: Vec<i32> = children.split_whitespace().filter_map(|p| p.parse().ok()).collect();
    ensure!(!v.is_empty(), "nginx has no worker");
    Ok(v)
}

/// Lines in a file (the mirror's access log: one per request it received).
pub fn lines(path: &Path) -> usize {
    std::fs::read(path).map(|t| t.iter().filter(|b| **b == b'\n').count()).unwrap_or(0)
}

impl Env {
    /// Builds the namespaces and starts the servers. `gor`: the GoReplay binary.
    pub fn new(gor: PathBuf) -> Result<Env> {
        ensure!(gor.exists(), "GoReplay is missing at {} (cargo xtask bench builds it)", gor.display());
        let topo = Topology::new()?;
        let mirror_log = topo.path("mirror-access.log");
        let mirror = nginx(
            &topo,
            &topo.mirror,
            "nginx-mirror",
            "1",
            &format!(
                "  server {{ listen {MIRROR_V4}:{PORT} reuseport backlog=4096; access_log {} counts buffer=64k flush=500ms; location / {{ return 200 \"shadow\\n\"; }} }}",
                mirror_log.display()
            ),
        )?;
        let primary = nginx(
            &topo,
            &topo.primary,
            "nginx-primary",
            "1",
            &format!(
                "  server {{ listen {PRIMARY_V4}:{PORT} reuseport backlog=4096; listen 127.0.0.1:8001; access_log off; location / {{ return 200 \"primary\\n\"; }} }}"
            ),
        )?;
        // What an operator does for a proxy that opens many upstream connections (nginx's mirror
        // subrequests cannot reuse them: see the report): reuse TIME-WAIT ports for new outgoing
        // connections and use the whole port range. The primary's namespace only. The ports
        // listened on there are kept out of the range: a connection nginx opened from 9464 and
        // still closing once made the next daemon's metrics listener fail ("address in use").
        let reserved = format!("{PORT},8001,8080,8081,9464");
        for (key, value) in [
            ("ipv4/tcp_tw_reuse", "1"),
            ("ipv4/ip_local_reserved_ports", reserved.as_str()),
            ("ipv4/ip_local_port_range", "1024 65535"),
        ] {
            let value = value.to_string();
            let path = format!("/proc/sys/net/{key}");
            topo.in_ns(&topo.primary, move || std::fs::write(&path, value))?
                .with_context(|| format!("setting net.{key}"))?;
        }
        let conf = NGINX_PROXY_CONF
            .replace("MIRROR", MIRROR_V4)
            .replace("PRIMARY", PRIMARY_V4)
            .replace("PORT", &PORT.to_string());
        let proxy = nginx(&topo, &topo.primary, "nginx-proxy", "1", &format!("  {conf}"))?;
        Ok(Env {
            topo,
            mirror_log,
            proxy,
            _primary: primary,
            _mirror: mirror,
            gor,
            batch_ms: None,
            nice: None,
            sched: None,
            slice_ms: None,
            pace: None,
        })
    }

    /// Where the client sends to reach the primary through `peer`.
    pub fn target(&self, peer: Peer) -> SocketAddr {
        let port = match peer {
            Peer::Nginx => NGINX_MIRROR_PORT,
            Peer::NginxPlain => NGINX_PLAIN_PORT,
            _ => PORT,
        };
        SocketAddr::new(PRIMARY_V4.parse().expect("address"), port)
    }

    /// The mirror's address (its nginx).
    pub fn mirror_addr(&self) -> SocketAddr {
        SocketAddr::new(MIRROR_V4.parse().expect("address"), PORT)
    }

    /// Requests the mirror received so far (its access log is flushed every 500 ms).
    pub fn mirrored(&self) -> usize {
        lines(&self.mirror_log)
    }

    /// Waits until the mirror's log has stopped growing (unchanged for a second, at most 15 s):
    /// a peer that was stopped with requests still in flight to the mirror (GoReplay's queue,
    /// say) must not have them counted in the next peer's step; how many arrived is printed.
    pub fn settle_mirror(&self) {
        let start = self.mirrored();
        let (mut last, mut since) = (start, std::time::Instant::now());
        let begun = std::time::Instant::now();
        while since.elapsed() < Duration::from_secs(1) && begun.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(250));
            let now = self.mirrored();
            if now != last {
                (last, since) = (now, std::time::Instant::now());
            }
        }
        if last != start {
            println!("  {} more requests reached the mirror after the peer was stopped (not counted)", last - start);
        }
    }

    /// Requests the mirror received so far, and how many of them were the first on their
    /// connection (a new TCP connection per request shows as all of them).
    pub fn mirrored_fresh(&self) -> (usize, usize) {
        let text = std::fs::read_to_string(&self.mirror_log).unwrap_or_default();
        let fresh = text.lines().filter(|l| l.rsplit(' ').next() == Some("1")).count();
        (text.lines().count(), fresh)
    }

    /// Attaches `peer` (starts it, for ours and GoReplay).
    pub fn attach(&self, peer: Peer) -> Result<Attached> {
        let (proc, pids) = match peer {
            Peer::Nothing | Peer::DirectCopy => (None, Vec::new()),
            Peer::Ours => {
                let tail = self.pace.as_ref().map(|p| format!("replay:\n  pace: {p}\n")).unwrap_or_default();
                let config = self.topo.config_with(100.0, "", &tail)?;
                if let Some(ms) = self.batch_ms {
                    let text = std::fs::read_to_string(&config)?;
                    let at = format!("ports: [{PORT}]");
                    std::fs::write(&config, text.replacen(&at, &format!("{at}\n  batchMs: {ms}"), 1))?;
                }
                let nice = self.nice.map(|n| n.to_string());
                let mut extra: Vec<&str> = nice.iter().flat_map(|n| ["--nice", n.as_str()]).collect();
                extra.extend(self.sched.iter().flat_map(|s| ["--sched", s.as_str()]));
                let slice = self.slice_ms.map(|ms| ms.to_string());
                extra.extend(slice.iter().flat_map(|ms| ["--slice-ms", ms.as_str()]));
                let d = self.topo.daemon_in(&self.topo.primary, "daemon", &config, &extra)?;
                let pid = d.pid();
                (Some(d), vec![pid])
            }
            Peer::GoReplay => {
                let out = format!("http://{MIRROR_V4}:{PORT}");
                let input = format!("{PRIMARY_V4}:{PORT}");
                let mut g = self.topo.spawn(
                    &self.topo.primary,
                    "gor",
                    &self.gor,
                    &["--input-raw", &input, "--output-http", &out, "--stats=false"],
                )?;
                // libpcap needs a moment to open its handles; it logs nothing when ready.
                std::thread::sleep(Duration::from_secs(2));
                ensure!(g.child.try_wait()?.is_none(), "GoReplay exited: {}", g.stderr());
                let pid = g.pid();
                (Some(g), vec![pid])
            }
            Peer::Nginx | Peer::NginxPlain => (None, nginx_workers(&self.proxy)?),
        };
        let mut a = Attached { peer, proc, pids, cpu0: 0.0, bpf0: (0, 0) };
        a.mark()?;
        Ok(a)
    }
}

/// A peer while attached.
pub struct Attached {
    pub peer: Peer,
    proc: Option<Proc>,
    pids: Vec<i32>,
    cpu0: f64,
    bpf0: (u64, u64),
}

/// What a peer used since [`Attached::mark`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Used {
    /// CPU seconds of its processes (user + system).
    pub cpu: f64,
    /// Nanoseconds the classifier ran (our daemon only), and how many packets it ran for.
    pub bpf_ns: u64,
    pub bpf_runs: u64,
}

impl Attached {
    fn cpu_now(&self) -> Result<f64> {
        self.pids.iter().map(|p| cpu_seconds(*p)).sum()
    }

    /// Starts counting from now.
    pub fn mark(&mut self) -> Result<()> {
        self.cpu0 = self.cpu_now()?;
        self.bpf0 = self.pids.first().map(|p| bpf_stats(*p)).unwrap_or_default();
        Ok(())
    }

    /// What it used since the last mark.
    pub fn used(&self) -> Result<Used> {
        let (ns, runs) = self.pids.first().map(|p| bpf_stats(*p)).unwrap_or_default();
        Ok(Used { cpu: self.cpu_now()? - self.cpu0, bpf_ns: ns - self.bpf0.0, bpf_runs: runs - self.bpf0.1 })
    }

    /// The daemon's peak RSS in KiB (ours only).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        (self.peer == Peer::Ours).then(|| peak_rss_kib(self.pids[0]).ok()).flatten()
    }

    /// The daemon's metrics text (ours only).
    pub fn metrics(&self, env: &Env) -> String {
        if self.peer == Peer::Ours { scrape_metrics(&env.topo).unwrap_or_default() } else { String::new() }
    }

    /// Stops it; our daemon's JSON summary.
    pub fn detach(self, env: &Env) -> Result<Option<Value>> {
        match (self.peer, self.proc) {
            (Peer::Ours, Some(d)) => Ok(Some(env.topo.stop_daemon(d, libc::SIGINT)?)),
            _ => Ok(None),
        }
    }
}
