"""`leakcheck`: an independent check that no private address of a capture survived sanitizing.

It deliberately does not reuse the engine's walker: it parses with dpkt (plus small manual
decoders for what dpkt does not decode) and scans raw bytes, so a blind spot of the engine's
parser cannot hide its own leaks.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import dpkt
import numpy as np

from bridge.pcap import RECORD_HEADER_LEN, iter_packets, read_pcap, record_offsets

Address = tuple[str, bytes]  # (where in the packet, 4 or 16 raw bytes)

_ICMP_ERRORS = (3, 4, 5, 11, 12)
_ICMP6_ERRORS = (1, 2, 3, 4)


def _embedded_v4(addr6: bytes) -> list[bytes]:
    """IPv4 addresses embedded in an IPv6 address (mapped, NAT64, 6to4, Teredo)."""
    if addr6[:12] == bytes(10) + b"\xff\xff" or addr6[:12] == b"\x00\x64\xff\x9b" + bytes(8):
        return [addr6[12:]]
    if addr6[:2] == b"\x20\x02":
        return [addr6[2:6]]
    if addr6[:4] == b"\x20\x01\x00\x00":
        return [addr6[4:8], bytes(b ^ 0xFF for b in addr6[12:16])]
    return []


class _Collector:
    """Walks one packet with dpkt and collects every address it can find."""

    def __init__(self) -> None:
        self.found: list[Address] = []

    def add(self, where: str, raw: bytes) -> None:
        self.found.append((where, raw))
        if len(raw) == 16:
            self.found += [(f"{where}/embedded", v4) for v4 in _embedded_v4(raw)]

    def frame(self, linktype: int, data: bytes) -> None:
        try:
            if linktype == 1:
                self.l2(dpkt.ethernet.Ethernet(data), "eth")
            elif linktype == 113:
                self.l2(dpkt.sll.SLL(data), "sll")
            elif linktype == 276:
                self.l2(dpkt.sll2.SLL2(data), "sll2")
            elif linktype == 0:
                self.l2(dpkt.loopback.Loopback(data), "null")
            elif data and data[0] >> 4 == 6:
                self.ip6(data, "ip")
            else:
                self.ip4(data, "ip")
        except (dpkt.UnpackError, struct.error, IndexError):
            pass  # raw byte scan still covers this packet

    def l2(self, frame: dpkt.Packet, where: str) -> None:
        payload = frame.data
        for _ in range(4):  # PPPoE -> PPP -> IP and similar wrappers
            if isinstance(payload, (dpkt.arp.ARP, dpkt.ip.IP, dpkt.ip6.IP6)) or not isinstance(payload, dpkt.Packet):
                break
            payload = payload.data
        if isinstance(payload, dpkt.arp.ARP):
            if payload.pln == 4:
                self.add(f"{where}.arp.spa", payload.spa)
                self.add(f"{where}.arp.tpa", payload.tpa)
        elif isinstance(payload, dpkt.ip.IP):
            self.ip4(payload, f"{where}.ip")
        elif isinstance(payload, dpkt.ip6.IP6):
            self.ip6(payload, f"{where}.ip6")

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
        self.transport(ip.p, ip.data, where, depth)

    def transport(self, proto: int, data: dpkt.Packet | bytes, where: str, depth: int) -> None:
        if depth > 8:
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
                self.l2(dpkt.ethernet.Ethernet(bytes(inner)), f"{where}.gre.eth")
        elif proto == 17 and len(raw) >= 8:
            sport, dport = struct.unpack_from("!HH", raw)
            if 3544 in (sport, dport):
                body = raw[8:]
                if body[:2] == b"\x00\x00" and len(body) >= 8:
                    self.add(f"{where}.teredo.origin", bytes(b ^ 0xFF for b in body[4:8]))
                    body = body[8:]
                if body and body[0] >> 4 == 6:
                    self.ip6(body, f"{where}.teredo", depth + 1)

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
            if ot == 3 and ol == 32:
                self.add(f"{where}.nd.prefix", raw[q + 16:q + 32])
            elif ot == 24 and ol == 24:
                self.add(f"{where}.nd.route", raw[q + 8:q + 24])
            elif ot == 25:
                for a in range(q + 8, q + ol - 15, 16):
                    self.add(f"{where}.nd.rdnss", raw[a:a + 16])
            elif ot == 4:
                self.ip6(raw[q + 8:q + ol], f"{where}.nd.redirected", depth + 1)
            q += ol


def addresses(linktype: int, data: bytes) -> list[Address]:
    """Every address dpkt (plus small manual decoders) finds in one packet."""
    c = _Collector()
    c.frame(linktype, data)
    return c.found


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


@dataclass
class Finding:
    """One private address found in the sanitized file."""

    packet: int
    kind: str          # "structural" or "raw"
    where: str         # header path or byte offset
    address: str

    def __str__(self) -> str:
        return f"packet {self.packet}: {self.kind} {self.where}: {self.address}"


@dataclass
class LeakReport:
    """Result of leakcheck."""

    private_in_orig: int
    packets_orig: int
    packets_sanitized: int
    leaks: list[Finding] = field(default_factory=list)
    checksum_errors: Counter = field(default_factory=Counter)
    checksum_errors_orig: Counter = field(default_factory=Counter)
    raw_coincidences: int = 0  # raw matches of another packet's address (chance, not a leak)

    @property
    def new_checksum_errors(self) -> dict[str, int]:
        """Checksum failures the sanitizer introduced (more than in the original)."""
        return {k: n - self.checksum_errors_orig.get(k, 0) for k, n in self.checksum_errors.items()
                if n > self.checksum_errors_orig.get(k, 0)}

    @property
    def ok(self) -> bool:
        return not self.leaks and not self.new_checksum_errors

    def lines(self, limit: int = 50) -> list[str]:
        out = [f"original: {self.packets_orig} packets, {self.private_in_orig} distinct private addresses; "
               f"sanitized: {self.packets_sanitized} packets",
               f"leaks: {len(self.leaks)}",
               f"raw matches of other packets' addresses (chance, not counted as leaks): {self.raw_coincidences}"]
        out += [f"  {f}" for f in self.leaks[:limit]]
        if len(self.leaks) > limit:
            out.append(f"  ... {len(self.leaks) - limit} more")
        bad = self.new_checksum_errors
        out.append("checksums: " + (", ".join(f"{k} {n}" for k, n in sorted(bad.items())) + " bad (new)" if bad else "ok"))
        return out


def _fmt(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def _in_private(raw: bytes, nets: list[ipaddress._BaseNetwork]) -> bool:
    ip = ipaddress.ip_address(raw)
    return any(ip.version == n.version and ip in n for n in nets)


class RawScanner:
    """Finds byte patterns (4-byte IPv4, 16-byte IPv6 addresses) in a whole buffer at once.

    One sliding 4-byte window over the buffer and one ``np.isin`` against the patterns' last
    four bytes (IPv6 prefixes are shared, suffixes not) find the candidates; each candidate is
    then compared in full. The pattern index is built once, not per packet.
    """

    def __init__(self, patterns: set[bytes]) -> None:
        self.by_tail: dict[int, list[bytes]] = {}
        for p in patterns:
            self.by_tail.setdefault(int.from_bytes(p[-4:], "big"), []).append(p)
        self.tails = np.fromiter(self.by_tail.keys(), dtype=np.uint32, count=len(self.by_tail))

    def hits(self, blob: bytes) -> list[tuple[int, bytes]]:
        """Every (start, pattern) where a pattern occurs in blob."""
        if not self.by_tail or len(blob) < 4:
            return []
        arr = np.frombuffer(blob, dtype=np.uint8)
        windows = np.lib.stride_tricks.sliding_window_view(arr, 4)
        keys = np.ascontiguousarray(windows).view(">u4").ravel()
        out: list[tuple[int, bytes]] = []
        for pos in np.nonzero(np.isin(keys, self.tails))[0].tolist():
            end = pos + 4
            for p in self.by_tail[int(keys[pos])]:
                if end >= len(p) and blob[end - len(p):end] == p:
                    out.append((end - len(p), p))
        return out


def _raw_forms(raw: bytes) -> set[bytes]:
    """An address as raw bytes, plus the forms it hides in: bit-inverted (a Teredo client) and,
    for IPv4, plus one (the TCP ack answering a sequence number that held the address)."""
    if len(raw) != 4:
        return {raw}
    plus_one = ((int.from_bytes(raw, "big") + 1) & 0xFFFFFFFF).to_bytes(4, "big")
    return {raw, bytes(b ^ 0xFF for b in raw), plus_one}


def leakcheck(orig: str | Path, sanitized: str | Path, private: list[str]) -> LeakReport:
    """Find every private address of ORIG still present in SANITIZED; verify checksums.

    Structurally: any address inside ``private`` anywhere dpkt and the manual decoders reach.
    As raw bytes: a packet's own private addresses (as ORIG had them) anywhere in its
    sanitized bytes, e.g. an address the sender encoded in the TCP sequence number. Packets
    are paired by capture time and original length, which sanitizing keeps. Matches of some
    *other* packet's address are counted apart as coincidences: with tens of thousands of
    telescope addresses, port pairs and checksums match one every few thousand packets.
    """
    nets = [ipaddress.ip_network(c, strict=False) for c in private]
    h_orig, rec_orig = read_pcap(orig)
    h_san, rec_san = read_pcap(sanitized)
    patterns: set[bytes] = set()
    own: dict[tuple[int, int], set[bytes]] = {}
    report = LeakReport(0, 0, 0)
    for ts, _cap, origlen, data in iter_packets(rec_orig, h_orig.nsec):
        report.packets_orig += 1
        blob = bytes(data)
        mine = own.setdefault((ts, origlen), set())
        for _where, raw in addresses(h_orig.linktype, blob):
            if len(raw) in (4, 16) and _in_private(raw, nets):
                patterns.add(raw)
                mine |= _raw_forms(raw)
        report.checksum_errors_orig.update(checksum_errors(h_orig.linktype, blob, origlen))
    report.private_in_orig = len(patterns)
    keys: list[tuple[int, int]] = []
    for idx, (ts, _cap, origlen, data) in enumerate(iter_packets(rec_san, h_san.nsec)):
        report.packets_sanitized += 1
        keys.append((ts, origlen))
        blob = bytes(data)
        for where, raw in addresses(h_san.linktype, blob):
            if len(raw) in (4, 16) and _in_private(raw, nets):
                report.leaks.append(Finding(idx, "structural", where, _fmt(raw)))
        report.checksum_errors.update(checksum_errors(h_san.linktype, blob, origlen))
    # raw patterns: one scan over all sanitized records, hits mapped back to their packet;
    # a match that overlaps a record header is not packet content and is ignored
    offsets = record_offsets(rec_san)
    data_start = offsets + RECORD_HEADER_LEN
    every_form = set().union(*(_raw_forms(p) for p in patterns)) if patterns else set()
    for pos, p in RawScanner(every_form).hits(rec_san):
        idx = int(np.searchsorted(offsets, pos, side="right")) - 1
        if idx < 0 or pos < data_start[idx]:
            continue
        end_of_packet = offsets[idx + 1] if idx + 1 < len(offsets) else len(rec_san)
        if pos + len(p) > end_of_packet:
            continue
        if p in own.get(keys[idx], ()):
            report.leaks.append(Finding(idx, "raw", f"byte {pos - int(data_start[idx])}", _fmt(p)))
        else:
            report.raw_coincidences += 1
    report.leaks.sort(key=lambda f: f.packet)
    return report
