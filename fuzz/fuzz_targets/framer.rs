//! The request framer on arbitrary bytes, fed whole and in arbitrary pieces: it must never panic,
//! must frame the same requests however the bytes are cut, and every complete request must be a
//! contiguous, unaltered slice of the input. With a gap cut out of the input (bytes lost to the
//! capture) and `exact_after_gap` (the daemon's setting), every request framed must be one the
//! framer finds without the gap: a gap may lose requests, never make one up.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mirror::http::{FramerConfig, HttpEvent, RequestFramer};

fn frame(input: &[u8], cuts: &[usize], midstream: bool) -> Vec<(u64, Vec<u8>)> {
    frame_around(input, cuts, midstream, None)
}

/// Frames `input`, cut at `cuts`; or, with `gap` (start, len), fed in two pieces around those
/// bytes, which are declared lost instead.
fn frame_around(input: &[u8], cuts: &[usize], midstream: bool, gap: Option<(usize, usize)>) -> Vec<(u64, Vec<u8>)> {
    let cfg = FramerConfig { max_head: 4096, max_headers: 32, exact_after_gap: gap.is_some() };
    let mut f = RequestFramer::new(cfg, midstream);
    let mut events = Vec::new();
    if let Some((start, len)) = gap {
        f.on_data(Bytes::copy_from_slice(&input[..start]), &mut events);
        f.on_gap(len as u64, &mut events);
        f.on_data(Bytes::copy_from_slice(&input[start + len..]), &mut events);
    } else {
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            let c = c.clamp(at, input.len());
            f.on_data(Bytes::copy_from_slice(&input[at..c]), &mut events);
            at = c;
        }
    }
    f.on_close(&mut events);
    let mut done = Vec::new();
    let mut cur: Option<(u64, Vec<u8>)> = None;
    for e in events {
        match e {
            HttpEvent::Head(h) => {
                assert!(cur.is_none(), "head inside a request");
                cur = Some((h.stream_offset, h.raw.to_vec()));
            }
            HttpEvent::Body(b) => cur.as_mut().expect("body outside a request").1.extend_from_slice(&b),
            HttpEvent::End => done.push(cur.take().expect("end outside a request")),
            HttpEvent::Dropped(_) => cur = None,
            HttpEvent::Tunnel => {}
        }
    }
    done
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (ctl, input) = data.split_at(4);
    let midstream = ctl[0] & 1 == 1;
    let step = usize::from(ctl[1]).max(1);
    let cuts: Vec<usize> = (step..input.len()).step_by(step).collect();
    let whole = frame(input, &[], midstream);
    let pieces = frame(input, &cuts, midstream);
    assert_eq!(whole, pieces, "framing depends on how the bytes were cut");
    for (offset, bytes) in &whole {
        let start = *offset as usize;
        assert_eq!(&input[start..start + bytes.len()], &bytes[..], "a request was altered");
    }
    if !midstream && !input.is_empty() {
        let start = usize::from(ctl[2]) * input.len() / 256;
        let len = (usize::from(ctl[3]) + 1).min(input.len() - start);
        for r in frame_around(input, &[], false, Some((start, len))) {
            assert!(whole.contains(&r), "a request framed across a gap that is not one: {r:?}");
        }
    }
});
