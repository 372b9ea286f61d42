//! Attach points (issue 13): the links the classifier is on, how links came and went, and the
//! copies of packets seen at a second attach point.

use std::collections::BTreeMap;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{AttachLabel, Metrics};
use crate::capture::LinkStats;

/// `{event, reason}` of `mirror_link_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: String,
    reason: String,
}

/// The link metrics.
#[derive(Default)]
pub(super) struct LinkMetrics {
    attached: Gauge,
    events: Family<EventLabel, Counter>,
    duplicates: Counter,
}

impl LinkMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register("links_attached", "Links the classifier is attached to now", self.attached.clone());
        registry.register(
            "link_events",
            "Links attached (reason: start, new_link, reload, resync), detached (gone, unselected, stop) and failed (gone, permission, no_tcx, limit, error)",
            self.events.clone(),
        );
        registry.register(
            "capture_duplicates",
            "Copies of a packet seen again at a second attach point (a NIC, then a pod's veth), dropped before reassembly",
            self.duplicates.clone(),
        );
    }
}

impl Metrics {
    /// Publishes where the classifier is attached now ((interface, mode): `mirror_attach_info`
    /// holds exactly these), the link events counted so far and the duplicates dropped.
    pub fn links<'a>(&self, attached: impl Iterator<Item = (&'a str, &'a str)>, stats: &LinkStats, duplicates: u64) {
        let now: BTreeMap<AttachLabel, ()> =
            attached.map(|(i, m)| (AttachLabel { interface: i.into(), mode: m.into() }, ())).collect();
        self.attach.clear();
        for label in now.keys() {
            self.attach.get_or_create(label).set(1);
        }
        self.links.attached.set(now.len() as i64);
        for (key, &count) in &stats.events {
            let (event, reason) = key.split_once('/').unwrap_or((key, ""));
            let label = EventLabel { event: event.into(), reason: reason.into() };
            self.links.events.get_or_create(&label).inc_by(self.delta(&format!("link/{key}"), count));
        }
        self.links.duplicates.inc_by(self.delta("capture_duplicates", duplicates));
    }
}
