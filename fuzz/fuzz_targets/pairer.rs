//! The response pairer (issue 15) on arbitrary response bytes for arbitrary requests: it must never
//! panic; every compared request must be reported exactly once, in the order the requests were
//! given, once the stream is closed; a body must stay within the limit; and without gaps the
//! results must not depend on how the bytes are cut or on when the requests are given (a response
//! may arrive before its request is known).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirror::compare::{Incomplete, PairLimits, Paired, Pairer, Response};

const METHODS: [&[u8]; 4] = [b"GET", b"HEAD", b"POST", b"CONNECT"];

/// (method, compared?) of each request.
type Requests = Vec<(&'static [u8], bool)>;

fn simplify(out: Vec<Paired<usize>>) -> Vec<(usize, Result<Response, Incomplete>)> {
    out.into_iter().map(|p| (p.tag, p.response)).collect()
}

/// Requests given first, then the stream in pieces ending at `cuts`, with a gap of `gap.1` bytes
/// before piece `gap.0`; `lazy`: request i is given only before piece i instead.
fn run(
    requests: &Requests,
    stream: &[u8],
    cuts: &[usize],
    gap: Option<(usize, u64)>,
    lazy: bool,
    max_body: usize,
) -> Vec<(usize, Result<Response, Incomplete>)> {
    let mut p = Pairer::new(PairLimits { max_body, max_head: 512, max_headers: 16, max_early: 1 << 20 });
    let mut out = Vec::new();
    let mut given = 0;
    if !lazy {
        for (i, (m, c)) in requests.iter().enumerate() {
            p.request(m, c.then_some(i), &mut out);
        }
        given = requests.len();
    }
    let mut at = 0;
    for (k, &c) in cuts.iter().chain(std::iter::once(&stream.len())).enumerate() {
        if lazy && given < requests.len() {
            let (m, c) = requests[given];
            p.request(m, c.then_some(given), &mut out);
            given += 1;
        }
        if let Some((g, len)) = gap
            && g == k
        {
            p.gap(len, &mut out);
        }
        let c = c.clamp(at, stream.len());
        p.data(&stream[at..c], &mut out);
        at = c;
    }
    while given < requests.len() {
        let (m, c) = requests[given];
        p.request(m, c.then_some(given), &mut out);
        given += 1;
    }
    p.close(true, &mut out);
    simplify(out)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let n = usize::from(data[0] % 8);
    let max_body = usize::from(data[1] % 64);
    let ncuts = usize::from(data[2] % 8);
    let gap_at = data[3];
    let rest = &data[4..];
    if rest.len() < n + ncuts {
        return;
    }
    let requests: Requests = rest[..n].iter().map(|&b| (METHODS[usize::from(b % 4)], b & 0x80 == 0)).collect();
    let mut cuts: Vec<usize> = rest[n..n + ncuts].iter().map(|&b| usize::from(b) * 2).collect();
    cuts.sort_unstable();
    let stream = &rest[n + ncuts..];

    let whole = run(&requests, stream, &[], None, false, max_body);
    let compared: Vec<usize> = (0..n).filter(|&i| requests[i].1).collect();
    let check = |got: &[(usize, Result<Response, Incomplete>)]| {
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), compared, "each compared request once, in order");
        for (_, r) in got {
            if let Ok(r) = r {
                assert!(r.body.len() <= max_body, "body over the limit");
                assert!(r.body_len >= r.body.len() as u64);
                if r.cut.is_none() {
                    assert_eq!(r.body_len, r.body.len() as u64);
                }
            }
        }
    };
    check(&whole);
    assert_eq!(run(&requests, stream, &cuts, None, false, max_body), whole, "cut differently");
    assert_eq!(run(&requests, stream, &cuts, None, true, max_body), whole, "requests given late");
    // With a gap: anything but a panic or a lost/duplicated report.
    let gap = (usize::from(gap_at % 8), u64::from(gap_at >> 3));
    check(&run(&requests, stream, &cuts, Some(gap), false, max_body));
});
