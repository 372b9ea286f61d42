//! Issue 12: a SYN flood at the primary while real requests go on. Before, every SYN on a full
//! flow table (65,536 flows) scanned the whole table to evict one (~3-8 ms): the capture thread
//! fell behind, the kernel ring overflowed, and real requests reached the mirror up to 89 s late;
//! the flood's flows then stayed in memory (110 MB resident a minute later).

use std::time::Duration;

use mirror_tests::{
    attacks::{self, Attack, SETTLED_KIB},
    median,
};
use serde_json::Value;

/// SYNs a second.
const RATE: u64 = 20_000;
/// How long the flood lasts. At 20,000 SYN/s the daemon's table (65,536 flows) is full after
/// 3.3 s; the remaining 6.7 s are the steady state, every SYN an eviction (~134,000 of
/// them). Before the fix that state cost the capture thread 60-170 s of CPU per second of flood,
/// so real requests were seconds late and the ring overflowed within its first second; 6.7 s of
/// it shows whether the daemon keeps up, and keeps the test short.
const SECONDS: u64 = 10;

#[test]
fn a_syn_flood_on_a_full_flow_table_delays_and_loses_no_real_request() {
    let o = attacks::run(Attack::SynFlood { rate: RATE, seconds: SECONDS }).unwrap();
    let (summary, flows) = (&o.summary, &o.summary["flows"]);
    println!("SYNs sent: {}; real requests: {}", o.sent, o.real.len());
    println!("kernel: {}\nflows: {flows}\nperf_lost_samples: {}", summary["kernel"], summary["perf_lost_samples"]);
    println!(
        "daemon RSS: before {} KiB, peak {} KiB, {} KiB {:?} after the flood",
        o.rss_before_kib, o.rss_peak_kib, o.rss_after_kib, o.settle
    );
    for (uri, _, r) in &o.real {
        assert_eq!(r.as_ref(), Ok(&200), "{uri}: the primary did not answer");
    }
    assert!(o.missing().is_empty(), "never reached the mirror: {:?}\n{summary}", o.missing());
    let delays = o.delays();
    let worst = delays.iter().max().unwrap();
    println!("mirror delay: worst {worst:?}, median {:?}", median(&delays));
    assert!(*worst < Duration::from_secs(1), "a real request reached the mirror {worst:?} after it was sent");
    assert!(o.real.len() >= 90, "only {} real requests", o.real.len());
    // The sender pays for the primary's kernel handling each SYN (veth): on a loaded machine it
    // falls short of the rate (110,000 of 200,000 seen while benchmarks shared the 2 cores), but
    // what matters is many more SYNs than the table holds, so that it fills and then evicts.
    assert!(o.sent >= 100_000, "the flood sent only {} SYNs", o.sent);
    assert_eq!(summary["kernel"]["lost"], Value::from(0), "the ring lost segments\n{summary}");
    assert_eq!(summary["perf_lost_samples"], Value::from(0), "{summary}");
    // The table filled and the flood's flows were evicted, then (10 s after their SYN) parked;
    // no real request was lost.
    assert!(flows["evicted"].as_u64().unwrap() > 20_000, "{flows}");
    assert!(flows["parked"].as_u64().unwrap() > 0, "{flows}");
    assert_eq!(summary["pipeline"]["mirrored"], Value::from(o.real.len() as u64), "{summary}");
    assert!(o.rss_peak_kib < 256 * 1024, "peak RSS {} KiB: over the DaemonSet's 256 MiB", o.rss_peak_kib);
    assert!(o.rss_after_kib < SETTLED_KIB, "RSS {} KiB a minute after the flood", o.rss_after_kib);
}
