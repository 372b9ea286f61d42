//! The pipelined connection worker against scripted loopback servers: order, HEAD, close, failure
//! without duplicates, streams that must not complete, and the memory budget given back.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::mpsc,
};

use super::{Recorder, ReplayStats, conn::worker, weight};
use crate::{
    config::{Pace, ReplaySettings},
    flow::FlowKey,
    memory::{Held, Memory},
    pipeline::{Body, Outbound, Part, Request},
    stats::DropReason,
};

fn ob(part: Part) -> Outbound {
    let a: SocketAddr = "10.0.0.1:1000".parse().unwrap();
    Outbound {
        endpoint: crate::route::Name::new("m"),
        route: crate::route::Name::new("r"),
        flow: FlowKey { client: a, server: a },
        part,
        compare: None,
    }
}

fn get(i: usize, method: &'static str) -> Outbound {
    let head = format!("{method} /{i} HTTP/1.1\r\nHost: m\r\n\r\n");
    ob(Part::Whole(Request { head: Bytes::from(head), body: Body::default(), method }))
}

/// How the scripted server answers.
#[derive(Clone, Copy)]
enum Script {
    /// Every request, with a body (none for HEAD).
    Answer,
    /// `Connection: close` on the n-th response of each connection, then close.
    CloseAfter(usize),
    /// Reads n requests of the first connection, answers none of them and closes; then answers.
    DropFirst(usize),
}

/// A server that records the request line of every complete request it read (the mirror's
/// view), in order.
async fn server(script: Script) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut conn_no = 0;
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            conn_no += 1;
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut answered = 0;
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        let body: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .map_or(0, |v| v.parse().unwrap());
                        if buf.len() < end + 4 + body {
                            break; // a request is processed only once it is complete
                        }
                        buf.drain(..end + 4 + body);
                        let line = head.lines().next().unwrap_or_default().to_string();
                        let head_req = line.starts_with("HEAD");
                        log.lock().unwrap().push(line);
                        answered += 1;
                        match script {
                            Script::DropFirst(n) if conn_no == 1 => {
                                if answered == n {
                                    return;
                                }
                                continue;
                            }
                            Script::CloseAfter(n) if answered == n => {
                                let _ = s
                                    .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
                                    .await;
                                return;
                            }
                            _ => {}
                        }
                        let resp: &[u8] = if head_req {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
                        } else {
                            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                        };
                        if s.write_all(resp).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Sends `items` through one worker; returns the stats, the memory still held, what the server saw.
async fn run(script: Script, items: Vec<Outbound>) -> (Arc<ReplayStats>, usize, Vec<String>) {
    run_paced(script, items, 2000, Duration::ZERO).await
}

/// [`run`] with a request timeout of `timeout_ms` and `gap` between the items.
async fn run_paced(
    script: Script,
    items: Vec<Outbound>,
    timeout_ms: u64,
    gap: Duration,
) -> (Arc<ReplayStats>, usize, Vec<String>) {
    let (addr, seen) = server(script).await;
    let memory = Arc::new(Memory::new(1 << 30));
    let stats = Arc::new(ReplayStats::default());
    let rec = Recorder { stats: stats.clone(), metrics: None, memory: memory.clone(), compare: Default::default() };
    let (tx, rx) = mpsc::channel(4096);
    let settings = ReplaySettings { request_timeout_ms: timeout_ms, ..ReplaySettings::default() };
    let w = tokio::spawn(worker(addr, rx, settings, rec));
    for item in items {
        assert!(memory.try_charge(Held::Replay, weight(&item)));
        tx.send(item).await.unwrap();
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), w).await.expect("worker finishes").unwrap();
    let seen = seen.lock().unwrap().clone();
    (stats, memory.held(Held::Replay), seen)
}

fn lines(range: std::ops::Range<usize>, method: &str) -> Vec<String> {
    range.map(|i| format!("{method} /{i} HTTP/1.1")).collect()
}

#[tokio::test]
async fn pipelined_requests_arrive_in_order_and_every_response_is_framed() {
    let mut items: Vec<Outbound> = (0..1000).map(|i| get(i, "GET")).collect();
    items.push(get(1000, "HEAD"));
    items.push(get(1001, "GET"));
    let (stats, held, seen) = run(Script::Answer, items).await;
    let mut want = lines(0..1000, "GET");
    want.extend(lines(1000..1001, "HEAD"));
    want.extend(lines(1001..1002, "GET"));
    assert_eq!(seen, want);
    assert_eq!(stats.sent.load(std::sync::atomic::Ordering::Relaxed), 1002);
    assert_eq!(stats.responses[2].load(std::sync::atomic::Ordering::Relaxed), 1002);
    assert_eq!(held, 0, "every byte charged is given back");
}

#[tokio::test]
async fn requests_after_a_close_response_are_resent_and_never_duplicated() {
    let (stats, held, seen) = run(Script::CloseAfter(7), (0..100).map(|i| get(i, "GET")).collect()).await;
    assert_eq!(seen, lines(0..100, "GET"), "each request processed exactly once, in order");
    assert_eq!(stats.sent.load(std::sync::atomic::Ordering::Relaxed), 100);
    assert_eq!(held, 0);
}

#[tokio::test]
async fn requests_a_failed_connection_may_have_processed_are_dropped_not_resent() {
    let (stats, held, seen) = run(Script::DropFirst(3), (0..3).map(|i| get(i, "GET")).collect()).await;
    assert_eq!(seen, lines(0..3, "GET"), "read once by the server, never written again");
    assert_eq!(stats.sent.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(stats.dropped(DropReason::IoError), 3);
    assert_eq!(held, 0);
}

#[tokio::test]
async fn a_stream_missing_a_part_is_reset_after_the_requests_before_it_are_answered() {
    let start = Request {
        head: Bytes::from_static(b"POST /s HTTP/1.1\r\nContent-Length: 10\r\n\r\n"),
        body: Body::from_bytes(Bytes::from_static(b"ab")),
        method: "POST",
    };
    let items = vec![
        get(0, "GET"),
        ob(Part::Start { stream: 9, request: start }),
        ob(Part::More { stream: 9, index: 2, bytes: Bytes::from_static(b"cd"), held: 2 }),
        ob(Part::End { stream: 9, index: 3 }),
        get(1, "GET"),
    ];
    let (stats, held, seen) = run(Script::Answer, items).await;
    assert_eq!(seen, ["GET /0 HTTP/1.1", "GET /1 HTTP/1.1"], "the torn POST never completes");
    assert_eq!(stats.sent.load(std::sync::atomic::Ordering::Relaxed), 2, "the two GETs, never the torn POST");
    assert_eq!(stats.dropped(DropReason::StreamReset), 1);
    assert_eq!(held, 0);
}

#[tokio::test]
async fn an_upload_longer_than_the_request_timeout_is_not_timed_out_while_it_is_sent() {
    // The request timeout (400 ms) runs from the request's last part: parts arriving every
    // 150 ms over 1.2 s keep it alive, and its answer is counted.
    let start = Request {
        head: Bytes::from_static(b"POST /s HTTP/1.1\r\nContent-Length: 16\r\n\r\n"),
        body: Body::from_bytes(Bytes::from_static(b"ab")),
        method: "POST",
    };
    let mut items = vec![ob(Part::Start { stream: 9, request: start })];
    for index in 1..=7 {
        items.push(ob(Part::More { stream: 9, index, bytes: Bytes::from_static(b"cd"), held: 2 }));
    }
    items.push(ob(Part::End { stream: 9, index: 8 }));
    items.push(get(1, "GET"));
    let (stats, held, seen) = run_paced(Script::Answer, items, 400, Duration::from_millis(150)).await;
    assert_eq!(seen, ["POST /s HTTP/1.1", "GET /1 HTTP/1.1"]);
    assert_eq!(stats.dropped(DropReason::Timeout), 0);
    assert_eq!(stats.sent.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(held, 0);
}

/// A GET from client port `port` (one client connection per port).
fn get_from(i: usize, port: u16) -> Outbound {
    let mut o = get(i, "GET");
    o.flow.client.set_port(port);
    o
}

/// A [`super::Replayer`] with `replay` settings (YAML) to a scripted server that answers every
/// request; the memory its queued requests are charged to; what the server saw.
async fn replayer(replay: &str) -> (super::Replayer, Arc<Memory>, Arc<Mutex<Vec<String>>>) {
    let (addr, seen) = server(Script::Answer).await;
    let memory = Arc::new(Memory::new(1 << 30));
    let yaml = format!(
        "capture: {{interfaces: [lo], ports: [8000]}}\nroutes: [{{name: r, mirror: {{host: m}}}}]\nendpoints: {{m: [\"{addr}\"]}}\nreplay: {replay}\n"
    );
    let cfg = crate::config::Config::parse(&yaml, "test").unwrap();
    let router = crate::route::Router::new(&cfg).unwrap();
    (super::Replayer::start(&router, &cfg.replay, None, memory.clone()), memory, seen)
}

/// Waits until the server saw `n` requests (10 s at most), then checks that each request reached
/// it once and each client connection's (port `base + i % flows`) in order, whatever the order
/// between connections; that `r` counted them all as answered and gave back every byte charged.
async fn all_arrived(r: super::Replayer, memory: &Memory, seen: &Mutex<Vec<String>>, n: usize, flows: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < n && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = seen.lock().unwrap().clone();
    let number = |l: &String| l[5..].split(' ').next().unwrap().parse::<usize>().unwrap();
    let mut sorted = seen.clone();
    sorted.sort_by_key(number);
    assert_eq!(sorted, lines(0..n, "GET"), "each request exactly once");
    for f in 0..flows {
        let of_flow: Vec<usize> = seen.iter().map(number).filter(|i| i % flows == f).collect();
        assert!(of_flow.windows(2).all(|w| w[0] < w[1]), "flow {f} out of order: {of_flow:?}");
    }
    r.shutdown(Duration::from_secs(5)).await;
    assert_eq!(r.stats.sent.load(std::sync::atomic::Ordering::Relaxed), n as u64);
    assert_eq!(memory.held(Held::Replay), 0);
}

/// Batches handed to a [`super::Replayer`] back to back (so paced: each connection's share at its
/// own time) reach the mirror whole, once each and in order per client connection, the next
/// batch arriving while one is still being paced included.
#[tokio::test]
async fn paced_batches_reach_the_mirror_whole_and_in_order() {
    let (r, memory, seen) = replayer("{}").await;
    const FLOWS: usize = 53;
    let batch = |range: std::ops::Range<usize>| -> Vec<Outbound> {
        range.map(|i| get_from(i, 1000 + (i % FLOWS) as u16)).collect()
    };
    // 150 requests each. The second comes ~12 ms after the first: two groups ~6 ms apart; the
    // third comes 2 ms later, while the second's last group waits, and takes it along.
    r.submit_batch(&mut batch(0..150));
    tokio::time::sleep(Duration::from_millis(12)).await;
    assert_eq!(super::pace(150, Duration::from_millis(12), 4, 0, Pace::Auto).0, 2);
    r.submit_batch(&mut batch(150..300));
    tokio::time::sleep(Duration::from_millis(2)).await;
    r.submit_batch(&mut batch(300..450));
    all_arrived(r, &memory, &seen, 450, FLOWS).await;
}

/// `replay.pace: always`: batches 60 ms apart (a slow rate) are spread too, and still arrive
/// whole and in order per client connection, later groups after earlier ones.
#[tokio::test]
async fn slow_batches_paced_always_reach_the_mirror_whole_and_in_order() {
    let (r, memory, seen) = replayer("{pace: always}").await;
    const FLOWS: usize = 61;
    assert_eq!(super::pace(100, Duration::from_millis(60), 4, 0, Pace::Always).0, 4);
    for b in 0..4 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        r.submit_batch(&mut (b * 100..(b + 1) * 100).map(|i| get_from(i, 2000 + (i % FLOWS) as u16)).collect());
    }
    all_arrived(r, &memory, &seen, 400, FLOWS).await;
}

#[test]
fn batches_are_paced_by_connection_when_they_come_close_together() {
    use super::{PACE_MAX_QUEUED, PACE_MIN_GAP, PACE_MIN_ITEMS, PACE_WINDOW, pace};
    let ms = Duration::from_millis;
    // auto: slow rates (batches that waited for capture.batchMs), small batches, a single
    // connection go whole.
    assert_eq!(pace(100, ms(50), 4, 0, Pace::Auto), (1, Duration::ZERO));
    assert_eq!(pace(PACE_MIN_ITEMS, ms(16), 4, 0, Pace::Auto), (1, Duration::ZERO));
    assert_eq!(pace(130, ms(16), 1, 0, Pace::Auto), (1, Duration::ZERO));
    // 8,000 small requests per second: ~130 every 16 ms, in 3 groups over the round.
    assert_eq!(pace(130, ms(16), 4, 0, Pace::Auto), (3, ms(16) / 3));
    // Fast rounds: never closer than PACE_MIN_GAP, so a round shorter than two gaps is one group.
    assert_eq!(pace(130, ms(9), 4, 0, Pace::Auto), (1, ms(9)));
    // off: never; always: slow batches too, over at most PACE_WINDOW (a batch after an idle spell).
    assert_eq!(pace(130, ms(16), 4, 0, Pace::Off), (1, Duration::ZERO));
    assert_eq!(pace(100, ms(50), 4, 0, Pace::Always), (4, ms(50) / 4));
    assert_eq!(pace(100, Duration::from_secs(10), 8, 0, Pace::Always), (8, PACE_WINDOW / 8));
    // Bulk, or a mirror behind: what waits for the mirrors is at PACE_MAX_QUEUED, so all at once.
    assert_eq!(pace(130, ms(16), 4, PACE_MAX_QUEUED - 1, Pace::Auto), (3, ms(16) / 3));
    assert_eq!(pace(130, ms(16), 4, PACE_MAX_QUEUED, Pace::Auto), (1, Duration::ZERO));
    assert_eq!(pace(100, ms(50), 4, PACE_MAX_QUEUED, Pace::Always), (1, Duration::ZERO));
    for mode in [Pace::Auto, Pace::Always] {
        for (len, ivl, lanes) in [(17, ms(1), 4), (1000, ms(7), 4), (5000, ms(20), 64), (usize::MAX / 2, ms(999), 3)] {
            let (n, gap) = pace(len, ivl, lanes, 0, mode);
            assert!(n >= 1 && n <= lanes);
            assert!(n == 1 || gap >= PACE_MIN_GAP, "{len} {ivl:?}: {n} groups {gap:?} apart");
            assert!(gap * n as u32 <= ivl.min(PACE_WINDOW));
        }
    }
}

#[test]
fn every_group_gets_consecutive_connections_and_none_is_empty() {
    for queues in 1..=16 {
        for n in 1..=queues {
            let groups: Vec<usize> = (0..queues).map(|q| super::group_of(q, queues, n)).collect();
            assert!(groups.windows(2).all(|w| w[0] <= w[1]), "{queues} {n}: {groups:?}");
            assert_eq!(groups.iter().copied().collect::<std::collections::BTreeSet<_>>().len(), n, "{groups:?}");
            assert_eq!(*groups.last().unwrap(), n - 1);
        }
    }
}

/// Client connections spread over the mirror connections, each always on the same one, also
/// when their ports are consecutive (what one client's pool looks like).
#[test]
fn client_connections_spread_over_the_mirror_connections_and_stay_on_theirs() {
    let mut per_queue = [0usize; 4];
    for port in 20_000..21_000 {
        let q = super::queue_index(&get_from(0, port), 4);
        assert_eq!(q, super::queue_index(&get_from(1, port), 4), "one client connection, one queue");
        per_queue[q] += 1;
    }
    // 250 each on average; a binomial spread of ±100 is 7 standard deviations.
    assert!(per_queue.iter().all(|&n| (150..=350).contains(&n)), "{per_queue:?}");
}

/// Emptied batch vectors are kept for the next batches, a few of them and only if they did not
/// grow past the bound (a burst's vector is freed).
#[test]
fn spare_batch_vectors_are_kept_within_bounds() {
    let spare = super::Spare::default();
    assert_eq!(spare.take().capacity(), 0, "nothing kept yet: a new vector");
    for _ in 0..super::Spare::KEEP + 2 {
        spare.give_back(Vec::with_capacity(64));
    }
    spare.give_back(Vec::with_capacity(super::Spare::MAX_ITEMS + 1));
    let kept: Vec<Vec<Outbound>> = (0..super::Spare::KEEP + 1).map(|_| spare.take()).collect();
    assert!(kept[..super::Spare::KEEP].iter().all(|v| v.is_empty() && v.capacity() >= 64));
    assert_eq!(kept[super::Spare::KEEP].capacity(), 0, "at most KEEP vectors are kept, the large one not at all");
}

#[path = "tests/streamed_parts.rs"]
mod streamed_parts;
