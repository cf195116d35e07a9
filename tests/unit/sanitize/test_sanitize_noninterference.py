"""Non-interference of the sanitizer (issue 13, item 4): the output may depend on the private
values only through the mapped values themselves.

A template is a packet with private slots (every place a private address or MAC sits, in any
form: a TCP seq equal to the address, an inverted Teredo client, an EUI-64 interface ID, text,
DNS labels) built by the adversarial corpus's builders over an `Env`. Instantiated under two
different assignments (addresses drawn from 10.1.0.0/16 and fd00:10:1::/48, random MACs) and
sanitized with the same policy, the two outputs must

- get the same verdict: both dropped, or both kept with the same length;
- differ only inside a private slot or a checksum field (IPv4 header, TCP, UDP, ICMP, ICMPv6,
  GRE and RFC 4884 checksums, quoted and tunnelled ones included).

Any other differing byte is a channel through which a private value reaches the output, found
without knowing its name. Two more things are checked on each output, since a slot passed
through unchanged also differs "inside a slot": no slot is kept as it was (whole, or the part
before a capture cut inside it), and every checksum whose bytes are all there verifies.

Templates come from hypothesis (every header type the walk parses, `frames`) and from the
adversarial corpus (every class, every link type, every cut; then hypothesis over their values).
Policies: plain --pnat and plain --cryptopan-key, with the defaults.
"""

from __future__ import annotations

import struct
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adversarial_corpus as ac
from adversarial_corpus import (
    ACK, LL_NET, PSH, PUB4, PUB4B, PUB4C, PUB6, PUB6_NET, PUB6B, RST, SYN, Blob, Env, cat, eth, ext_opts, frag6,
    addr6, gre, icmp, icmp6, ipv4, ipv6, kept_slots, nd_opt, routing6, tcp, tlv, udp,
)
from bridge.pcap import iter_packets, pack_record
from bridge.sanitize.engine import Sanitizer
from bridge.sanitize.policy import policy_from_flags

POLICIES = ("pnat", "cryptopan")


@pytest.fixture(scope="module")
def sanitizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Sanitizer]:
    """One sanitizer per invocation: `--pnat SPEC` and `--cryptopan-key FILE`, nothing else."""
    key = tmp_path_factory.mktemp("key") / "cryptopan.key"
    key.write_bytes(bytes(range(32)))
    return {"pnat": Sanitizer(policy_from_flags(pnat=ac.PNAT_SPEC)),
            "cryptopan": Sanitizer(policy_from_flags(cryptopan_key=str(key)))}


# ---------------------------------------------------------------- the property

def allowed_mask(pkt: Blob) -> np.ndarray:
    """Bytes where the two outputs may differ: private slots and checksum fields."""
    mask = np.zeros(len(pkt), dtype=bool)
    for s in pkt.slots:
        mask[s.off:s.off + s.size] = True
    for c in pkt.sums:
        mask[c.field:c.field + 2] = True
    return mask


def same_layout(a: Blob, b: Blob) -> bool:
    return (len(a) == len(b) and [(s.off, s.size) for s in a.slots] == [(s.off, s.size) for s in b.slots]
            and [c.field for c in a.sums] == [c.field for c in b.sums])


def interference(a: Blob, b: Blob, caplen: int, out_a: bytes | None, out_b: bytes | None,
                 mask: np.ndarray | None = None) -> list[tuple[str, int]]:
    """(problem, byte offset) for one template instantiated twice (a, b), captured up to caplen
    and sanitized into out_a, out_b (None: dropped). Empty when the property holds."""
    if (out_a is None) != (out_b is None):
        return [("verdict differs (kept under one assignment, dropped under the other)", -1)]
    if out_a is None or out_b is None:
        return []
    if len(out_a) != len(out_b):
        return [(f"length differs ({len(out_a)} vs {len(out_b)})", min(len(out_a), len(out_b)))]
    problems: list[tuple[str, int]] = []
    xa = np.frombuffer(out_a, dtype=np.uint8)
    xb = np.frombuffer(out_b, dtype=np.uint8)
    mask = allowed_mask(a) if mask is None else mask
    outside = np.nonzero((xa != xb) & ~mask[:len(xa)])[0]
    if len(outside):
        problems.append(("byte differs outside the slots and checksums", int(outside[0])))
    for pkt, out in ((a, out_a), (b, out_b)):
        problems += kept_slots(pkt, out)
        problems += [(f"bad checksum@{c.field}", c.field) for c in pkt.sums if c.verifies(out) is False]
    return sorted(set(problems), key=lambda p: p[1])


T0 = 1_700_000_000 * 10**9


def sanitize_pairs(sanitizer: Sanitizer, linktype: int, pairs: list[tuple[Blob, Blob, int]]
                   ) -> list[tuple[bytes | None, bytes | None]]:
    """Sanitize both instantiations of each (a, b, caplen) in one batch; outputs by pair."""
    recs = b"".join(pack_record(T0 + (2 * i + k) * 1000, x.data[:cap], origlen=len(x))
                    for i, (a, b, cap) in enumerate(pairs) for k, x in enumerate((a, b)))
    res = sanitizer.sanitize_batch(linktype, recs)
    outs: list[list[bytes | None]] = [[None, None] for _ in pairs]
    for ts, _cap, _orig, data in iter_packets(res.packets):
        j = (ts - T0) // 1000
        outs[j // 2][j % 2] = bytes(data)
    return [(x[0], x[1]) for x in outs]


# ---------------------------------------------------------------- generated templates

class Choices:
    """The hypothesis draws made while building a template under the first assignment,
    replayed under the second: both instantiations get the same structure (the builders'
    control flow never depends on the private values, only their bytes do)."""

    def __init__(self, draw: Callable) -> None:
        self._draw = draw
        self._log: list[object] = []
        self._pos: int | None = None

    def __call__(self, strategy: st.SearchStrategy):
        if self._pos is None:
            value = self._draw(strategy)
            self._log.append(value)
            return value
        value = self._log[self._pos]
        self._pos += 1
        return value

    def pick(self, *options):
        """One of the options; the index is what is recorded, so an option that is a private
        value of the first assignment is not replayed into the second."""
        return options[self(st.integers(0, len(options) - 1))]

    def replay(self) -> "Choices":
        self._pos = 0
        return self


V4_NAMES = ("host", "peer", "gw")  # few names, so that one address recurs across a packet
V6_NAMES = ("host6", "peer6", "gw6")
MACS = ac.MAC_NAMES
MAX_DEPTH = 2


class Gen:
    """Builds a random packet of the header types the walk parses; every decision is a
    recorded choice, every private value comes from the Env."""

    def __init__(self, c: Choices, env: Env) -> None:
        self.c = c
        self.env = env
        self.desc: list[str] = []

    # values ----------------------------------------------------------------
    def a4(self) -> Blob | bytes:
        if self.c.pick("private", "private", "public") == "public":
            return self.c.pick(PUB4, PUB4B, PUB4C)
        return self.env.v4(self.c.pick(*V4_NAMES))

    def a6(self) -> Blob | bytes:
        env, kind = self.env, self.c.pick("private", "private", "public", "slaac", "eui64_ll", "eui64_public", "embedded")
        if kind == "public":
            return self.c.pick(PUB6, PUB6B)
        if kind == "private":
            return env.v6(self.c.pick(*V6_NAMES))
        mac = self.c.pick(*MACS)
        if kind == "slaac":
            return env.slaac(self.c.pick(*V6_NAMES), mac)
        if kind == "eui64_ll":
            return addr6(LL_NET, env.eui64(mac))
        if kind == "eui64_public":
            return addr6(PUB6_NET, env.eui64(mac))
        v4 = env.v4(self.c.pick(*V4_NAMES))
        form = self.c.pick("compat", "mapped", "siit", "nat64", "nat64_local", "nat64_split", "isatap", "6to4", "teredo")
        self.desc.append(f"v6:{form}")
        if form == "teredo":
            return addr6(b"\x20\x01\0\0", self.c.pick(PUB4, env.v4("gw")), b"\x80\0\xf5\xfe", env.v4inv(self.c.pick(*V4_NAMES)))
        if form == "nat64_split":  # RFC 6052 /48 layout: around the u-octet; the second half is
            # host bits, which --pnat keeps by design (the 16-byte slot covers Crypto-PAn)
            return addr6(ac.a6("64:ff9b:1::")[:6], ac.private_bytes(v4.data[:2], "v4 split"), b"\0", v4.data[2:],
                         bytes(5))
        if form == "6to4":
            return addr6(b"\x20\x02", v4, bytes(10))
        prefix = {"compat": bytes(12), "mapped": bytes(10) + b"\xff\xff", "siit": bytes(8) + b"\xff\xff\0\0",
                  "nat64": ac.a6("64:ff9b::")[:12], "nat64_local": ac.a6("64:ff9b:1::")[:12],
                  "isatap": PUB6_NET + b"\0\0\x5e\xfe"}[form]
        return addr6(prefix, v4)

    def payload(self, limit: int = 4) -> Blob:
        """Bytes, possibly holding private values in any form."""
        parts: list[Blob | bytes] = []
        for kind in self.c(st.lists(st.sampled_from(["bytes", "bytes", "v4", "v6", "mac", "text", "v4inv"]), max_size=limit)):
            if kind == "bytes":
                parts.append(self.c(st.binary(max_size=12)))
            elif kind == "v4":
                parts.append(self.env.v4(self.c.pick(*V4_NAMES)))
            elif kind == "v4inv":
                parts.append(self.env.v4inv(self.c.pick(*V4_NAMES)))
            elif kind == "v6":
                parts.append(self.env.v6(self.c.pick(*V6_NAMES)))
            elif kind == "mac":
                parts.append(self.env.mac(self.c.pick(*MACS)))
            else:  # text forms have one length under every assignment (names ending in _t)
                which = self.c.pick("4", "6", "mac")
                parts.append(self.env.text4(self.c.pick(*V4_NAMES) + "_t") if which == "4" else
                             self.env.text6(self.c.pick(*V6_NAMES) + "_t") if which == "6" else
                             self.env.textmac(self.c.pick(*MACS)))
        return cat(*parts)

    def quote(self, pkt: Blob) -> Blob:
        """An ICMP error's quote: the whole packet or a prefix (routers quote 8 bytes past the header)."""
        return pkt.cut(self.c(st.integers(min(len(pkt), 20), len(pkt))))

    # network layers --------------------------------------------------------
    def ip4(self, depth: int = 0) -> Blob:
        src, dst = self.a4(), self.a4()
        opts = self.ip4_options()
        frag = self.c.pick("none", "none", "none", "first", "later")
        proto = self.c.pick(6, 6, 17, 17, 1, 1, 1, 47, 4, 41, 50)
        self.desc.append(f"ip4[{proto}{'' if frag == 'none' else ' ' + frag}]")
        if frag == "later":
            return ipv4(src, dst, proto, self.payload(), opts=opts, frag=self.c(st.integers(1, 0x1FFF)))
        l4 = self.l4(proto, src, dst, depth, v6=False)
        if frag == "first":
            full = ipv4(src, dst, proto, l4, opts=opts)  # the transport checksum covers the whole datagram
            ihl = (full.data[0] & 15) * 4
            return ipv4(src, dst, proto, full.sub(ihl, ihl + 8 * self.c(st.integers(1, max(1, len(l4) // 8)))),
                        opts=opts, frag=0x2000)
        return ipv4(src, dst, proto, l4, opts=opts, ttl=self.c(st.integers(1, 255)))

    def ip4_options(self) -> Blob:
        out = Blob()
        for kind in self.c(st.lists(st.sampled_from(["nop", "rr", "ts0", "ts1", "ts3", "lsrr", "ssrr", "ra", "unknown",
                                                      "traceroute", "eol"]), max_size=3)):
            if kind == "nop":
                opt = Blob(b"\x01")
            elif kind == "eol":
                opt = cat(b"\0", self.payload(1))  # what follows an EOL is padding, or not
            elif kind in ("rr", "lsrr", "ssrr"):
                n = self.c(st.integers(1, 4))
                ptr = 4 + 4 * self.c(st.integers(0, n))
                opt = cat(bytes([{"rr": 7, "lsrr": 131, "ssrr": 137}[kind], 3 + 4 * n, ptr]), *(self.a4() for _ in range(n)))
            elif kind.startswith("ts"):
                flag = int(kind[2])
                step = 4 if flag == 0 else 8
                n = self.c(st.integers(1, 4 if flag == 0 else 3))
                ptr = 5 + step * self.c(st.integers(0, n))
                entries = [struct.pack("!I", 1000 + k) if flag == 0 else cat(self.a4(), struct.pack("!I", 1000 + k))
                           for k in range(n)]
                opt = cat(bytes([68, 4 + step * n, ptr, flag]), *entries)
            elif kind == "ra":
                opt = Blob(b"\x94\x04\0\0")
            elif kind == "traceroute":
                opt = cat(b"\x52\x0c\0\x07\0\x01\xff\xff", self.a4())
            else:
                opt = cat(bytes([self.c.pick(0x9E, 0x1E, 0x5E), 6]), self.a4())
            if len(out) + len(opt) > 40:
                break
            out = out + opt
        return out

    def ip6(self, depth: int = 0) -> Blob:
        src, dst = self.a6(), self.a6()
        final = self.c.pick(6, 6, 17, 17, 58, 58, 58, 47, 4, 41, 50, 59)
        exts = self.c(st.lists(st.sampled_from(["hbh", "dst", "rh0", "rh2", "rh4", "frag_first", "frag_later", "ah"]),
                               max_size=3))
        self.desc.append(f"ip6[{','.join(exts)}>{final}]")
        later = "frag_later" in exts
        body = self.payload() if later else self.l4(final, src, dst, depth, v6=True)
        if "frag_first" in exts and not later:
            full = ipv6(src, dst, final, body)  # transport checksum over the whole datagram
            body = full.sub(40, 40 + 8 * self.c(st.integers(1, max(1, len(body) // 8))))
        for i, kind in reversed(list(enumerate(exts))):
            nh = final if i == len(exts) - 1 else {"hbh": 0, "dst": 60, "rh0": 43, "rh2": 43, "rh4": 43,
                                                   "frag_first": 44, "frag_later": 44, "ah": 51}[exts[i + 1]]
            body = cat(self.ext6(kind, nh), body)
        first = {"hbh": 0, "dst": 60, "rh0": 43, "rh2": 43, "rh4": 43, "frag_first": 44, "frag_later": 44, "ah": 51}
        return ipv6(src, dst, first[exts[0]] if exts else final, body, hlim=self.c(st.integers(1, 255)))

    def ext6(self, kind: str, nh: int) -> Blob:
        if kind in ("hbh", "dst"):
            tlvs: list[Blob | bytes] = []
            for t in self.c(st.lists(st.sampled_from(["pad1", "padn", "padn_dirty", "ra", "unknown", "home"]), max_size=3)):
                if t == "pad1":
                    tlvs.append(b"\0")
                elif t == "padn":
                    tlvs.append(b"\x01\x02\0\0")
                elif t == "padn_dirty":
                    tlvs.append(cat(b"\x01\x04", self.env.v4(self.c.pick(*V4_NAMES))))
                elif t == "ra":
                    tlvs.append(b"\x05\x02\0\0")
                elif t == "unknown":
                    tlvs.append(tlv(self.c.pick(0x1E, 0x3E, 0x7E), self.c.pick(self.a6(), self.a4())))
                else:
                    tlvs.append(tlv(0xC9, self.a6()))
            return ext_opts(nh, *tlvs)
        if kind.startswith("rh"):
            n = self.c(st.integers(1, 3))
            return routing6(nh, int(kind[2]), self.c(st.integers(0, n)), [self.a6() for _ in range(n)])
        if kind == "frag_first":
            return Blob(frag6(nh, 0, True))
        if kind == "frag_later":
            return Blob(frag6(nh, self.c(st.integers(1, 0x1FFF)), self.c(st.booleans())))
        return cat(bytes([nh, 4]), bytes(2), struct.pack("!II", 0x2002, 3), bytes(12))  # AH

    def arp(self) -> Blob:
        op = self.c.pick(1, 2, 3, 4)
        self.desc.append(f"arp[{op}]")
        env = self.env
        pkt = ac.arp(op, env.mac(self.c.pick(*MACS)), self.c.pick(self.a4(), bytes(4)),
                     self.c.pick(env.mac(self.c.pick(*MACS)), bytes(6)), self.a4())
        return cat(pkt, self.payload(3))

    def eth_inner(self, depth: int) -> Blob:
        env = self.env
        if self.c.pick("ip4", "ip6") == "ip4":
            inner, et = self.ip4(depth + 1), 0x0800
        else:
            inner, et = self.ip6(depth + 1), 0x86DD
        return eth(env.mac(self.c.pick(*MACS)), env.mac(self.c.pick(*MACS)), et, inner)

    # transports ------------------------------------------------------------
    def l4(self, proto: int, src: Blob | bytes, dst: Blob | bytes, depth: int, v6: bool) -> Blob:
        deeper = depth < MAX_DEPTH
        if proto == 6:
            return self.tcp(src, dst, v6)
        if proto == 17:
            return self.udp(depth)
        if proto == 1 and not v6:
            return self.icmp4(depth)
        if proto == 58 and v6:
            return self.icmp6(depth)
        if proto in (47, 4, 41, 50):
            self.desc.append({47: "gre", 4: "ipip", 41: "6in", 50: "esp"}[proto])
        if proto == 47 and deeper:
            inner_kind = self.c.pick("ip4", "ip6", "eth")
            inner = self.ip4(depth + 1) if inner_kind == "ip4" else self.ip6(depth + 1) if inner_kind == "ip6" else \
                self.eth_inner(depth)
            key = self.c.pick(None, 7, "addr")
            seq = self.c.pick(None, 9, "addr")
            return gre({"ip4": 0x0800, "ip6": 0x86DD, "eth": 0x6558}[inner_kind], inner, checksum=self.c(st.booleans()),
                       key=self.a4() if key == "addr" else key, seq=self.a4() if seq == "addr" else seq)
        if proto == 4 and deeper:
            return self.ip4(depth + 1)
        if proto == 41 and deeper:
            return self.ip6(depth + 1)
        if proto == 59:
            return Blob()
        return cat(struct.pack("!II", 0x1001, 7), self.payload())  # ESP, or nesting too deep

    def tcp(self, src: Blob | bytes, dst: Blob | bytes, v6: bool) -> Blob:
        flags = self.c.pick(SYN, SYN | ACK, RST, RST | ACK, ACK, PSH | ACK)
        seq_kind = self.c.pick("random", "random", "src", "dst")
        seq: int | Blob = self.c(st.integers(0, 2**32 - 1))
        if not v6 and seq_kind != "random":
            addr = src if seq_kind == "src" else dst
            seq = addr if isinstance(addr, Blob) else int.from_bytes(addr, "big")
        ack: int | Blob = self.c(st.integers(0, 2**32 - 1))
        if not v6 and flags & ACK and self.c.pick("random", "plus1") == "plus1" and isinstance(dst, Blob):
            ack = self.env.v4plus1(self._name_of(dst))
        opts = Blob()
        for kind in self.c(st.lists(st.sampled_from(["nop", "mss", "ws", "sackok", "sack", "ts", "mptcp_add4",
                                                      "mptcp_add6", "mptcp_other", "unknown", "eol"]), max_size=4)):
            opt = {"nop": lambda: Blob(b"\x01"), "mss": lambda: Blob(b"\x02\x04\x05\xb4"), "ws": lambda: Blob(b"\x03\x03\x07"),
                   "sackok": lambda: Blob(b"\x04\x02"), "sack": lambda: Blob(b"\x05\x0a" + bytes(range(8))),
                   "ts": lambda: Blob(b"\x08\x0a" + struct.pack("!II", 77, 0)),
                   "mptcp_add4": lambda: cat(b"\x1e\x08\x31\x01", self.a4()),
                   "mptcp_add6": lambda: cat(b"\x1e\x14\x31\x02", self.a6()),
                   "mptcp_other": lambda: Blob(b"\x1e\x0c\x00\x81" + bytes(range(8))),
                   "unknown": lambda: cat(bytes([self.c.pick(253, 99, 79), 6]), self.a4()),
                   "eol": lambda: cat(b"\0", self.payload(1))}[kind]()
            if len(opts) + len(opt) > 40:
                break
            opts = opts + opt
        self.desc.append("tcp")
        return tcp(self.c(st.integers(1, 65535)), self.c(st.integers(1, 65535)), seq=seq, ack=ack, flags=flags,
                   opts=opts, payload=self.payload())

    def _name_of(self, addr: Blob) -> str:
        return next(n for n, v in self.env.v4s.items() if v == addr.data)

    def udp(self, depth: int) -> Blob:
        env = self.env
        kind = self.c.pick("plain", "plain", "vxlan", "geneve", "gtpu", "l2tp", "teredo") if depth < MAX_DEPTH else "plain"
        self.desc.append(f"udp[{kind}]")
        if kind == "plain":
            return udp(self.c(st.integers(1, 65535)), self.c(st.integers(1, 65535)), self.payload(),
                       zero_sum=self.c(st.booleans()))
        if kind == "vxlan":
            return udp(49152, 4789, cat(b"\x08\0\0\0\0\x12\x34\0", self.eth_inner(depth)))
        if kind == "geneve":
            opt = cat(b"\x01\x03\x80\x01", self.a4())
            return udp(49152, 6081, cat(bytes([2, 0]), b"\x65\x58\0\x12\x34\0", opt, self.eth_inner(depth)))
        if kind == "gtpu":
            inner = self.ip4(depth + 1) if self.c.pick("ip4", "ip6") == "ip4" else self.ip6(depth + 1)
            return udp(2152, 2152, cat(struct.pack("!BBHI", 0x30, 0xFF, len(inner), 0x1234ABCD), inner))
        if kind == "l2tp":
            four = self.c.pick(True, False)
            inner = self.ip4(depth + 1) if four else self.ip6(depth + 1)
            return udp(1701, 1701, cat(b"\x00\x02\x00\x05\x00\x09\xff\x03", b"\x00\x21" if four else b"\x00\x57", inner))
        origin = cat(b"\0\0\xf5\xfe", env.v4inv(self.c.pick(*V4_NAMES))) if self.c(st.booleans()) else Blob()
        return udp(3544, 40000, cat(origin, self.ip6(depth + 1)))

    def icmp4(self, depth: int) -> Blob:
        t = self.c.pick(0, 8, 3, 11, 12, 4, 5, 13, 14, 17, 18, 9) if depth < MAX_DEPTH else self.c.pick(0, 8, 13, 17, 18)
        self.desc.append(f"icmp[{t}]")
        if t in (3, 4, 5, 11, 12):
            rest = self.a4() if t == 5 else bytes(4)
            return icmp(t, self.c(st.integers(0, 15)), rest, self.quote(self.ip4(depth + 1)))
        if t == 9:
            n = self.c(st.integers(1, 3))
            return icmp(9, 0, bytes([n, 2, 7, 8]), cat(*(cat(self.a4(), bytes(4)) for _ in range(n))))
        if t in (17, 18):
            return icmp(t, 0, b"\0\x07\0\x01", self.a4())
        if t in (13, 14):
            return icmp(t, 0, b"\0\x07\0\x01", bytes(12))
        return icmp(t, 0, b"\x12\x34\0\x01", self.payload())

    def icmp6(self, depth: int) -> Blob:
        t = self.c.pick(128, 129, 1, 2, 3, 4, 133, 134, 135, 136, 137, 130, 131, 132, 143)
        if depth >= MAX_DEPTH and t in (1, 2, 3, 4, 137):
            t = 128
        self.desc.append(f"icmp6[{t}]")
        if t in (1, 2, 3, 4):
            return icmp6(t, 0, cat(struct.pack("!I", 1280 if t == 2 else 0), self.quote(self.ip6(depth + 1))))
        if t in (128, 129):
            return icmp6(t, 0, cat(b"\x12\x34\0\x01", self.payload()))
        if t in (130, 131, 132):
            return icmp6(t, 0, cat(b"\x03\xe8\0\0", self.a6()))
        if t == 143:
            n = self.c(st.integers(0, 2))
            rec = cat(bytes([1, 0]), struct.pack("!H", n), ac.a6("ff3e::1234"), *(self.a6() for _ in range(n)))
            return icmp6(143, 0, cat(b"\0\0\0\x01", rec))
        head = {133: Blob(bytes(4)), 134: Blob(struct.pack("!BBHII", 64, 0, 1800, 0, 0)),
                135: cat(bytes(4), self.a6()), 136: cat(b"\x60\0\0\0", self.a6())}.get(t)
        if t == 137:
            head = cat(bytes(4), self.a6(), self.a6())
        opts = Blob()
        for kind in self.c(st.lists(st.sampled_from(["slla", "tlla", "pio", "rio", "rdnss", "dnssl", "mtu", "unknown"]),
                                    max_size=3)):
            env = self.env
            if kind in ("slla", "tlla"):
                opts = opts + nd_opt(1 if kind == "slla" else 2, env.mac(self.c.pick(*MACS)))
            elif kind == "pio":
                opts = opts + nd_opt(3, cat(bytes([64, 0xC0]), struct.pack("!III", 86400, 14400, 0),
                                            env.v6prefix(self.c.pick(*V6_NAMES))))
            elif kind == "rio":
                opts = opts + nd_opt(24, cat(bytes([48, 0]), struct.pack("!I", 600), env.v6prefix(self.c.pick(*V6_NAMES))))
            elif kind == "rdnss":
                opts = opts + nd_opt(25, cat(b"\0\0", struct.pack("!I", 600), self.a6()))
            elif kind == "dnssl":
                labels = ac.private_bytes(b"".join(bytes([1, ord(x)]) for x in reversed(env.v6_value(self.c.pick(*V6_NAMES))[:8].hex())),
                                  "name")
                opts = opts + nd_opt(31, cat(b"\0\0", struct.pack("!I", 600), ac.dns_name(labels, b"ip6", b"arpa")))
            elif kind == "mtu":
                opts = opts + nd_opt(5, b"\0\0\0\0\x05\xdc")
            else:
                opts = opts + nd_opt(self.c.pick(200, 199, 253), cat(bytes(6), self.a6()))
        if t == 137 and depth < MAX_DEPTH and self.c(st.booleans()):
            opts = opts + nd_opt(4, cat(bytes(6), self.ip6(depth + 1)))
        return icmp6(t, 0, cat(head, opts))

    # frames ----------------------------------------------------------------
    def frame(self) -> tuple[ac.Link, Blob]:
        link = self.c.pick(*ac.LINKS)
        net = self.c.pick(*[n for n in ("ip4", "ip4", "ip4", "ip6", "ip6", "ip6", "arp", "rarp") if n in link.nets])
        self.desc.append(link.name)
        l3 = self.ip4() if net == "ip4" else self.ip6() if net == "ip6" else self.arp()
        if link.name == "null" and self.c(st.booleans()):
            # other families and the capturing host's byte order
            fam = 2 if net == "ip4" else self.c.pick(10, 24, 28, 30)
            return link, cat(struct.pack(self.c.pick("<I", ">I"), fam), l3)
        return link, link.wrap(l3, net, self.env)


@dataclass
class Case:
    """A template instantiated twice, and where it is cut."""

    name: str
    linktype: int
    a: Blob
    b: Blob
    caplen: int

    def __repr__(self) -> str:
        return f"Case({self.name!r}, linktype {self.linktype}, cut {self.caplen}/{len(self.a)}, a={self.a.data.hex()})"

    def _repr_pretty_(self, p: object, cycle: bool) -> None:  # hypothesis prints the falsifying case with this
        p.text(repr(self))  # type: ignore[attr-defined]


def _assignments() -> st.SearchStrategy[tuple[Env, Env]]:
    return st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)).filter(lambda s: s[0] != s[1]).map(
        lambda s: (Env(s[0], random_macs=True), Env(s[1], random_macs=True)))


@st.composite
def generated(draw: Callable) -> Case:
    """A generated template under two assignments, cut somewhere or captured whole."""
    env_a, env_b = draw(_assignments())
    c = Choices(draw)
    gen = Gen(c, env_a)
    link, a = gen.frame()
    _, b = Gen(c.replay(), env_b).frame()
    assert same_layout(a, b), f"template layout depends on the assignment: {gen.desc}"
    caplen = draw(st.one_of(st.just(len(a)), st.integers(0, len(a))))
    return Case("/".join(gen.desc), link.linktype, a, b, caplen)


@st.composite
def corpus_classes(draw: Callable) -> Case:
    """An adversarial corpus class as a template: any link type, any cut, any two assignments."""
    env_a, env_b = draw(_assignments())
    cls = draw(st.sampled_from(ac.CLASSES))
    link = draw(st.sampled_from([lk for lk in ac.LINKS if cls.net in lk.nets]))
    a, b = ac.frame(cls, link, env_a), ac.frame(cls, link, env_b)
    return Case(f"{cls.name}/{link.name}", link.linktype, a, b, draw(st.integers(0, len(a))))


def check(sanitizers: dict[str, Sanitizer], case: Case) -> None:
    for name in POLICIES:
        (out_a, out_b), = sanitize_pairs(sanitizers[name], case.linktype, [(case.a, case.b, case.caplen)])
        problems = interference(case.a, case.b, case.caplen, out_a, out_b)
        assert not problems, (
            f"{name}: {case.name} cut at {case.caplen}/{len(case.a)}: {problems}\n"
            f"a:   {case.a.data[:case.caplen].hex()}\nb:   {case.b.data[:case.caplen].hex()}\n"
            f"out: {None if out_a is None else out_a.hex()}\nout: {None if out_b is None else out_b.hex()}\n"
            f"slots: {[(s.off, s.size, s.kind) for s in case.a.slots]}")


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(generated())
def test_generated_packets_do_not_interfere(sanitizers: dict[str, Sanitizer], case: Case) -> None:
    check(sanitizers, case)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpus_classes())
def test_corpus_classes_do_not_interfere(sanitizers: dict[str, Sanitizer], case: Case) -> None:
    check(sanitizers, case)


def test_every_corpus_class_link_and_cut_does_not_interfere(sanitizers: dict[str, Sanitizer]) -> None:
    """Every class of the adversarial corpus, in every link type, at every cut, under two fixed
    assignments; a failure prints class -> link type -> problem -> packets, first offset."""
    env_a, env_b = Env(101, random_macs=True), Env(202, random_macs=True)
    by_type: dict[int, list[tuple[ac.Sample, ac.Sample]]] = defaultdict(list)
    for sa, sb in zip(ac.samples(env_a), ac.samples(env_b)):
        assert (sa.cls, sa.link, sa.caplen) == (sb.cls, sb.link, sb.caplen) and same_layout(sa.frame, sb.frame)
        by_type[sa.link.linktype].append((sa, sb))
    found: dict[tuple[str, str, str], list[tuple[int, int]]] = defaultdict(list)
    for name in POLICIES:
        for linktype, pairs in by_type.items():
            outs = sanitize_pairs(sanitizers[name], linktype, [(sa.frame, sb.frame, sa.caplen) for sa, sb in pairs])
            masks: dict[int, np.ndarray] = {}
            for (sa, sb), (out_a, out_b) in zip(pairs, outs):
                mask = masks.get(id(sa.frame))
                if mask is None:
                    mask = masks[id(sa.frame)] = allowed_mask(sa.frame)
                for what, off in interference(sa.frame, sb.frame, sa.caplen, out_a, out_b, mask):
                    found[(sa.cls.name, sa.link.name, f"{name}: {what}")].append((sa.caplen, off))
    order = {c.name: i for i, c in enumerate(ac.CLASSES)}
    lines = [f"{cls:34} {link:10} {len(v):5}  {what} (first: cut {min(v)[0]}, byte {min(v)[1]})"
             for (cls, link, what), v in sorted(found.items(), key=lambda kv: (order[kv[0][0]], kv[0][1], kv[0][2]))]
    if lines:
        per_class = Counter(cls for cls, _, _ in found)
        lines.append(f"{len(per_class)} classes: {', '.join(sorted(per_class, key=order.get))}")
    assert not lines, "\n" + "\n".join(lines)
