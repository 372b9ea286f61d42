//! Attaching the classifier to an interface's TC ingress hook (client → primary: requests) and
//! egress hook (primary → client: acknowledgements): TCX where the kernel has it, netlink (a clsact
//! qdisc and a named direct-action filter on each hook) otherwise, and leaving nothing behind.
//!
//! A TCX link dies with the daemon's file descriptor. A netlink filter does not: a daemon killed
//! with SIGKILL leaves it on the interface. So each daemon holds, for every interface it is attached
//! to, an abstract unix socket named after the interface (`@mirror/tc/<ifindex>`; abstract sockets
//! live in the network namespace and vanish with the process). At start, a daemon that gets that
//! name knows no live daemon owns the interface, and removes the filters named [`PROGRAM_NAME`] it
//! finds there: they can only be a dead daemon's. Filters of other names are never touched.

use std::{
    io,
    os::{linux::net::SocketAddrExt as _, unix::net::UnixListener},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{
    SchedClassifier, TcAttachType,
    links::LinkOrder,
    tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
};
use mirror_common::PROGRAM_NAME;

use super::tc as rtnl;

/// How the classifier is attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// A TCX BPF link (Linux ≥ 6.6): released by the kernel when the daemon exits, even on SIGKILL.
    Tcx,
    /// A direct-action `bpf` filter on a clsact qdisc, through netlink (any kernel).
    Netlink,
}

impl AttachMode {
    /// The name the log and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Tcx => "tcx",
            AttachMode::Netlink => "netlink",
        }
    }
}

/// Which attach mode to use (config `capture.attach`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachPreference {
    /// TCX where the kernel has it, netlink otherwise.
    #[default]
    Auto,
    /// TCX only: fail on kernels without it.
    Tcx,
    /// Netlink even where TCX exists (to sit among other tc filters, for instance).
    Netlink,
}

/// The classifier attached to one interface (both hooks).
#[derive(Debug)]
pub struct Attached {
    /// Interface name.
    pub interface: String,
    /// How it is attached.
    pub mode: AttachMode,
    /// Interface index.
    pub ifindex: u32,
    links: Vec<SchedClassifierLinkId>,
    /// We created the interface's clsact qdisc (so we remove it at exit if nothing else uses it).
    added_qdisc: bool,
    /// Held while attached: tells other daemons (and `mirror detach`) that the attachment is live.
    _owner: Option<UnixListener>,
}

/// Index of interface `name`.
pub fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).with_context(|| format!("interface name {name:?}"))?;
    // SAFETY: a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("no interface named {name:?} in this network namespace");
    }
    Ok(idx)
}

/// Claims ownership of `ifindex`'s attachment. `None`: a live daemon holds it.
fn claim(ifindex: u32) -> Result<Option<UnixListener>> {
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(format!("mirror/tc/{ifindex}"))?;
    match UnixListener::bind_addr(&addr) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(None),
        Err(e) => Err(e).context("binding the attachment's ownership socket"),
    }
}

/// Whether a live mirror daemon is attached to `interface`.
pub fn owned_by_live_daemon(interface: &str) -> Result<bool> {
    Ok(claim(ifindex(interface)?)?.is_none())
}

/// The TC hooks the classifier is attached to, with aya's name for each.
const HOOKS: [(rtnl::Hook, TcAttachType); 2] =
    [(rtnl::Hook::Ingress, TcAttachType::Ingress), (rtnl::Hook::Egress, TcAttachType::Egress)];

/// Removes the netlink filters named [`PROGRAM_NAME`] from `interface`'s ingress and egress hooks.
/// Only call it while holding the interface's ownership (or after checking no live daemon holds
/// it). Returns how many were removed.
pub fn remove_ours(interface: &str) -> Result<usize> {
    let idx = ifindex(interface)?;
    let mut removed = 0;
    for (hook, attach_type) in HOOKS {
        let ours = rtnl::filters(idx, hook)
            .with_context(|| format!("listing the tc filters of {interface}"))?
            .into_iter()
            .filter(|f| f.bpf_name.as_deref() == Some(PROGRAM_NAME))
            .count();
        if ours > 0 {
            tc::qdisc_detach_program(interface, attach_type, PROGRAM_NAME)
                .with_context(|| format!("removing {PROGRAM_NAME} filters from {interface}"))?;
        }
        removed += ours;
    }
    Ok(removed)
}

/// Attaches `prog` to the TC ingress hook of `interface`.
pub fn attach(prog: &mut SchedClassifier, interface: &str, pref: AttachPreference, tcx: bool) -> Result<Attached> {
    let ifindex = ifindex(interface)?;
    let owner = claim(ifindex)?;
    if owner.is_some() {
        let removed = remove_ours(interface)?;
        if removed > 0 {
            tracing::warn!(
                interface,
                removed,
                "removed {PROGRAM_NAME} filters left by a daemon that did not exit cleanly"
            );
        }
    } else {
        tracing::warn!(interface, "another mirror daemon is attached to this interface; attaching beside it");
    }
    let use_tcx = match pref {
        AttachPreference::Auto => tcx,
        AttachPreference::Tcx if !tcx => bail!(
            "TCX attach was asked for, but this kernel ({}) has no TCX (Linux 6.6 or later): use auto or netlink",
            super::kernel::release()
        ),
        AttachPreference::Tcx => true,
        AttachPreference::Netlink => false,
    };
    let mut added_qdisc = false;
    let mode = if use_tcx {
        AttachMode::Tcx
    } else {
        added_qdisc = add_clsact(interface)?;
        AttachMode::Netlink
    };
    let mut attached =
        Attached { interface: interface.to_string(), mode, ifindex, links: Vec::new(), added_qdisc, _owner: owner };
    for (_, attach_type) in HOOKS {
        let options = match mode {
            AttachMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
            AttachMode::Netlink => TcAttachOptions::Netlink(NlOptions::default()),
        };
        match prog.attach_with_options(interface, attach_type, options) {
            Ok(link) => attached.links.push(link),
            Err(e) => {
                detach(prog, attached);
                return Err(e).with_context(|| {
                    format!("attaching to the TC {attach_type:?} hook of {interface} ({})", mode.as_str())
                });
            }
        }
    }
    Ok(attached)
}

/// Forgets the attachment of a link that is gone (deleted, or moved to another namespace): the
/// kernel released its TCX links and netlink filters with it, so nothing is detached (that could
/// only fail, or, were the index reused, touch another link); TCX link descriptors are closed.
pub fn forget(prog: &mut SchedClassifier, attached: Attached) {
    for id in attached.links {
        match prog.take_link(id) {
            // A netlink filter: plain data (index, hook, priority, handle), no descriptor.
            Ok(link) if link.priority().is_ok() => std::mem::forget(link),
            // A TCX link: dropping it closes its descriptor; the link is already defunct.
            Ok(link) => drop(link),
            Err(_) => {}
        }
    }
}

/// Adds a clsact qdisc to `interface` if it has none; true if we added it.
fn add_clsact(interface: &str) -> Result<bool> {
    match tc::qdisc_add_clsact(interface) {
        Ok(()) => Ok(true),
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("adding a clsact qdisc to {interface} (Linux 4.5 or later)")),
    }
}

/// Detaches; removes the clsact qdisc too if we added it and it now holds no filter at all.
pub fn detach(prog: &mut SchedClassifier, attached: Attached) {
    let Attached { interface, links, added_qdisc, ifindex, mode, .. } = attached;
    for link in links {
        if let Err(e) = prog.detach(link) {
            tracing::warn!(interface, "detaching {PROGRAM_NAME}: {e}");
        }
    }
    tracing::info!(interface, mode = mode.as_str(), "detached {PROGRAM_NAME}");
    if !added_qdisc {
        return;
    }
    let empty = HOOKS
        .iter()
        .map(|(h, _)| rtnl::filters(ifindex, *h))
        .collect::<io::Result<Vec<_>>>()
        .map(|lists| lists.iter().all(Vec::is_empty));
    match empty {
        Ok(true) => match rtnl::delete_clsact(ifindex) {
            Ok(()) => tracing::info!(interface, "removed the clsact qdisc we added"),
            Err(e) => tracing::warn!(interface, "removing the clsact qdisc we added: {e}"),
        },
        Ok(false) => tracing::info!(interface, "kept the clsact qdisc we added: other filters use it now"),
        Err(e) => tracing::warn!(interface, "listing tc filters before removing our clsact qdisc: {e}"),
    }
}
