//! Offline reassembly + framing + routing throughput, in process, one core: the sans-IO pipeline
//! fed segments as the capture thread feeds it.

use std::{hint::black_box, sync::Arc, time::Duration};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mirror::{
    config::Config,
    flow::{FlowConfig, FlowKey, Segment},
    pipeline::Pipeline,
    route::Router,
};
use mirror_common::{TCP_ACK, TCP_SYN};
use rand::{SeedableRng, rngs::StdRng};

fn pipeline() -> Pipeline {
    let cfg = Config::parse(
        "capture: {interfaces: [eth0], ports: [80]}\nroutes: [{mirror: {host: m}}]\nendpoints: {m: ['127.0.0.1:1']}\n",
        "bench",
    )
    .unwrap();
    Pipeline::with_rng(Arc::new(Router::new(&cfg).unwrap()), FlowConfig::default(), 1 << 20, StdRng::seed_from_u64(1))
}

/// One flow carrying `stream`, cut into `mss`-byte segments after a SYN, each acknowledged by the
/// server (a header-only segment back) as the primary's TCP does.
fn segments(stream: &[u8], mss: usize) -> Vec<Segment> {
    let key = FlowKey { client: "10.0.0.1:40000".parse().unwrap(), server: "10.0.0.2:80".parse().unwrap() };
    let mut segs = vec![Segment::to_server(key, 999, 0, TCP_SYN, Bytes::new())];
    segs.push(Segment::to_client(key, 0, 1000, TCP_SYN | TCP_ACK, 0));
    let stream = Bytes::copy_from_slice(stream);
    let mut seq = 1000u32;
    for start in (0..stream.len()).step_by(mss) {
        let end = (start + mss).min(stream.len());
        segs.push(Segment::to_server(key, seq, 1, TCP_ACK, stream.slice(start..end)));
        seq = seq.wrapping_add((end - start) as u32);
        segs.push(Segment::to_client(key, 1, seq, TCP_ACK, 0));
    }
    segs
}

fn run(segs: &[Segment]) -> usize {
    let mut p = pipeline();
    let mut out = Vec::new();
    for s in segs {
        p.on_segment(s.clone(), Duration::ZERO, &mut out);
    }
    p.finish(&mut out);
    out.len()
}

fn large_bodies(c: &mut Criterion) {
    // 4 POSTs of 16 MiB each, in 64 KiB segments (what GSO hands TC on veth).
    let body = vec![b'x'; 16 << 20];
    let mut stream = Vec::new();
    for i in 0..4 {
        stream.extend_from_slice(
            format!("POST /upload/{i} HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
        );
        stream.extend_from_slice(&body);
    }
    let segs = segments(&stream, 64 * 1024);
    let mut g = c.benchmark_group("offline");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.sample_size(10);
    g.bench_function("large_bodies_64MiB", |b| b.iter(|| black_box(run(&segs))));
    g.finish();
}

fn small_pipelined(c: &mut Criterion) {
    // 10,000 small GETs pipelined on one connection, in 1448-byte segments.
    let mut stream = Vec::new();
    for i in 0..10_000 {
        stream.extend_from_slice(
            format!("GET /item/{i}?q=1 HTTP/1.1\r\nHost: shop\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n").as_bytes(),
        );
    }
    let segs = segments(&stream, 1448);
    let mut g = c.benchmark_group("offline");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("small_pipelined_10k_requests", |b| b.iter(|| black_box(run(&segs))));
    g.finish();
}

fn live_keepalive(c: &mut Criterion) {
    // What the daemon sees at the bench's open-loop steps: 64 kept-alive connections, each small
    // GET in a segment of its own and acknowledged by the server's response (a header-only
    // segment back), the connections taking turns: per-segment work (flow lookup, reassembly,
    // acknowledgements) is not spread over many requests as in `small_pipelined`.
    const CONNS: usize = 64;
    let get = b"GET /api/items?id=42 HTTP/1.1\r\nHost: httpbin:8000\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n";
    let body = Bytes::from_static(get);
    let keys: Vec<FlowKey> = (0..CONNS)
        .map(|i| FlowKey {
            client: format!("10.0.0.1:{}", 40000 + i).parse().unwrap(),
            server: "10.0.0.2:8000".parse().unwrap(),
        })
        .collect();
    let mut segs = Vec::new();
    for &key in &keys {
        segs.push(Segment::to_server(key, 999, 0, TCP_SYN, Bytes::new()));
        segs.push(Segment::to_client(key, 0, 1000, TCP_SYN | TCP_ACK, 0));
    }
    let (mut seq, mut rseq) = (vec![1000u32; CONNS], vec![1u32; CONNS]);
    for i in 0..10_000 {
        let c = i % CONNS;
        segs.push(Segment::to_server(keys[c], seq[c], rseq[c], TCP_ACK, body.clone()));
        seq[c] = seq[c].wrapping_add(get.len() as u32);
        segs.push(Segment::to_client(keys[c], rseq[c], seq[c], TCP_ACK, 150));
        rseq[c] = rseq[c].wrapping_add(150);
    }
    let mut g = c.benchmark_group("offline");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("live_keepalive_10k_requests", |b| b.iter(|| black_box(run(&segs))));
    g.finish();
}

fn resync_through_binary(c: &mut Criterion) {
    // A flow picked up mid-stream inside 16 MiB of binary body (random bytes, with the
    // occasional LF and capital letter): framing must find the next request line in one pass.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut stream: Vec<u8> = (0..16 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    stream.extend_from_slice(b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n");
    let mut segs = segments(&stream, 64 * 1024);
    segs.remove(0); // no SYN: picked up mid-stream
    let mut g = c.benchmark_group("offline");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.sample_size(10);
    g.bench_function("resync_through_16MiB_binary", |b| b.iter(|| black_box(run(&segs))));
    g.finish();
}

criterion_group!(benches, large_bodies, small_pipelined, live_keepalive, resync_through_binary);
criterion_main!(benches);
