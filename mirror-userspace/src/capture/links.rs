//! The links of the network namespace, now and as they change: a dump (`RTM_GETLINK`) and a
//! watcher subscribed to `RTNLGRP_LINK` (`RTM_NEWLINK` when a link appears, is renamed or changes
//! state; `RTM_DELLINK` when it goes or leaves the namespace).
//!
//! The watcher's socket is non-blocking and is polled with the perf buffers, so a new pod's veth
//! wakes the capture thread. The kernel drops notifications when the socket's buffer is full
//! (`ENOBUFS`); the watcher then says so and the caller takes a fresh dump instead.

use std::{io, os::fd::AsRawFd};

use netlink_packet_core::{NLM_F_DUMP, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkFlags, LinkMessage},
};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

use super::tc::Rtnl;

/// A link as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Administratively up.
    pub up: bool,
}

/// What happened to a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// It appeared, or changed (name, state).
    New(Link),
    /// It was deleted or moved to another namespace: whatever was attached to it went with it.
    Gone {
        /// Its index.
        index: u32,
        /// Its name, if the message carried it.
        name: String,
    },
}

fn link_of(msg: &LinkMessage) -> Option<Link> {
    let name = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })?;
    Some(Link { index: msg.header.index, name, up: msg.header.flags.contains(LinkFlags::Up) })
}

/// Every link of the namespace.
pub fn dump() -> io::Result<Vec<Link>> {
    let answers = Rtnl::open()?.request(RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP)?;
    Ok(answers
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => link_of(l),
            _ => None,
        })
        .collect())
}

/// Link notifications could not all be read: some were dropped by the kernel (its socket buffer
/// was full). Take a fresh [`dump`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overrun;

/// A socket subscribed to link notifications.
pub struct Watcher {
    socket: Socket,
    buf: Vec<u8>,
}

impl Watcher {
    /// Subscribes. Open it before the first [`dump`], so that nothing happens unseen between them.
    pub fn open() -> io::Result<Watcher> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.add_membership(libc::RTNLGRP_LINK)?;
        socket.set_non_blocking(true)?;
        // Pods come and go in bursts (a node draining, a rollout): room for a few thousand
        // notifications. Beyond it the kernel drops them and the caller dumps again.
        let size: libc::c_int = 4 << 20;
        // SAFETY: setsockopt on our own socket with a pointer to a live c_int of the size given.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                std::ptr::from_ref(&size).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        Ok(Watcher { socket, buf: Vec::with_capacity(64 << 10) })
    }

    /// The socket, to poll it.
    pub fn fd(&self) -> i32 {
        self.socket.as_raw_fd()
    }

    /// The notifications received since the last call (none waiting: empty), in order.
    pub fn events(&mut self) -> Result<Vec<LinkEvent>, Overrun> {
        let mut events = Vec::new();
        loop {
            self.buf.clear();
            match self.socket.recv(&mut self.buf, 0) {
                Ok(_) => parse(&self.buf, &mut events),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(events),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Err(Overrun),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Nothing else is expected of a bound netlink socket; treat it as lost news.
                    tracing::warn!("reading link notifications: {e}");
                    return Err(Overrun);
                }
            }
        }
    }
}

/// The link messages of one datagram.
fn parse(data: &[u8], events: &mut Vec<LinkEvent>) {
    let mut offset = 0;
    while offset < data.len() {
        let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..]) else {
            tracing::debug!("undecodable link notification");
            return;
        };
        let len = msg.header.length as usize;
        if len == 0 {
            return;
        }
        offset += len;
        match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                if let Some(link) = link_of(&l) {
                    events.push(LinkEvent::New(link));
                }
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                let name = link_of(&l).map(|l| l.name).unwrap_or_default();
                events.push(LinkEvent::Gone { index: l.header.index, name });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namespace_has_a_loopback_and_the_dump_finds_it() {
        let links = dump().unwrap();
        let lo = links.iter().find(|l| l.name == "lo").expect("lo in the dump");
        assert_eq!(lo.index, 1);
    }

    #[test]
    fn a_new_and_a_deleted_link_are_parsed_from_their_messages() {
        let mut msg = LinkMessage::default();
        msg.header.index = 7;
        msg.header.flags = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::IfName("cali1".into()));
        let mut events = Vec::new();
        for payload in [RouteNetlinkMessage::NewLink(msg.clone()), RouteNetlinkMessage::DelLink(msg)] {
            let mut packet = NetlinkMessage::from(payload);
            packet.finalize();
            let mut buf = vec![0u8; packet.buffer_len()];
            packet.serialize(&mut buf);
            parse(&buf, &mut events);
        }
        assert_eq!(
            events,
            [
                LinkEvent::New(Link { index: 7, name: "cali1".into(), up: true }),
                LinkEvent::Gone { index: 7, name: "cali1".into() }
            ]
        );
    }
}
