//! The shared test corpus (`../shared/corpus`): where it is, and what its ground truth expects us to
//! mirror from each capture, with the places where we deliberately differ from the reference.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use serde_json::Value;

/// `MIRROR_CORPUS`, else `shared/corpus` beside the repository. Panics (never skips) if missing.
pub fn dir() -> PathBuf {
    let dir = std::env::var_os("MIRROR_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"));
    assert!(dir.join("README.md").exists(), "the test corpus is missing at {} (set MIRROR_CORPUS)", dir.display());
    dir
}

/// Captures where we deliberately differ from the lenient reference: it treats
/// Transfer-Encoding + Content-Length, and an obs-folded Transfer-Encoding, as chunked and frames
/// the request that follows, and accepts bare-LF chunk lines. A strict framer (ours; RFC 9112 lets
/// a server reject these, and strict servers do) refuses them and never emits what follows.
pub const STRICTER_THAN_REFERENCE: [&str; 3] = [
    "zeek__http-261-variant-04-te_cl_desync.pcap",
    "zeek__http-261-variant-09-te_obs_fold.pcap",
    "sv__http-event-chunk.pcap",
];

/// After the hole in this capture the reference resumes only at a line start and frames nothing
/// more; the next request starts exactly where the lost one's body ends (mid-line), and we frame
/// it, complete: one POST with a 6634-byte body. The gapped request itself is dropped.
pub const RESYNCS_BEYOND_REFERENCE: &str = "ppp__unidirectional_tcp_stream_with_missing_packet.pcap";

/// Two-way captures with flows the capture holds without their SYN: the daemon, knowing only the
/// primary's side and not where that flow's requests start, gives such a flow up (issue 11: a
/// resynchronisation could take body bytes for a request) and mirrors none of its requests; the
/// reference frames them from the first request line. Per capture, why its flows lack the SYN.
pub const MIDSTREAM_GIVEN_UP: [(&str, &str); 4] = [
    ("ndpi__1kxun.pcap", "76 connections were open before the capture began: 109 of its 133 requests"),
    ("ppp__example.pcap", "one connection was open before the capture began: 1 of its 338 requests"),
    ("zeek__http-get_nosyn.pcap", "its only connection was captured without its handshake: its 1 request"),
    ("zeek__wikipedia.pcap", "two connections were open before the capture began: 1 of its 15 requests"),
];

/// (method, target, decoded body length) of one request.
pub type Req = (String, String, usize);

/// One capture's ground truth.
pub struct Expectation {
    pub capture: String,
    /// Server ports (what to watch).
    pub ports: BTreeSet<u16>,
    /// Complete requests per (client, server), CONNECT excluded (framed, never replayed).
    pub per_flow: BTreeMap<(String, String), Vec<Req>>,
    pub connects: usize,
    /// Flows whose SYN the capture does not hold.
    pub no_syn: BTreeSet<(String, String)>,
}

impl Expectation {
    /// What should reach the mirror from this capture, in the order of each flow.
    pub fn mirrored(&self) -> Vec<Req> {
        if STRICTER_THAN_REFERENCE.contains(&self.capture.as_str()) {
            return Vec::new();
        }
        if self.capture == RESYNCS_BEYOND_REFERENCE {
            return vec![("POST".into(), "/GetSearchMultipleSuggestions.ashx".into(), 6634)];
        }
        self.mirrored_per_flow().into_values().flatten().collect()
    }

    /// What should reach the mirror per flow, for the captures mirrored as the reference frames
    /// them but for [`MIDSTREAM_GIVEN_UP`]'s flows.
    pub fn mirrored_per_flow(&self) -> BTreeMap<(String, String), Vec<Req>> {
        let given_up = MIDSTREAM_GIVEN_UP.iter().any(|(c, _)| *c == self.capture);
        let mut flows = self.per_flow.clone();
        flows.retain(|k, _| !(given_up && self.no_syn.contains(k)));
        flows
    }
}

/// Every ground-truth file, sorted by capture name.
pub fn expectations() -> Vec<Expectation> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir().join("groundtruth")).expect("groundtruth dir").map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let gt: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
            let flows = gt["flows"].as_array().unwrap();
            let mut e = Expectation {
                capture: gt["file"].as_str().unwrap().to_string(),
                ports: flows
                    .iter()
                    .map(|fl| fl["server"].as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap())
                    .collect(),
                per_flow: BTreeMap::new(),
                connects: 0,
                no_syn: BTreeSet::new(),
            };
            for fl in flows {
                if fl["syn"] == false {
                    e.no_syn.insert((
                        fl["client"].as_str().unwrap().to_string(),
                        fl["server"].as_str().unwrap().to_string(),
                    ));
                }
                for r in fl["requests"].as_array().unwrap() {
                    if !r["complete"].as_bool().unwrap() {
                        continue;
                    }
                    if r["method"] == "CONNECT" {
                        e.connects += 1;
                        continue;
                    }
                    let key = (fl["client"].as_str().unwrap().to_string(), fl["server"].as_str().unwrap().to_string());
                    e.per_flow.entry(key).or_default().push((
                        r["method"].as_str().unwrap().to_string(),
                        r["uri"].as_str().unwrap().to_string(),
                        r["body_len"].as_u64().unwrap() as usize,
                    ));
                }
            }
            e
        })
        .collect()
}
