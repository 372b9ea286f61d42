//! Namespaces shaped like a Kubernetes node (issue 13): a node namespace where the daemon runs
//! (`hostNetwork`), pods as namespaces joined to it by veth pairs, a remote node reaching the pods
//! through the node's uplink (`eth0`), directly routed or through a VXLAN overlay, and a mirror on
//! its own link.
//!
//! Two pod layouts, as CNIs build them:
//! - routed (Calico): the host side of each pod's veth is `cali<n>` in the node namespace, with a
//!   /32 route to the pod's address; the pod's default route goes to a link-local gateway whose MAC
//!   is the veth's (`ee:ee:ee:ee:ee:ee`, as Calico does).
//! - bridged (flannel, the bridge plugin): the host sides (`veth<n>`) are ports of a bridge `cni0`
//!   that holds the pod subnet's gateway address.
//!
//! Everything is named uniquely and removed on drop, like the rest of the harness.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

use crate::{NS_PREFIX, Proc, bin, enter_netns, httpbin_in, ns_run, require_root, spawn_in};

/// The node's uplink address (the remote node reaches pods through it).
pub const NODE_V4: &str = "10.80.0.1";
/// The remote node's address.
pub const REMOTE_V4: &str = "10.80.0.2";
/// The node's address on the overlay (VXLAN) network.
pub const NODE_OVERLAY_V4: &str = "10.90.0.1";
/// The remote node's address on the overlay network.
pub const REMOTE_OVERLAY_V4: &str = "10.90.0.2";
/// The mirror's address (on its own link from the node).
pub const MIRROR_V4: &str = "10.81.0.2";
/// The pod subnet of this node (routed layout: /32 per pod; bridged: the bridge's /24).
pub const POD_SUBNET: &str = "10.244.1.0/24";
/// The bridge's (gateway's) address in the bridged layout.
pub const BRIDGE_V4: &str = "10.244.1.1";

/// How pods are wired to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Calico-like: `cali<n>` + a /32 route per pod.
    Routed,
    /// flannel/bridge-like: `veth<n>` ports of bridge `cni0`.
    Bridged,
}

/// How the remote node reaches the pod subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uplink {
    /// A route via the node's uplink address.
    Direct,
    /// A VXLAN device on each node (VNI 42, UDP 4789), the pod subnet routed over it.
    Vxlan,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A node, a remote node, a mirror and pods.
pub struct Node {
    /// The node's namespace (where the daemon runs).
    pub node: String,
    /// The remote node's namespace (a client elsewhere in the cluster).
    pub remote: String,
    /// The mirror's namespace.
    pub mirror: String,
    /// The pod layout.
    pub layout: Layout,
    id: String,
    pods: Vec<String>,
    /// Scratch directory (configs, logs), removed on drop.
    pub dir: PathBuf,
}

fn sh(ns: &str, script: &str) -> Result<String> {
    ns_run(ns, "sh", &["-c", script])
}

impl Node {
    /// Builds the node, the remote node (reaching the pods as `uplink` says) and the mirror.
    pub fn new(layout: Layout, uplink: Uplink) -> Result<Node> {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{NS_PREFIX}{}x{n}k", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let node = Node {
            node: format!("{id}n"),
            remote: format!("{id}r"),
            mirror: format!("{id}m"),
            layout,
            id: id.clone(),
            pods: Vec::new(),
            dir,
        };
        node.build(uplink).with_context(|| format!("building node namespaces {id}*"))?;
        Ok(node)
    }

    fn build(&self, uplink: Uplink) -> Result<()> {
        let (n, r, m) = (self.node.as_str(), self.remote.as_str(), self.mirror.as_str());
        for ns in [n, r, m] {
            crate::run("ip", &["netns", "add", ns])?;
            ns_run(ns, "ip", &["link", "set", "lo", "up"])?;
        }
        crate::run("ip", &["link", "add", "eth0", "netns", n, "type", "veth", "peer", "name", "eth0", "netns", r])?;
        crate::run("ip", &["link", "add", "tomirror", "netns", n, "type", "veth", "peer", "name", "eth0", "netns", m])?;
        sh(
            n,
            &format!(
                "ip addr add {NODE_V4}/24 dev eth0 && ip link set eth0 up && ip addr add 10.81.0.1/24 dev tomirror && ip link set tomirror up && echo 1 > /proc/sys/net/ipv4/ip_forward"
            ),
        )?;
        sh(r, &format!("ip addr add {REMOTE_V4}/24 dev eth0 && ip link set eth0 up"))?;
        sh(
            m,
            &format!(
                "ip addr add {MIRROR_V4}/24 dev eth0 && ip link set eth0 up && ip route add default via 10.81.0.1"
            ),
        )?;
        match uplink {
            Uplink::Direct => {
                sh(r, &format!("ip route add {POD_SUBNET} via {NODE_V4}"))?;
            }
            Uplink::Vxlan => {
                // Fails loudly where the kernel has no VXLAN (built in, or the vxlan module that
                // the kernel loads by itself for `type vxlan`).
                for (ns, local, remote, addr) in
                    [(n, NODE_V4, REMOTE_V4, NODE_OVERLAY_V4), (r, REMOTE_V4, NODE_V4, REMOTE_OVERLAY_V4)]
                {
                    sh(ns, &format!("ip link add vxlan0 type vxlan id 42 local {local} remote {remote} dstport 4789 dev eth0 && ip addr add {addr}/24 dev vxlan0 && ip link set vxlan0 up"))
                        .context("creating a VXLAN device (does this kernel have CONFIG_VXLAN?)")?;
                }
                sh(r, &format!("ip route add {POD_SUBNET} via {NODE_OVERLAY_V4} dev vxlan0"))?;
            }
        }
        if self.layout == Layout::Bridged {
            sh(
                n,
                &format!("ip link add cni0 type bridge && ip addr add {BRIDGE_V4}/24 dev cni0 && ip link set cni0 up"),
            )?;
        }
        Ok(())
    }

    /// The host-side name of pod `index`'s veth.
    pub fn veth(&self, index: u32) -> String {
        match self.layout {
            Layout::Routed => format!("cali{index}"),
            Layout::Bridged => format!("veth{index}"),
        }
    }

    /// The namespace of pod `index`.
    pub fn pod_ns(&self, index: u32) -> String {
        format!("{}p{index}", self.id)
    }

    /// Creates pod `index` with address `addr` (its veth's host side appears in the node, as a
    /// CNI's does); returns its namespace.
    pub fn add_pod(&mut self, index: u32, addr: &str) -> Result<String> {
        let ns = self.pod_ns(index);
        let veth = self.veth(index);
        crate::run("ip", &["netns", "add", &ns])?;
        self.pods.push(ns.clone());
        ns_run(&ns, "ip", &["link", "set", "lo", "up"])?;
        crate::run(
            "ip",
            &[
                "link",
                "add",
                &veth,
                "netns",
                &self.node,
                "address",
                "ee:ee:ee:ee:ee:ee",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns,
            ],
        )?;
        match self.layout {
            Layout::Routed => {
                sh(&self.node, &format!("ip link set {veth} up && ip route add {addr}/32 dev {veth}"))?;
                sh(
                    &ns,
                    &format!(
                        "ip addr add {addr}/32 dev eth0 && ip link set eth0 up && ip route add 169.254.1.1 dev eth0 scope link && ip route add default via 169.254.1.1 dev eth0 && ip neigh add 169.254.1.1 lladdr ee:ee:ee:ee:ee:ee dev eth0 nud permanent"
                    ),
                )?;
            }
            Layout::Bridged => {
                sh(&self.node, &format!("ip link set {veth} master cni0 && ip link set {veth} up"))?;
                sh(
                    &ns,
                    &format!(
                        "ip addr add {addr}/24 dev eth0 && ip link set eth0 up && ip route add default via {BRIDGE_V4}"
                    ),
                )?;
            }
        }
        Ok(ns)
    }

    /// Deletes pod `index`: its namespace, and with it the veth pair (the host side vanishes from
    /// the node, as when a CNI tears a pod down).
    pub fn delete_pod(&mut self, index: u32) -> Result<()> {
        let ns = self.pod_ns(index);
        crate::run("ip", &["netns", "del", &ns])?;
        self.pods.retain(|p| *p != ns);
        // The veth pair goes when the namespace's last reference does: wait until the node no
        // longer lists it.
        let veth = self.veth(index);
        for _ in 0..200 {
            if !ns_run(&self.node, "ip", &["-o", "link", "show"])?.contains(&format!(" {veth}@")) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        anyhow::bail!("{veth} still in the node 5 s after its pod's namespace was deleted")
    }

    /// A file in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Spawns `program` in `ns`, output to `<label>.stdout` / `<label>.stderr`.
    pub fn spawn(&self, ns: &str, label: &str, program: &Path, args: &[&str]) -> Result<Proc> {
        spawn_in(&self.dir, ns, label, program, args)
    }

    /// The httpbin test server `name` in `ns` on `listen`, logging to `<name>.log`.
    pub fn httpbin(&self, ns: &str, name: &str, listen: &str) -> Result<Proc> {
        httpbin_in(&self.dir, ns, name, listen, &[])
    }

    /// Writes a config with this `capture` section (YAML lines, indented by two) mirroring
    /// everything on port 8000 to the mirror.
    pub fn config(&self, capture: &str) -> Result<PathBuf> {
        let text = format!(
            "capture:\n{capture}routes:\n  - name: default\n    mirror: {{host: httpbin, subset: v2}}\nendpoints:\n  httpbin/v2: [\"{MIRROR_V4}:8000\"]\n"
        );
        let path = self.path("mirror.yaml");
        fs::write(&path, text)?;
        Ok(path)
    }

    /// Starts the daemon in the node namespace (extra arguments after the config), metrics on
    /// 127.0.0.1:9464 there, and waits until it is ready.
    pub fn daemon(&self, config: &Path, extra: &[&str]) -> Result<Proc> {
        let mut args = vec!["run", "--config", config.to_str().expect("utf-8")];
        args.extend_from_slice(extra);
        let mut d = self.spawn(&self.node, "daemon", &bin("mirror"), &args)?;
        d.wait_for_stderr("ready", Duration::from_secs(30))?;
        Ok(d)
    }

    /// The daemon's Prometheus text.
    pub fn metrics(&self) -> Result<String> {
        in_ns(&self.node, || -> Result<String> {
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect_timeout(&"127.0.0.1:9464".parse()?, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })?
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for ns in self.pods.iter().chain([&self.node, &self.remote, &self.mirror]) {
            crate::remove_netns(ns);
        }
        if std::env::var_os("MIRROR_KEEP_TEST_DIRS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs `f` on a thread inside namespace `ns`.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let ns = ns.to_string();
    std::thread::spawn(move || -> Result<T> {
        enter_netns(&ns)?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread panicked"))?
}

/// Sends one GET per uri from namespace `ns` to `addr`, on one kept-alive connection; checks each
/// answer is 200 from `served_by`.
pub fn gets(ns: &str, addr: &str, uris: &[String], served_by: &str) -> Result<()> {
    let addr: SocketAddr = addr.parse()?;
    let requests: Vec<Vec<u8>> = uris.iter().map(|u| crate::request("GET", u, &[], b"")).collect();
    let responses = in_ns(ns, move || crate::exchange(addr, &requests))??;
    ensure!(responses.len() == uris.len(), "{} responses for {} requests", responses.len(), uris.len());
    for r in &responses {
        ensure!(r.status == 200 && r.served_by == served_by, "unexpected response {r:?}");
    }
    Ok(())
}
