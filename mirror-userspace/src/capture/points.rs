//! Attach points: which links carry the classifier, kept in step with `capture.interfaces` and with
//! the links of the namespace as they come and go.
//!
//! Everything goes through [`Capture::reconcile`]: given every link there is, attach to each one a
//! selection entry matches and that is not attached yet, detach from each attached one that no
//! entry matches any more, and forget each attached one that is gone. The start, a SIGHUP and a
//! lost notification (a fresh dump) all call it; single notifications take the same path for one
//! link. An interface's kernel entry (`MIRROR_IFACES`: which hook sees its requests) goes in before
//! the program is attached and out after it is detached.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result};
use aya::maps::HashMap as BpfHashMap;
use mirror_common::{MAP_IFACES, MAX_LINKS, PROGRAM_NAME};
use serde::Serialize;

use super::{
    Capture,
    attach::{self, AttachPreference, Attached},
    links::{self, Link, LinkEvent},
    select::{Selection, directions},
};

/// One attached link.
pub(super) struct Point {
    pub(super) attached: Attached,
    /// `IFACE_REQUESTS_*` flags in the kernel's interface map.
    pub(super) flags: u8,
}

/// What happened to links, as counted for the summary and the metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LinkStats {
    /// Links attached now.
    pub attached: usize,
    /// (event, reason) → count: `attached`/`start`, `attached`/`new_link`, `attached`/`reload`,
    /// `detached`/`gone` (deleted or moved away), `detached`/`unselected` (renamed, or no entry
    /// matches it after a reload), `detached`/`stop`, `failed`/<why>.
    pub events: BTreeMap<String, u64>,
    /// Link notifications the kernel dropped (its socket buffer was full): a fresh dump followed.
    pub overruns: u64,
}

impl LinkStats {
    fn count(&mut self, event: &str, reason: &str) {
        *self.events.entry(format!("{event}/{reason}")).or_default() += 1;
    }
}

/// Why an attach failed, in a word (the metrics' `reason` label).
fn failure_reason(e: &anyhow::Error) -> &'static str {
    let text = format!("{e:#}");
    if text.contains("no interface named") || text.contains("No such device") || text.contains("renamed") {
        "gone"
    } else if text.contains("Operation not permitted") || text.contains("Permission denied") {
        "permission"
    } else if text.contains("TCX attach was asked for") {
        "no_tcx"
    } else if text.contains("too many") {
        "limit"
    } else {
        "error"
    }
}

impl Capture {
    /// Brings the attachments in line with `links` (every link of the namespace) and the
    /// selection. `why` says what prompted it (`start`, `reload`, `resync`).
    pub(super) fn reconcile(&mut self, links: &[Link], why: &str) {
        let present: BTreeSet<u32> = links.iter().map(|l| l.index).collect();
        let gone: Vec<u32> = self.points.keys().filter(|i| !present.contains(i)).copied().collect();
        for index in gone {
            self.forget_link(index);
        }
        for link in links {
            self.on_link(link, why);
        }
        self.stats.attached = self.points.len();
    }

    /// Handles one notification.
    pub(super) fn on_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::New(link) => self.on_link(&link, "new_link"),
            LinkEvent::Gone { index, .. } => self.forget_link(index),
        }
        self.stats.attached = self.points.len();
    }

    /// A link that exists: attach, update or detach as the selection says.
    fn on_link(&mut self, link: &Link, why: &str) {
        let flags = self.selection.flags(&link.name);
        let current = self.points.get(&link.index).map(|p| (p.flags, p.attached.interface.clone()));
        match current {
            None if flags != 0 => {
                if let Err(e) = self.attach_link(link, flags, why) {
                    let reason = failure_reason(&e);
                    tracing::warn!(interface = %link.name, reason, "attaching {PROGRAM_NAME} failed: {e:#}");
                    self.stats.count("failed", reason);
                }
            }
            None => {}
            Some(_) if flags == 0 => self.detach_link(link.index, "unselected"),
            Some((old, name)) => {
                if old != flags {
                    match self.set_iface(link.index, Some(flags)) {
                        Ok(()) => {
                            tracing::info!(interface = %link.name, direction = directions(flags), "requests now captured on {}", directions(flags))
                        }
                        Err(e) => tracing::warn!(interface = %link.name, "updating the interface map: {e:#}"),
                    }
                }
                let point = self.points.get_mut(&link.index).expect("checked above");
                point.flags = flags;
                if name != link.name {
                    point.attached.interface.clone_from(&link.name);
                }
            }
        }
    }

    fn attach_link(&mut self, link: &Link, flags: u8, why: &str) -> Result<()> {
        anyhow::ensure!(self.points.len() < MAX_LINKS as usize, "too many links attached ({MAX_LINKS})");
        self.set_iface(link.index, Some(flags))?;
        let (pref, tcx) = (self.preference, self.tcx);
        let result = attach::attach(self.classifier()?, &link.name, pref, tcx);
        let attached = match result {
            Ok(a) if a.ifindex == link.index => a,
            Ok(a) => {
                // The name now belongs to another link (renamed since the notification).
                attach::detach(self.classifier()?, a);
                let _ = self.set_iface(link.index, None);
                anyhow::bail!("{} was renamed before it could be attached", link.name);
            }
            Err(e) => {
                let _ = self.set_iface(link.index, None);
                return Err(e);
            }
        };
        tracing::info!(
            interface = %link.name,
            ifindex = link.index,
            mode = attached.mode.as_str(),
            direction = directions(flags),
            reason = why,
            "attached {PROGRAM_NAME} to TC ingress and egress"
        );
        self.stats.count("attached", why);
        self.points.insert(link.index, Point { attached, flags });
        Ok(())
    }

    /// Detaches from a link that is still there (it no longer matches, or the daemon stops).
    pub(super) fn detach_link(&mut self, index: u32, why: &str) {
        let Some(point) = self.points.remove(&index) else { return };
        match self.classifier() {
            Ok(prog) => attach::detach(prog, point.attached),
            Err(e) => tracing::warn!("detaching: {e:#}"),
        }
        if let Err(e) = self.set_iface(index, None) {
            tracing::warn!(ifindex = index, "removing the interface from the kernel map: {e:#}");
        }
        self.stats.count("detached", why);
    }

    /// Forgets a link that is gone: nothing to detach (the kernel released it with the link).
    fn forget_link(&mut self, index: u32) {
        let Some(point) = self.points.remove(&index) else { return };
        let name = point.attached.interface.clone();
        match self.classifier() {
            Ok(prog) => attach::forget(prog, point.attached),
            Err(e) => tracing::warn!("forgetting {name}: {e:#}"),
        }
        if let Err(e) = self.set_iface(index, None) {
            tracing::warn!(interface = %name, "removing the interface from the kernel map: {e:#}");
        }
        tracing::info!(interface = %name, ifindex = index, "link gone: forgot its attachment");
        self.stats.count("detached", "gone");
    }

    /// Sets (`Some`) or removes (`None`) an interface's entry in the kernel's interface map.
    fn set_iface(&mut self, index: u32, flags: Option<u8>) -> Result<()> {
        let mut map: BpfHashMap<_, u32, u8> =
            BpfHashMap::try_from(self.ebpf.map_mut(MAP_IFACES).context("interface map missing")?)?;
        match flags {
            Some(f) => map.insert(index, f, 0).context("adding an interface to the kernel map")?,
            None => match map.remove(&index) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e.into()),
            },
        }
        Ok(())
    }

    /// Reads the link notifications that arrived and acts on them; after lost ones (the kernel's
    /// buffer was full), takes a fresh dump instead. Cheap when nothing happened (one
    /// non-blocking read).
    pub fn watch_links(&mut self) {
        let Some(watcher) = self.watcher.as_mut() else { return };
        match watcher.events() {
            Ok(events) => {
                for e in events {
                    self.on_event(e);
                }
            }
            Err(links::Overrun) => {
                self.stats.overruns += 1;
                tracing::warn!("link notifications were lost: listing the links again");
                self.resync("resync");
            }
        }
    }

    /// Dumps the links and reconciles.
    fn resync(&mut self, why: &str) {
        match links::dump() {
            Ok(all) => self.reconcile(&all, why),
            Err(e) => tracing::error!("listing the links: {e}"),
        }
    }

    /// New `capture.interfaces` (SIGHUP): attach to links that match now, detach from those that
    /// no longer do; links matched before and now keep their attachment (and their flows).
    pub fn set_interfaces(&mut self, selection: Selection) {
        self.selection = selection;
        self.resync("reload");
        let missing: Vec<&str> =
            self.selection.names().filter(|n| !self.points.values().any(|p| p.attached.interface == *n)).collect();
        if !missing.is_empty() {
            tracing::warn!(?missing, "reload: interfaces named in capture.interfaces are not there (yet)");
        }
    }

    /// How links were attached, detached and failed.
    pub fn link_stats(&self) -> &LinkStats {
        &self.stats
    }

    /// The attach preference given at start.
    pub fn preference(&self) -> AttachPreference {
        self.preference
    }
}
