use super::*;

/// What a framer made of a stream: complete requests (head + raw body bytes) and drops.
#[derive(Debug, Default, PartialEq, Eq)]
struct Framed {
    requests: Vec<(RequestHead, Vec<u8>)>,
    drops: Vec<DropReason>,
    tunnel: bool,
}

fn collect(events: Vec<HttpEvent>) -> Framed {
    let mut f = Framed::default();
    let mut cur: Option<(RequestHead, Vec<u8>)> = None;
    for e in events {
        match e {
            HttpEvent::Head(h) => {
                assert!(cur.is_none(), "head while a request is open");
                cur = Some((*h, Vec::new()));
            }
            HttpEvent::Body(b) => cur.as_mut().expect("body without head").1.extend_from_slice(&b),
            HttpEvent::End => f.requests.push(cur.take().expect("end without head")),
            HttpEvent::Dropped(r) => {
                cur = None;
                f.drops.push(r);
            }
            HttpEvent::Tunnel => f.tunnel = true,
        }
    }
    f
}

fn frame_chunks(chunks: &[&[u8]], midstream: bool) -> Framed {
    let mut framer = RequestFramer::new(FramerConfig::default(), midstream);
    let mut out = Vec::new();
    for c in chunks {
        framer.on_data(Bytes::copy_from_slice(c), &mut out);
    }
    framer.on_close(&mut out);
    collect(out)
}

/// Frames `input` whole and split at every offset (and byte by byte); all must agree.
fn frame_every_split(input: &[u8]) -> Framed {
    let whole = frame_chunks(&[input], false);
    for i in 0..=input.len() {
        let split = frame_chunks(&[&input[..i], &input[i..]], false);
        assert_eq!(split, whole, "split at {i} differs");
    }
    let bytewise: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(frame_chunks(&bytewise, false), whole, "byte-by-byte differs");
    whole
}

fn raw_of(r: &(RequestHead, Vec<u8>)) -> Vec<u8> {
    let mut v = r.0.raw.to_vec();
    v.extend_from_slice(&r.1);
    v
}

#[test]
fn get_then_post_with_content_length_keep_alive() {
    let a = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    let b = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    let input = [&a[..], &b[..]].concat();
    let f = frame_every_split(&input);
    assert_eq!(f.requests.len(), 2);
    assert_eq!(raw_of(&f.requests[0]), a);
    assert_eq!(raw_of(&f.requests[1]), b);
    assert_eq!(f.requests[1].0.body, BodyKind::Length(5));
    assert_eq!(f.requests[1].0.stream_offset, a.len() as u64);
    assert!(f.drops.is_empty());
}

#[test]
fn chunked_with_extensions_and_trailers_passes_raw_bytes() {
    let req = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;name=val\r\nhello\r\n6 ; x\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
    let next = b"GET /n HTTP/1.1\r\n\r\n";
    let input = [&req[..], &next[..]].concat();
    let f = frame_every_split(&input);
    assert_eq!(f.requests.len(), 2);
    assert_eq!(raw_of(&f.requests[0]), req);
    assert_eq!(f.requests[0].0.body, BodyKind::Chunked);
    assert_eq!(f.requests[1].0.target(), "/n");
}

#[test]
fn pipelined_requests_in_one_segment() {
    let input = b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nHEAD /3 HTTP/1.1\r\n\r\nDELETE /4 HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
    let f = frame_every_split(input);
    let targets: Vec<_> = f.requests.iter().map(|r| r.0.target()).collect();
    assert_eq!(targets, ["/1", "/2", "/3", "/4"]);
}

#[test]
fn leading_crlfs_are_skipped() {
    let f = frame_every_split(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n");
    assert_eq!(f.requests.len(), 1);
    assert_eq!(&f.requests[0].0.raw[..], b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(f.requests[0].0.stream_offset, 4);
}

#[test]
fn strict_rejections() {
    let cases: &[(&[u8], FramingError)] = &[
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", FramingError::TeAndCl),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", FramingError::BadContentLength),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", FramingError::BadContentLength),
        (b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n", FramingError::BadContentLength),
        (b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", FramingError::BadContentLength),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n", FramingError::BadTransferEncoding),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", FramingError::BadTransferEncoding),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            FramingError::BadTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
            FramingError::ChunkSizeOverflow,
        ),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", FramingError::BadChunkSize),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX", FramingError::MissingChunkCrlf),
        (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", FramingError::BadHead),
    ];
    for (input, want) in cases {
        let f = frame_every_split(input);
        assert!(f.requests.is_empty(), "{:?} framed a request", String::from_utf8_lossy(input));
        assert_eq!(f.drops, vec![DropReason::Framing(*want)], "{:?}", String::from_utf8_lossy(input));
    }
}

#[test]
fn nothing_is_framed_after_a_framing_error() {
    // The smuggled GET after a TE+CL request must never come out.
    let input = b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n";
    let f = frame_every_split(input);
    assert!(f.requests.is_empty());
}

#[test]
fn gzip_then_chunked_is_accepted() {
    let input = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n";
    let f = frame_every_split(input);
    assert_eq!(f.requests.len(), 1);
}

#[test]
fn head_too_large_is_rejected() {
    let mut input = b"GET / HTTP/1.1\r\nX: ".to_vec();
    input.extend(std::iter::repeat_n(b'a', 70 * 1024));
    let f = frame_chunks(&[&input], false);
    assert_eq!(f.drops, vec![DropReason::Framing(FramingError::HeadTooLarge)]);
}

#[test]
fn connect_and_upgrade_end_framing() {
    let f = frame_every_split(
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nGET /inside HTTP/1.1\r\n\r\n",
    );
    assert_eq!(f.requests.len(), 1);
    assert!(f.requests[0].0.tunnel && f.tunnel);
    let f = frame_every_split(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nGET /not-a-request HTTP/1.1\r\n\r\n",
    );
    assert_eq!(f.requests.len(), 1);
    assert!(f.tunnel);
}

#[test]
fn expect_continue_request_has_its_body_framed() {
    let f = frame_every_split(b"PUT /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok");
    assert_eq!(f.requests.len(), 1);
    assert_eq!(f.requests[0].1, b"ok");
}

/// Frames `before`, a gap of `gap` bytes, then `after`; `exact`: [`FramerConfig::exact_after_gap`].
fn across_gap(before: &'static [u8], gap: u64, after: &'static [u8], exact: bool) -> (Framed, bool) {
    let mut framer = RequestFramer::new(FramerConfig { exact_after_gap: exact, ..FramerConfig::default() }, false);
    let mut out = Vec::new();
    framer.on_data(Bytes::from_static(before), &mut out);
    framer.on_gap(gap, &mut out);
    framer.on_data(Bytes::from_static(after), &mut out);
    let finished = framer.is_finished();
    (collect(out), finished)
}

#[test]
fn a_gap_inside_a_body_loses_that_request_only_and_framing_goes_on_at_its_end() {
    for exact in [false, true] {
        // The rest of the lost body looks like a request line: it is body, never a request.
        let (f, finished) = across_gap(
            b"POST /lost HTTP/1.1\r\nContent-Length: 30\r\n\r\nabc",
            4,
            b"GET /phantom HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n",
            exact,
        );
        assert_eq!(f.drops, vec![DropReason::Gap]);
        let targets: Vec<&str> = f.requests.iter().map(|r| r.0.target()).collect();
        assert_eq!(targets, ["/next"], "exact_after_gap: {exact}");
        assert!(!f.requests[0].0.after_gap, "where /next starts is known");
        assert!(!finished);
    }
    // A gap that ends exactly at the body's end; several gaps inside one body.
    let (f, _) = across_gap(b"PUT /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", 3, b"GET /b HTTP/1.1\r\n\r\n", true);
    assert_eq!((f.drops.len(), f.requests.len(), f.requests[0].0.target()), (1, 1, "/b"));
    let mut framer = RequestFramer::new(FramerConfig { exact_after_gap: true, ..FramerConfig::default() }, false);
    let mut out = Vec::new();
    framer.on_data(Bytes::from_static(b"PUT /a HTTP/1.1\r\nContent-Length: 10\r\n\r\nab"), &mut out);
    framer.on_gap(2, &mut out);
    framer.on_data(Bytes::from_static(b"cd"), &mut out);
    framer.on_gap(2, &mut out);
    framer.on_data(Bytes::from_static(b"ijGET /c HTTP/1.1\r\n\r\n"), &mut out);
    let f = collect(out);
    assert_eq!((f.drops, f.requests.len(), f.requests[0].0.target()), (vec![DropReason::Gap], 1, "/c"));
}

#[test]
fn a_gap_past_a_body_or_in_a_head_or_chunked_body_stops_framing_when_exact() {
    let cases: [(&[u8], u64); 4] = [
        // Past the body's end: the next head's start is lost.
        (b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nab", 5),
        // In a head.
        (b"GET /a HTTP/1.1\r\nHo", 4),
        // Between requests (the next head's first bytes).
        (b"GET /a HTTP/1.1\r\n\r\n", 4),
        // In a chunked body.
        (b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", 2),
    ];
    for (before, gap) in cases {
        let (f, finished) = across_gap(before, gap, b"GET /phantom HTTP/1.1\r\n\r\n", true);
        assert!(f.requests.iter().all(|r| r.0.target() != "/phantom"), "{}", String::from_utf8_lossy(before));
        assert!(finished);
        // Without exact_after_gap the framer resynchronises at the request line instead.
        let (f, finished) = across_gap(before, gap, b"GET /found HTTP/1.1\r\n\r\n", false);
        assert_eq!(f.requests.last().map(|r| r.0.target()), Some("/found"));
        assert!(f.requests.last().unwrap().0.after_gap);
        assert!(!finished);
    }
}

#[test]
fn midstream_pickup_starts_at_first_request_line() {
    let f = frame_chunks(&[b"tail of a body\r\nmore\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\n"], true);
    assert_eq!(f.requests.len(), 1);
    assert_eq!(f.requests[0].0.target(), "/x");
    assert!(f.drops.is_empty());
}

#[test]
fn close_mid_request_drops_it() {
    let f = frame_chunks(&[b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"], false);
    assert!(f.requests.is_empty());
    assert_eq!(f.drops, vec![DropReason::IncompleteAtClose]);
    let f = frame_chunks(&[b"GET / HTTP/1.1\r\nHost:"], false);
    assert_eq!(f.drops, vec![DropReason::IncompleteAtClose]);
}

/// Each header of `head` as (name, value, whole line).
fn fields(head: &RequestHead) -> Vec<(&[u8], &[u8], &[u8])> {
    head.headers.iter().map(|h| (head.name(h), head.value(h), &head.raw[h.line.clone()])).collect()
}

#[test]
fn header_value_ranges_point_into_raw() {
    let f = frame_every_split(b"GET / HTTP/1.1\r\nHost: httpbin:8000\r\nX-A:  spaced \r\n\r\n");
    let head = &f.requests[0].0;
    assert_eq!(
        fields(head),
        [
            (&b"Host"[..], &b"httpbin:8000"[..], &b"Host: httpbin:8000\r\n"[..]),
            (&b"X-A"[..], &b"spaced"[..], &b"X-A:  spaced \r\n"[..]),
        ]
    );
    assert_eq!(head.header("HOST"), Some(&b"httpbin:8000"[..]));
    // Bare LF line ends, an empty value, trailing tabs.
    let f = frame_every_split(b"GET / HTTP/1.1\nHost: h\nX-E:\nX-T: t\t\t\n\n");
    let head = &f.requests[0].0;
    assert_eq!(
        fields(head),
        [
            (&b"Host"[..], &b"h"[..], &b"Host: h\n"[..]),
            (&b"X-E"[..], &b""[..], &b"X-E:\n"[..]),
            (&b"X-T"[..], &b"t"[..], &b"X-T: t\t\t\n"[..]),
        ]
    );
}

#[test]
fn line_ends_all_lf_accepted_mixed_rejected() {
    let f = frame_every_split(b"GET /lf HTTP/1.1\nHost: x\n\nGET /lf2 HTTP/1.1\nHost: x\n\n");
    assert_eq!(f.requests.len(), 2);
    let f = frame_every_split(b"GET / HTTP/1.1\r\nDummy: x\nContent-Length: 23\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n");
    assert!(f.requests.is_empty());
    assert_eq!(f.drops, vec![DropReason::Framing(FramingError::BareLf)]);
}

#[test]
fn unknown_methods_and_non_ascii_targets_are_rejected() {
    let f = frame_every_split(b"ANNOUNCE / HTTP/1.1\r\n\r\n");
    assert_eq!(f.drops, vec![DropReason::Framing(FramingError::UnknownMethod)]);
    let f = frame_every_split("GET /caf\u{e9} HTTP/1.1\r\n\r\n".as_bytes());
    assert!(f.requests.is_empty());
}

#[test]
fn nothing_after_a_non_persistent_request() {
    let f = frame_every_split(b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
    assert_eq!(f.requests.len(), 1);
    let f = frame_every_split(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
    assert_eq!(f.requests.len(), 1);
    let f = frame_every_split(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
    assert_eq!(f.requests.len(), 2);
}

#[test]
fn chunk_size_line_whitespace_and_extensions_are_strict() {
    let ok = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1 ;a=b\r\nx\r\n0\r\n\r\n";
    assert_eq!(frame_every_split(ok).requests.len(), 1);
    for bad in [&b"1 \r\nx\r\n0\r\n\r\n"[..], b"1;\r\nx\r\n0\r\n\r\n", b"1 x\r\nx\r\n0\r\n\r\n", b"1\nx\r\n0\r\n\r\n"] {
        let input = [&b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..], bad].concat();
        let f = frame_every_split(&input);
        assert!(f.requests.is_empty(), "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn a_segment_is_framed_in_place_and_an_incomplete_head_is_held_in_an_exact_copy() {
    let mut framer = RequestFramer::new(FramerConfig::default(), false);
    let mut out = Vec::new();
    // A head and the start of its body in one segment that nothing else holds: the body is a
    // slice of the segment itself, not a copy.
    let seg = Bytes::from(b"POST /u HTTP/1.1\r\nContent-Length: 4\r\n\r\n0123".to_vec());
    let body_at = seg.as_ptr() as usize + seg.len() - 4;
    framer.on_data(seg, &mut out);
    let Some(HttpEvent::End) = out.last() else { panic!("{out:?}") };
    let Some(HttpEvent::Body(b)) = out.iter().find(|e| matches!(e, HttpEvent::Body(_))) else { panic!("{out:?}") };
    assert_eq!((&b[..], b.as_ptr() as usize), (&b"0123"[..], body_at));
    // A whole GET and the first bytes of a head in one segment: the framer keeps those bytes in
    // a copy of their own, not in the segment's allocation (which the bytes before them would
    // pin without being charged to the budget).
    let seg = Bytes::from(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1".to_vec());
    let span = seg.as_ptr() as usize..seg.as_ptr() as usize + seg.len();
    framer.on_data(seg, &mut out);
    assert_eq!(framer.held(), 15);
    assert!(!span.contains(&framer.buffered_at()), "the partial head still lies in the segment's allocation");
    framer.on_data(Bytes::from_static(b"\r\n\r\n"), &mut out);
    let f = collect(out);
    let targets: Vec<&str> = f.requests.iter().map(|r| r.0.target()).collect();
    assert_eq!((targets, f.requests[0].1.as_slice()), (vec!["/u", "/a", "/b"], &b"0123"[..]));
}

mod review {
    use super::*;

    #[test]
    fn a_head_with_many_headers_keeps_every_field() {
        let mut req = String::from("POST /many?x=1 HTTP/1.1\r\n");
        for i in 0..20 {
            req.push_str(&format!("X-H{i}: v{i}\r\n"));
        }
        req.push_str("Host: far\r\nContent-Length: 3\r\n\r\nabc");
        let f = frame_every_split(req.as_bytes());
        assert_eq!(f.requests.len(), 1);
        let h = &f.requests[0].0;
        assert_eq!(h.headers.len(), 22);
        assert!(h.headers.spilled());
        assert_eq!(h.target(), "/many?x=1");
        assert_eq!(h.header("host"), Some(&b"far"[..]));
        assert_eq!(h.header("x-h19"), Some(&b"v19"[..]));
        assert_eq!(h.body, BodyKind::Length(3));
        assert_eq!(f.requests[0].1, b"abc");
        for (i, hd) in h.headers.iter().take(20).enumerate() {
            assert_eq!(&h.raw[hd.line.clone()], format!("X-H{i}: v{i}\r\n").as_bytes());
        }
    }

    #[test]
    fn targets_of_every_form() {
        let cases: &[(&[u8], &str)] = &[
            (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", "example.com:443"),
            (b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", "*"),
            (b"GET http://h:8/p?q=1 HTTP/1.1\r\nHost: h\r\n\r\n", "http://h:8/p?q=1"),
            (b"\r\n\r\nGET /after-blank-lines HTTP/1.1\r\nHost: h\r\n\r\n", "/after-blank-lines"),
            (b"GET /lf HTTP/1.1\nHost: h\n\n", "/lf"),
            (b"GET /0 HTTP/1.0\r\n\r\n", "/0"),
        ];
        for (raw, want) in cases {
            let f = frame_chunks(&[raw], false);
            let got: Vec<&str> = f.requests.iter().map(|r| r.0.target()).collect();
            if raw.starts_with(b"CONNECT") {
                assert!(f.tunnel);
            }
            let first = f
                .requests
                .first()
                .map(|r| r.0.target())
                .unwrap_or_else(|| panic!("{:?} {f:?}", String::from_utf8_lossy(raw)));
            assert_eq!(first, *want, "{got:?}");
        }
        // A request with an empty target is refused, as before.
        let f = frame_chunks(&[b"GET  HTTP/1.1\r\n\r\n"], false);
        assert!(f.requests.is_empty(), "{f:?}");
    }
}
