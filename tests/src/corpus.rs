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
        self.per_flow.values().flatten().cloned().collect()
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
            };
            for fl in flows {
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
