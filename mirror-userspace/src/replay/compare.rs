//! Replay's part in comparing responses (issue 15): for a request whose copy carries a compare id
//! ([`Outbound::compare`](crate::pipeline::Outbound::compare)), the mirror's response bytes are
//! kept as they are read (up to the destination's `maxBodyBytes` plus room for the head) instead
//! of only framed, then framed and decoded by the same [`Pairer`] that frames the primary's, and
//! handed to the compare task without waiting. Requests not compared keep today's path and cost.

use std::sync::OnceLock;

use crate::{
    compare::{Incomplete, PairLimits, Pairer},
    comparing::{Msg, Sink},
    pipeline::{Outbound, Part},
    route::{Name, Router},
};

/// Room for a response head (and 1xx responses, chunk framing) beyond the body limit.
const HEAD_ROOM: usize = 64 << 10;

/// Where compared responses go, once the daemon says (shared by every worker).
#[derive(Debug, Default)]
pub(super) struct CompareOut {
    pub(super) sink: OnceLock<Sink>,
    /// Endpoint → body limit of the comparisons it takes part in (compared or baseline).
    pub(super) limits: std::sync::RwLock<std::collections::HashMap<Name, usize>>,
}

impl CompareOut {
    /// The limits from a (reloaded) router: each compared destination's `maxBodyBytes`, and the
    /// same for its baseline.
    pub(super) fn set_router(&self, router: &Router) {
        let mut limits = std::collections::HashMap::new();
        for (dest, s) in &router.compared {
            let mut put = |k: Name| {
                let e = limits.entry(k).or_insert(0usize);
                *e = (*e).max(s.max_body_bytes);
            };
            put(*dest);
            if let Some(&b) = router.baselines.get(dest) {
                put(b);
            }
        }
        *self.limits.write().expect("limits lock") = limits;
    }

    /// A capture for `ob`'s response if it is compared (and the task is running).
    pub(super) fn capture(&self, ob: &Outbound, head_request: bool) -> Option<Capture> {
        ob.compare?;
        self.sink.get()?;
        let limit = *self.limits.read().expect("limits lock").get(&ob.endpoint)?;
        Some(Capture { raw: Vec::new(), limit, over: false, head_request })
    }

    /// `ob` will never be answered (its connection failed, or it never reached one): if it is
    /// compared, its side is missing now rather than at the join's timeout.
    pub(super) fn failed(&self, ob: &Outbound) {
        let request = matches!(ob.part, Part::Whole(_) | Part::Start { .. });
        if let (Some(id), Some(sink), true) = (ob.compare, self.sink.get(), request) {
            sink.send(Msg::Mirror { id, endpoint: ob.endpoint, side: Err(Incomplete::Missing) });
        }
    }

    /// Hands a finished capture over (never waits: a full channel drops it, counted there).
    pub(super) fn hand_over(&self, ob: &Outbound, capture: Option<Capture>) {
        let (Some(id), Some(capture), Some(sink)) = (ob.compare, capture, self.sink.get()) else { return };
        sink.send(Msg::Mirror { id, endpoint: ob.endpoint, side: capture.finish() });
    }
}

/// The bytes of one compared response, as read.
#[derive(Debug)]
pub(super) struct Capture {
    raw: Vec<u8>,
    limit: usize,
    /// More than `limit` + head room came: the response is too large to compare.
    over: bool,
    head_request: bool,
}

impl Capture {
    /// The next bytes of the response (1xx responses before it included).
    pub(super) fn push(&mut self, bytes: &[u8]) {
        if self.over {
            return;
        }
        if self.raw.len() + bytes.len() > self.limit + HEAD_ROOM {
            self.over = true;
            self.raw = Vec::new();
        } else {
            self.raw.extend_from_slice(bytes);
        }
    }

    /// The response (framed and decoded by the pairer), or why there is none.
    pub(super) fn finish(self) -> Result<crate::compare::Response, Incomplete> {
        if self.over {
            return Err(Incomplete::TooLarge);
        }
        let mut pairer = Pairer::new(PairLimits { max_body: self.limit, ..PairLimits::default() });
        let mut out = Vec::new();
        pairer.request(if self.head_request { b"HEAD" } else { b"GET" }, Some(()), &mut out);
        pairer.data(&self.raw, &mut out);
        // Everything of it was read (the reader saw its end): a clean end.
        pairer.close(true, &mut out);
        out.pop().map_or(Err(Incomplete::Missing), |p| p.response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_captured_response_is_framed_bounded_and_head_aware() {
        let mut c = Capture { raw: Vec::new(), limit: 16, over: false, head_request: false };
        c.push(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-A: b\r\n\r\n");
        c.push(b"hello");
        let r = c.finish().unwrap();
        assert_eq!((r.status, &r.body[..], r.cut), (201, &b"hello"[..], None));
        assert_eq!(r.header("x-a").collect::<Vec<_>>(), vec![&b"b"[..]]);

        let mut big = Capture { raw: Vec::new(), limit: 4, over: false, head_request: false };
        big.push(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789");
        assert_eq!(big.finish().unwrap().cut, Some(Incomplete::TooLarge));
        let mut huge = Capture { raw: Vec::new(), limit: 4, over: false, head_request: false };
        huge.push(&vec![b'x'; HEAD_ROOM + 5]);
        assert_eq!(huge.finish(), Err(Incomplete::TooLarge));

        let mut head = Capture { raw: Vec::new(), limit: 4, over: false, head_request: true };
        head.push(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
        let r = head.finish().unwrap();
        assert_eq!((r.status, r.body.len(), r.cut), (200, 0, None));
    }
}
