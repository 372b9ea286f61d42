//! Unit tests of the metrics endpoint.
use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

use super::*;

/// Serves `metrics` on a loopback port with `limits`; returns the address.
async fn start(limits: EndpointLimits) -> (SocketAddr, Arc<Metrics>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(Metrics::new());
    tokio::spawn(accept_loop(listener, metrics.clone(), limits));
    (addr, metrics)
}

fn limits(max: usize) -> EndpointLimits {
    EndpointLimits { max_connections: Some(max), ..EndpointLimits::default() }
}

/// One `Connection: close` scrape: (status line, body).
async fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Reads one response with a Content-Length off a kept-alive connection.
async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed mid-head");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .expect("content-length");
    let mut body = vec![0; len];
    s.read_exact(&mut body).await.unwrap();
    head + &String::from_utf8(body).unwrap()
}

/// Waits for the server to close `s` (EOF or reset); returns how long that took.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Duration {
    let t = Instant::now();
    let mut buf = [0u8; 64];
    match timeout(limit, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => t.elapsed(),
        Ok(Ok(n)) => panic!("read {n} bytes instead of EOF"),
        Err(_) => panic!("still open after {limit:?}"),
    }
}

fn value(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(-1.0)
}

#[test]
fn the_cap_is_64_and_at_most_an_eighth_of_the_fd_limit() {
    assert_eq!(connection_cap(256), 32);
    assert_eq!(connection_cap(1024), 64);
    assert_eq!(connection_cap(1_048_576), 64);
    assert_eq!(connection_cap(40), 5);
    assert_eq!(connection_cap(3), 1);
}

#[test]
fn running_out_of_descriptors_pauses_accepting_and_one_bad_connection_does_not() {
    let os = std::io::Error::from_raw_os_error;
    assert_eq!(accept_error_kind(&os(libc::EMFILE)), Some("fd_limit"));
    assert_eq!(accept_error_kind(&os(libc::ENFILE)), Some("fd_limit"));
    assert_eq!(accept_error_kind(&os(libc::ENOBUFS)), Some("no_memory"));
    assert_eq!(accept_error_kind(&os(libc::EINVAL)), Some("other"));
    assert_eq!(accept_error_kind(&os(libc::ECONNABORTED)), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_cap_cannot_lock_scrapers_out() {
    let (addr, _) = start(limits(4)).await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let t = Instant::now();
    let text = timeout(Duration::from_secs(2), scrape(addr)).await.expect("a scrape within 2 s");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(value(&text, "mirror_metrics_connections_open") <= 4.0, "{text}");
    assert_eq!(value(&text, "mirror_metrics_connections_limit"), 4.0);
    // The 20 idle ones went through the 4 slots, the older closed to make room.
    let evicted = value(&text, "mirror_metrics_connections_closed_total{reason=\"evicted\"}");
    assert!(evicted >= 16.0, "evicted {evicted}:\n{text}");
    // Closed, not merely counted: at most 4 are left open (the newest, give or take the
    // kernel's millisecond clock).
    let reads = idle.into_iter().map(|mut s| {
        tokio::spawn(async move {
            matches!(timeout(Duration::from_secs(1), s.read(&mut [0u8; 16])).await, Ok(Ok(0) | Err(_)))
        })
    });
    let mut closed = 0;
    for r in reads.collect::<Vec<_>>() {
        closed += usize::from(r.await.unwrap());
    }
    assert!(closed >= 16, "only {closed} of 20 closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_scrapers_beyond_the_cap_is_served_in_turn() {
    let (addr, _) = start(limits(4)).await;
    let scrapes: Vec<_> = (0..200).map(|_| tokio::spawn(scrape(addr))).collect();
    for s in scrapes {
        let text = timeout(Duration::from_secs(10), s).await.unwrap().unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_read_timeout_closes_silent_and_idle_kept_alive_connections() {
    let lim = EndpointLimits { header_read_timeout: Duration::from_millis(300), ..limits(8) };
    let (addr, _) = start(lim).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(read_response(&mut kept).await.starts_with("HTTP/1.1 200"));
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    for s in [&mut silent, &mut kept, &mut slow] {
        let took = closed_within(s, Duration::from_secs(2)).await;
        assert!(took < Duration::from_millis(1000), "{took:?}");
    }
    let text = scrape(addr).await;
    assert_eq!(value(&text, "mirror_metrics_connections_closed_total{reason=\"header_timeout\"}"), 3.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_responses_pass_and_oversized_heads_are_refused() {
    let (addr, metrics) = start(limits(8)).await;
    for i in 0..400 {
        metrics.response(&format!("route-{i}"), "httpbin/v2", 200, Duration::from_millis(3));
    }
    let expected = metrics.encode().len();
    assert!(expected > 10 * READ_BUFFER, "{expected}");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let text = timeout(Duration::from_secs(5), read_response(&mut s)).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.len() > expected, "{} bytes", text.len());
    // A head larger than the read buffer is refused, and the connection closed.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let big = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(2 * READ_BUFFER));
    let _ = s.write_all(big.as_bytes()).await;
    let mut out = Vec::new();
    let _ = timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await.expect("closed");
    assert!(out.starts_with(b"HTTP/1.1 431"), "{}", String::from_utf8_lossy(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connection_outlives_the_deadline() {
    let lim = EndpointLimits { deadline: Duration::from_millis(300), ..limits(8) };
    let (addr, _) = start(lim).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    // Busy, not idle: a request every 100 ms on the kept-alive connection.
    let t = Instant::now();
    let mut answered = 0;
    while t.elapsed() < Duration::from_secs(2) {
        if s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.is_err() {
            break;
        }
        let mut buf = [0u8; 1];
        match timeout(Duration::from_secs(2), s.peek(&mut buf)).await.unwrap() {
            Ok(1) => {
                read_response(&mut s).await;
                answered += 1;
            }
            _ => break,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(t.elapsed() < Duration::from_millis(1500), "open for {:?}", t.elapsed());
    assert!(answered >= 2, "answered {answered}");
    let text = scrape(addr).await;
    assert_eq!(value(&text, "mirror_metrics_connections_closed_total{reason=\"deadline\"}"), 1.0, "{text}");
}
