//! Pairing the primary's responses with the requests of one connection.

use crate::compare::{Incomplete, PairLimits, Paired, Pairer, Response};

/// A reported pair: the tag, and the status and body or why there is none.
type Got = (usize, Result<(u16, Vec<u8>), Incomplete>);

/// Requests (method, compared?) and the response stream fed in pieces of `piece` bytes, then a
/// clean close: (tag, status or why, body).
fn pair(requests: &[(&str, bool)], stream: &[u8], piece: usize) -> Vec<Got> {
    let mut p = Pairer::new(PairLimits::default());
    let mut out = Vec::new();
    for (i, (m, compared)) in requests.iter().enumerate() {
        p.request(m.as_bytes(), compared.then_some(i), &mut out);
    }
    for chunk in stream.chunks(piece.max(1)) {
        p.data(chunk, &mut out);
    }
    p.close(true, &mut out);
    out.into_iter().map(simplify).collect()
}

fn simplify(p: Paired<usize>) -> Got {
    let r = p.response.and_then(|r: Response| match r.cut {
        Some(why) => Err(why),
        None => Ok((r.status, r.body)),
    });
    (p.tag, r)
}

fn ok(tag: usize, status: u16, body: &str) -> Got {
    (tag, Ok((status, body.as_bytes().to_vec())))
}

/// Every way of cutting the stream gives the same pairs.
fn pair_all_ways(requests: &[(&str, bool)], stream: &[u8]) -> Vec<Got> {
    let whole = pair(requests, stream, stream.len());
    for piece in [1, 2, 3, 7, 16] {
        assert_eq!(pair(requests, stream, piece), whole, "cut in pieces of {piece}");
    }
    whole
}

#[test]
fn pipelined_responses_pair_in_order_with_content_length_and_chunked() {
    let stream = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n";
    let got = pair_all_ways(&[("GET", true), ("GET", true), ("POST", true)], stream);
    assert_eq!(got, vec![ok(0, 200, "hello"), ok(1, 404, "abcde"), ok(2, 201, "")]);
}

#[test]
fn interim_1xx_responses_are_skipped() {
    let stream = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 1\r\n\r\nx";
    let got = pair_all_ways(&[("POST", true), ("POST", true)], stream);
    assert_eq!(got, vec![ok(0, 200, "ok"), ok(1, 202, "x")]);
}

#[test]
fn head_204_and_304_have_no_body_whatever_they_say() {
    // HEAD's response announces a length it does not send; 204 and 304 too.
    let stream = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\nHTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nend";
    let got = pair_all_ways(&[("HEAD", true), ("GET", true), ("GET", true), ("GET", true)], stream);
    assert_eq!(got, vec![ok(0, 200, ""), ok(1, 204, ""), ok(2, 304, ""), ok(3, 200, "end")]);
}

#[test]
fn a_close_delimited_body_ends_at_a_clean_close_and_is_cut_by_a_reset() {
    let stream = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of this until the end";
    assert_eq!(pair_all_ways(&[("GET", true)], stream), vec![ok(0, 200, "all of this until the end")]);
    let mut p = Pairer::new(PairLimits::default());
    let mut out = Vec::new();
    p.request(b"GET", Some(0), &mut out);
    p.data(stream, &mut out);
    p.close(false, &mut out);
    assert_eq!(out.into_iter().map(simplify).collect::<Vec<_>>(), vec![(0, Err(Incomplete::Cut))]);
}

#[test]
fn requests_not_compared_are_framed_but_not_reported() {
    let stream = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nbHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc";
    let got = pair_all_ways(&[("GET", false), ("GET", true), ("GET", false)], stream);
    assert_eq!(got, vec![ok(1, 200, "b")]);
}

#[test]
fn a_response_ahead_of_its_request_waits_for_it() {
    let mut p = Pairer::new(PairLimits::default());
    let mut out = Vec::new();
    p.data(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413 Too Large\r\nContent-Length: 2\r\n\r\nno", &mut out);
    assert!(out.is_empty());
    p.request(b"POST", Some(7), &mut out);
    assert_eq!(out.into_iter().map(simplify).collect::<Vec<_>>(), vec![ok(7, 413, "no")]);
}

#[test]
fn a_gap_in_a_content_length_body_cuts_that_pair_only() {
    let mut p = Pairer::new(PairLimits::default());
    let mut out = Vec::new();
    p.request(b"GET", Some(0), &mut out);
    p.request(b"GET", Some(1), &mut out);
    p.data(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", &mut out);
    p.gap(4, &mut out);
    p.data(b"hij", &mut out);
    p.data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", &mut out);
    p.close(true, &mut out);
    let got: Vec<_> = out.into_iter().map(simplify).collect();
    assert_eq!(got, vec![(0, Err(Incomplete::Gap)), ok(1, 200, "ok")]);
}

#[test]
fn a_gap_that_takes_the_rest_of_a_body_ends_that_response_at_once() {
    let mut p = Pairer::new(PairLimits::default());
    let mut out = Vec::new();
    p.request(b"GET", Some(0), &mut out);
    p.data(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc", &mut out);
    p.gap(3, &mut out);
    let got: Vec<_> = out.drain(..).map(simplify).collect();
    assert_eq!(got, vec![(0, Err(Incomplete::Gap))]);
    p.request(b"GET", Some(1), &mut out);
    p.data(b"HTTP/1.1 204 No Content\r\n\r\n", &mut out);
    assert_eq!(out.drain(..).map(simplify).collect::<Vec<_>>(), vec![ok(1, 204, "")]);
}

#[test]
fn a_gap_elsewhere_loses_framing_for_the_rest_of_the_connection() {
    for (before, gap) in [
        (&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"[..], 3),
        (b"HTTP/1.1 200 OK\r\nConte", 5),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab", 9),
        (b"", 0),
    ] {
        let mut p = Pairer::new(PairLimits::default());
        let mut out = Vec::new();
        p.request(b"GET", Some(0), &mut out);
        p.request(b"GET", Some(1), &mut out);
        p.data(before, &mut out);
        p.gap(gap, &mut out);
        p.data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", &mut out);
        p.request(b"GET", Some(2), &mut out);
        p.close(true, &mut out);
        let got: Vec<_> = out.into_iter().map(simplify).collect();
        assert_eq!(
            got,
            vec![(0, Err(Incomplete::Gap)), (1, Err(Incomplete::Gap)), (2, Err(Incomplete::Gap))],
            "{}",
            String::from_utf8_lossy(before)
        );
    }
}

#[test]
fn requests_without_responses_at_the_close_are_missing_and_a_cut_head_is_cut() {
    let got = pair(
        &[("GET", true), ("GET", true), ("GET", true)],
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 5",
        100,
    );
    assert_eq!(got, vec![ok(0, 200, ""), (1, Err(Incomplete::Cut)), (2, Err(Incomplete::Missing))]);
    let got = pair(&[("GET", true)], b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", 100);
    assert_eq!(got, vec![(0, Err(Incomplete::Cut))]);
}

#[test]
fn garbage_and_conflicting_lengths_are_unframed_and_so_is_what_follows() {
    for stream in [
        &b"SSH-2.0-OpenSSH\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let got = pair(&[("GET", true), ("GET", true)], stream, 100);
        assert_eq!(got, vec![(0, Err(Incomplete::Unframed)), (1, Err(Incomplete::Unframed))]);
    }
}

#[test]
fn a_body_over_the_limit_is_too_large_and_framing_goes_on() {
    let limits = PairLimits { max_body: 4, ..PairLimits::default() };
    let mut p = Pairer::new(limits);
    let mut out = Vec::new();
    p.request(b"GET", Some(0), &mut out);
    p.request(b"GET", Some(1), &mut out);
    p.data(
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabcdefHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        &mut out,
    );
    let first = out[0].response.as_ref().unwrap();
    assert_eq!((first.body.as_slice(), first.body_len, first.cut), (&b"abcd"[..], 6, Some(Incomplete::TooLarge)));
    assert_eq!(out.into_iter().map(simplify).collect::<Vec<_>>()[1], ok(1, 200, "ok"));
}

#[test]
fn switching_protocols_ends_pairing() {
    // Requests after it are missing, reported in order even when given after the 101.
    let mut p = Pairer::new(PairLimits::default());
    let mut out = Vec::new();
    p.request(b"GET", None, &mut out);
    p.request(b"GET", Some(1), &mut out);
    p.data(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", &mut out);
    p.request(b"GET", Some(2), &mut out);
    p.close(true, &mut out);
    assert_eq!(
        out.into_iter().map(simplify).collect::<Vec<_>>(),
        vec![(1, Err(Incomplete::Missing)), (2, Err(Incomplete::Missing))]
    );
    let got = pair(
        &[("GET", true), ("GET", true)],
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
        100,
    );
    assert_eq!(got, vec![ok(0, 101, ""), (1, Err(Incomplete::Missing))]);
}

#[test]
fn headers_keep_their_order_with_lower_case_names() {
    let mut p = Pairer::new(PairLimits::default());
    let mut out = Vec::new();
    p.request(b"GET", Some(0), &mut out);
    p.data(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nSet-Cookie: a=1\r\nx-a: 2\r\nContent-Length: 0\r\n\r\n", &mut out);
    let r = out.remove(0).response.unwrap();
    assert_eq!(r.header("x-a").collect::<Vec<_>>(), vec![&b"1"[..], b"2"]);
    assert_eq!(r.headers[1].0, "set-cookie");
}

#[test]
fn bytes_held_ahead_of_any_request_are_bounded() {
    let limits = PairLimits { max_early: 100, ..PairLimits::default() };
    let mut p = Pairer::new(limits);
    let mut out = Vec::new();
    p.data(b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n", &mut out);
    p.data(&[b'x'; 200], &mut out);
    p.request(b"GET", Some(0), &mut out);
    assert_eq!(out.into_iter().map(simplify).collect::<Vec<_>>(), vec![(0, Err(Incomplete::Unframed))]);
}
