"""`leakcheck`: an independent oracle that no private value of a capture survived sanitizing.

It deliberately shares no code with the engine's walker: it parses with dpkt, with a small
manual layout decoder of its own, and scans raw bytes, so a blind spot of the engine's parser
cannot hide its own leaks.

**Private values** are learned from the ORIGINAL capture:

* every address inside the ``private`` prefixes that dpkt (plus small decoders for what dpkt
  leaves alone: ICMP quotes, ND, DHCP, tunnels, IPv4 embedded in IPv6) finds, and every 4-byte
  or 16-byte window inside a private prefix wherever an address can sit (address fields,
  options, payloads, trailers, undecoded bytes: anything but fixed header fields, whose
  counters and checksums would spell addresses by chance), plus addresses written as text or as
  DNS reverse names anywhere;
* every unicast MAC address (Ethernet, SLL/SLL2, ARP, ND options, DHCP), the MACs given by the
  caller, and the MACs inside EUI-64 interface identifiers of private IPv6 addresses.

**Every form** of every private value is then looked for in every byte of the SANITIZED capture
(see FORMS): binary forms with vectorized scans, text forms by parsing what reads as an
address. A record cut inside a copy of a private value is a ``partial`` leak: a copy of one of
its own values (2 bytes or more), an address field the original's cut already ended in, or any
value's bytes (3+), text (6+ characters) or reverse name (4+) that the sanitizer kept from the
original outside fixed header fields.

One rule keeps the oracle usable on real captures: with tens of thousands of private IPv4
addresses, 4-byte counters and checksums spell one of them (or its inverse, or it plus one)
every few thousand packets. So a binary IPv4 form of an address of *another* packet counts as
a leak only where an address can sit (as above); across or inside fixed header fields (ports,
sequence numbers, IDs, checksums) it is counted as a coincidence and reported as such. A
packet's own addresses, and every longer form, are leaks anywhere.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import dpkt
import numpy as np

from bridge.pcap import RECORD_HEADER_LEN, iter_packets, read_pcap, record_offsets

Address = tuple[str, bytes]  # (where in the packet, 4 or 16 raw bytes)
T = TypeVar("T")

_ICMP_ERRORS = (3, 4, 5, 11, 12)
_ICMP6_ERRORS = (1, 2, 3, 4)
_MAX_DEPTH = 4  # nested quotes and tunnels followed

FORMS = {
    "raw": "the value's bytes (address, MAC)",
    "inverted": "IPv4 bits inverted (Teredo client)",
    "plus1": "IPv4 + 1 (a TCP ack answering a sequence number that held the address)",
    "nat64": "IPv4 split around the u octet of a /40, /48 or /56 NAT64 prefix (RFC 6052)",
    "text": "dotted or dashed quad, IPv6 text (any valid spelling), any case",
    "text6": "an IPv6 text embedding a private IPv4 address (::ffff:a01:203, 2002:a01:203::1, ...)",
    "ptr": "DNS reverse-name labels in wire form (in-addr.arpa octets, ip6.arpa nibbles)",
    "ptr-text": "DNS reverse name as dotted text",
    "prefix": "a private IPv6 prefix's whole bytes (prefixes of 32 bits or more)",
    "prefix-text": "a private IPv6 prefix's leading hex groups as text",
    "ptr-prefix": "a private prefix's reverse zone (ip6.arpa nibbles, in-addr.arpa octets)",
    "eui64": "a MAC as an EUI-64 interface identifier",
    "mac-text": "MAC as text (aa:bb.., aa-bb.., aabb.ccdd.eeff, aabbccddeeff), any case",
    "eui64-text": "EUI-64 interface identifier as IPv6 hex groups",
    "partial": "a record cut inside a copy of a private value (its bytes, text or reverse name)",
}


# --- dpkt: the addresses and MACs of one original packet ---------------------------------


def _embedded_v4(addr6: bytes) -> list[bytes]:
    """IPv4 addresses an IPv6 address can embed (mapped, compatible, SIIT, ISATAP, 6to4,
    Teredo, and NAT64 with every RFC 6052 prefix length of the local-use 64:ff9b:1::/48)."""
    if addr6[:10] == bytes(10) and addr6[10:12] in (b"\xff\xff", b"\x00\x00"):
        return [addr6[12:]]  # mapped ::ffff:a.b.c.d, compatible ::a.b.c.d
    if addr6[:12] == bytes(8) + b"\xff\xff\x00\x00":
        return [addr6[12:]]  # SIIT ::ffff:0:a.b.c.d
    if addr6[8:12] in (b"\x00\x00\x5e\xfe", b"\x02\x00\x5e\xfe"):
        return [addr6[12:]]  # ISATAP
    if addr6[:12] == b"\x00\x64\xff\x9b" + bytes(8):
        return [addr6[12:]]  # NAT64 well-known prefix
    if addr6[:6] == b"\x00\x64\xff\x9b\x00\x01":
        return [addr6[4:8], addr6[5:8] + addr6[9:10], addr6[6:8] + addr6[9:11], addr6[7:8] + addr6[9:12],
                addr6[9:13], addr6[12:]]
    if addr6[:2] == b"\x20\x02":
        return [addr6[2:6]]
    if addr6[:4] == b"\x20\x01\x00\x00":
        return [addr6[4:8], bytes(b ^ 0xFF for b in addr6[12:16])]
    return []


class _Collector:
    """Walks one packet with dpkt (and small manual decoders) and collects addresses and MACs."""

    def __init__(self) -> None:
        self.found: list[Address] = []
        self.macs: list[bytes] = []

    def add(self, where: str, raw: bytes) -> None:
        if len(raw) not in (4, 16):
            return  # a slot cut by the capture or by a length that claims too much
        self.found.append((where, raw))
        if len(raw) == 16:
            self.found += [(f"{where}/embedded", v4) for v4 in _embedded_v4(raw)]

    def frame(self, linktype: int, data: bytes) -> bool:
        """Collect from one frame; False when dpkt could not decode all of it."""
        try:
            if linktype == 1:
                self.ether(dpkt.ethernet.Ethernet(data), "eth")
            elif linktype in (113, 276):
                sll = dpkt.sll.SLL(data) if linktype == 113 else dpkt.sll2.SLL2(data)
                self.macs.append(bytes(sll.hdr[:sll.hlen]))
                self.l3(sll.data, "sll")
            elif linktype == 0:
                self.l3(dpkt.loopback.Loopback(data).data, "null")
            elif data and data[0] >> 4 == 6:
                self.ip6(data, "ip")
            else:
                self.ip4(data, "ip")
        except Exception:  # noqa: BLE001 - dpkt raises whatever a malformed packet makes it raise
            return False
        return True

    def ether(self, frame: dpkt.Packet, where: str, depth: int = 0) -> None:
        self.macs += [bytes(frame.dst), bytes(frame.src)]
        self.l3(frame.data, where, depth)

    def l3(self, payload: object, where: str, depth: int = 0) -> None:
        for _ in range(4):  # PPPoE -> PPP -> IP and similar wrappers
            if isinstance(payload, (dpkt.arp.ARP, dpkt.ip.IP, dpkt.ip6.IP6)) or not isinstance(payload, dpkt.Packet):
                break
            payload = payload.data
        if isinstance(payload, dpkt.arp.ARP):
            if payload.hln == 6:
                self.macs += [bytes(payload.sha), bytes(payload.tha)]
            if payload.pln == 4:
                self.add(f"{where}.arp.spa", payload.spa)
                self.add(f"{where}.arp.tpa", payload.tpa)
        elif isinstance(payload, dpkt.ip.IP):
            self.ip4(payload, f"{where}.ip", depth)
        elif isinstance(payload, dpkt.ip6.IP6):
            self.ip6(payload, f"{where}.ip6", depth)

    def ip4(self, ip: dpkt.Packet | bytes, where: str, depth: int = 0) -> None:
        if isinstance(ip, (bytes, bytearray)):
            raw = bytes(ip)
            try:
                ip = dpkt.ip.IP(raw)
            except (dpkt.UnpackError, struct.error):
                # truncated quote: take whatever address bytes are there
                if len(raw) >= 16:
                    self.add(f"{where}.src", raw[12:16])
                if len(raw) >= 20:
                    self.add(f"{where}.dst", raw[16:20])
                return
        self.add(f"{where}.src", ip.src)
        self.add(f"{where}.dst", ip.dst)
        opts = bytes(ip.opts)
        i = 0
        while i < len(opts) and opts[i] != 0:
            if opts[i] == 1:
                i += 1
                continue
            if i + 1 >= len(opts) or opts[i + 1] < 2:
                break
            t, ln = opts[i], opts[i + 1]
            if t in (7, 131, 137):
                for a in range(i + 3, i + ln - 3, 4):
                    self.add(f"{where}.opt{t}", opts[a:a + 4])
            elif t == 68 and ln >= 4 and opts[i + 3] & 15 in (1, 3):
                for a in range(i + 4, i + ln - 3, 8):
                    self.add(f"{where}.opt68", opts[a:a + 4])
            i += ln
        self.transport(ip.p, ip.data, where, depth)

    def ip6(self, ip: dpkt.Packet | bytes, where: str, depth: int = 0) -> None:
        if isinstance(ip, (bytes, bytearray)):
            raw = bytes(ip)
            try:
                ip = dpkt.ip6.IP6(raw)
            except (dpkt.UnpackError, struct.error):
                if len(raw) >= 24:
                    self.add(f"{where}.src", raw[8:24])
                if len(raw) >= 40:
                    self.add(f"{where}.dst", raw[24:40])
                return
        self.add(f"{where}.src", ip.src)
        self.add(f"{where}.dst", ip.dst)
        for hdr in getattr(ip, "extension_hdrs", {}).values():
            for a in getattr(hdr, "addresses", None) or []:
                self.add(f"{where}.rh", a)
        proto = getattr(ip, "p", None)  # dpkt leaves it unset after a header it cannot step over (ESP)
        if proto is not None:
            self.transport(proto, ip.data, where, depth)

    def transport(self, proto: int, data: dpkt.Packet | bytes, where: str, depth: int) -> None:
        if depth > _MAX_DEPTH:
            return
        raw = bytes(data)
        if proto == 1 and len(raw) >= 8:
            t = raw[0]
            if t == 5:
                self.add(f"{where}.icmp.gw", raw[4:8])
            if t in _ICMP_ERRORS and len(raw) > 8:
                self.ip4(raw[8:], f"{where}.icmp.quote", depth + 1)
            if t == 9:
                for k in range(raw[4]):
                    a = 8 + k * raw[5] * 4
                    if a + 4 <= len(raw):
                        self.add(f"{where}.icmp.router", raw[a:a + 4])
        elif proto == 58 and len(raw) >= 8:
            self.icmp6(raw, where, depth)
        elif proto == 4:
            self.ip4(raw, f"{where}.ipip", depth + 1)
        elif proto == 41:
            self.ip6(raw, f"{where}.6in4", depth + 1)
        elif proto == 47:
            gre = dpkt.gre.GRE(raw)
            inner = gre.data
            if isinstance(inner, dpkt.ip.IP):
                self.ip4(inner, f"{where}.gre", depth + 1)
            elif isinstance(inner, dpkt.ip6.IP6):
                self.ip6(inner, f"{where}.gre", depth + 1)
            elif gre.p == 0x6558:
                self.ether(dpkt.ethernet.Ethernet(bytes(inner)), f"{where}.gre.eth", depth + 1)
        elif proto == 17 and len(raw) >= 8:
            self.udp(raw, where, depth)

    def udp(self, raw: bytes, where: str, depth: int) -> None:
        ports = struct.unpack_from("!HH", raw)
        body = raw[8:]
        if 3544 in ports:
            if body[:2] == b"\x00\x00" and len(body) >= 8:
                self.add(f"{where}.teredo.origin", bytes(b ^ 0xFF for b in body[4:8]))
                body = body[8:]
            if body and body[0] >> 4 == 6:
                self.ip6(body, f"{where}.teredo", depth + 1)
        elif 4789 in ports and len(body) > 8:
            self.ether(dpkt.ethernet.Ethernet(body[8:]), f"{where}.vxlan.eth", depth + 1)
        elif 6081 in ports and len(body) >= 8:
            inner, proto = body[8 + (body[0] & 0x3F) * 4:], struct.unpack_from("!H", body, 2)[0]
            if proto == 0x6558:
                self.ether(dpkt.ethernet.Ethernet(inner), f"{where}.geneve.eth", depth + 1)
            elif inner:
                (self.ip6 if inner[0] >> 4 == 6 else self.ip4)(inner, f"{where}.geneve", depth + 1)
        elif 2152 in ports and len(body) >= 8 and body[1] == 255:
            inner = _gtp_payload(body)
            if inner:
                (self.ip6 if inner[0] >> 4 == 6 else self.ip4)(inner, f"{where}.gtp", depth + 1)
        elif ports[0] in (67, 68) or ports[1] in (67, 68):
            self.dhcp(body, where)
        elif ports[0] in (546, 547) or ports[1] in (546, 547):
            self.dhcp6(body)

    def dhcp(self, bootp: bytes, where: str) -> None:
        if len(bootp) < 236:
            return
        for name, off in (("ciaddr", 12), ("yiaddr", 16), ("siaddr", 20), ("giaddr", 24)):
            self.add(f"{where}.dhcp.{name}", bootp[off:off + 4])
        if bootp[1] == 1 and bootp[2] == 6:
            self.macs.append(bootp[28:34])
        q = 240
        while q + 2 <= len(bootp) and bootp[q] != 255:
            if bootp[q] == 0:
                q += 1
                continue
            code, ln = bootp[q], bootp[q + 1]
            if code == 61 and ln == 7 and bootp[q + 2] == 1:  # client identifier: hardware type 1 + MAC
                self.macs.append(bootp[q + 3:q + 9])
            q += 2 + ln

    def dhcp6(self, msg: bytes) -> None:
        q = 4
        while q + 4 <= len(msg):
            code, ln = struct.unpack_from("!HH", msg, q)
            duid = msg[q + 4:q + 4 + ln]
            if code in (1, 2) and len(duid) >= 4 and duid[2:4] == b"\x00\x01":  # DUID of Ethernet hardware
                if duid[:2] == b"\x00\x01" and len(duid) >= 14:
                    self.macs.append(duid[8:14])  # DUID-LLT
                elif duid[:2] == b"\x00\x03" and len(duid) >= 10:
                    self.macs.append(duid[4:10])  # DUID-LL
            q += 4 + ln

    def icmp6(self, raw: bytes, where: str, depth: int) -> None:
        t = raw[0]
        if t in _ICMP6_ERRORS and len(raw) > 8:
            self.ip6(raw[8:], f"{where}.icmp6.quote", depth + 1)
            return
        if t in (130, 131, 132) and len(raw) >= 24:
            self.add(f"{where}.mld", raw[8:24])
            for a in range(28, len(raw) - 15, 16):
                self.add(f"{where}.mld.src", raw[a:a + 16])
        if t == 143:
            a = 8
            for _ in range(struct.unpack_from("!H", raw, 6)[0]):
                if a + 20 > len(raw):
                    break
                self.add(f"{where}.mld2.group", raw[a + 4:a + 20])
                nsrc, aux = struct.unpack_from("!H", raw, a + 2)[0], raw[a + 1] * 4
                for k in range(nsrc):
                    if a + 36 + 16 * k <= len(raw):
                        self.add(f"{where}.mld2.src", raw[a + 20 + 16 * k:a + 36 + 16 * k])
                a += 20 + 16 * nsrc + aux
        starts = {133: 8, 134: 16, 135: 24, 136: 24, 137: 40}
        if t in (135, 136, 137) and len(raw) >= 24:
            self.add(f"{where}.nd.target", raw[8:24])
        if t == 137 and len(raw) >= 40:
            self.add(f"{where}.nd.dest", raw[24:40])
        q = starts.get(t)
        while q is not None and q + 2 <= len(raw) and raw[q + 1]:
            ot, ol = raw[q], raw[q + 1] * 8
            if ot in (1, 2) and ol == 8 and q + 8 <= len(raw):
                self.macs.append(raw[q + 2:q + 8])
            elif ot == 3 and ol == 32 and q + 32 <= len(raw):
                self.add(f"{where}.nd.prefix", raw[q + 16:q + 32])
            elif ot == 24 and ol == 24 and q + 24 <= len(raw):
                self.add(f"{where}.nd.route", raw[q + 8:q + 24])
            elif ot == 25:
                for a in range(q + 8, min(q + ol, len(raw)) - 15, 16):
                    self.add(f"{where}.nd.rdnss", raw[a:a + 16])
            elif ot == 4:
                self.ip6(raw[q + 8:q + ol], f"{where}.nd.redirected", depth + 1)
            q += ol


def _gtp_payload(gtp: bytes) -> bytes:
    """The T-PDU of a GTP-U message: after the 8-byte header, the optional 4 bytes and the
    extension headers they announce."""
    if not gtp[0] & 7:
        return gtp[8:]
    q, nxt = 12, gtp[11] if len(gtp) >= 12 else 0
    for _ in range(8):
        if not nxt or q >= len(gtp) or not gtp[q]:
            break
        ln = gtp[q] * 4
        nxt = gtp[q + ln - 1] if q + ln <= len(gtp) else 0
        q += ln
    return gtp[q:]


def addresses(linktype: int, data: bytes) -> list[Address]:
    """Every address dpkt (plus small manual decoders) finds in one packet."""
    c = _Collector()
    c.frame(linktype, data)
    return c.found


# --- the layout decoder: which bytes are fixed fields, address fields, or free-form ----------

FIXED, ADDR, OPAQUE = 0, 1, 2  # what a region is: a fixed non-address field, an address, free-form bytes
Region = tuple[int, int, int, str]  # (start, end, kind, name); end may pass a capture cut
_UNBOUNDED = 1 << 62
_PAD = 64  # beyond the farthest byte a header field is read from, relative to the cursor


class _Stop(Exception):
    """The decoder reached the end of the captured bytes."""


class _Layout:
    """Splits one packet into contiguous regions by a manual decode (bounded, never trusted).

    Regions are appended at a cursor, each cut at the end its enclosing header declares; the
    last one may extend past a capture cut, which is how a truncated address field is seen.
    Header fields are read from the bytes padded with zeros, so a header cut by the capture
    still lays out the fields whose first bytes are there.
    """

    def __init__(self, data: bytes) -> None:
        self.d = data + bytes(_PAD)
        self.n = len(data)
        self.at = 0
        self.regions: list[Region] = []

    def add(self, length: int, kind: int, name: str, end: int) -> None:
        stop = min(self.at + max(length, 0), end)
        if stop > self.at:
            self.regions.append((self.at, stop, kind, name))
            self.at = stop
        if self.at >= self.n:
            raise _Stop

    def fill(self, kind: int, name: str, end: int) -> None:
        self.add(min(end, self.n) - self.at, kind, name, end)

    def u16(self, off: int) -> int:
        return struct.unpack_from("!H", self.d, self.at + off)[0]

    def link(self, linktype: int) -> None:
        d, end = self.d, _UNBOUNDED
        if linktype == 1:
            self.ethernet(end, "", 0)
        elif linktype == 113:
            halen = min(self.u16(4), 8)
            self.add(6, FIXED, "sll", end)
            self.add(halen, ADDR, "sll.addr", end)
            self.add(8 - halen, FIXED, "sll", end)
            proto = self.u16(0)
            self.add(2, FIXED, "sll", end)
            self.ethertype(proto, end, "", 0)
        elif linktype == 276:
            proto, halen = self.u16(0), min(d[11], 8)
            self.add(12, FIXED, "sll2", end)
            self.add(halen, ADDR, "sll2.addr", end)
            self.add(8 - halen, FIXED, "sll2", end)
            self.ethertype(proto, end, "", 0)
        elif linktype == 0:
            self.add(4, FIXED, "null", end)
            self.ip(end, "", 0)
        elif linktype in (12, 14, 101, 228, 229):
            self.ip(end, "", 0)

    def ethernet(self, end: int, p: str, depth: int) -> None:
        self.add(6, ADDR, p + "eth.dst", end)
        self.add(6, ADDR, p + "eth.src", end)
        et = self.u16(0)
        self.add(2, FIXED, p + "eth", end)
        while et in (0x8100, 0x88A8, 0x9100):
            et = self.u16(2)
            self.add(4, FIXED, p + "vlan", end)
        self.ethertype(et, end, p, depth)

    def ethertype(self, et: int, end: int, p: str, depth: int) -> None:
        d = self.d
        if et == 0x0800:
            self.ip4(end, p, depth)
        elif et == 0x86DD:
            self.ip6(end, p, depth)
        elif et in (0x0806, 0x8035):
            hln, pln = d[self.at + 4], d[self.at + 5]
            self.add(8, FIXED, p + "arp", end)
            for name, ln in (("sha", hln), ("spa", pln), ("tha", hln), ("tpa", pln)):
                self.add(ln, ADDR, f"{p}arp.{name}", end)
            self.fill(OPAQUE, p + "arp.padding", end)
        elif et in (0x8847, 0x8848):
            for _ in range(16):
                bottom = d[self.at + 2] & 1
                self.add(4, FIXED, p + "mpls", end)
                if bottom:
                    break
            self.ip(end, p, depth)
        elif et == 0x8864:
            self.add(6, FIXED, p + "pppoe", end)
            proto = self.u16(0)
            self.add(2, FIXED, p + "ppp", end)
            if proto in (0x0021, 0x0057):
                self.ip(end, p, depth)
        self.fill(OPAQUE, p + "l2.payload", end)

    def ip(self, end: int, p: str, depth: int) -> None:
        version = self.d[self.at] >> 4
        if version == 4:
            self.ip4(end, p, depth)
        elif version == 6:
            self.ip6(end, p, depth)
        self.fill(OPAQUE, p + "undecoded", end)

    def ip4(self, end: int, p: str, depth: int) -> None:
        d, off = self.d, self.at
        ihl, total = (d[off] & 15) * 4, self.u16(2)
        fragment, proto = self.u16(6) & 0x1FFF, d[off + 9]
        ip_end = min(off + total, end) if total >= 20 else end
        if ihl < 20:
            return
        self.add(12, FIXED, p + "ip4", ip_end)
        self.add(4, ADDR, p + "ip4.src", ip_end)
        self.add(4, ADDR, p + "ip4.dst", ip_end)
        self.ip4_options(min(off + ihl, ip_end), p)
        if fragment:
            self.fill(OPAQUE, p + "ip4.fragment", ip_end)
        else:
            self.l4(proto, ip_end, p, depth)
        self.fill(OPAQUE, p + "trailer", end)

    def ip4_options(self, end: int, p: str) -> None:
        """Options with address slots (record route, source routes, timestamps with addresses)
        laid out slot by slot; any other option, and bytes after EOL, are free-form."""
        d = self.d
        while self.at < end:
            t, ln = d[self.at], d[self.at + 1]
            if t == 1:
                self.add(1, FIXED, p + "ip4.opt", end)
                continue
            if t == 0 or ln < 2:
                break
            opt_end = min(self.at + ln, end)
            if t in (7, 131, 137):
                self.add(3, FIXED, p + "ip4.opt", opt_end)
                while self.at + 4 <= opt_end:
                    self.add(4, ADDR, f"{p}ip4.opt{t}", opt_end)
            elif t == 68 and ln >= 4:
                with_addresses = d[self.at + 3] & 15 in (1, 3)
                self.add(4, FIXED, p + "ip4.opt", opt_end)
                while self.at + 4 <= opt_end:
                    if with_addresses:
                        self.add(4, ADDR, p + "ip4.opt68", opt_end)
                    self.add(4, FIXED, p + "ip4.opt68.time", opt_end)
            self.fill(OPAQUE, p + "ip4.opt", opt_end)
        self.fill(OPAQUE, p + "ip4.options", end)

    def ip6(self, end: int, p: str, depth: int) -> None:
        d, off = self.d, self.at
        plen, nh = self.u16(4), d[off + 6]
        ip_end = min(off + 40 + plen, end) if plen else end
        self.add(8, FIXED, p + "ip6", ip_end)
        self.add(16, ADDR, p + "ip6.src", ip_end)
        self.add(16, ADDR, p + "ip6.dst", ip_end)
        for _ in range(8):
            if nh == 43 and d[self.at + 2] in (0, 2, 4):  # routing headers listing addresses
                nxt, ext_end = d[self.at], min(self.at + (d[self.at + 1] + 1) * 8, ip_end)
                self.add(8, FIXED, p + "ip6.rh", ext_end)
                while self.at + 16 <= ext_end:
                    self.add(16, ADDR, p + "ip6.rh.addr", ext_end)
                self.fill(OPAQUE, p + "ip6.rh", ext_end)
            elif nh in (0, 43, 60, 135, 139, 140):
                nxt, ln = d[self.at], (d[self.at + 1] + 1) * 8
                self.add(2, FIXED, p + "ip6.ext", ip_end)
                self.add(ln - 2, OPAQUE, p + "ip6.ext", ip_end)
            elif nh == 44:
                nxt, later = d[self.at], self.u16(2) & 0xFFF8
                self.add(8, FIXED, p + "ip6.frag", ip_end)
                if later:
                    self.fill(OPAQUE, p + "ip6.fragment", ip_end)
                    break
            elif nh == 51:
                nxt, ln = d[self.at], (d[self.at + 1] + 2) * 4
                self.add(12, FIXED, p + "ah", ip_end)
                self.add(ln - 12, OPAQUE, p + "ah.icv", ip_end)
            else:
                self.l4(nh, ip_end, p, depth)
                break
            nh = nxt
        self.fill(OPAQUE, p + "trailer", end)

    def l4(self, proto: int, end: int, p: str, depth: int) -> None:
        d = self.d
        nested = depth < _MAX_DEPTH
        if proto == 6:
            doff = (d[self.at + 12] >> 4) * 4
            self.add(20, FIXED, p + "tcp", end)
            self.add(doff - 20, OPAQUE, p + "tcp.options", end)
        elif proto == 17:
            ports = (self.u16(0), self.u16(2))
            self.add(8, FIXED, p + "udp", end)
            self.udp(ports, end, p, depth)
        elif proto == 1:
            self.icmp(end, p, depth)
        elif proto == 58:
            self.icmp6(end, p, depth)
        elif proto in (4, 41) and nested:
            self.ip(end, p + "inner.", depth + 1)
        elif proto == 47 and nested:
            self.gre(end, p, depth)
        elif proto == 50:
            self.add(8, FIXED, p + "esp", end)
        self.fill(OPAQUE, p + "payload", end)

    def icmp(self, end: int, p: str, depth: int) -> None:
        d, t = self.d, self.d[self.at]
        self.add(4, FIXED, p + "icmp", end)
        if t in (0, 8, 13, 14, 15, 16, 17, 18):
            self.add(4, FIXED, p + "icmp.id_seq", end)
            return  # the data that follows is the payload
        if t in _ICMP_ERRORS:
            self.add(4, ADDR if t == 5 else OPAQUE, p + ("icmp.gateway" if t == 5 else "icmp.rest"), end)
            if depth < _MAX_DEPTH:
                self.ip(end, p + "quote.", depth + 1)
        elif t == 9:  # router advertisement: (address, preference) entries of `size` words
            count, size = d[self.at], d[self.at + 1] * 4
            self.add(4, FIXED, p + "icmp.router_adv", end)
            for _ in range(count if size >= 4 else 0):
                self.add(4, ADDR, p + "icmp.router", end)
                self.add(size - 4, FIXED, p + "icmp.router.preference", end)
        self.fill(OPAQUE, p + "icmp.body", end)

    def icmp6(self, end: int, p: str, depth: int) -> None:
        d, t = self.d, self.d[self.at]
        self.add(4, FIXED, p + "icmp6", end)
        if t in (128, 129):
            self.add(4, FIXED, p + "icmp6.id_seq", end)
            return  # the data that follows is the payload
        if t in _ICMP6_ERRORS:
            self.add(4, FIXED if t in (2, 4) else OPAQUE, p + "icmp6.rest", end)
            if depth < _MAX_DEPTH:
                self.ip(end, p + "quote.", depth + 1)
        elif t in (133, 134, 135, 136, 137):
            self.add(12 if t == 134 else 4, FIXED, p + "nd", end)
            if t in (135, 136, 137):
                self.add(16, ADDR, p + "nd.target", end)
            if t == 137:
                self.add(16, ADDR, p + "nd.dest", end)
            self.nd_options(end, p, depth)
        elif t in (130, 131, 132):
            nsrc = self.u16(26) if t == 130 else 0
            self.add(4, FIXED, p + "mld", end)
            self.add(16, ADDR, p + "mld.group", end)
            self.add(4 if t == 130 else 0, FIXED, p + "mld", end)
            self.addresses(nsrc, end, p + "mld.src")
        elif t == 143:
            records = self.u16(2)
            self.add(4, FIXED, p + "mld2", end)
            for _ in range(records):
                if self.at >= end:
                    break
                aux, nsrc = d[self.at + 1] * 4, self.u16(2)
                self.add(4, FIXED, p + "mld2.record", end)
                self.add(16, ADDR, p + "mld2.group", end)
                self.addresses(nsrc, end, p + "mld2.src")
                self.add(aux, OPAQUE, p + "mld2.aux", end)
        self.fill(OPAQUE, p + "icmp6.body", end)

    def addresses(self, count: int, end: int, name: str) -> None:
        for _ in range(count):
            if self.at >= end:
                break
            self.add(16, ADDR, name, end)

    def nd_options(self, end: int, p: str, depth: int) -> None:
        d = self.d
        while self.at < end:
            ot, ol = d[self.at], d[self.at + 1] * 8
            if not ol:
                break
            opt_end = min(self.at + ol, end)
            if ot in (1, 2) and ol == 8:
                self.add(2, FIXED, p + "nd.opt", opt_end)
                self.add(6, ADDR, p + "nd.lladdr", opt_end)
            elif ot == 3 and ol == 32:
                self.add(16, FIXED, p + "nd.prefix_info", opt_end)
                self.add(16, ADDR, p + "nd.prefix", opt_end)
            elif ot == 25:
                self.add(8, FIXED, p + "nd.rdnss", opt_end)
                self.addresses((ol - 8) // 16, opt_end, p + "nd.rdnss.addr")
            elif ot == 5:
                self.add(8, FIXED, p + "nd.mtu", opt_end)
            elif ot == 4 and depth < _MAX_DEPTH:
                self.add(8, FIXED, p + "nd.redirected", opt_end)
                self.ip(opt_end, p + "quote.", depth + 1)
            self.fill(OPAQUE, p + "nd.opt", opt_end)
        self.fill(OPAQUE, p + "nd.opt", end)

    def gre(self, end: int, p: str, depth: int) -> None:
        flags, proto = self.u16(0), self.u16(2)
        self.add(4, FIXED, p + "gre", end)
        if flags & 0xC000:
            self.add(4, FIXED, p + "gre.checksum", end)
        if flags & 0x2000:
            self.add(4, OPAQUE, p + "gre.key", end)
        if flags & 0x1000:
            self.add(4, OPAQUE, p + "gre.seq", end)
        if flags & 7 == 1 and flags & 0x0080:  # enhanced GRE (PPTP) acknowledgment number
            self.add(4, OPAQUE, p + "gre.ack", end)
        self.tunnel(proto, end, p, depth)

    def tunnel(self, proto: int, end: int, p: str, depth: int) -> None:
        """The frame a tunnel header announces by EtherType."""
        if proto == 0x88BE:  # ERSPAN type II
            self.add(8, FIXED, p + "erspan", end)
            proto = 0x6558
        if proto == 0x6558:
            self.ethernet(end, p + "inner.", depth + 1)
        elif proto in (0x0800, 0x86DD):
            self.ip(end, p + "inner.", depth + 1)

    def udp(self, ports: tuple[int, int], end: int, p: str, depth: int) -> None:
        d = self.d
        if depth >= _MAX_DEPTH:
            return
        if 4789 in ports:
            self.add(8, FIXED, p + "vxlan", end)
            self.ethernet(end, p + "inner.", depth + 1)
        elif 6081 in ports:
            optlen, proto = (d[self.at] & 0x3F) * 4, self.u16(2)
            self.add(8, FIXED, p + "geneve", end)
            self.add(optlen, OPAQUE, p + "geneve.options", end)
            self.tunnel(proto, end, p, depth)
        elif 2152 in ports and d[self.at + 1] == 255:
            inner = _gtp_payload(d[self.at:min(end, self.n)])
            self.add(min(end, self.n) - self.at - len(inner), FIXED, p + "gtp", end)
            self.ip(end, p + "inner.", depth + 1)
        elif 3544 in ports:
            for _ in range(2):
                if self.u16(0) == 1:  # authentication indicator
                    self.add(13 + d[self.at + 2] + d[self.at + 3], OPAQUE, p + "teredo.auth", end)
                elif self.u16(0) == 0:  # origin indication: obfuscated port and address
                    self.add(4, FIXED, p + "teredo.origin", end)
                    self.add(4, ADDR, p + "teredo.origin.addr", end)
            if d[self.at] >> 4 == 6:
                self.ip6(end, p + "inner.", depth + 1)


def layout(linktype: int, data: bytes) -> list[Region]:
    """The regions of one packet, contiguous from byte 0 to its end (the last one may pass a
    capture cut); bytes the decoder does not reach are one free-form region ``undecoded``."""
    lay = _Layout(data)
    try:
        lay.link(linktype)
    except (_Stop, IndexError, struct.error):
        pass  # a cut or malformed header: what follows is free-form
    if lay.at < lay.n:
        lay.regions.append((lay.at, lay.n, OPAQUE, "undecoded"))
    return lay.regions


def _region_at(regions: list[Region], starts: list[int], pos: int) -> Region:
    return regions[bisect.bisect_right(starts, pos) - 1]


def _free_or_field(region: Region, rel: int, width: int) -> bool:
    """Whether ``width`` bytes at ``rel`` lie in free-form bytes or are a whole address field:
    where an address can sit (never across fields, never in fixed ones)."""
    start, end, kind, _name = region
    return rel + width <= end and (kind == OPAQUE or kind == ADDR and end - start == width)


# --- checksums -----------------------------------------------------------------------------


def _csum_ok(data: bytes) -> bool:
    return dpkt.in_cksum(data) == 0


def _l3_offset(linktype: int, data: bytes) -> int | None:
    """Where the IP header starts (Ethernet with any number of VLAN tags, SLL, Null, raw)."""
    if linktype == 1:
        off, et = 14, data[12:14]
        while et in (b"\x81\x00", b"\x88\xa8", b"\x91\x00"):
            et, off = data[off + 2:off + 4], off + 4
        if et == b"\x88\x64" and data[off + 6:off + 8] in (b"\x00\x21", b"\x00\x57"):  # PPPoE session
            return off + 8
        if et in (b"\x88\x47", b"\x88\x48"):  # MPLS label stack
            while off + 4 <= len(data) and not data[off + 2] & 1:
                off += 4
            return off + 4
        return off if et in (b"\x08\x00", b"\x86\xdd") else None
    if linktype == 113:
        return 16 if data[14:16] in (b"\x08\x00", b"\x86\xdd") else None
    if linktype == 276:
        return 20 if data[0:2] in (b"\x08\x00", b"\x86\xdd") else None
    if linktype == 0:
        return 4
    return 0


def checksum_errors(linktype: int, data: bytes, origlen: int) -> list[str]:
    """Checksums that do not verify in one packet: IPv4 headers (outer and quoted) always;
    TCP/UDP/ICMP/ICMPv6 of the outer packet when it was captured whole and is not a fragment."""
    off = _l3_offset(linktype, data)
    if off is None or len(data) < off + 20:
        return []
    ip = data[off:]
    errors: list[str] = []
    whole = len(data) == origlen
    if ip[0] >> 4 == 4:
        ihl = (ip[0] & 15) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        if ihl < 20 or len(ip) < ihl:
            return []
        if not _csum_ok(ip[:ihl]):
            errors.append("ipv4_header")
        proto = ip[9]
        l4 = ip[ihl:total]
        if proto == 1 and len(l4) >= 28 and l4[0] in _ICMP_ERRORS and l4[8] >> 4 == 4:
            qihl = (l4[8] & 15) * 4
            if len(l4) >= 8 + qihl and not _csum_ok(l4[8:8 + qihl]):
                errors.append("quoted_ipv4_header")
        fragment = struct.unpack_from("!H", ip, 6)[0] & 0x3FFF
        if whole and not fragment and len(ip) >= total:
            errors += _l4_errors(proto, l4, ip[12:20] + struct.pack("!BBH", 0, proto, len(l4)))
    elif ip[0] >> 4 == 6 and len(ip) >= 40 and whole:
        plen = struct.unpack_from("!H", ip, 4)[0]
        nh, q = ip[6], 40
        while nh in (0, 43, 44, 51, 60) and q + 8 <= len(ip):
            if nh == 44 and struct.unpack_from("!H", ip, q + 2)[0] & 0xFFF9:
                return errors  # fragment: the upper-layer checksum spans other packets
            nh, q = ip[q], q + (8 if nh == 44 else (ip[q + 1] + 2) * 4 if nh == 51 else (ip[q + 1] + 1) * 8)
        l4 = ip[q:40 + plen]
        errors += _l4_errors(nh, l4, ip[8:40] + struct.pack("!IxxxB", len(l4), nh))
    return errors


def _l4_errors(proto: int, l4: bytes, pseudo: bytes) -> list[str]:
    if proto == 6 and len(l4) >= 20:
        return [] if _csum_ok(pseudo + l4) else ["tcp"]
    if proto == 17 and len(l4) >= 8:
        if l4[6:8] == b"\x00\x00":
            return []
        return [] if _csum_ok(pseudo + l4) else ["udp"]
    if proto == 1 and len(l4) >= 4:
        return [] if _csum_ok(l4) else ["icmp"]
    if proto == 58 and len(l4) >= 4:
        return [] if _csum_ok(pseudo + l4) else ["icmp6"]
    return []


# --- private prefixes and values ----------------------------------------------------------


class _Nets:
    """The private prefixes as integer (base, mask) pairs, for fast tests of raw values."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
        self.ranges = {4: [(int(n.network_address), int(n.netmask)) for n in self.nets if n.version == 4],
                       16: [(int(n.network_address), int(n.netmask)) for n in self.nets if n.version == 6]}

    def contains(self, raw: bytes) -> bool:
        ranges = self.ranges.get(len(raw))
        if not ranges:
            return False
        x = int.from_bytes(raw, "big")
        return any(x & mask == base for base, mask in ranges)

    def zone(self, address: bytes, bits: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        """The private prefix a reverse name of ``bits`` bits names, when it names it whole (and the
        prefix is long enough to be the site's: 16 bits for IPv4, 32 for IPv6)."""
        ip = ipaddress.ip_address(address)
        return next((n for n in self.nets if n.version == ip.version and n.prefixlen <= bits
                     and n.prefixlen >= (16 if n.version == 4 else 32) and ip in n), None)

    def could_start(self, head: bytes, width: int) -> bool:
        """Whether some address of ``width`` bytes that begins with ``head`` lies in a prefix."""
        shift = 8 * (width - len(head))
        x, known = int.from_bytes(head, "big") << shift, ((1 << 8 * len(head)) - 1) << shift
        return any(x & mask & known == base & known for base, mask in self.ranges.get(width, ()))


def _host_mac(mac: bytes) -> bool:
    """A MAC that names a host: not all zero, not a group (broadcast, 33:33:*, 01:00:5e:*, ...)."""
    return len(mac) == 6 and not mac[0] & 1 and mac != bytes(6)


def _eui64(mac: bytes) -> bytes:
    return bytes([mac[0] ^ 0x02]) + mac[1:3] + b"\xff\xfe" + mac[3:]


def _mac_of_eui64(addr6: bytes) -> bytes | None:
    if addr6[11:13] != b"\xff\xfe":
        return None
    return bytes([addr6[8] ^ 0x02]) + addr6[9:11] + addr6[13:16]


def _text(raw: bytes) -> str:
    if len(raw) in (4, 16):
        return str(ipaddress.ip_address(raw))
    if len(raw) == 6:
        return raw.hex(":")
    return raw.hex()


def _windows(a: np.ndarray, k: int) -> np.ndarray:
    """Big-endian value of every k-byte window (k <= 8) of a uint8 array."""
    m = len(a) - k + 1
    w = np.zeros(max(m, 0), np.uint64)
    for j in range(k):
        w = (w << np.uint64(8)) | a[j:j + m]
    return w


def _prefix_windows(blob: bytes, nets: _Nets) -> tuple[np.ndarray, np.ndarray]:
    """Start and width of every 4-byte window inside a private IPv4 prefix and of every 16-byte
    window inside a private IPv6 prefix, anywhere in ``blob``, in start order."""
    a = np.frombuffer(blob, np.uint8)
    starts: list[np.ndarray] = [np.zeros(0, np.int64)]
    widths: list[np.ndarray] = [np.zeros(0, np.int64)]
    if nets.ranges[4] and len(a) >= 4:
        w = _windows(a, 4)
        for base, mask in nets.ranges[4]:
            pos = np.flatnonzero(w & np.uint64(mask) == np.uint64(base))
            starts.append(pos)
            widths.append(np.full(len(pos), 4))
    if nets.ranges[16] and len(a) >= 16:
        low = (1 << 64) - 1
        hi, lo = _windows(a[:len(a) - 8], 8), None  # first and last 8 bytes of every 16-byte window
        for base, mask in nets.ranges[16]:
            pos = np.flatnonzero(hi & np.uint64(mask >> 64) == np.uint64(base >> 64))
            if mask & low:  # longer than /64
                lo = _windows(a[8:], 8) if lo is None else lo
                pos = pos[lo[pos] & np.uint64(mask & low) == np.uint64(base & low)]
            starts.append(pos)
            widths.append(np.full(len(pos), 16))
    pos, width = np.concatenate(starts), np.concatenate(widths)
    order = np.argsort(pos, kind="stable")
    return pos[order], width[order]


def _merged_windows(anchors: Iterable[int], before: int, after: int, size: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a in sorted(anchors):
        lo, hi = max(a - before, 0), min(a + after, size)
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _anchored(pattern: re.Pattern[bytes], blob: bytes, anchors: Iterable[int], before: int,
              after: int) -> Iterator[re.Match[bytes]]:
    """Matches of ``pattern`` near the anchors only: Python's re scans a character class slowly,
    so a cheap pass finds where a match must be and the full pattern runs there."""
    for lo, hi in _merged_windows(anchors, before, after, len(blob)):
        yield from pattern.finditer(blob, lo, hi)


_V4_TEXT = {b".": re.compile(rb"(?:\d{1,3}\.){3}\d{1,3}"), b"-": re.compile(rb"(?:\d{1,3}-){3}\d{1,3}")}
_V6_ANCHOR = re.compile(rb":[0-9a-f]{0,4}:")
_V6_TEXT = re.compile(rb"(?:[0-9a-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9a-f]{1,4})?")
_PTR = (  # (form, family width, anchor, name): reverse names as text and in DNS wire form
    ("ptr-text", 4, re.compile(rb"in-addr\.arpa"), re.compile(rb"((?:\d{1,3}\.){1,4})in-addr\.arpa")),
    ("ptr-text", 16, re.compile(rb"ip6\.arpa"), re.compile(rb"((?:[0-9a-f]\.){1,32})ip6\.arpa")),
    ("ptr", 4, re.compile(rb"\x07in-addr\x04arpa"),
     re.compile(rb"((?:[\x01-\x03][0-9]{1,3}){1,4})\x07in-addr\x04arpa")),
    ("ptr", 16, re.compile(rb"\x03ip6\x04arpa"), re.compile(rb"((?:\x01[0-9a-f]){1,32})\x03ip6\x04arpa")),
)

TextAddress = tuple[int, int, str, bytes, int]  # (start, end, form, address, prefix bits it gives)


def _readings(text: bytes, sep: bytes, parse: Callable[[bytes], T | None], every: bool) -> Iterator[tuple[int, T]]:
    """(shift, value) readings of a text match: the match itself, and the match without leading
    characters of its first group when it does not parse or ``every`` reading is asked for
    (binary bytes right before a text can look like digits or hex letters)."""
    for shift in range(max(text.find(sep), 1)):
        value = parse(text[shift:])
        if value is not None:
            yield shift, value
            if not every:
                return


def _quad(text: bytes, sep: bytes) -> bytes | None:
    octets = text.split(sep)
    return bytes(int(o) for o in octets) if all(int(o) < 256 for o in octets) else None


def _ipv6_text(text: bytes) -> bytes | None:
    try:
        return ipaddress.IPv6Address(text.decode()).packed
    except ValueError:
        return None  # colons and hex digits that are no address


def _ptr_address(form: str, width: int, labels: bytes) -> tuple[bytes, int] | None:
    """The address (or zone prefix, zero-filled) a reverse name's labels give, with its bits."""
    if form == "ptr":
        parts: list[bytes] = []
        q = 0
        while q < len(labels):
            parts.append(labels[q + 1:q + 1 + labels[q]])
            q += 1 + labels[q]
    else:
        parts = labels.split(b".")[:-1]
    if width == 4:
        if not all(p.isdigit() and int(p) < 256 for p in parts):
            return None
        return bytes(int(p) for p in reversed(parts)).ljust(4, b"\0"), 8 * len(parts)
    nibbles = b"".join(reversed(parts)).decode()
    if len(nibbles) != len(parts):
        return None
    return bytes.fromhex(nibbles.ljust(32, "0")), 4 * len(parts)


def _text_addresses(blob: bytes, wire: bool, every: bool) -> list[TextAddress]:
    """Addresses written in a lower-cased ``blob`` as text (dotted or dashed quad, IPv6) or as reverse names
    (as text and, when ``wire``, in DNS wire form); reverse zones give fewer prefix bits. With
    ``every``, also the shorter readings of a text that parses (see _readings)."""
    out: list[TextAddress] = []
    a = np.frombuffer(blob, np.uint8)
    digit = (a >= 0x30) & (a <= 0x39)
    for sep, pattern in _V4_TEXT.items():
        seps = np.flatnonzero((a[1:-1] == sep[0]) & digit[:-2] & digit[2:]) + 1 if len(a) > 2 else []
        for m in _anchored(pattern, blob, seps, 12, 16):
            for shift, address in _readings(m.group(), sep, lambda t: _quad(t, sep), every):
                out.append((m.start() + shift, m.end(), "text", address, 32))
    for m in _anchored(_V6_TEXT, blob, (m.start() for m in _V6_ANCHOR.finditer(blob)), 40, 48):
        for shift, address in _readings(m.group(), b":", _ipv6_text, every):
            out.append((m.start() + shift, m.end(), "text", address, 128))
    for form, width, anchor, name in _PTR:
        if form == "ptr" and not wire:
            continue
        for m in _anchored(name, blob, (m.start() for m in anchor.finditer(blob)), 66, 16):
            if form == "ptr":  # wire labels carry their lengths: one reading
                readings = [(0, a)] if (a := _ptr_address(form, width, m.group(1))) else []
            else:
                readings = _readings(m.group(1), b".", lambda t: _ptr_address(form, width, t), every)
            for shift, (address, bits) in readings:
                out.append((m.start() + shift, m.end(), form, address, bits))
    return out


# --- the forms of the private values, and the search for them ------------------------------

# forms a fixed byte pattern can find, in the order that names a match when it is several
_PATTERN_FORMS = ("raw", "inverted", "plus1", "nat64", "prefix", "eui64", "ptr", "ptr-text", "ptr-prefix",
                  "prefix-text", "mac-text", "eui64-text")
_F = {name: i for i, name in enumerate(_PATTERN_FORMS)}
_CHANCE = (_F["raw"], _F["inverted"], _F["plus1"], _F["nat64"])  # forms of an IPv4 value that counters can spell


class _Scanner:
    """Finds every occurrence of many byte patterns (4 bytes or longer) in one buffer.

    A table of every pattern's first three bytes picks candidate positions in one vectorized
    pass; the next eight bytes at each candidate, cut to each pattern length up to eight, are
    looked up in sorted key arrays with np.searchsorted; patterns longer than eight bytes are
    compared whole, only where their first eight bytes matched. Each pattern carries the
    (form, value index) pairs it stands for.
    """

    def __init__(self) -> None:
        self._parts: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self._long: dict[bytes, list[tuple[int, int]]] = {}

    def keys(self, width: int, keys: np.ndarray, form: int, values: np.ndarray) -> None:
        """Patterns of ``width`` (4..8) bytes given as big-endian integers, one per value index."""
        self._parts.setdefault(width, []).append((keys.astype(np.uint64), np.full(len(keys), form), values))

    def pattern(self, pattern: bytes, form: int, value: int) -> None:
        if len(pattern) > 8:
            self._long.setdefault(pattern, []).append((form, value))
        elif len(pattern) >= 4:  # shorter ones cannot come from the values' forms
            self.keys(len(pattern), np.array([int.from_bytes(pattern, "big")], np.uint64), form, np.array([value]))

    def hits(self, blob: bytes) -> list[tuple[int, int, list[tuple[int, int]]]]:
        """Every (start, length, [(form, value index), ...]) where a pattern occurs in blob."""
        n = len(blob)
        first3 = np.zeros(1 << 24, bool)
        exact = {}
        for width, parts in self._parts.items():
            keys, forms, values = (np.concatenate(col) for col in zip(*parts))
            order = np.lexsort((forms, keys))
            exact[width] = keys[order], forms[order], values[order]
            first3[(keys >> np.uint64(8 * (width - 3))).astype(np.int64)] = True
        long_lengths: dict[int, set[int]] = {}
        for p in self._long:
            long_lengths.setdefault(int.from_bytes(p[:8], "big"), set()).add(len(p))
            first3[int.from_bytes(p[:3], "big")] = True
        if n < 4:
            return []
        a = np.frombuffer(blob + bytes(8), np.uint8)
        cand = np.flatnonzero(first3[(a[:n].astype(np.int64) << 16) | (a[1:n + 1].astype(np.int64) << 8) | a[2:n + 2]])
        w8 = np.zeros(len(cand), np.uint64)
        for j in range(8):
            w8 = (w8 << np.uint64(8)) | a[cand + j]
        out: list[tuple[int, int, list[tuple[int, int]]]] = []
        for width, (keys, forms, values) in exact.items():
            k = w8 >> np.uint64(8 * (8 - width))
            left = np.minimum(np.searchsorted(keys, k), len(keys) - 1)
            found = np.flatnonzero((keys[left] == k) & (cand + width <= n))
            right = np.searchsorted(keys, k[found], side="right")
            for f, lo, hi in zip(found.tolist(), left[found].tolist(), right.tolist()):
                out.append((int(cand[f]), width, list(zip(forms[lo:hi].tolist(), values[lo:hi].tolist()))))
        if long_lengths:
            long_keys = np.array(sorted(long_lengths), np.uint64)
            idx = np.minimum(np.searchsorted(long_keys, w8), len(long_keys) - 1)
            found = long_keys[idx] == w8
            for pos, key in zip(cand[found].tolist(), w8[found].tolist()):
                for length in long_lengths[key]:
                    entries = self._long.get(blob[pos:pos + length])
                    if entries:
                        out.append((pos, length, entries))
        return out


def _ptr_labels(parts: Iterable[str]) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in parts)


@dataclass
class _Forms:
    """The private values and two scanners for their forms: one over the sanitized bytes as they
    are, one over them lower-cased (text and DNS names)."""

    values: list[bytes | ipaddress.IPv4Network | ipaddress.IPv6Network]
    v4_count: int
    raw: _Scanner
    text: _Scanner

    def label(self, value: int) -> str:
        v = self.values[value]
        return _text(v) if isinstance(v, bytes) else str(v)


def _forms(values: set[bytes], macs: set[bytes], nets: _Nets) -> _Forms:
    """Every pattern form of every private value (the text forms of addresses are parsed instead)."""
    v4 = sorted(v for v in values if len(v) == 4)
    v6 = sorted(v for v in values if len(v) == 16)
    mac_list = sorted(macs)
    forms = _Forms([*v4, *v6, *mac_list, *nets.nets], len(v4), _Scanner(), _Scanner())
    raw, text = forms.raw, forms.text
    if v4:
        x = np.frombuffer(b"".join(v4), ">u4").astype(np.uint64)
        ids = np.arange(len(v4))
        raw.keys(4, x, _F["raw"], ids)
        raw.keys(4, x ^ np.uint64(0xFFFFFFFF), _F["inverted"], ids)
        raw.keys(4, (x + np.uint64(1)) & np.uint64(0xFFFFFFFF), _F["plus1"], ids)
        for low in (8, 16, 24):  # NAT64 /40, /48, /56: a zero u octet before the last low/8 bytes
            split = ((x >> np.uint64(low)) << np.uint64(low + 8)) | (x & np.uint64((1 << low) - 1))
            raw.keys(5, split, _F["nat64"], ids)
    for i, v in enumerate(v4):
        text.pattern(_ptr_labels(str(b) for b in reversed(v)), _F["ptr"], i)
    for i, v in enumerate(v6, len(v4)):
        raw.pattern(v, _F["raw"], i)
        text.pattern(_ptr_labels(v.hex()[::-1]), _F["ptr"], i)
        text.pattern(".".join(v.hex()[::-1]).encode(), _F["ptr-text"], i)  # also where ip6.arpa is elsewhere
    for i, m in enumerate(mac_list, len(v4) + len(v6)):
        raw.pattern(m, _F["raw"], i)
        raw.pattern(_eui64(m), _F["eui64"], i)
        t, h = m.hex(":"), m.hex()
        for form in {t, t.replace(":", "-"), f"{h[:4]}.{h[4:8]}.{h[8:]}", h}:
            text.pattern(form.encode(), _F["mac-text"], i)
        groups = struct.unpack("!4H", _eui64(m))
        for form in {":".join(f"{g:x}" for g in groups), ":".join(f"{g:04x}" for g in groups)}:
            text.pattern(form.encode(), _F["eui64-text"], i)
    for i, n in enumerate(nets.nets, len(v4) + len(v6) + len(mac_list)):
        packed = n.network_address.packed
        if n.version == 6 and n.prefixlen >= 32:
            raw.pattern(packed[:n.prefixlen // 8], _F["prefix"], i)
            groups = struct.unpack("!8H", packed)[:n.prefixlen // 16]
            texts = {":".join(f"{g:x}" for g in groups) + ":", ":".join(f"{g:04x}" for g in groups)}
            kept = len(groups)
            while kept and not groups[kept - 1]:
                kept -= 1
            if kept < len(groups):  # zero groups at the prefix's end compress to "::"
                texts.add(":".join(f"{g:x}" for g in groups[:kept]) + "::")
            for form in texts:
                text.pattern(form.encode(), _F["prefix-text"], i)
            text.pattern(_ptr_labels(packed.hex()[:n.prefixlen // 4][::-1]), _F["ptr-prefix"], i)
        elif n.version == 4 and n.prefixlen >= 16:
            octets = (str(b) for b in reversed(packed[:n.prefixlen // 8]))
            text.pattern(_ptr_labels(octets) + b"\x07in-addr", _F["ptr-prefix"], i)
    return forms

# --- the report -------------------------------------------------------------------------------


@dataclass(slots=True)
class Finding:
    """One private value found in the sanitized capture."""

    packet: int   # index of the packet in the sanitized capture
    offset: int   # byte offset in that packet
    length: int   # bytes matched
    form: str     # one of FORMS
    where: str    # the layout region holding it: ip4.dst, tcp, payload, trailer, quote.ip4.src, ...
    address: str  # the private value (address, MAC, prefix, or the hex of a cut address field)
    kind: str     # "structural": exactly an address field the decoder knows; "raw": anywhere else

    def __str__(self) -> str:
        return f"packet {self.packet} byte {self.offset} {self.where}: {self.form} {self.address}"


@dataclass
class LeakReport:
    """Result of leakcheck: every finding, and the checksums of both captures."""

    private_in_orig: int = 0   # distinct private IPv4/IPv6 addresses learned from the original
    macs_in_orig: int = 0      # distinct MACs: learned, given, and inside EUI-64 identifiers
    packets_orig: int = 0
    packets_sanitized: int = 0
    undecoded_orig: int = 0    # original packets dpkt could not decode whole (the other decoders ran)
    leaks: list[Finding] = field(default_factory=list)
    coincidences: int = 0      # IPv4 forms of another packet's address across or inside fixed header fields
    checksum_errors: Counter = field(default_factory=Counter)
    checksum_errors_orig: Counter = field(default_factory=Counter)

    @property
    def new_checksum_errors(self) -> dict[str, int]:
        """Checksum failures the sanitizer introduced (more than in the original)."""
        return {k: n - self.checksum_errors_orig.get(k, 0) for k, n in self.checksum_errors.items()
                if n > self.checksum_errors_orig.get(k, 0)}

    @property
    def ok(self) -> bool:
        """No leak and no new checksum failure."""
        return not self.leaks and not self.new_checksum_errors

    def lines(self, limit: int = 50) -> list[str]:
        """The report as text: totals, a line per form (by location), the first ``limit`` findings."""
        packets = len({f.packet for f in self.leaks})
        out = [f"original: {self.packets_orig} packets, {self.private_in_orig} private addresses, "
               f"{self.macs_in_orig} MACs; sanitized: {self.packets_sanitized} packets",
               f"leaks: {len(self.leaks)} in {packets} packets"]
        by_form: dict[str, Counter] = {}
        for f in self.leaks:
            by_form.setdefault(f.form, Counter())[f.where] += 1
        for form, where in sorted(by_form.items(), key=lambda kv: -sum(kv[1].values())):
            places = ", ".join(f"{w} {n}" for w, n in where.most_common())
            out.append(f"  {form}: {sum(where.values())} ({places})")
        out += [f"  {f}" for f in self.leaks[:limit]]
        if len(self.leaks) > limit:
            out.append(f"  ... {len(self.leaks) - limit} more (--show N prints more)")
        out.append(f"coincidences (not leaks): {self.coincidences} IPv4 forms of another packet's address "
                   "across or inside fixed header fields")
        if self.undecoded_orig:
            out.append(f"undecoded by dpkt: {self.undecoded_orig} original packets (layout decoder and raw scans "
                       "still ran)")
        bad = self.new_checksum_errors
        out.append("checksums: " + (", ".join(f"{k} {n}" for k, n in sorted(bad.items())) + " bad (new)"
                                    if bad else "ok"))
        return out


# --- leakcheck ------------------------------------------------------------------------------

Key = tuple[int, int]  # (capture time ns, original length): sanitizing keeps both, so it pairs packets


@dataclass
class _Learned:
    """What the original capture says is private."""

    values: set[bytes] = field(default_factory=set)      # IPv4 and IPv6 addresses
    macs: set[bytes] = field(default_factory=set)
    own: dict[Key, set[bytes]] = field(default_factory=dict)    # each packet's own addresses and MACs
    heads: dict[Key, set[bytes]] = field(default_factory=dict)  # leading bytes of an address field a cut ends in
    packets: dict[Key, bytes] = field(default_factory=dict)     # the original packets


def _packet_of(offsets: np.ndarray, size: int, pos: np.ndarray, width: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For matches at ``pos`` in packed records: (packet index, offset in its data), -1 for a match
    that overlaps a record header or runs into the next record (not packet content)."""
    pkt = np.searchsorted(offsets, pos, side="right") - 1
    start = offsets[pkt] + RECORD_HEADER_LEN
    end = np.append(offsets[1:], size)[pkt]
    inside = (pos >= start) & (pos + width <= end)
    return np.where(inside, pkt, -1), pos - start


def _layout_learn(linktype: int, data: bytes, windows: list[tuple[int, int]],
                  nets: _Nets) -> tuple[set[bytes], set[bytes]]:
    """What the layout decoder adds to dpkt's findings in one original packet: the prefix
    windows (start, width) that sit where an address can, the MACs of its address fields (dpkt
    may have failed), and the leading bytes of an address field the capture cut."""
    regions = layout(linktype, data)
    starts = [r[0] for r in regions]
    values = {data[rel:rel + width] for rel, width in windows
              if _free_or_field(_region_at(regions, starts, rel), rel, width)}
    heads: set[bytes] = set()
    for start, end, kind, _name in regions:
        value = data[start:end]
        if kind != ADDR:
            continue
        if end > len(data):
            if len(value) >= 2 and (nets.could_start(value, end - start) or end - start == 6 and not value[0] & 1):
                heads.add(value)
        elif _host_mac(value):
            values.add(value)
        elif len(value) == 16:
            values.update(v4 for v4 in _embedded_v4(value) if nets.contains(v4))
    return values, heads


def _learn(linktype: int, nsec: bool, records: bytes, nets: _Nets, report: LeakReport) -> _Learned:
    """Every private value of the original capture, globally and per packet."""
    learned = _Learned()
    offsets = record_offsets(records)
    wpos, wlen = _prefix_windows(records, nets)
    pkt, rel = _packet_of(offsets, len(records), wpos, wlen)
    keep = pkt >= 0
    pkt, rel, wlen = pkt[keep], rel[keep], wlen[keep]
    bounds = np.searchsorted(pkt, np.arange(len(offsets) + 1)).tolist()
    rel_l, wlen_l = rel.tolist(), wlen.tolist()
    for i, (ts, _caplen, origlen, view) in enumerate(iter_packets(records, nsec)):
        report.packets_orig += 1
        data = bytes(view)
        report.checksum_errors_orig.update(checksum_errors(linktype, data, origlen))
        collector = _Collector()
        decoded = collector.frame(linktype, data)
        if not decoded:
            report.undecoded_orig += 1
        mine = {raw for _w, raw in collector.found if nets.contains(raw)}
        mine.update(m for m in collector.macs if _host_mac(m))
        unexplained = [(rel_l[j], wlen_l[j]) for j in range(bounds[i], bounds[i + 1])
                       if data[rel_l[j]:rel_l[j] + wlen_l[j]] not in mine]
        if unexplained or not decoded or len(data) < origlen:
            values, heads = _layout_learn(linktype, data, unexplained, nets)
            mine |= values
            if heads:
                learned.heads[(ts, origlen)] = heads
        learned.own.setdefault((ts, origlen), set()).update(mine)
        learned.packets[(ts, origlen)] = data
        learned.values.update(v for v in mine if len(v) != 6)
        learned.macs.update(v for v in mine if len(v) == 6)
    for _s, _e, _form, address, bits in _text_addresses(records.lower(), wire=True, every=False):
        if bits == 8 * len(address) and nets.contains(address):
            learned.values.add(address)
    learned.macs.update(m for v in learned.values if len(v) == 16 and (m := _mac_of_eui64(v)) and _host_mac(m))
    return learned




_PARTIAL_MAX = {4: 3, 16: 15, 6: 5}  # longest proper head of a value a cut can leave
_PARTIAL_MIN = {4: 2, 16: 2, 6: 3}   # a MAC's first 2 bytes are too common to mean anything


class _Spellings:
    """Every private value spelled out (bytes; text, reverse names and MAC text lower-cased),
    sorted, to tell whether the bytes a cut record ends with begin one of them. Each spelling
    carries the shortest head that counts: a few characters say little (and are common)."""

    def __init__(self, values: set[bytes], macs: set[bytes]) -> None:
        binary: list[tuple[bytes, str, int]] = [(v, _text(v), 3) for v in (*values, *macs)]
        text: list[tuple[bytes, str, int]] = []
        for v in values:
            t = _text(v)
            if len(v) == 4:
                octets = t.split(".")
                spelled = [t, "-".join(octets), ".".join(reversed(octets)) + ".in-addr.arpa"]
                wire = _ptr_labels(reversed(octets)) + b"\x07in-addr\x04arpa"
            else:
                a, nibbles = ipaddress.IPv6Address(v), v.hex()[::-1]
                spelled = [a.compressed, a.exploded, ".".join(nibbles) + ".ip6.arpa"]
                wire = _ptr_labels(nibbles) + b"\x03ip6\x04arpa"
            text += [(w.encode(), t, 6) for w in spelled] + [(wire, t, 4)]
        for m in macs:
            t = m.hex(":")
            text += [(t.encode(), t, 8), (t.replace(":", "-").encode(), t, 8)]
        self.lists = [(sorted(binary), False), (sorted(text), True)]
        self.keys = [[e[0] for e in entries] for entries, _lower in self.lists]

    def begun(self, tail: bytes) -> str | None:
        """The private value some spelling of which ``tail`` begins (without being all of it)."""
        for (entries, lower), keys in zip(self.lists, self.keys):
            probe = tail.lower() if lower else tail
            i = bisect.bisect_left(keys, probe)
            while i < len(keys) and keys[i].startswith(probe):
                spelling, label, shortest = entries[i]
                if len(probe) >= shortest and len(spelling) > len(probe):
                    return label
                i += 1
        return None


_LONGEST_SPELLING = 80  # a reverse IPv6 name in wire form, with its suffix


class _Sanitized:
    """The sanitized capture, its packets paired with the original's, and the findings in it."""

    def __init__(self, path: str | Path, learned: _Learned, report: LeakReport) -> None:
        header, self.records = read_pcap(path)
        self.linktype, self.learned, self.report = header.linktype, learned, report
        self.offsets = record_offsets(self.records)
        self.keys: list[Key] = []
        self.packets: list[bytes] = []
        for ts, _caplen, origlen, view in iter_packets(self.records, header.nsec):
            data = bytes(view)
            self.keys.append((ts, origlen))
            self.packets.append(data)
            report.checksum_errors.update(checksum_errors(header.linktype, data, origlen))
        report.packets_sanitized = len(self.packets)
        self._layouts: dict[int, tuple[list[Region], list[int]]] = {}

    def region(self, k: int, rel: int) -> Region:
        if k not in self._layouts:
            regions = layout(self.linktype, self.packets[k])
            self._layouts[k] = regions, [r[0] for r in regions]
        return _region_at(*self._layouts[k], rel)

    def _may_hold(self, k: int, rel: int, width: int, v4: bytes) -> bool:
        """Whether IPv4 address ``v4`` (spelled in ``width`` bytes at ``rel``) sits where an address
        can: free-form bytes, an IPv4 address field, or an IPv6 address of a form embedding it."""
        region = self.region(k, rel)
        start, end, kind, _name = region
        if _free_or_field(region, rel, width):
            return True
        return kind == ADDR and end - start == 16 and v4 in _embedded_v4(self.packets[k][start:end])

    def own(self, k: int) -> set[bytes]:
        return self.learned.own.get(self.keys[k], set())

    def found(self, k: int, rel: int, width: int, form: str, label: str) -> None:
        start, end, kind, name = self.region(k, rel)
        exact = kind == ADDR and rel == start and width == end - start
        self.report.leaks.append(Finding(k, rel, width, form, name, label, "structural" if exact else "raw"))

    def patterns(self, forms: _Forms) -> None:
        """Findings of the pattern forms, raw and lower-cased."""
        for blob, scanner in ((self.records, forms.raw), (self.records.lower(), forms.text)):
            hits = scanner.hits(blob)
            pos = np.array([h[0] for h in hits], np.int64)
            pkt, rel = _packet_of(self.offsets, len(blob), pos, np.array([h[1] for h in hits], np.int64))
            for (_pos, width, entries), k, r in zip(hits, pkt.tolist(), rel.tolist()):
                if k >= 0:
                    self._pattern_hit(forms, k, r, width, entries)

    def _pattern_hit(self, forms: _Forms, k: int, rel: int, width: int, entries: list[tuple[int, int]]) -> None:
        for form, value in entries:
            if (form in _CHANCE and value < forms.v4_count and forms.values[value] not in self.own(k)
                    and not self._may_hold(k, rel, width, forms.values[value])):
                continue
            self.found(k, rel, width, _PATTERN_FORMS[form], forms.label(value))
            return
        if any(form in _CHANCE and value < forms.v4_count for form, value in entries):
            self.report.coincidences += 1

    def texts(self, nets: _Nets) -> None:
        """Findings of addresses written as text or reverse names (parsed, then looked up)."""
        values = self.learned.values
        found = _text_addresses(self.records.lower(), wire=False, every=True)
        pos = np.array([f[0] for f in found], np.int64)
        pkt, rel = _packet_of(self.offsets, len(self.records), pos, np.array([f[1] - f[0] for f in found], np.int64))
        for (start, end, form, address, bits), k, r in zip(found, pkt.tolist(), rel.tolist()):
            if k < 0:
                continue
            if bits == 8 * len(address) and address in values:
                self.found(k, r, end - start, form, _text(address))
            elif form == "ptr-text":
                net = nets.zone(address, bits)
                if net is not None:
                    self.found(k, r, end - start, "ptr-prefix", str(net))
            if len(address) == 16 and form == "text":
                for v4 in _embedded_v4(address):
                    if v4 in values:
                        self.found(k, r, end - start, "text6", _text(v4))

    def partials(self) -> None:
        """Records cut inside a copy of a private value: of one of the packet's own values
        (anywhere), of an address field the original's cut already ended in, or of any private
        value's spelling where the sanitizer kept the original's bytes outside fixed fields."""
        spellings: _Spellings | None = None
        for k, (data, key) in enumerate(zip(self.packets, self.keys)):
            if len(data) >= key[1]:
                continue  # captured whole: no cut
            before = len(self.report.leaks)
            for value in self.learned.own.get(key, ()):
                top = min(_PARTIAL_MAX.get(len(value), 0), len(data))
                for m in range(top, _PARTIAL_MIN.get(len(value), 2) - 1, -1):
                    if data.endswith(value[:m]):
                        self.found(k, len(data) - m, m, "partial", _text(value))
                        break
            for head in self.learned.heads.get(key, ()):
                if data.endswith(head):
                    self.found(k, len(data) - len(head), len(head), "partial", head.hex() + "...")
            orig = self.learned.packets.get(key, b"")
            n = len(data)
            if len(self.report.leaks) > before or len(orig) < n or n < 3:
                continue
            start, _end, kind, _name = self.region(k, n - 1)
            kept = 0
            while kept < min(n - start, _LONGEST_SPELLING) and data[n - 1 - kept] == orig[n - 1 - kept]:
                kept += 1
            if kind == FIXED or kept < 3:
                continue
            spellings = spellings or _Spellings(self.learned.values, self.learned.macs)
            for m in range(kept, 2, -1):
                label = spellings.begun(data[n - m:])
                if label:
                    self.found(k, n - m, m, "partial", label)
                    break

    def finish(self) -> None:
        """Sort the findings; drop one overlapping an earlier one of the same packet (an IPv6 prefix
        in its address, a reverse zone in a reverse name): each leaked byte range is reported once."""
        self.report.leaks.sort(key=lambda f: (f.packet, f.offset, -f.length))
        kept: list[Finding] = []
        for f in self.report.leaks:
            last = kept[-1] if kept else None
            if last and last.packet == f.packet and f.offset < last.offset + last.length:
                continue
            kept.append(f)
        self.report.leaks = kept


def leakcheck(orig: str | Path, sanitized: str | Path, private: list[str], *,
              macs: Iterable[bytes] = ()) -> LeakReport:
    """Find every private value of ORIG, in every form, still present in SANITIZED; verify checksums.

    ``private`` are the CIDR prefixes whose addresses are private; ``macs`` are MAC addresses
    (6 bytes each) to treat as private besides those the original capture shows. Raises
    OSError or PcapFormatError when a file cannot be read as pcap; never on packet contents.
    """
    nets = _Nets(private)
    h_orig, rec_orig = read_pcap(orig)
    report = LeakReport()
    learned = _learn(h_orig.linktype, h_orig.nsec, rec_orig, nets, report)
    learned.macs.update(bytes(m) for m in macs)
    report.private_in_orig, report.macs_in_orig = len(learned.values), len(learned.macs)
    san = _Sanitized(sanitized, learned, report)
    san.patterns(_forms(learned.values, learned.macs, nets))
    san.texts(nets)
    san.partials()
    san.finish()
    return report
