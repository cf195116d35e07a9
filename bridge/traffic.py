"""Synthetic darknet-telescope traffic with ground truth (pure core).

The generator produces what a network telescope captures: backscatter of
spoofed-source DDoS attacks (victims answering spoofed packets), scans, noise and
short bursts, as canonical little-endian pcap records (Ethernet, linktype 1) with
every IPv4/IPv6/TCP/UDP/ICMP checksum right, plus the list of simulated attacks
that a detector should find (shared/reference/backscatter.md §H test shapes).

Frames are built a whole component at a time with numpy (one row per packet),
never packet by packet, so a million packets take a few seconds. Output is
deterministic for a given scenario seed and ``chunk_packets``: ``generate`` is the
concatenation of ``stream``.

Rates follow Moore et al.: an attack of ``pps`` packets/s with uniformly spoofed
sources puts ``pps * n / 2**32`` replies/s on a telescope of ``n`` addresses.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import numpy as np

from bridge.backscatter.classify import select_records
from bridge.backscatter.telescope import PrefixSet
from bridge.pcap import LINKTYPE_ETHERNET, PcapHeader, write_pcap as _write_pcap_records

ATTACK_KINDS = ("syn_flood", "rst_flood", "udp_flood", "ttl_exceeded", "host_unreachable", "icmp_flood")
"""Attack shapes: what the victim (or a router in front of it) sends back to spoofed sources."""

BACKGROUND_KINDS = (
    "syn_scan", "mirai", "masscan", "icmp_echo", "udp_probe", "tcp_ack",
    "arp", "ipv6_syn", "icmpv6_echo", "backscatter_noise",
)
"""Background traffic: scans and probes (never attacks), noise, and one-packet backscatter of random victims."""

KINDS = ATTACK_KINDS + BACKGROUND_KINDS
"""Per-packet kind labels; ``GeneratedTraffic.kind`` holds indexes into this tuple."""

BACKSCATTER_KINDS = frozenset(ATTACK_KINDS + ("backscatter_noise",))
"""Kinds a Corsaro-style classifier must call backscatter (everything else is not)."""

ATTACKED_PROTOCOL = {
    "syn_flood": "tcp", "rst_flood": "tcp", "udp_flood": "udp",
    "ttl_exceeded": "tcp", "host_unreachable": "tcp", "icmp_flood": "icmp",
}

DEFAULT_BACKGROUND: tuple[tuple[str, float], ...] = (
    ("syn_scan", 0.40), ("mirai", 0.15), ("masscan", 0.10), ("icmp_echo", 0.08),
    ("udp_probe", 0.10), ("tcp_ack", 0.04), ("arp", 0.03), ("ipv6_syn", 0.02),
    ("icmpv6_echo", 0.02), ("backscatter_noise", 0.06),
)

SENSOR_MAC = bytes.fromhex("020000d40001")
ROUTER_MAC = bytes.fromhex("020000d400fe")
BROADCAST_MAC = b"\xff" * 6

_NS = 1_000_000_000
# First octets of public unicast space: private, loopback, CGNAT, link-local, multicast
# and documentation-heavy /8s are left out so random remote hosts never look private.
_PUBLIC_FIRST_OCTETS = np.array(
    [o for o in range(1, 224) if o not in (10, 100, 127, 169, 172, 192, 198, 203)], dtype=np.uint32
)
_SCAN_PORTS = np.array([22, 23, 80, 443, 445, 1433, 3389, 5900, 8080, 8443], dtype=np.uint16)
_UDP_PORTS = np.array([53, 123, 161, 1900, 5060, 11211], dtype=np.uint16)
_SCANNER_POOL = 4096


@dataclass(frozen=True)
class Attack:
    """A spoofed-source attack seen through its backscatter.

    ``pps`` is the victim's true reply rate (what an analyzer's estimate should
    approach); ``port`` is the attacked port (ignored for ``icmp_flood``);
    ``responder`` is the router that answers for ``ttl_exceeded``/``host_unreachable``
    (default: the .1 of the victim's /24). Times are seconds from the run start.
    """

    kind: str
    victim: str
    port: int = 0
    pps: float = 100_000.0
    start_s: float = 0.0
    duration_s: float = 600.0
    responder: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ATTACK_KINDS:
            raise ValueError(f"unknown attack kind {self.kind!r}; expected one of {ATTACK_KINDS}")


@dataclass(frozen=True)
class Burst:
    """A short run of backscatter-shaped packets (``packets`` of them, spread evenly
    over ``duration_s``) that stays below attack thresholds: noise, not truth."""

    kind: str
    victim: str
    port: int = 0
    packets: int = 20
    start_s: float = 0.0
    duration_s: float = 30.0
    responder: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ATTACK_KINDS:
            raise ValueError(f"unknown burst kind {self.kind!r}; expected one of {ATTACK_KINDS}")


@dataclass(frozen=True)
class Scenario:
    """What the telescope sees.

    ``telescope``: monitored IPv4 prefixes (may overlap; their union is the
    telescope). ``background``: (kind, weight) mix that fills the packet budget not
    used by attacks and bursts. ``telescope6``: prefix for the IPv6 noise.
    """

    telescope: tuple[str, ...] = ("10.1.0.0/16",)
    attacks: tuple[Attack, ...] = ()
    bursts: tuple[Burst, ...] = ()
    background: tuple[tuple[str, float], ...] = DEFAULT_BACKGROUND
    telescope6: str = "fd00:d4::/64"
    seed: int = 0

    def __post_init__(self) -> None:
        for kind, weight in self.background:
            if kind not in BACKGROUND_KINDS or weight < 0:
                raise ValueError(f"bad background entry {(kind, weight)!r}")


@dataclass(frozen=True)
class SimulatedAttack:
    """Ground truth for one attack, as a detector should report it."""

    kind: str
    victim: str
    protocol: str
    port: int | None
    pps: float
    start_ns: int
    end_ns: int
    responder: str
    monitored_addresses: int
    observed_pps: float
    observed_packets: int


@dataclass(frozen=True)
class GeneratedTraffic:
    """Packets in time order plus per-packet labels and the run's ground truth.

    ``packets``: canonical records (see bridge.pcap). Per packet: ``ts_ns``,
    ``offsets`` (record header offsets), ``kind`` (index into KINDS), ``attack``
    (index into ``truth``, -1 if none) and ``telescope_addr`` (receiving IPv4
    telescope address as an int, ARP target for ARP, 0 for IPv6).
    ``truth`` always describes the whole run, also on a streamed chunk.
    """

    packets: bytes
    count: int
    truth: list[SimulatedAttack]
    ts_ns: np.ndarray = field(repr=False)
    offsets: np.ndarray = field(repr=False)
    kind: np.ndarray = field(repr=False)
    attack: np.ndarray = field(repr=False)
    telescope_addr: np.ndarray = field(repr=False)
    nsec: bool = False

    @property
    def header(self) -> PcapHeader:
        """The pcap global header describing ``packets``."""
        return PcapHeader(LINKTYPE_ETHERNET, 65535, self.nsec)


# --------------------------------------------------------------------------- addresses


def _ip4(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


class _Telescope(PrefixSet):
    """The telescope's address union, sampled uniformly."""

    def __init__(self, prefixes: Sequence[str]) -> None:
        super().__init__(prefixes)
        if self.size == 0:
            raise ValueError("a telescope needs at least one prefix")
        self.cum = np.cumsum(self.ends - self.starts)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        u = rng.integers(0, self.size, n, dtype=np.int64)
        idx = np.searchsorted(self.cum, u, side="right")
        before = self.cum[idx] - (self.ends[idx] - self.starts[idx])
        return (self.starts[idx] + (u - before)).astype(np.uint32)


def monitored_addresses(prefixes: Sequence[str]) -> int:
    """Number of distinct IPv4 addresses in the union of ``prefixes``."""
    return PrefixSet(prefixes).size


def _public(rng: np.random.Generator, n: int) -> np.ndarray:
    first = rng.choice(_PUBLIC_FIRST_OCTETS, n)
    return (first << 24) | rng.integers(0, 1 << 24, n, dtype=np.uint32)


def _u32(values: np.ndarray | int, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(values, dtype=np.uint32), (n,))


# --------------------------------------------------------------------------- frame building


def _put16(rows: np.ndarray, off: int, values: np.ndarray | int) -> None:
    v = _u32(values, rows.shape[0])
    rows[:, off] = v >> 8
    rows[:, off + 1] = v & 0xFF


def _put32(rows: np.ndarray, off: int, values: np.ndarray | int) -> None:
    v = _u32(values, rows.shape[0])
    for i in range(4):
        rows[:, off + i] = (v >> (24 - 8 * i)) & 0xFF


def _sum16(rows: np.ndarray) -> np.ndarray:
    """Per-row sum of big-endian 16-bit words (odd tail padded with zero)."""
    hi = rows[:, 0::2].sum(axis=1, dtype=np.uint64)
    lo = rows[:, 1::2].sum(axis=1, dtype=np.uint64)
    return (hi << np.uint64(8)) + lo


def _fold(total: np.ndarray) -> np.ndarray:
    s = total.astype(np.uint64)
    for _ in range(3):
        s = (s & np.uint64(0xFFFF)) + (s >> np.uint64(16))
    return (~s & np.uint64(0xFFFF)).astype(np.uint32)


def _words(addrs: np.ndarray) -> np.ndarray:
    a = addrs.astype(np.uint64)
    return (a >> np.uint64(16)) + (a & np.uint64(0xFFFF))


def _tcp(n: int, sport, dport, seq, ack, flags: int | np.ndarray, window, options: bytes = b"") -> np.ndarray:
    """TCP headers (checksum left zero: the IP layer fills it)."""
    rows = np.zeros((n, 20 + len(options)), dtype=np.uint8)
    _put16(rows, 0, sport)
    _put16(rows, 2, dport)
    _put32(rows, 4, seq)
    _put32(rows, 8, ack)
    rows[:, 12] = ((20 + len(options)) // 4) << 4
    rows[:, 13] = np.asarray(flags, dtype=np.uint8)
    _put16(rows, 14, window)
    if options:
        rows[:, 20:] = np.frombuffer(options, dtype=np.uint8)
    return rows


def _udp(n: int, sport, dport, payload: np.ndarray) -> np.ndarray:
    rows = np.zeros((n, 8 + payload.shape[1]), dtype=np.uint8)
    _put16(rows, 0, sport)
    _put16(rows, 2, dport)
    _put16(rows, 4, rows.shape[1])
    rows[:, 8:] = payload
    return rows


def _icmp(n: int, icmp_type: int, code: int, rest, body: np.ndarray) -> np.ndarray:
    """ICMP or ICMPv6 message; ICMPv4 checksum computed here (ICMPv6 needs the IPv6 layer)."""
    rows = np.zeros((n, 8 + body.shape[1]), dtype=np.uint8)
    rows[:, 0] = icmp_type
    rows[:, 1] = code
    _put32(rows, 4, rest)
    rows[:, 8:] = body
    if icmp_type < 128:
        _put16(rows, 2, _fold(_sum16(rows)))
    return rows


_L4_CHECKSUM_AT = {6: 16, 17: 6, 58: 2}


def _ipv4(src, dst, proto: int, ttl, ident, l4: np.ndarray, df: bool = True) -> np.ndarray:
    """IPv4 packets around ``l4`` with header and TCP/UDP checksums filled."""
    n, l4_len = l4.shape
    rows = np.zeros((n, 20 + l4_len), dtype=np.uint8)
    rows[:, 0] = 0x45
    _put16(rows, 2, 20 + l4_len)
    _put16(rows, 4, ident)
    rows[:, 6] = 0x40 if df else 0
    rows[:, 8] = np.asarray(ttl, dtype=np.uint8)
    rows[:, 9] = proto
    _put32(rows, 12, src)
    _put32(rows, 16, dst)
    rows[:, 20:] = l4
    if proto in (6, 17):
        pseudo = _words(_u32(src, n)) + _words(_u32(dst, n)) + np.uint64(proto + l4_len)
        at = 20 + _L4_CHECKSUM_AT[proto]
        csum = _fold(pseudo + _sum16(rows[:, 20:]))
        if proto == 17:
            csum[csum == 0] = 0xFFFF  # zero means "no checksum" in UDP
        _put16(rows, at, csum)
    _put16(rows, 10, _fold(_sum16(rows[:, :20])))
    return rows


def _ipv6(src: np.ndarray, dst: np.ndarray, nh: int, hlim, l4: np.ndarray) -> np.ndarray:
    """IPv6 packets (addresses as (n, 16) byte rows) with the L4 checksum filled."""
    n, l4_len = l4.shape
    rows = np.zeros((n, 40 + l4_len), dtype=np.uint8)
    rows[:, 0] = 0x60
    _put16(rows, 4, l4_len)
    rows[:, 6] = nh
    rows[:, 7] = np.asarray(hlim, dtype=np.uint8)
    rows[:, 8:24] = src
    rows[:, 24:40] = dst
    rows[:, 40:] = l4
    pseudo = _sum16(rows[:, 8:40]) + np.uint64(l4_len + nh)
    _put16(rows, 40 + _L4_CHECKSUM_AT[nh], _fold(pseudo + _sum16(rows[:, 40:])))
    return rows


def _ethernet(payload: np.ndarray, ethertype: int, dst_mac: bytes = SENSOR_MAC, src_mac: bytes = ROUTER_MAC) -> np.ndarray:
    n = payload.shape[0]
    rows = np.empty((n, 14 + payload.shape[1]), dtype=np.uint8)
    rows[:, 0:6] = np.frombuffer(dst_mac, dtype=np.uint8)
    rows[:, 6:12] = np.frombuffer(src_mac, dtype=np.uint8)
    _put16(rows, 12, ethertype)
    rows[:, 14:] = payload
    return rows


_MSS_OPTION = bytes.fromhex("020405b4")


class _Builder:
    """Builds the frames of one packet kind; returns (frames, telescope address)."""

    def __init__(self, scenario: Scenario) -> None:
        self.telescope = _Telescope(scenario.telescope)
        net6 = ipaddress.IPv6Network(scenario.telescope6, strict=False)
        self.net6 = np.frombuffer(net6.network_address.packed, dtype=np.uint8)
        self.host6_bits = min(64, 128 - net6.prefixlen)
        self.gateway = int(self.telescope.starts[0]) + 1
        pool_rng = np.random.default_rng([scenario.seed, 0x5CA7])
        self.scanners = _public(pool_rng, _SCANNER_POOL)

    # -- attack replies: victim (or its router) answers a spoofed telescope source
    def attack(self, rng: np.random.Generator, kind: str, n: int, victim: int, port: int, responder: int) -> tuple[np.ndarray, np.ndarray]:
        tele = self.telescope.sample(rng, n)
        ttl = 40 + victim % 24  # one path per victim: a steady TTL
        ident = rng.integers(0, 1 << 16, n, dtype=np.uint32)
        eph = rng.integers(1024, 65536, n, dtype=np.uint32)
        rand32 = rng.integers(0, 1 << 32, n, dtype=np.uint32)
        if kind == "syn_flood":
            l4 = _tcp(n, port, eph, rand32, rng.integers(0, 1 << 32, n, dtype=np.uint32), 0x12, 64240, _MSS_OPTION)
            return _ethernet(_ipv4(victim, tele, 6, ttl, ident, l4), 0x0800), tele
        if kind == "rst_flood":
            l4 = _tcp(n, port, eph, 0, rand32, 0x14, 0)
            return _ethernet(_ipv4(victim, tele, 6, ttl, ident, l4), 0x0800), tele
        if kind == "udp_flood":
            # Port unreachable quoting the whole spoofed datagram (inner src = telescope address).
            payload = rng.integers(0, 256, (n, 32), dtype=np.uint8)
            inner = _ipv4(tele, victim, 17, rng.integers(30, 64, n, dtype=np.uint32), ident, _udp(n, eph, port, payload), df=False)
            l4 = _icmp(n, 3, 3, 0, inner)
            return _ethernet(_ipv4(victim, tele, 1, ttl, rng.integers(0, 1 << 16, n, dtype=np.uint32), l4), 0x0800), tele
        if kind in ("ttl_exceeded", "host_unreachable"):
            # A router in front of the victim answers the spoofed SYN; RFC 792 quote: IP header + 8 bytes.
            inner_ttl = 1 if kind == "ttl_exceeded" else 40
            syn = _tcp(n, eph, port, rand32, 0, 0x02, 64240, _MSS_OPTION)
            inner = _ipv4(tele, victim, 6, inner_ttl, ident, syn)[:, :28]
            icmp_type, code = (11, 0) if kind == "ttl_exceeded" else (3, 1)
            l4 = _icmp(n, icmp_type, code, 0, inner)
            return _ethernet(_ipv4(responder, tele, 1, ttl, rng.integers(0, 1 << 16, n, dtype=np.uint32), l4, df=False), 0x0800), tele
        # icmp_flood: echo replies to the spoofed echo requests
        body = np.broadcast_to(np.arange(56, dtype=np.uint8), (n, 56))
        l4 = _icmp(n, 0, 0, rand32, body)
        return _ethernet(_ipv4(victim, tele, 1, ttl, ident, l4, df=False), 0x0800), tele

    # -- background
    def background(self, rng: np.random.Generator, kind: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        if kind == "arp":
            return self._arp(rng, n)
        if kind in ("ipv6_syn", "icmpv6_echo"):
            return self._ipv6(rng, kind, n), np.zeros(n, dtype=np.uint32)
        tele = self.telescope.sample(rng, n)
        src = rng.choice(self.scanners, n)
        ident = rng.integers(0, 1 << 16, n, dtype=np.uint32)
        ttl = rng.integers(40, 65, n, dtype=np.uint32)
        eph = rng.integers(1024, 65536, n, dtype=np.uint32)
        rand32 = rng.integers(0, 1 << 32, n, dtype=np.uint32)
        if kind == "syn_scan":
            l4 = _tcp(n, eph, rng.choice(_SCAN_PORTS, n), rand32, 0, 0x02, 29200, _MSS_OPTION)
            frames = _ipv4(src, tele, 6, ttl, ident, l4)
        elif kind == "mirai":
            # Mirai scanner.c: seq = destination address, no options, random window, telnet ports.
            dport = np.where(rng.random(n) < 0.9, 23, 2323)
            l4 = _tcp(n, eph, dport, tele, 0, 0x02, rng.integers(1, 1 << 16, n, dtype=np.uint32))
            frames = _ipv4(src, tele, 6, ttl, ident, l4, df=False)
        elif kind == "masscan":
            l4 = _tcp(n, eph, rng.choice(_SCAN_PORTS, n), rand32, 0, 0x02, 1024)
            frames = _ipv4(src, tele, 6, rng.integers(200, 256, n, dtype=np.uint32), ident, l4, df=False)
        elif kind == "icmp_echo":
            l4 = _icmp(n, 8, 0, rand32, np.zeros((n, 8), dtype=np.uint8))
            frames = _ipv4(src, tele, 1, ttl, ident, l4, df=False)
        elif kind == "udp_probe":
            l4 = _udp(n, eph, rng.choice(_UDP_PORTS, n), rng.integers(0, 256, (n, 16), dtype=np.uint8))
            frames = _ipv4(src, tele, 17, ttl, ident, l4, df=False)
        elif kind == "tcp_ack":
            l4 = _tcp(n, rng.choice(_SCAN_PORTS, n), eph, rand32, rng.integers(0, 1 << 32, n, dtype=np.uint32), 0x10, 501)
            frames = _ipv4(src, tele, 6, ttl, ident, l4)
        else:  # backscatter_noise: one stray SYN-ACK or RST from a random host
            flags = np.where(rng.random(n) < 0.5, 0x12, 0x14).astype(np.uint8)
            l4 = _tcp(n, rng.choice(_SCAN_PORTS, n), eph, rand32, rng.integers(0, 1 << 32, n, dtype=np.uint32), flags, 8192)
            frames = _ipv4(_public(rng, n), tele, 6, ttl, ident, l4)
        return _ethernet(frames, 0x0800), tele

    def _arp(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        # The upstream router asks for telescope addresses (who-has target tell gateway).
        tele = self.telescope.sample(rng, n)
        rows = np.zeros((n, 28), dtype=np.uint8)
        rows[:, 0:8] = np.frombuffer(bytes.fromhex("0001080006040001"), dtype=np.uint8)
        rows[:, 8:14] = np.frombuffer(ROUTER_MAC, dtype=np.uint8)
        _put32(rows, 14, self.gateway)
        _put32(rows, 24, tele)
        return _ethernet(rows, 0x0806, BROADCAST_MAC), tele

    def _ipv6(self, rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
        dst = np.broadcast_to(self.net6, (n, 16)).copy()
        host = rng.integers(0, 1 << 63, n, dtype=np.uint64) >> np.uint64(64 - self.host6_bits)
        for i in range(8):
            dst[:, 15 - i] |= ((host >> np.uint64(8 * i)) & np.uint64(0xFF)).astype(np.uint8)
        src = np.zeros((n, 16), dtype=np.uint8)
        src[:, 0:4] = np.frombuffer(bytes.fromhex("20010db8"), dtype=np.uint8)  # documentation prefix
        src[:, 8:16] = rng.integers(0, 256, (n, 8), dtype=np.uint8)
        hlim = rng.integers(40, 65, n, dtype=np.uint32)
        if kind == "ipv6_syn":
            l4 = _tcp(n, rng.integers(1024, 65536, n, dtype=np.uint32), rng.choice(_SCAN_PORTS, n),
                      rng.integers(0, 1 << 32, n, dtype=np.uint32), 0, 0x02, 28800, _MSS_OPTION)
            pkt = _ipv6(src, dst, 6, hlim, l4)
        else:
            l4 = _icmp(n, 128, 0, rng.integers(0, 1 << 32, n, dtype=np.uint32), np.zeros((n, 16), dtype=np.uint8))
            pkt = _ipv6(src, dst, 58, hlim, l4)
        return _ethernet(pkt, 0x86DD)


# --------------------------------------------------------------------------- planning and assembly


@dataclass(frozen=True)
class _Source:
    """One timed packet source: an attack, a burst or the background mix."""

    kind: str
    start_ns: int
    end_ns: int
    total: int  # packets over [start_ns, end_ns)
    victim: int = 0
    port: int = 0
    responder: int = 0
    attack_index: int = -1

    def cumulative(self, t: int) -> int:
        """Packets emitted before time t: an exact integer ramp, so slicing never changes totals."""
        span = self.end_ns - self.start_ns
        if span <= 0:
            return 0
        done = min(max(t, self.start_ns), self.end_ns) - self.start_ns
        return self.total * done // span


def _responder(victim: int, given: str | None) -> int:
    if given is not None:
        return _ip4(given)
    return (victim & 0xFFFFFF00) | (254 if victim & 0xFF == 1 else 1)


class _Plan:
    def __init__(self, scenario: Scenario, start_ns: int, duration_s: float, rate: float) -> None:
        self.scenario = scenario
        self.builder = _Builder(scenario)
        self.start = int(start_ns)
        self.end = self.start + int(round(duration_s * _NS))
        n = self.builder.telescope.size
        self.sources: list[_Source] = []
        self.truth: list[SimulatedAttack] = []
        for a in scenario.attacks:
            a0, a1 = self._window(a.start_s, a.duration_s)
            observed = a.pps * n / 2**32
            total = int(observed * (a1 - a0) / _NS) if a1 > a0 else 0
            victim = _ip4(a.victim)
            responder = _responder(victim, a.responder) if a.kind in ("ttl_exceeded", "host_unreachable") else victim
            self.sources.append(_Source(a.kind, a0, a1, total, victim, a.port, responder, len(self.truth)))
            self.truth.append(SimulatedAttack(
                kind=a.kind, victim=a.victim, protocol=ATTACKED_PROTOCOL[a.kind],
                port=None if a.kind == "icmp_flood" else a.port, pps=a.pps, start_ns=a0, end_ns=a1,
                responder=str(ipaddress.IPv4Address(responder)), monitored_addresses=n,
                observed_pps=observed, observed_packets=total,
            ))
        for b in scenario.bursts:
            b0, b1 = self._window(b.start_s, b.duration_s)
            victim = _ip4(b.victim)
            responder = _responder(victim, b.responder) if b.kind in ("ttl_exceeded", "host_unreachable") else victim
            self.sources.append(_Source(b.kind, b0, b1, b.packets if b1 > b0 else 0, victim, b.port, responder))
        budget = int(round(rate * duration_s)) - sum(s.total for s in self.sources)
        weights = [w for _, w in scenario.background]
        if budget > 0 and sum(weights) > 0:
            self.sources.append(_Source("background", self.start, self.end, budget))
        self.mix = [k for k, _ in scenario.background]
        self.mix_p = np.array(weights, dtype=np.float64) / (sum(weights) or 1.0)

    def _window(self, start_s: float, duration_s: float) -> tuple[int, int]:
        t0 = min(max(self.start + int(round(start_s * _NS)), self.start), self.end)
        t1 = min(max(t0 + int(round(duration_s * _NS)), t0), self.end)
        return t0, t1

    def slices(self, chunk_packets: int) -> Iterator[tuple[int, int]]:
        span = self.end - self.start
        total = sum(s.total for s in self.sources)
        if span <= 0:
            return
        step = span if total <= chunk_packets else max(1, span * chunk_packets // total)
        t = self.start
        while t < self.end:
            yield t, min(t + step, self.end)
            t += step

    def build(self, index: int, t0: int, t1: int, nsec: bool) -> GeneratedTraffic:
        rng = np.random.default_rng([self.scenario.seed, index])
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, int, int]] = []  # frames, ts, tele, kind, attack
        for src in self.sources:
            n = src.cumulative(t1) - src.cumulative(t0)
            if n <= 0:
                continue
            lo, hi = max(t0, src.start_ns), min(t1, src.end_ns)
            if src.kind == "background":
                for kind, count in zip(self.mix, rng.multinomial(n, self.mix_p)):
                    if count:
                        frames, tele = self.builder.background(rng, kind, int(count))
                        parts.append((frames, rng.integers(lo, hi, int(count)), tele, KINDS.index(kind), -1))
            else:
                frames, tele = self.builder.attack(rng, src.kind, n, src.victim, src.port, src.responder)
                parts.append((frames, rng.integers(lo, hi, n), tele, KINDS.index(src.kind), src.attack_index))
        return _assemble(parts, self.truth, nsec)


def _scatter_rows(out: np.ndarray, dest: np.ndarray, rows: np.ndarray) -> None:
    """Copy row i of ``rows`` to ``out[dest[i]:dest[i]+width]`` one column at a time (no n*width index)."""
    for j in range(rows.shape[1]):
        out[dest + j] = rows[:, j]


def _record_headers(ts: np.ndarray, caplen: np.ndarray, nsec: bool) -> np.ndarray:
    hdr = np.empty((ts.shape[0], 4), dtype="<u4")
    hdr[:, 0] = ts // _NS
    hdr[:, 1] = ts % _NS if nsec else (ts % _NS) // 1000
    hdr[:, 2] = caplen
    hdr[:, 3] = caplen
    return hdr.view(np.uint8).reshape(-1, 16)


def _assemble(parts: list, truth: list[SimulatedAttack], nsec: bool) -> GeneratedTraffic:
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return GeneratedTraffic(b"", 0, truth, empty, empty, empty.astype(np.uint8), empty.astype(np.int16),
                                empty.astype(np.uint32), nsec)
    ts = np.concatenate([p[1] for p in parts]).astype(np.int64)
    if not nsec:
        ts -= ts % 1000  # what a microsecond capture would record
    width = np.concatenate([np.full(p[0].shape[0], p[0].shape[1], dtype=np.int64) for p in parts])
    kind = np.concatenate([np.full(p[0].shape[0], p[3], dtype=np.uint8) for p in parts])
    attack = np.concatenate([np.full(p[0].shape[0], p[4], dtype=np.int16) for p in parts])
    tele = np.concatenate([p[2] for p in parts]).astype(np.uint32)
    order = np.argsort(ts, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0])
    rec_len = 16 + width[order]
    offsets = np.concatenate(([0], np.cumsum(rec_len)[:-1])).astype(np.int64)
    out = np.empty(int(rec_len.sum()), dtype=np.uint8)
    first = 0
    for frames, _, _, _, _ in parts:
        n = frames.shape[0]
        dest = offsets[rank[first:first + n]]
        _scatter_rows(out, dest, _record_headers(ts[first:first + n], width[first:first + n], nsec))
        _scatter_rows(out, dest + 16, frames)
        first += n
    return GeneratedTraffic(out.tobytes(), int(order.shape[0]), truth, ts[order], offsets, kind[order],
                            attack[order], tele[order], nsec)


# --------------------------------------------------------------------------- public API


def stream(scenario: Scenario, start_ns: int, duration_s: float, rate: float, *,
           chunk_packets: int = 65536, nsec: bool = False) -> Iterator[GeneratedTraffic]:
    """Yield the run as consecutive time-ordered chunks of about ``chunk_packets`` packets.

    ``rate`` is the total packets/s the telescope sees: attacks and bursts take
    their share, the background mix fills the rest (nothing if they exceed it).
    """
    plan = _Plan(scenario, start_ns, duration_s, rate)
    for index, (t0, t1) in enumerate(plan.slices(chunk_packets)):
        chunk = plan.build(index, t0, t1, nsec)
        if chunk.count:
            yield chunk


def generate(scenario: Scenario, start_ns: int, duration_s: float, rate: float, *,
             chunk_packets: int = 65536, nsec: bool = False) -> GeneratedTraffic:
    """Generate the whole run at once (the concatenation of ``stream``)."""
    chunks = list(stream(scenario, start_ns, duration_s, rate, chunk_packets=chunk_packets, nsec=nsec))
    if not chunks:
        return _assemble([], _Plan(scenario, start_ns, duration_s, rate).truth, nsec)
    return concat(chunks)


def concat(chunks: Sequence[GeneratedTraffic]) -> GeneratedTraffic:
    """Join time-consecutive chunks of one run."""
    bases = np.cumsum([0] + [len(c.packets) for c in chunks[:-1]])
    return GeneratedTraffic(
        b"".join(c.packets for c in chunks), sum(c.count for c in chunks), chunks[0].truth,
        np.concatenate([c.ts_ns for c in chunks]),
        np.concatenate([c.offsets + base for c, base in zip(chunks, bases)]),
        np.concatenate([c.kind for c in chunks]), np.concatenate([c.attack for c in chunks]),
        np.concatenate([c.telescope_addr for c in chunks]), chunks[0].nsec,
    )


def site_view(traffic: GeneratedTraffic, prefixes: Sequence[str], clock_offset_s: float = 0.0) -> GeneratedTraffic:
    """What one site with telescope ``prefixes`` and a clock ``clock_offset_s`` off captures.

    Packets to addresses in overlapping prefixes appear in several sites' views as
    byte-identical copies (only their record timestamps differ). IPv6 noise is
    not part of any IPv4 site view.
    """
    keep = np.nonzero(PrefixSet(prefixes).contains(traffic.telescope_addr) & (traffic.telescope_addr != 0))[0]
    ends = np.append(traffic.offsets[1:], len(traffic.packets))
    lengths = (ends - traffic.offsets)[keep]
    new_off = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    out = select_records(traffic.packets, traffic.offsets[keep], lengths)
    ts = traffic.ts_ns[keep] + int(round(clock_offset_s * _NS))
    _scatter_rows(out, new_off, _record_headers(ts, lengths - 16, traffic.nsec)[:, :8])
    return GeneratedTraffic(out.tobytes(), int(keep.shape[0]), traffic.truth, ts, new_off, traffic.kind[keep],
                            traffic.attack[keep], traffic.telescope_addr[keep], traffic.nsec)


def write_pcap(target: str | Path | BinaryIO, traffic: GeneratedTraffic) -> None:
    """Write the traffic as a little-endian pcap file (readable by tcpdump)."""
    _write_pcap_records(target, traffic.header, traffic.packets)


def reference_attacks(start_s: float = 0.0, duration_s: float = 600.0) -> tuple[Attack, ...]:
    """The five attack shapes of backscatter.md §H, one victim each (documentation addresses)."""
    return (
        Attack("syn_flood", "198.51.100.10", 443, 200_000.0, start_s, duration_s),
        Attack("rst_flood", "198.51.100.20", 80, 150_000.0, start_s, duration_s),
        Attack("udp_flood", "198.51.100.30", 27015, 120_000.0, start_s, duration_s),
        Attack("ttl_exceeded", "203.0.113.40", 8080, 100_000.0, start_s, duration_s, responder="192.0.2.1"),
        Attack("icmp_flood", "203.0.113.50", 0, 180_000.0, start_s, duration_s),
    )
