//! Real captures and parser vectors written by other projects (`../shared/corpus`, see its README),
//! run through the same sans-IO pipeline the daemon uses. The corpus must be there: a missing
//! corpus fails these tests, it does not skip them.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::Duration,
};

use base64::prelude::*;
use bytes::Bytes;
use mirror::{
    capture::pcap::read_segments,
    config::Config,
    flow::FlowConfig,
    http::{FramerConfig, HttpEvent, RequestFramer},
    pipeline::{Pipeline, Request},
    route::Router,
};
use mirror_tests::corpus;
use rand::{SeedableRng, rngs::StdRng};
use serde_json::Value;

/// Decoded length of a raw chunked body.
fn dechunked_len(raw: &[u8]) -> usize {
    let mut total = 0;
    let mut rest = raw;
    loop {
        let nl = rest.iter().position(|b| *b == b'\n').expect("size line");
        let line = std::str::from_utf8(&rest[..nl]).unwrap().trim_end_matches('\r');
        let size = usize::from_str_radix(line.split([';', ' ', '\t']).next().unwrap(), 16).unwrap();
        rest = &rest[nl + 1..];
        if size == 0 {
            return total;
        }
        total += size;
        rest = &rest[size + 2..];
    }
}

fn body_len(o: &Request) -> usize {
    let head = String::from_utf8_lossy(&o.head).to_ascii_lowercase();
    if head.contains("\r\ntransfer-encoding:") { dechunked_len(&o.body.concat()) } else { o.body.len() }
}

/// Replays a capture through the pipeline, mirroring everything; returns requests per flow.
fn replay_capture(name: &str, ports: &HashSet<u16>) -> (BTreeMap<(String, String), Vec<corpus::Req>>, Value) {
    let pcap = corpus::dir().join("pcaps").join(name);
    let port_list: Vec<String> = ports.iter().map(u16::to_string).collect();
    let cfg = Config::parse(
        &format!(
            "capture: {{interfaces: [lo], ports: [{}]}}\nroutes: [{{mirror: {{host: rec}}}}]\nendpoints: {{rec: ['127.0.0.1:1']}}\n",
            port_list.join(",")
        ),
        "corpus",
    )
    .unwrap();
    let (segs, counts) = read_segments(&pcap, ports, false).unwrap();
    // Offline, holes are only closed by the end of the capture (the reference's semantics); the
    // server's ACKs release the client's bytes when the capture has them (as `mirror replay`).
    let flow_cfg = FlowConfig {
        idle_timeout: Duration::from_secs(1 << 30),
        reorder_timeout: Duration::from_secs(1 << 30),
        require_ack: counts.two_way(),
        ..Default::default()
    };
    let mut p = Pipeline::with_rng(Arc::new(Router::new(&cfg).unwrap()), flow_cfg, 1 << 30, StdRng::seed_from_u64(0));
    let mut out = Vec::new();
    for (ts, s) in segs {
        p.on_segment(s, ts, &mut out);
    }
    p.finish(&mut out);
    let mut by_flow: BTreeMap<(String, String), Vec<corpus::Req>> = BTreeMap::new();
    for o in &out {
        // The buffer is larger than any capture's requests: every one comes whole.
        let r = o.whole().expect("a whole request");
        by_flow.entry((o.flow.client.to_string(), o.flow.server.to_string())).or_default().push((
            r.method.to_string(),
            r.target().to_string(),
            body_len(r),
        ));
    }
    (by_flow, serde_json::to_value(p.stats()).unwrap())
}

#[test]
fn captures_match_the_reference_reassembly_and_framing() {
    let all = corpus::expectations();
    assert!(all.len() >= 33, "expected the 33 ground-truth files, found {}", all.len());
    let mut mismatches = Vec::new();
    println!("{:<58} {:>9} {:>9} {:>9}", "capture", "ref", "ours", "match");
    for e in &all {
        let ports: HashSet<u16> = e.ports.iter().copied().collect();
        let (got, stats) = replay_capture(&e.capture, &ports);
        let n_ref: usize = e.per_flow.values().map(Vec::len).sum();
        let flat: Vec<corpus::Req> = got.values().flatten().cloned().collect();
        let exact = !corpus::STRICTER_THAN_REFERENCE.contains(&e.capture.as_str())
            && e.capture != corpus::RESYNCS_BEYOND_REFERENCE;
        let ok = if exact {
            // Per flow, in order (flows given up mid-stream excepted), and every CONNECT framed but
            // held back.
            got == e.mirrored_per_flow() && stats["dropped"]["connect"].as_u64().unwrap_or(0) as usize == e.connects
        } else {
            // The documented divergences: exactly what `mirrored()` says, and the drop counted.
            flat == e.mirrored() && stats["dropped"].as_object().is_some_and(|d| !d.is_empty())
        };
        println!("{:<58} {n_ref:>9} {:>9} {:>9}", e.capture, flat.len(), if ok { "yes" } else { "NO" });
        if !ok {
            mismatches.push(format!("{}: want {:?}\n got {got:?}\n stats {stats}", e.capture, e.per_flow));
        }
    }
    assert!(mismatches.is_empty(), "{} captures differ:\n{}", mismatches.len(), mismatches.join("\n"));
}

/// Every strict llhttp request case, whole and split at every byte offset: the number of complete
/// requests must match llhttp's, and a case llhttp rejects must yield no request at or after the
/// error offset.
#[test]
fn llhttp_strict_request_cases_whole_and_split_everywhere() {
    let text = std::fs::read_to_string(corpus::dir().join("llhttp/cases.jsonl")).unwrap();
    let mut checked = 0;
    let mut failures = Vec::new();
    for line in text.lines() {
        let case: Value = serde_json::from_str(line).unwrap();
        // `skipBody` is an llhttp API mode (the caller tells the parser there is no body), not
        // something that can be seen on the wire.
        if case["kind"] != "http" || case["meta"]["type"] != "request" || case["meta"]["skipBody"] == true {
            continue;
        }
        let input = BASE64_STANDARD.decode(case["input_b64"].as_str().unwrap()).unwrap();
        let name = case["name"].as_str().unwrap().to_string();
        let error = case.get("error").filter(|e| !e.is_null());
        // Code 21 (pause on CONNECT/Upgrade) is where the stream stops being HTTP, not an error.
        let error_off = error.filter(|e| e["code"] != 21).map(|e| e["off"].as_u64().unwrap() as usize);
        let expected = case["messages_complete"].as_u64().unwrap_or(0) as usize;
        let whole = frame(&[&input]);
        for i in 0..=input.len() {
            let split = frame(&[&input[..i], &input[i..]]);
            if split != whole {
                failures.push(format!("{name}: split at {i} gives {split:?}, whole gives {whole:?}"));
                break;
            }
        }
        let ends: Vec<usize> = whole.iter().map(|(_, end)| *end).collect();
        let verdict = match error_off {
            // Requests that completed before the error are fine; none may end after it.
            Some(off) => ends.iter().all(|e| *e <= off) && ends.len() <= expected,
            None => ends.len() == expected || known_divergence(&name),
        };
        if !verdict {
            failures.push(format!("{name}: llhttp completes {expected} (error at {error_off:?}), we frame {ends:?}"));
        }
        checked += 1;
    }
    assert!(checked >= 100, "only {checked} strict request cases found");
    assert!(failures.is_empty(), "{} of {checked} cases differ:\n{}", failures.len(), failures.join("\n"));
}

/// Cases llhttp accepts that we do not frame as HTTP/1.x requests: other protocols that reuse the
/// syntax (RTSP, ICE), and HTTP/0.9's version-less request line.
fn known_divergence(name: &str) -> bool {
    ["RTSP", "ICE", "No HTTP version"].iter().any(|p| name.contains(p))
}

/// Complete requests framed from the chunks: (method, stream offset where the request ended).
fn frame(chunks: &[&[u8]]) -> Vec<(String, usize)> {
    let mut f = RequestFramer::new(FramerConfig::default(), false);
    let mut events = Vec::new();
    for c in chunks {
        f.on_data(Bytes::copy_from_slice(c), &mut events);
    }
    let mut done = Vec::new();
    let mut cur: Option<(String, usize)> = None;
    for e in events {
        match e {
            HttpEvent::Head(h) => cur = Some((h.method.to_string(), h.stream_offset as usize + h.raw.len())),
            HttpEvent::Body(b) => {
                if let Some(c) = cur.as_mut() {
                    c.1 += b.len();
                }
            }
            HttpEvent::End => done.extend(cur.take()),
            HttpEvent::Dropped(_) => cur = None,
            HttpEvent::Tunnel => {}
        }
    }
    done
}
