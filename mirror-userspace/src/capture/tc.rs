//! The little of rtnetlink's traffic-control API that attaching through netlink needs and aya does
//! not expose: list the filters of an interface's clsact qdisc, and tell or remove the qdisc.
//!
//! Synchronous (one request, read until the kernel's answer ends): it runs at start, at exit and
//! from `mirror detach`, never on the data path.

use std::io;

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// A TC hook of the clsact qdisc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Packets arriving on the interface.
    Ingress,
    /// Packets leaving through the interface.
    Egress,
}

impl Hook {
    fn parent(self) -> TcHandle {
        match self {
            Hook::Ingress => TcHandle { major: u16::MAX, minor: TcHandle::MIN_INGRESS },
            Hook::Egress => TcHandle { major: u16::MAX, minor: TcHandle::MIN_EGRESS },
        }
    }
}

/// One filter entry of a clsact hook, as the kernel dumps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Filter priority (`tc filter ... pref`).
    pub priority: u16,
    /// Filter handle (0 for the entry that heads a priority's list).
    pub handle: u32,
    /// Classifier kind (`bpf`, `u32`, `flower`, ...).
    pub kind: String,
    /// For a `bpf` filter: the program name it was attached under (aya uses the program's name).
    pub bpf_name: Option<String>,
}

/// An rtnetlink socket for one request at a time.
pub(super) struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    pub(super) fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl { socket, seq: 0 })
    }

    /// Sends `msg` and collects the answers until the dump ends or the kernel acknowledges.
    pub(super) fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut answers = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "netlink message of length 0"));
                }
                offset += len;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::Error(e) if e.code.is_none() => return Ok(answers),
                    NetlinkPayload::Error(e) => return Err(e.to_io()),
                    NetlinkPayload::InnerMessage(m) => answers.push(m),
                    _ => {}
                }
            }
            if flags & NLM_F_DUMP == 0 && flags & NLM_F_ACK == 0 {
                return Ok(answers);
            }
        }
    }
}

/// Whether interface `ifindex` has a clsact qdisc.
pub fn has_clsact(ifindex: u32) -> io::Result<bool> {
    let answers = Rtnl::open()?.request(RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()), NLM_F_DUMP)?;
    Ok(answers.iter().any(|m| match m {
        RouteNetlinkMessage::NewQueueDiscipline(q) => {
            q.header.index == ifindex as i32
                && q.attributes.iter().any(|a| matches!(a, TcAttribute::Kind(k) if k == "clsact"))
        }
        _ => false,
    }))
}

/// The filters on one clsact hook of `ifindex` (empty when there is no clsact qdisc).
pub fn filters(ifindex: u32, hook: Hook) -> io::Result<Vec<Filter>> {
    let mut req = TcMessage::with_index(ifindex as i32);
    req.header.parent = hook.parent();
    let answers = match Rtnl::open()?.request(RouteNetlinkMessage::GetTrafficFilter(req), NLM_F_DUMP) {
        Ok(a) => a,
        // No clsact qdisc: nothing to list.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) || e.raw_os_error() == Some(libc::ENOENT) => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(answers
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewTrafficFilter(f) if f.header.index == ifindex as i32 => Some(filter_of(&f)),
            _ => None,
        })
        .collect())
}

fn filter_of(msg: &TcMessage) -> Filter {
    let mut kind = String::new();
    let mut bpf_name = None;
    for attr in &msg.attributes {
        match attr {
            TcAttribute::Kind(k) => kind.clone_from(k),
            TcAttribute::Options(opts) => {
                for o in opts {
                    if let TcOption::Bpf(TcFilterBpfOption::ProgName(n)) = o {
                        bpf_name = Some(n.clone());
                    }
                }
            }
            _ => {}
        }
    }
    Filter { priority: (msg.header.info >> 16) as u16, handle: u32::from(msg.header.handle), kind, bpf_name }
}

/// Removes the clsact qdisc of `ifindex` (and with it every filter it holds).
pub fn delete_clsact(ifindex: u32) -> io::Result<()> {
    let mut req = TcMessage::with_index(ifindex as i32);
    req.header.parent = TcHandle::CLSACT;
    req.header.handle = TcHandle { major: u16::MAX, minor: 0 };
    req.attributes.push(TcAttribute::Kind("clsact".into()));
    Rtnl::open()?.request(RouteNetlinkMessage::DelQueueDiscipline(req), NLM_F_ACK).map(|_| ())
}
