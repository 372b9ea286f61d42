//! The flow table under a SYN flood (issue 12): a full table (established keep-alive flows and
//! handshakes), then SYNs from random addresses and ports that never go further, each of which
//! must make room. Reports the cost per SYN (before the fix, eviction scanned every flow: ~8.5 ms a
//! SYN on the 2-core CI machine; now the flow to evict is the head of a list).

use std::{hint::black_box, time::Duration};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mirror::flow::{FlowConfig, FlowKey, FlowTable, Segment};
use mirror_common::{TCP_ACK, TCP_PSH, TCP_SYN};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Flows in the table (the daemon's default bound).
const MAX_FLOWS: usize = 65_536;
/// SYNs per measured batch.
const SYNS: u64 = 20_000;

fn key(client: [u8; 4], port: u16) -> FlowKey {
    FlowKey { client: (client, port).into(), server: ([10, 77, 0, 2], 8000).into() }
}

/// A full table: established flows (each after one request acknowledged by the server) in seven
/// eighths of it, handshakes in the rest (the share the table keeps for them).
fn full_table() -> FlowTable {
    let mut t = FlowTable::new(FlowConfig { max_flows: MAX_FLOWS, ..FlowConfig::default() });
    let mut out = Vec::new();
    let req = Bytes::from_static(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    let now = Duration::ZERO;
    for s in flood((MAX_FLOWS / 8) as u64, 1) {
        t.on_segment(s, now, &mut out);
    }
    for i in 0..(MAX_FLOWS - MAX_FLOWS / 8) as u32 {
        let k = key([10, 1, (i >> 8) as u8, i as u8], 40_000);
        t.on_segment(Segment::to_server(k, 100, 0, TCP_SYN, Bytes::new()), now, &mut out);
        t.on_segment(Segment::to_client(k, 7, 101, TCP_SYN | TCP_ACK, 0), now, &mut out);
        t.on_segment(Segment::to_server(k, 101, 8, TCP_ACK | TCP_PSH, req.clone()), now, &mut out);
        t.on_segment(Segment::to_client(k, 8, 101 + req.len() as u32, TCP_ACK, 0), now, &mut out);
        out.clear();
    }
    assert_eq!(t.len(), MAX_FLOWS);
    t
}

/// Whether `k` is one of the established flows.
fn is_established(k: &FlowKey) -> bool {
    matches!(k.client.ip(), std::net::IpAddr::V4(a) if a.octets()[..2] == [10, 1])
}

/// SYNs from random sources (outside the established flows' 10.1/16).
fn flood(n: u64, seed: u64) -> Vec<Segment> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let k =
                key([10, 200 + rng.random_range(0..50), rng.random(), rng.random()], rng.random_range(1024..65_535));
            Segment::to_server(k, rng.random(), 0, TCP_SYN, Bytes::new())
        })
        .collect()
}

fn syn_flood(c: &mut Criterion) {
    let syns = flood(SYNS, 12);
    let mut g = c.benchmark_group("flow_table");
    g.throughput(Throughput::Elements(SYNS));
    g.sample_size(10);
    g.bench_function("syn_flood_on_full_table_65536", |b| {
        b.iter_batched_ref(
            full_table,
            |t| {
                let mut out = Vec::new();
                let mut established_lost = 0;
                for (i, s) in syns.iter().enumerate() {
                    // 20,000 SYN/s.
                    t.on_segment(s.clone(), Duration::from_micros(50 * (1 + i as u64)), &mut out);
                    established_lost += out.iter().filter(|(k, _)| is_established(k)).count();
                    out.clear();
                }
                // Only the flood's own flows (and the handshakes it found) were evicted.
                assert_eq!((t.len(), established_lost), (MAX_FLOWS, 0));
                black_box(t.stats.evicted)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, syn_flood);
criterion_main!(benches);
