//! The flow table on arbitrary segment sequences (any order, overlap, duplication, wrap, flags,
//! time): it must never panic, every byte it delivers must be the byte sent at that stream offset,
//! it must hold no out-of-order bytes once every flow is closed, and a tick before
//! `poll_timeout` must do nothing.
#![no_main]

use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mirror::flow::{FlowConfig, FlowKey, FlowTable, Segment, StreamEvent};

/// The byte at stream offset `off` of every flow: data is a known function of its offset.
fn byte_at(off: u64) -> u8 {
    (off.wrapping_mul(31) >> 3) as u8
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let isn = u32::from_le_bytes(data[..4].try_into().unwrap());
    let cfg = FlowConfig {
        max_flows: 2,
        max_flow_buffer: 2048,
        max_total_buffer: 4096,
        idle_timeout: Duration::from_millis(500),
        reorder_timeout: Duration::from_millis(50),
    };
    let mut table = FlowTable::new(cfg);
    let mut out = Vec::new();
    let mut now = Duration::ZERO;
    // Where each (client port) stream stands: next offset, and the base seq of offset 0.
    let mut next: std::collections::HashMap<FlowKey, u64> = Default::default();
    for op in data[4..].chunks(5) {
        if op.len() < 5 {
            break;
        }
        let port = 1000 + u16::from(op[0] & 1);
        let flags = op[1] & 0x1f;
        let off = u64::from(u16::from_le_bytes([op[2], op[3]]));
        let len = u64::from(op[4] & 0x7f);
        now += Duration::from_millis(u64::from(op[0] >> 4));
        let key = FlowKey {
            client: format!("10.0.0.1:{port}").parse().unwrap(),
            server: "10.0.0.2:80".parse().unwrap(),
        };
        // SYN carries isn; data at stream offset `off` has seq isn + 1 + off.
        let payload: Vec<u8> = if flags & 0x02 != 0 { Vec::new() } else { (off..off + len).map(byte_at).collect() };
        let seq = if flags & 0x02 != 0 { isn } else { isn.wrapping_add(1).wrapping_add(off as u32) };
        table.on_segment(Segment { key, seq, flags, payload: Bytes::from(payload) }, now, &mut out);
        if op[0] & 0x0e == 0x0e {
            let due = table.poll_timeout().is_some_and(|at| at <= now);
            let before = out.len();
            table.on_tick(now, &mut out);
            assert!(due || out.len() == before, "a tick before poll_timeout did something");
        }
        assert_eq!(table.poll_timeout().is_none(), table.is_empty(), "an open flow without a timer");
        check(&mut out, &mut next);
    }
    table.close_all(&mut out);
    check(&mut out, &mut next);
    assert_eq!(table.buffered_bytes(), 0);
    assert!(table.is_empty());
});

/// Checks delivered bytes against `byte_at`, for flows that started with a SYN at offset 0.
fn check(out: &mut Vec<(FlowKey, StreamEvent)>, next: &mut std::collections::HashMap<FlowKey, u64>) {
    for (key, ev) in out.drain(..) {
        match ev {
            StreamEvent::Open { midstream: false } => {
                next.insert(key, 0);
            }
            StreamEvent::Open { midstream: true } | StreamEvent::Close(_) => {
                next.remove(&key);
            }
            StreamEvent::Gap(n) => {
                if let Some(o) = next.get_mut(&key) {
                    *o += n;
                }
            }
            StreamEvent::Data(d) => {
                assert!(!d.is_empty(), "empty data event");
                if let Some(o) = next.get_mut(&key) {
                    for (i, b) in d.iter().enumerate() {
                        assert_eq!(*b, byte_at(*o + i as u64), "byte at offset {} was invented", *o + i as u64);
                    }
                    *o += d.len() as u64;
                }
            }
        }
    }
}
