//! Open-loop load at a constant rate (wrk2-style), for the benchmark: each request has a scheduled
//! send time and its latency is measured from that time, so a stalled server cannot hide its
//! stalls (coordinated omission).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};

use crate::enter_netns;

/// What one load run saw.
#[derive(Debug, Default, Clone)]
pub struct Load {
    /// Requests written (or attempted).
    pub sent: u64,
    /// Requests answered.
    pub ok: u64,
    /// Requests that failed (write or read error; the connection is then reopened).
    pub errors: u64,
    /// Microseconds, from scheduled send to full response.
    pub latencies: Vec<u64>,
    /// How long the run took (at least its planned duration).
    pub elapsed: Duration,
}

impl Load {
    /// The `p`th latency percentile, in milliseconds (NaN without answers).
    pub fn pct(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let mut v = self.latencies.clone();
        v.sort_unstable();
        let i = ((v.len() as f64 * p / 100.0).ceil() as usize).clamp(1, v.len()) - 1;
        v[i] as f64 / 1000.0
    }

    /// Answered requests per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// Open-loop constant-rate load over `conns` kept-alive connections, run inside namespace `ns`:
/// one thread per connection, paced with the OS's high-resolution sleep.
pub fn load(ns: &str, addr: SocketAddr, rate: f64, duration: Duration, conns: usize, request: Vec<u8>) -> Result<Load> {
    let request = Arc::new(request);
    let start = Instant::now() + Duration::from_millis(100);
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    let mut threads = Vec::new();
    for c in 0..conns {
        let ns = ns.to_string();
        let request = request.clone();
        threads.push(std::thread::spawn(move || -> Result<Load> {
            enter_netns(&ns)?;
            let mut out = Load::default();
            let connect = || connect(addr);
            let mut s = connect()?;
            let mut buf = vec![0u8; 256 * 1024];
            // Connections are staggered across one interval.
            let offset = interval.mul_f64(c as f64 / conns as f64);
            for i in 0u32.. {
                let scheduled = start + offset + interval * i;
                if scheduled >= start + duration {
                    break;
                }
                if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                out.sent += 1;
                if s.write_all(&request).is_err() || read_one(&mut s, &mut buf).is_err() {
                    out.errors += 1;
                    s = connect()?;
                    continue;
                }
                out.ok += 1;
                out.latencies.push(scheduled.elapsed().as_micros() as u64);
            }
            Ok(out)
        }));
    }
    let mut total = Load::default();
    for t in threads {
        let r = t.join().map_err(|_| anyhow::anyhow!("load thread panicked"))??;
        total.sent += r.sent;
        total.ok += r.ok;
        total.errors += r.errors;
        total.latencies.extend(r.latencies);
    }
    total.elapsed = start.elapsed().max(duration);
    Ok(total)
}

/// A load connection: Nagle off (each request leaves at once), a 30 s read timeout.
pub fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

/// Reads one response with a Content-Length body into `buf`, reused across requests: unlike the
/// harness's `read_response` (used by [`exchange`](crate::exchange)), which allocates per
/// response, this keeps the load generator's own cost per request small and constant.
pub fn read_one(s: &mut TcpStream, buf: &mut [u8]) -> Result<()> {
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..])?;
        ensure!(n > 0, "closed");
        have += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(h) = resp.parse(&buf[..have])? {
            let len: usize = resp
                .headers
                .iter()
                .find(|x| x.name.eq_ignore_ascii_case("content-length"))
                .and_then(|x| std::str::from_utf8(x.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            ensure!(h + len <= buf.len(), "response larger than the buffer");
            while have < h + len {
                let n = s.read(&mut buf[have..])?;
                ensure!(n > 0, "closed");
                have += n;
            }
            return Ok(());
        }
    }
}
