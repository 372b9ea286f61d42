//! The flow table on arbitrary segment sequences of both directions (any order, overlap,
//! duplication, wrap, flags, time, forged copies, server ACKs and RSTs), in both modes. It must
//! never panic; every byte it delivers must be the byte the client sent at that stream offset
//! (never a forged copy's, in strict mode), a gap's length exact (the bytes after it are checked
//! at their offsets); in strict mode it must deliver only bytes the server acknowledged and
//! nothing of a flow picked up mid-stream (after a gap delivery may go on: whether the bytes
//! after it can be framed is the framer's call, and the pipeline gives the flow up when not); it
//! must hold nothing once every flow is closed; and a tick before `poll_timeout` must do nothing.
#![no_main]

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mirror::flow::{FlowConfig, FlowKey, FlowTable, Segment, StreamEvent};
use mirror_common::{TCP_ACK, TCP_RST, TCP_SYN};

/// The byte at stream offset `off` of every flow: data is a known function of its offset.
fn byte_at(off: u64) -> u8 {
    (off.wrapping_mul(31) >> 3) as u8
}

/// Where the server's connection on one client port stands.
#[derive(Default, PartialEq, Eq)]
enum State {
    /// None: a SYN starts one.
    #[default]
    Closed,
    /// A SYN came: the next server segment is the SYN-ACK.
    SynReceived,
    /// Data flows (also for a connection that began before the input did).
    Established,
}

/// The server's TCP on one client port: the genuine client bytes it received in the current
/// connection, and the next one it expects.
#[derive(Default)]
struct Server {
    state: State,
    /// Sequence number of the connection's SYN (stream offset `o` is at `isn + 1 + o`).
    isn: u32,
    got: Vec<(u64, u64)>,
    rcv_nxt: u64,
}

impl Server {
    fn receive(&mut self, start: u64, end: u64) {
        self.got.push((start, end));
        self.got.sort_unstable();
        for &(s, e) in &self.got {
            if s <= self.rcv_nxt {
                self.rcv_nxt = self.rcv_nxt.max(e);
            }
        }
    }

    /// The connection is gone (an RST either way).
    fn reset(&mut self) {
        *self = Server { isn: self.isn, ..Server::default() };
    }

    /// The sequence number of stream offset `off`.
    fn seq_of(&self, off: u64) -> u32 {
        self.isn.wrapping_add(1).wrapping_add(off as u32)
    }
}

/// What the checker knows of one open flow.
struct Seen {
    /// Next stream offset, for flows that started with a SYN at offset 0.
    next: Option<u64>,
    /// Picked up mid-stream (strict mode: nothing may be delivered).
    midstream: bool,
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let isn = u32::from_le_bytes(data[..4].try_into().unwrap());
    let strict = data[4] & 1 == 1;
    let cfg = FlowConfig {
        max_flows: 2,
        max_flow_buffer: 2048,
        // Room for both flows' bounds (with their windows, up to a quarter of this each): no
        // segment is ever dropped for the global budget (a hole the server acknowledged, filled
        // by a forged copy later, is beyond what can be checked).
        max_total_buffer: 32_768,
        idle_timeout: Duration::from_millis(500),
        opening_timeout: Duration::from_millis(300),
        reorder_timeout: Duration::from_millis(50),
        require_ack: strict,
        responses: false,
        // Mutes asked for are checked below: never on a flow that delivers, all undone at the end.
        mute_given_up: data[4] & 2 != 0,
    };
    let mut muted: std::collections::HashSet<FlowKey> = std::collections::HashSet::new();
    let mut mutes = Vec::new();
    let mut table = FlowTable::new(cfg);
    let mut out = Vec::new();
    let mut now = Duration::ZERO;
    let mut seen: HashMap<FlowKey, Seen> = HashMap::new();
    // Per client port: the server's view, and the furthest offset it acknowledged to the flow.
    let mut servers: HashMap<u16, Server> = HashMap::new();
    let mut acked: HashMap<FlowKey, u64> = HashMap::new();
    for op in data[5..].chunks(5) {
        if op.len() < 5 {
            break;
        }
        let port = 1000 + u16::from(op[0] & 1);
        let flags = op[1] & 0x1f;
        let kind = op[1] >> 5;
        let off = u64::from(u16::from_le_bytes([op[2], op[3]]));
        let len = u64::from(op[4] & 0x7f);
        let new_isn = op[4] & 0x80 != 0;
        now += Duration::from_millis(u64::from(op[0] >> 4));
        let key =
            FlowKey { client: format!("10.0.0.1:{port}").parse().unwrap(), server: "10.0.0.2:80".parse().unwrap() };
        let server = servers.entry(port).or_insert_with(|| Server { isn, ..Server::default() });
        let seg = if kind == 7 {
            // The server: its SYN-ACK, then ACKs of what it holds in order (an RST too, at times).
            let ack = server.seq_of(server.rcv_nxt);
            match server.state {
                State::Closed => continue,
                State::SynReceived => {
                    server.state = State::Established;
                    let wscale = (op[4] & 0x10 != 0).then_some(op[4] & 0x0f);
                    Segment { wscale, ..Segment::to_client(key, 5, ack, TCP_SYN | TCP_ACK, 0) }
                }
                State::Established => {
                    let a = acked.entry(key).or_default();
                    *a = (*a).max(server.rcv_nxt);
                    if flags & TCP_RST != 0 {
                        server.reset();
                    }
                    // Any window: it only moves where a flow that holds too much is given up.
                    let window = u16::from_le_bytes([op[2], op[3]]);
                    Segment { window, ..Segment::to_client(key, 5, ack, TCP_ACK | (flags & TCP_RST), 0) }
                }
            }
        } else if flags & TCP_SYN != 0 {
            // A SYN: a new connection if the server has none (another ISN if asked), else one it
            // ignores (a retransmission, or a forged SYN with another ISN: strict mode only, as
            // without the server's side the latest SYN before any data sets the stream's start).
            let mut seq = server.isn;
            if new_isn && strict {
                seq = seq.wrapping_add(((off as u32) << 12) | 1);
            }
            if server.state == State::Closed {
                server.isn = seq;
                server.state = State::SynReceived;
            }
            let wscale = (op[4] & 0x40 != 0).then_some(7);
            Segment { wscale, ..Segment::to_server(key, seq, 0, flags, Bytes::new()) }
        } else {
            // Data at stream offset `off` has seq isn + 1 + off. Kind 6 is a copy the server's
            // kernel drops (bad checksum, spoofed): different bytes, never received (strict mode
            // only: without it the first copy wins, whatever it holds).
            let forged = kind == 6 && strict;
            let payload: Vec<u8> = (off..off + len).map(|o| if forged { !byte_at(o) } else { byte_at(o) }).collect();
            let rst = flags & TCP_RST != 0;
            if !forged && flags & TCP_ACK != 0 && !rst && len > 0 && server.state != State::SynReceived {
                server.state = State::Established;
                server.receive(off, off + len);
            }
            if rst && !forged && server.state == State::Established && off == server.rcv_nxt {
                server.reset();
            }
            Segment::to_server(key, server.seq_of(off), 0, flags, Bytes::from(payload))
        };
        table.on_segment(seg, now, &mut out);
        if op[0] & 0x0e == 0x0e {
            let due = table.poll_timeout().is_some_and(|at| at <= now);
            let before = out.len();
            table.on_tick(now, &mut out);
            assert!(due || out.len() == before, "a tick before poll_timeout did something");
        }
        // Open flows may wait without a timer (clean kept-alive connections); an empty table has none.
        assert!(!table.is_empty() || table.poll_timeout().is_none(), "a timer without a flow");
        table.take_mutes(&mut mutes);
        apply_mutes(&mut mutes, &mut muted);
        for (key, ev) in &out {
            assert!(
                !(matches!(ev, StreamEvent::Data(_)) && muted.contains(key)),
                "data delivered on a muted flow"
            );
        }
        check(&mut out, &mut seen, &mut acked, strict);
    }
    table.close_all(&mut out);
    table.take_mutes(&mut mutes);
    apply_mutes(&mut mutes, &mut muted);
    assert!(muted.is_empty(), "left muted after every flow closed");
    check(&mut out, &mut seen, &mut acked, strict);
    assert_eq!(table.buffered_bytes(), 0);
    assert!(table.is_empty());
});

/// Checks delivered bytes against `byte_at` (flows that started with a SYN at offset 0) and, in
/// strict mode, against what the server acknowledged, gaps and mid-stream pick-ups.
fn check(
    out: &mut Vec<(FlowKey, StreamEvent)>,
    seen: &mut HashMap<FlowKey, Seen>,
    acked: &mut HashMap<FlowKey, u64>,
    strict: bool,
) {
    for (key, ev) in out.drain(..) {
        match ev {
            StreamEvent::Open { midstream } => {
                seen.insert(key, Seen { next: (!midstream).then_some(0), midstream });
                // Acknowledgements count from the flow's start.
                acked.insert(key, 0);
            }
            StreamEvent::Close(_) => {
                seen.remove(&key);
            }
            StreamEvent::ReverseData(_) | StreamEvent::ReverseGap(_) | StreamEvent::ReverseFin => {
                unreachable!("a server stream without FlowConfig::responses")
            }
            StreamEvent::Gap(n) => {
                let s = seen.get_mut(&key).expect("a gap on a flow not open");
                assert!(n > 0, "empty gap");
                if let Some(o) = s.next.as_mut() {
                    *o += n;
                }
            }
            StreamEvent::Data(d) => {
                let s = seen.get_mut(&key).expect("data on a flow not open");
                assert!(!d.is_empty(), "empty data event");
                if strict {
                    assert!(!s.midstream, "strict mode: data of a flow picked up mid-stream");
                }
                if let Some(o) = s.next.as_mut() {
                    for (i, b) in d.iter().enumerate() {
                        assert_eq!(*b, byte_at(*o + i as u64), "byte at offset {} was invented", *o + i as u64);
                    }
                    *o += d.len() as u64;
                    if strict {
                        let a = acked.get(&key).copied().unwrap_or(0);
                        assert!(*o <= a, "strict mode: delivered up to {} but the server acknowledged {a}", *o);
                    }
                }
            }
        }
    }
}

fn apply_mutes(mutes: &mut Vec<mirror::flow::Mute>, muted: &mut std::collections::HashSet<FlowKey>) {
    for m in mutes.drain(..) {
        match m {
            mirror::flow::Mute::On { key, .. } => {
                muted.insert(key);
            }
            mirror::flow::Mute::Off(key) => assert!(muted.remove(&key), "unmuted, never muted"),
        }
    }
}
