//! Bodies kept as pieces. Random pipelined requests (Content-Length and
//! chunked, pieces on both sides of SLICE_MIN, streamed ones), cut into segments of up to 60,000
//! bytes (a live sample's bound) that overlap what was sent before (trimmed retransmissions),
//! acknowledged in part: every mirrored body is the client's, byte for byte; what a whole request
//! is charged covers every allocation its pieces keep alive; the books return to zero.

use proptest::prelude::*;

use super::*;

fn router_pipeline(buffer: usize) -> Pipeline {
    let text = "capture: {interfaces: [eth0], ports: [80]}\nendpoints: {'httpbin/v2': ['127.0.0.1:1']}\nroutes:\n  - mirror: {host: httpbin, subset: v2}\n    mirrorPercentage: {value: 100}\n";
    let router = Router::new(&Config::parse(text, "t").unwrap()).unwrap();
    Pipeline::with_rng(Arc::new(router), FlowConfig::default(), buffer, StdRng::seed_from_u64(3))
        .with_memory(Arc::new(Memory::new(1 << 34)))
}

const SIZES: [usize; 9] = [0, 1, 100, 5_000, 16_383, 16_384, 20_000, 61_000, 150_000];

/// The request's wire bytes and its body's.
fn request(i: usize, chunked: bool, size: usize) -> (Vec<u8>, Vec<u8>) {
    let data: Vec<u8> = (0..size).map(|j| ((i * 7 + j) % 251) as u8).collect();
    let body = if chunked {
        let mut b = Vec::new();
        for c in data.chunks(7_000) {
            b.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            b.extend_from_slice(c);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"0\r\n\r\n");
        b
    } else {
        data
    };
    let head = if chunked {
        format!("POST /{i} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    } else {
        format!("POST /{i} HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n", body.len())
    };
    let mut wire = head.into_bytes();
    wire.extend_from_slice(&body);
    (wire, body)
}

/// Sum of what the pieces of a body starting at stream offset `at` keep alive: each segment
/// allocation they are slices of, once, and their own length for the others (copies; their
/// allocation is at least that). A piece is a slice of a segment when it lies where that
/// segment's copy of its bytes lies (an address alone could be a later allocation's).
fn pinned(pieces: &[Bytes], mut at: usize, segs: &[(usize, usize, usize)]) -> usize {
    let mut seen = std::collections::BTreeSet::new();
    let mut n = 0;
    for p in pieces {
        let ptr = p.as_ptr() as usize;
        match segs.iter().position(|&(s, l, start)| (s..s + l).contains(&ptr) && start + (ptr - s) == at) {
            Some(i) => {
                if seen.insert(i) {
                    n += segs[i].1;
                }
            }
            None => n += p.len(),
        }
        at += p.len();
    }
    n
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn pieces_are_exact_charged_and_given_back(
        reqs in proptest::collection::vec((any::<bool>(), 0..SIZES.len()), 1..6),
        cuts in proptest::collection::vec((1usize..=60_000, 0usize..4, 0usize..60_000, 0u8..4), 1..400),
        buffer in prop_oneof![Just(64 * 1024), Just(1 << 20)],
    ) {
        let mut p = router_pipeline(buffer);
        let mut stream = Vec::new();
        let mut bodies = Vec::new();
        let mut starts = Vec::new();
        for (i, &(chunked, s)) in reqs.iter().enumerate() {
            let (wire, body) = request(i, chunked, SIZES[s]);
            stream.extend_from_slice(&wire);
            starts.push(stream.len() - body.len());
            bodies.push(body);
        }
        let mut out = Vec::new();
        let now = Duration::ZERO;
        p.on_segment(Segment::to_server(key(), 1, 0, TCP_SYN, Bytes::new()), now, &mut out);
        p.on_segment(Segment::to_client(key(), 7, 2, TCP_SYN | TCP_ACK, 0), now, &mut out);
        let (mut segs, mut alive) = (Vec::new(), Vec::new());
        let (mut sent, mut acked) = (0usize, 0usize);
        let mut c = 0;
        while sent < stream.len() {
            let (len, pick, back, ackmode) = cuts[c % cuts.len()];
            c += 1;
            let len = [len, 1448, 16_384, 60_000][pick];
            // Overlap what was sent already (a retransmission the receiver trims), within 60,000.
            let back = back.min(sent).min(60_000 - len.min(60_000));
            let start = sent - back;
            let end = (start + len).min(stream.len()).max(sent + 1);
            let seg = Bytes::copy_from_slice(&stream[start..end]);
            segs.push((seg.as_ptr() as usize, seg.len(), start));
            // Kept alive: a later allocation at a freed segment's address would pass for a slice.
            alive.push(seg.clone());
            p.on_segment(Segment::to_server(key(), 2 + start as u32, 8, TCP_ACK, seg), now, &mut out);
            sent = end;
            // The server acknowledges all, half of what is new, or nothing yet.
            let to = match ackmode { _ if sent - acked > 100_000 => sent, 0 | 1 => sent, 2 => acked + (sent - acked) / 2, _ => acked };
            if to > acked {
                acked = to;
                p.on_segment(Segment::to_client(key(), 8, 2 + acked as u32, TCP_ACK, 0), now, &mut out);
            }
        }
        p.on_segment(Segment::to_client(key(), 8, 2 + stream.len() as u32, TCP_ACK, 0), now, &mut out);
        p.on_segment(Segment::to_server(key(), 2 + stream.len() as u32, 8, TCP_ACK | TCP_FIN, Bytes::new()), now, &mut out);
        p.on_segment(Segment::to_client(key(), 8, 3 + stream.len() as u32, TCP_ACK, 0), now, &mut out);
        p.finish(&mut out);

        // Bodies, in order, byte for byte.
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut streams: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
        for o in &out {
            match &o.part {
                Part::Whole(r) => {
                    let held = r.body.held();
                    let pin = pinned(r.body.pieces(), starts[got.len()], &segs);
                    prop_assert!(held >= pin, "a whole request charged {} keeps {} alive", held, pin);
                    got.push(r.body.concat().to_vec());
                }
                Part::Start { stream, request } => {
                    let held = request.body.held();
                    let pin = pinned(request.body.pieces(), starts[got.len()], &segs);
                    prop_assert!(held >= pin, "a stream's start charged {} keeps {} alive", held, pin);
                    streams.insert(*stream, request.body.concat().to_vec());
                }
                Part::More { stream, bytes, .. } => streams.get_mut(stream).unwrap().extend_from_slice(bytes),
                Part::End { stream, .. } => got.push(streams.remove(stream).unwrap()),
                Part::Abort { .. } => prop_assert!(false, "aborted"),
            }
        }
        prop_assert_eq!(got.len(), bodies.len());
        for (g, b) in got.iter().zip(&bodies) {
            prop_assert!(g == b, "a body differs ({} against {} bytes)", g.len(), b.len());
        }
        prop_assert_eq!(p.memory.held(Held::Bodies), 0);
        prop_assert_eq!(p.memory.held(Held::Heads), 0);
        prop_assert_eq!(p.memory.held(Held::Reassembly), 0);
    }
}
/// A segment's bytes whose allocation's liveness is counted in `live` (bytes alive).
struct Tracked(Vec<u8>, Arc<std::sync::atomic::AtomicUsize>);

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.1.fetch_sub(self.0.len(), std::sync::atomic::Ordering::Relaxed);
    }
}

fn tracked(data: Vec<u8>, live: &Arc<std::sync::atomic::AtomicUsize>) -> Bytes {
    live.fetch_add(data.len(), std::sync::atomic::Ordering::Relaxed);
    Bytes::from_owner(Tracked(data, live.clone()))
}

/// Bytes held out of order are charged
/// their count (`Held::Reassembly`), but each is a slice of the segment it came in. A client
/// whose segments each overlap what is held but for one new byte at their end (the server's TCP
/// takes them: the hole before them keeps them unacknowledged) pins a whole segment per byte
/// charged.
#[test]
fn bytes_held_out_of_order_are_charged_what_they_keep_alive() {
    let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut p = router_pipeline(1 << 20);
    let mut out = Vec::new();
    let now = Duration::ZERO;
    p.on_segment(Segment::to_server(key(), 1, 0, TCP_SYN, Bytes::new()), now, &mut out);
    p.on_segment(Segment::to_client(key(), 7, 2, TCP_SYN | TCP_ACK, 0), now, &mut out);
    // Offset 0 never comes: everything after it waits.
    for k in 0..100u32 {
        let seg = tracked(vec![b'a'; 60_000], &live);
        p.on_segment(Segment::to_server(key(), 3 + k, 8, TCP_ACK, seg), now, &mut out);
    }
    let charged = p.memory.held(Held::Reassembly);
    let alive = live.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(charged, 60_099);
    assert!(charged >= alive, "charged {charged} for {alive} bytes kept alive");
}
