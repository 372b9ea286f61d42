#!/usr/bin/env python3
"""Crafted TCP segments for the namespace tests of issue 11 (tests/tests/crafted.rs).

Runs inside the client namespace (`ip netns exec <client> python3 craft.py MODE ...`). Each mode
opens (or, for `spoof`, fakes) a connection to the primary and injects segments that the
primary's Linux TCP stack refuses or ignores, next to genuine requests written through a real
socket. The mirror must never get a request the primary did not process.

Modes:
  inject     A kept-alive socket: `--before` requests, then one crafted segment (`--kind`):
             badsum  a copy of the next request's bytes with other content and a bad checksum,
             noack   the same with a correct checksum but no ACK flag (Linux drops it),
             rst     an RST far out of the window, sent in the middle of a POST body;
             then the genuine requests (`--after`), each answered before the next.
  midstream  A POST with a large body: the head and the first half, then "HALF-SENT" on stderr,
             then waits for `--go-file` to exist (the test starts the daemon meanwhile), sends the
             rest of the body (which holds request lines) and a next request on the same socket.
  spoof      SYN, ACK and data from `--src`, an address nobody in the namespace owns: the
             primary's answers can never reach it, so its TCP never accepts the data.

How the sequence numbers are learnt: the socket is bound before connecting, a sniffer on the
client's interface records the connection's packets, and the primary's SYN-ACK gives both initial
sequence numbers; the script counts the bytes it sent and read, and before every injection checks
that the primary acknowledged exactly those (so the crafted segment lands where the socket's next
bytes will). Crafted segments leave with `sendp` on the client's interface, to the MAC the
SYN-ACK came from (or, for `spoof`, the one ARP gives).

Prints one JSON object on stdout (the responses the socket read, what was injected). Exit codes:
0 done; 2 bad arguments; 3 could not learn or confirm the connection's sequence numbers in time;
4 connection or HTTP error; 5 an address outside 10.77.0.0/24 (the tests' namespaces); 6 scapy
missing.
"""

import argparse
import ipaddress
import json
import os
import random
import socket
import sys
import threading
import time

EXIT_USAGE = 2
EXIT_SEQ = 3
EXIT_HTTP = 4
EXIT_ADDRESS = 5
EXIT_SCAPY = 6

# Every address this script sends to, or sends from, must be inside the tests' namespaces.
ALLOWED = ipaddress.ip_network("10.77.0.0/24")

SNIFF_TIMEOUT = 5.0
HTTP_TIMEOUT = 10.0


class Fail(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def log(msg):
    print(f"craft.py: {msg}", file=sys.stderr, flush=True)


try:
    import logging

    logging.getLogger("scapy").setLevel(logging.ERROR)
    from scapy.all import ARP, IP, TCP, Ether, AsyncSniffer, conf, get_if_hwaddr, getmacbyip, sendp
except ImportError as e:  # pragma: no cover - depends on the machine
    log(f"scapy is not importable ({e}): `cargo xtask setup` installs it (pip install scapy==2.6.1)")
    sys.exit(EXIT_SCAPY)

conf.verb = 0


def check_address(addr, what):
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise Fail(EXIT_ADDRESS, f"{what} {addr!r} is not an IPv4 address")
    if ip not in ALLOWED:
        raise Fail(EXIT_ADDRESS, f"{what} {addr} is outside {ALLOWED}: refusing to send anything")


def request(method, path, body=b"", host="httpbin:8000"):
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if body or method in ("POST", "PUT"):
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


class Reader:
    """Reads HTTP/1.1 responses (the test server always sends Content-Length) from a socket."""

    def __init__(self, sock):
        self.sock, self.buf, self.received = sock, b"", 0

    def _fill(self):
        try:
            chunk = self.sock.recv(65536)
        except OSError as e:
            raise Fail(EXIT_HTTP, f"reading a response: {e}")
        if not chunk:
            raise Fail(EXIT_HTTP, "the primary closed the connection mid-response")
        self.received += len(chunk)
        self.buf += chunk

    def response(self, path):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ")[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            length = int(headers.get("content-length", "0"))
        except (IndexError, ValueError):
            raise Fail(EXIT_HTTP, f"bad response head {head!r}")
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return {"path": path, "status": status, "served_by": headers.get("x-served-by", ""), "body": body.decode("utf-8", "replace")}


class Conn:
    """A real TCP connection from the client namespace, with its packets sniffed."""

    def __init__(self, iface, src, dst, port):
        self.iface, self.src, self.dst, self.port = iface, src, dst, port
        self.lock = threading.Lock()
        self.packets = []  # (direction, Ether/IP/TCP packet); "in" = from the primary
        self.sent = 0
        self.received = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind((src, 0))
        self.sport = self.sock.getsockname()[1]
        started = threading.Event()
        self.sniffer = AsyncSniffer(
            iface=iface,
            store=False,
            prn=self._record,
            started_callback=started.set,
        )
        self.sniffer.start()
        if not started.wait(SNIFF_TIMEOUT):
            raise Fail(EXIT_SEQ, f"sniffer on {iface} did not start within {SNIFF_TIMEOUT}s")
        self.sock.settimeout(HTTP_TIMEOUT)
        self.reader = Reader(self.sock)
        try:
            self.sock.connect((dst, port))
        except OSError as e:
            raise Fail(EXIT_HTTP, f"connecting to {dst}:{port}: {e}")
        synack = self.wait_for(lambda d, p: d == "in" and (p[TCP].flags & 0x12) == 0x12, "the SYN-ACK")
        self.client_isn = (synack[TCP].ack - 1) & 0xFFFFFFFF
        self.server_isn = synack[TCP].seq
        self.server_mac = synack[Ether].src
        self.wscale = dict((k, v) for k, v in synack[TCP].options if isinstance(k, str)).get("WScale", 0)

    def _record(self, pkt):
        if IP not in pkt or TCP not in pkt:
            return
        ip, tcp = pkt[IP], pkt[TCP]
        if (ip.src, tcp.sport, ip.dst, tcp.dport) == (self.dst, self.port, self.src, self.sport):
            direction = "in"
        elif (ip.src, tcp.sport, ip.dst, tcp.dport) == (self.src, self.sport, self.dst, self.port):
            direction = "out"
        else:
            return
        with self.lock:
            self.packets.append((direction, pkt))

    def wait_for(self, pred, what):
        deadline = time.monotonic() + SNIFF_TIMEOUT
        while time.monotonic() < deadline:
            with self.lock:
                for d, p in self.packets:
                    if pred(d, p):
                        return p
            time.sleep(0.01)
        raise Fail(EXIT_SEQ, f"no {what} sniffed on {self.iface} within {SNIFF_TIMEOUT}s")

    def next_seq(self):
        """The client's next sequence number (the primary's next expected byte)."""
        return (self.client_isn + 1 + self.sent) & 0xFFFFFFFF

    def next_ack(self):
        return (self.server_isn + 1 + self.received) & 0xFFFFFFFF

    def confirm_acked(self):
        """Waits until the primary acknowledged every byte sent: the crafted segment then goes
        exactly where the socket's next bytes will. Returns the primary's last advertised window
        (scaled)."""
        want = self.next_seq()
        p = self.wait_for(
            lambda d, p: d == "in" and (p[TCP].flags & 0x10) and p[TCP].ack == want,
            f"acknowledgement of seq {want} (client ISN {self.client_isn} + 1 + {self.sent} bytes sent)",
        )
        with self.lock:
            last = [p for d, p in self.packets if d == "in"][-1]
        return last[TCP].window << self.wscale

    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise Fail(EXIT_HTTP, f"sending: {e}")
        self.sent += len(data)

    def response(self, path):
        r = self.reader.response(path)
        self.received = self.reader.received
        return r

    def exchange(self, data, path):
        self.send(data)
        return self.response(path)

    def craft(self, flags, seq, payload=b"", ack=None, chksum=None):
        tcp = TCP(sport=self.sport, dport=self.port, seq=seq, flags=flags, window=502)
        if ack is not None:
            tcp.ack = ack
        pkt = IP(src=self.src, dst=self.dst) / tcp / payload
        if chksum is not None:
            good = IP(bytes(pkt))[TCP].chksum
            pkt[TCP].chksum = chksum if chksum != good else (chksum ^ 0xFFFF)
        frame = Ether(src=get_if_hwaddr(self.iface), dst=self.server_mac) / pkt
        sendp(frame, iface=self.iface)
        return {
            "flags": str(tcp.flags),
            "seq": seq,
            "ack": ack,
            "len": len(payload),
            "chksum": None if chksum is None else pkt[TCP].chksum,
            "payload": payload.decode("latin-1"),
        }

    def close(self):
        try:
            self.sock.close()
        finally:
            if self.sniffer.running:
                self.sniffer.stop()


def mode_inject(a):
    conn = Conn(a.iface, a.src, a.dst, a.port)
    out = {"sport": conn.sport, "client_isn": conn.client_isn, "server_isn": conn.server_isn, "responses": []}
    try:
        for path in a.before:
            out["responses"].append(conn.exchange(request("GET", path), path))
        if a.kind in ("badsum", "noack"):
            conn.confirm_acked()
            payload = request("GET", a.inject_path, host="x")
            if a.kind == "badsum":
                out["injected"] = conn.craft("PA", conn.next_seq(), payload, ack=conn.next_ack(), chksum=0xDEAD)
            else:
                out["injected"] = conn.craft("P", conn.next_seq(), payload)
            time.sleep(0.05)  # on the wire (and in the primary's classifier) before the genuine bytes
            for path in a.after:
                out["responses"].append(conn.exchange(request("GET", path), path))
        elif a.kind == "rst":
            # A POST whose body holds request lines on both sides of the RST.
            line = f"\r\n{a.phantom} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            second = (b"b" * 1000 + line) * 2
            body = (b"a" * 1000 + line) * 2 + second
            data = request("POST", a.post_path, body)
            cut = len(data) - len(second)
            conn.send(data[:cut])
            window = conn.confirm_acked()
            offset = a.rst_offset
            if offset <= window:
                # Still out of the window however far the primary opened it.
                offset = window + a.rst_offset
            out["window"] = window
            out["injected"] = conn.craft("R", (conn.next_seq() + offset) & 0xFFFFFFFF)
            time.sleep(0.05)
            conn.send(data[cut:])
            out["responses"].append(conn.response(a.post_path))
            out["post_body_len"] = len(body)
            for path in a.after:
                out["responses"].append(conn.exchange(request("GET", path), path))
        else:
            raise Fail(EXIT_USAGE, f"unknown --kind {a.kind}")
    finally:
        conn.close()
    return out


def mode_midstream(a):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(HTTP_TIMEOUT)
    sock.bind((a.src, 0))
    try:
        sock.connect((a.dst, a.port))
    except OSError as e:
        raise Fail(EXIT_HTTP, f"connecting to {a.dst}:{a.port}: {e}")
    line = f"\r\n{a.phantom} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    half = a.body_bytes // 2
    first = bytes(b"x" * half)
    # The second half: request lines at its start and every 64 KiB, filler between.
    rest = bytearray()
    while len(rest) < a.body_bytes - half:
        rest += line + b"y" * (65536 - len(line))
    rest = bytes(rest[: a.body_bytes - half])
    body = first + rest
    data = request("POST", a.post_path, body)
    cut = len(data) - len(rest)
    try:
        sock.sendall(data[:cut])
        log("HALF-SENT")
        deadline = time.monotonic() + a.go_timeout
        while not os.path.exists(a.go_file):
            if time.monotonic() > deadline:
                raise Fail(EXIT_USAGE, f"{a.go_file} did not appear within {a.go_timeout}s")
            time.sleep(0.02)
        sock.sendall(data[cut:])
        sock.sendall(request("GET", a.next_path))
        reader = Reader(sock)
        responses = [reader.response(a.post_path), reader.response(a.next_path)]
    except OSError as e:
        raise Fail(EXIT_HTTP, f"midstream exchange: {e}")
    finally:
        sock.close()
    return {"responses": responses, "post_body_len": len(body), "body_after_start": len(rest)}


def mode_spoof(a):
    check_address(a.spoof_src, "--spoof-src")
    mac = getmacbyip(a.dst)
    if not mac:
        raise Fail(EXIT_SEQ, f"no ARP answer from {a.dst}")
    # Nobody in this namespace may own the spoofed address: its answers must have nowhere to go.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind((a.spoof_src, 0))
        raise Fail(EXIT_ADDRESS, f"{a.spoof_src} is an address of this namespace: not a spoofed source")
    except OSError:
        pass
    finally:
        probe.close()
    # What the primary sends towards the spoofed address: ARP requests for it (unanswered), and,
    # should one ever be answered, TCP segments (its SYN-ACK): counted, for the test to check.
    towards = {"arp": 0, "tcp": 0}

    def record(pkt):
        if ARP in pkt and pkt[ARP].op == 1 and pkt[ARP].pdst == a.spoof_src:
            towards["arp"] += 1
        elif IP in pkt and TCP in pkt and pkt[IP].dst == a.spoof_src:
            towards["tcp"] += 1

    started = threading.Event()
    sniffer = AsyncSniffer(iface=a.iface, store=False, prn=record, started_callback=started.set)
    sniffer.start()
    if not started.wait(SNIFF_TIMEOUT):
        raise Fail(EXIT_SEQ, f"sniffer on {a.iface} did not start within {SNIFF_TIMEOUT}s")
    sport = random.randint(20000, 60000)
    isn = random.randint(0, 0xFFFFFFFF)
    guess = random.randint(0, 0xFFFFFFFF)  # the primary's ISN is never seen: its SYN-ACK cannot arrive
    payload = request("GET", a.path)
    frame = Ether(src=get_if_hwaddr(a.iface), dst=mac) / IP(src=a.spoof_src, dst=a.dst)
    base = TCP(sport=sport, dport=a.port, window=64240)
    sent = []
    try:
        for flags, seq, ack, data in [
            ("S", isn, None, b""),
            ("A", isn + 1, guess, b""),
            ("PA", isn + 1, guess, payload),
            ("PA", isn + 1, guess, payload),  # and a retransmission of it
        ]:
            tcp = base.copy()
            tcp.flags, tcp.seq = flags, seq & 0xFFFFFFFF
            if ack is not None:
                tcp.ack = ack
            sendp(frame / tcp / data, iface=a.iface)
            sent.append({"flags": flags, "seq": seq & 0xFFFFFFFF, "len": len(data)})
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        sniffer.stop()
    return {"sport": sport, "sent": sent, "payload_len": len(payload), "towards_spoofed": towards}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["inject", "midstream", "spoof"])
    p.add_argument("--iface", default="eth0")
    p.add_argument("--src", default="10.77.0.1", help="the client's own address")
    p.add_argument("--dst", default="10.77.0.2", help="the primary")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--kind", choices=["badsum", "noack", "rst"], help="inject: what to craft")
    p.add_argument("--before", action="append", default=[], help="inject: genuine GETs before the crafted segment")
    p.add_argument("--after", action="append", default=[], help="inject: genuine GETs after it")
    p.add_argument("--inject-path", default="/INSERTED", help="inject: the crafted copy's request target")
    p.add_argument("--post-path", default="/post", help="inject rst, midstream: the POST's target")
    p.add_argument("--phantom", default="DELETE /PHANTOM HTTP/1.1", help="request line hidden in the body (without HTTP/1.1)")
    p.add_argument("--rst-offset", type=int, default=100000, help="inject rst: seq = next + this")
    p.add_argument("--body-bytes", type=int, default=1 << 20, help="midstream: the POST body's size")
    p.add_argument("--go-file", help="midstream: send the rest once this file exists")
    p.add_argument("--go-timeout", type=float, default=60.0)
    p.add_argument("--next-path", default="/next", help="midstream: the request after the POST")
    p.add_argument("--spoof-src", default="10.77.0.99", help="spoof: the source address nobody owns")
    p.add_argument("--path", default="/spoofed", help="spoof: the request target")
    a = p.parse_args()
    # argparse's --phantom default carries the version; strip it so the line is built once.
    a.phantom = a.phantom.removesuffix(" HTTP/1.1")
    try:
        check_address(a.src, "--src")
        check_address(a.dst, "--dst")
        if a.mode == "inject":
            if not a.kind:
                raise Fail(EXIT_USAGE, "inject needs --kind")
            out = mode_inject(a)
        elif a.mode == "midstream":
            if not a.go_file:
                raise Fail(EXIT_USAGE, "midstream needs --go-file")
            out = mode_midstream(a)
        else:
            out = mode_spoof(a)
    except Fail as e:
        log(f"error: {e}")
        return e.code
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
