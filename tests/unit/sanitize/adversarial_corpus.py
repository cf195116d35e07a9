"""The attacker's corpus for the sanitizer (issue 13): packets built to leak.

One class per leak channel of issue 13 and per sub-case, plus ordinary telescope traffic, ICMP
errors and tunnels. A class is a builder over an `Env`, one assignment of the private values
(IPv4 addresses in 10.1.0.0/16, IPv6 addresses in fd00:10:1::/48, MACs). A builder returns a
`Blob`: the packet bytes annotated with

- every *slot*, a place where a private value sits, in whatever form it was put there (as is,
  bit-inverted for a Teredo client, plus one in a TCP acknowledgment, an EUI-64 interface ID
  derived from a MAC, text, DNS name labels), and
- every checksum: its field, the bytes it covers and its pseudo-header addresses.

So one class serves both as a corpus packet (the adversarial test searches the sanitized bytes
for the private values) and as a template (the non-interference test instantiates it with two
assignments, sanitizes both and compares them byte by byte, outside the slots and checksums).

Every class is framed in every link type the sanitizer accepts (`LINKS`: null, Ethernet with
802.1Q, QinQ, PPPoE and MPLS variants, raw 12/14/101/228/229, SLL, SLL2) and cut at every byte
offset (record caplen reduced, origlen kept): `write_corpus`.

Packets are built by hand with struct, checksums with dpkt.in_cksum. The byte builders of
sanitize_corpus.py are not reused for the layers: they return plain bytes, while the slots and
checksum positions have to be tracked as the packet is built.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

from bridge.pcap import global_header, pack_record

from sanitize_corpus import a4, a6, csum

PRIVATE_V4 = "10.1.0.0/16"
PRIVATE_V6 = "fd00:10:1::/48"
PRIVATE_CIDRS: tuple[str, ...] = (PRIVATE_V4, PRIVATE_V6)
PNAT_SPEC = "10.1.0.0/16:192.168.0.0/16,[fd00:10:1::/48]:[2001:db8:ffff::/48]"

_NET4 = a4("10.1.0.0")[:2]
_NET6 = a6("fd00:10:1::")[:6]

# the other side: public addresses, none inside the private prefixes nor the pnat targets
PUB4 = a4("198.51.100.7")
PUB4B = a4("203.0.113.9")
PUB4C = a4("192.0.2.33")
PUB6 = a6("2606:4700::1111")
PUB6B = a6("2001:4860:4860::8888")
PUB6_NET = a6("2001:4860:1:2::")[:8]  # a public /64 (ISATAP, EUI-64 under a public prefix)
LL_NET = a6("fe80::")[:8]

# MACs of the site's NICs: real vendor OUIs (Intel, Raspberry Pi, ...), universally
# administered: a hashed MAC is locally administered and a zeroed one starts with 00, so no
# sanitized MAC starts with the same byte as one of these
MAC_NAMES = ("host_mac", "gw_mac", "peer_mac", "inner_mac")
_OUIS = (b"\x3c\xfd\xfe", b"\xb8\x27\xeb", b"\xdc\xa6\x32", b"\xa4\xbf\x01")

SYN, RST, PSH, ACK = 0x02, 0x04, 0x08, 0x10


# ---------------------------------------------------------------- annotated bytes

@dataclass(frozen=True)
class Slot:
    """A private value in a packet: bytes [off, off + size), of a kind (v4, v4inv, v4plus1, v6,
    v6net, mac, eui64, text, name), holding `value` in this instantiation."""

    off: int
    size: int
    kind: str
    value: bytes

    def shifted(self, n: int) -> "Slot":
        return replace(self, off=self.off + n)


@dataclass(frozen=True)
class Checksum:
    """An Internet checksum field and what it covers: bytes [start, end) plus, for TCP, UDP and
    ICMPv6, a pseudo-header from the address fields at pseudo = (src offset, dst offset, address
    length). `whole` is False when the covered bytes are not all in the packet (a quote, a
    fragment): the field is then still a checksum field, but it cannot be verified.
    `pending`: computed by the enclosing IP builder, which knows the pseudo-header."""

    field: int
    start: int
    end: int
    proto: int = 0
    pseudo: tuple[int, int, int] | None = None
    udp: bool = False
    whole: bool = True
    pending: bool = False

    def shifted(self, n: int) -> "Checksum":
        ps = None if self.pseudo is None else (self.pseudo[0] + n, self.pseudo[1] + n, self.pseudo[2])
        return replace(self, field=self.field + n, start=self.start + n, end=self.end + n, pseudo=ps)

    def _pseudo_bytes(self, data: bytes) -> bytes:
        if self.pseudo is None:
            return b""
        s, d, alen = self.pseudo
        length = self.end - self.start
        if alen == 4:
            return data[s:s + 4] + data[d:d + 4] + struct.pack("!BBH", 0, self.proto, length)
        return data[s:s + 16] + data[d:d + 16] + struct.pack("!IxxxB", length, self.proto)

    def value(self, data: bytes) -> int:
        """The checksum the field must hold for `data` (its field taken as zero)."""
        body = bytearray(data[self.start:self.end])
        body[self.field - self.start:self.field - self.start + 2] = b"\0\0"
        v = csum(self._pseudo_bytes(data) + bytes(body))
        return 0xFFFF if self.udp and v == 0 else v

    def verifies(self, data: bytes) -> bool | None:
        """Whether the field is right in `data`; None when it cannot be told (range not wholly
        captured, or a UDP datagram sent without checksum)."""
        if not self.whole or self.end > len(data) or self.field + 2 > len(data):
            return None
        if self.pseudo is not None and max(self.pseudo[0], self.pseudo[1]) + self.pseudo[2] > len(data):
            return None
        if self.udp and data[self.field:self.field + 2] == b"\0\0":
            return None
        return csum(self._pseudo_bytes(data) + data[self.start:self.end]) == 0


@dataclass(frozen=True)
class Blob:
    """Packet bytes with their private slots and checksums (offsets relative to data)."""

    data: bytes = b""
    slots: tuple[Slot, ...] = ()
    sums: tuple[Checksum, ...] = ()

    def __len__(self) -> int:
        return len(self.data)

    def __add__(self, other: "Blob | bytes") -> "Blob":
        o = _b(other)
        n = len(self.data)
        return Blob(self.data + o.data, self.slots + tuple(s.shifted(n) for s in o.slots),
                    self.sums + tuple(c.shifted(n) for c in o.sums))

    def __radd__(self, other: bytes) -> "Blob":
        return _b(other) + self

    def set16(self, off: int, value: int) -> "Blob":
        return replace(self, data=self.data[:off] + struct.pack("!H", value) + self.data[off + 2:])

    def with_sum(self, c: Checksum) -> "Blob":
        return replace(self, sums=self.sums + (c,))

    def sub(self, start: int, end: int | None = None) -> "Blob":
        """Bytes [start, end) re-based at 0: slots clipped (a partial copy stays a slot),
        checksums whose range leaves the window become unverifiable."""
        end = len(self.data) if end is None else min(end, len(self.data))
        slots = []
        for s in self.slots:
            a, b = max(s.off, start), min(s.off + s.size, end)
            if a < b:
                slots.append(Slot(a - start, b - a, s.kind, s.value[a - s.off:b - s.off]))
        sums = []
        for c in self.sums:
            if not start <= c.field < end:
                continue
            inside = start <= c.start and c.end <= end and (
                c.pseudo is None or (start <= min(c.pseudo[:2]) and max(c.pseudo[:2]) + c.pseudo[2] <= end))
            sums.append(replace(c.shifted(-start), whole=c.whole and inside))
        return Blob(self.data[start:end], tuple(slots), tuple(sums))

    def cut(self, n: int) -> "Blob":
        return self.sub(0, n)


def kept_slots(pkt: Blob, out: bytes) -> list[tuple[str, int]]:
    """(what, offset) of the private slots of `pkt` that its sanitized bytes `out` still hold
    as they were: whole, or in part where `out` ends inside the slot (a capture cut inside an
    address must be cut before it). The sanitizer rewrites in place and only shortens, so a
    slot sits at the same offset in `out`."""
    found = []
    n = len(out)
    for slot in pkt.slots:
        if slot.off >= n:
            continue
        end = min(slot.off + slot.size, n)
        if out[slot.off:end] == slot.value[:end - slot.off]:
            found.append((f"{slot.kind} kept" if end == slot.off + slot.size else f"partial {slot.kind}", slot.off))
    return found


def _b(x: "Blob | bytes") -> Blob:
    return x if isinstance(x, Blob) else Blob(bytes(x))


def cat(*parts: "Blob | bytes") -> Blob:
    """Concatenation of annotated and plain parts."""
    out = Blob()
    for p in parts:
        out = out + p
    return out


def private_bytes(data: bytes, kind: str) -> Blob:
    """Bytes that are (a form of) a private value: one slot over all of them."""
    return Blob(data, (Slot(0, len(data), kind, data),))


def addr6(*parts: "Blob | bytes") -> Blob:
    """A 16-byte IPv6 address field assembled from parts. When a part is private the whole
    field is a slot as well: the sanitizer maps the field as one address (Crypto-PAn's output
    bits after a private part depend on it), so the mapped address sits in all 16 bytes."""
    a = cat(*parts)
    assert len(a) == 16, len(a)
    return Blob(a.data, (Slot(0, 16, "v6", a.data),) + a.slots, a.sums) if a.slots else a


def _resolve(pkt: Blob, src: int, dst: int, alen: int) -> Blob:
    """Compute the pending (pseudo-header) checksums of an IP packet's transport."""
    data = bytearray(pkt.data)
    sums = []
    for c in pkt.sums:
        if c.pending:
            c = replace(c, pending=False, pseudo=(src, dst, alen))
            data[c.field:c.field + 2] = struct.pack("!H", c.value(bytes(data)))
        sums.append(c)
    return Blob(bytes(data), pkt.slots, tuple(sums))


# ---------------------------------------------------------------- private assignments

class Env:
    """One assignment of the private values, drawn by name from a seed: the same name gives
    the same value within an Env, different names give different values.

    Names ending in ``_t`` are written as text somewhere: their IPv4 host octets have three
    digits and their IPv6 host hextets four, so every assignment has the same text length (a
    template must have the same layout under every assignment)."""

    def __init__(self, seed: int = 13, random_macs: bool = False) -> None:
        self.seed = seed
        self.random_macs = random_macs
        self.v4s: dict[str, bytes] = {}
        self.v6s: dict[str, bytes] = {}
        self.macs: dict[str, bytes] = {}

    def _rng(self, kind: str, name: str, attempt: int) -> random.Random:
        return random.Random(f"{self.seed}/{kind}/{name}/{attempt}")

    def v4_value(self, name: str) -> bytes:
        if name not in self.v4s:
            for attempt in range(100):
                rng = self._rng("v4", name, attempt)
                host = bytes([rng.randint(100, 254), rng.randint(100, 254)]) if name.endswith("_t") else rng.randbytes(2)
                v = _NET4 + host
                if v not in self.v4s.values():
                    break
            self.v4s[name] = v
        return self.v4s[name]

    def v6_value(self, name: str) -> bytes:
        if name not in self.v6s:
            for attempt in range(100):
                rng = self._rng("v6", name, attempt)
                if name.endswith("_t"):
                    host = b"".join(struct.pack("!H", rng.randint(0x1000, 0xFFFF)) for _ in range(5))
                else:
                    host = rng.randbytes(10)
                v = _NET6 + host
                if v not in self.v6s.values():
                    break
            self.v6s[name] = v
        return self.v6s[name]

    def mac_value(self, name: str) -> bytes:
        if name not in MAC_NAMES:
            raise KeyError(f"MAC names are {MAC_NAMES} (PRIVATE_MACS lists them), not {name!r}")
        if name not in self.macs:
            for attempt in range(100):
                rng = self._rng("mac", name, attempt)
                if self.random_macs:
                    v = rng.randbytes(6)
                else:
                    v = _OUIS[MAC_NAMES.index(name)] + rng.randbytes(3)
                if v not in self.macs.values() and v not in (bytes(6), b"\xff" * 6):
                    break
            self.macs[name] = v
        return self.macs[name]

    # slots ------------------------------------------------------------------
    def v4(self, name: str) -> Blob:
        return private_bytes(self.v4_value(name), "v4")

    def v4inv(self, name: str) -> Blob:
        """The address bit-inverted (a Teredo client)."""
        return private_bytes(bytes(b ^ 0xFF for b in self.v4_value(name)), "v4inv")

    def v4plus1(self, name: str) -> Blob:
        """The address plus one (a TCP ack answering a sequence number that held it)."""
        v = (int.from_bytes(self.v4_value(name), "big") + 1) & 0xFFFFFFFF
        return private_bytes(v.to_bytes(4, "big"), "v4plus1")

    def v6(self, name: str) -> Blob:
        return private_bytes(self.v6_value(name), "v6")

    def v6net(self, name: str) -> Blob:
        """The /64 of an IPv6 address (8 bytes: private /48 and subnet)."""
        return private_bytes(self.v6_value(name)[:8], "v6net")

    def mac(self, name: str) -> Blob:
        return private_bytes(self.mac_value(name), "mac")

    def eui64(self, mac_name: str) -> Blob:
        """The modified EUI-64 interface ID of a MAC (RFC 4291 appendix A)."""
        return private_bytes(eui64(self.mac_value(mac_name)), "eui64")

    def slaac(self, net_name: str, mac_name: str) -> Blob:
        """A SLAAC address: the private /64 of net_name and the EUI-64 of the MAC."""
        return addr6(self.v6net(net_name), self.eui64(mac_name))

    def v6prefix(self, name: str) -> Blob:
        """A prefix field (prefix information, route information): the private /64 of name,
        zero host bits."""
        return addr6(self.v6net(name), bytes(8))

    def text4(self, name: str) -> Blob:
        return private_bytes(str(ipaddress.IPv4Address(self.v4_value(name))).encode(), "text")

    def text6(self, name: str) -> Blob:
        return private_bytes(str(ipaddress.IPv6Address(self.v6_value(name))).encode(), "text")

    def dashed4(self, name: str) -> Blob:
        """The address as a host-name label: 10-1-2-3 (ip-10-1-2-3.ec2.internal)."""
        return private_bytes("-".join(str(o) for o in self.v4_value(name)).encode(), "text")

    def textmac(self, name: str) -> Blob:
        return private_bytes(self.mac_value(name).hex(":").encode(), "text")

    def ptr4_labels(self, name: str) -> Blob:
        """DNS wire labels of the address's in-addr.arpa name, reversed octets only."""
        return private_bytes(b"".join(_label(str(o).encode()) for o in reversed(self.v4_value(name))), "name")

    def ptr6_labels(self, name: str) -> Blob:
        """DNS wire labels of the address's ip6.arpa name, 32 reversed nibbles."""
        return private_bytes(b"".join(_label(c.encode()) for c in reversed(self.v6_value(name).hex())), "name")


def eui64(mac: bytes) -> bytes:
    return bytes([mac[0] ^ 0x02]) + mac[1:3] + b"\xff\xfe" + mac[3:6]


def _label(text: bytes) -> bytes:
    return bytes([len(text)]) + text


def corpus_env() -> Env:
    """The assignment the corpus uses (fixed, so failures are reproducible)."""
    return Env(seed=13)


def private_macs(env: Env | None = None) -> tuple[bytes, ...]:
    """The private MACs of an assignment (the corpus's by default)."""
    env = env or corpus_env()
    return tuple(env.mac_value(n) for n in MAC_NAMES)


PRIVATE_MACS: tuple[bytes, ...] = private_macs()


def _ptr_text(labels: Iterable[str], suffix: str) -> bytes:
    return (".".join(labels) + suffix).encode()


def _ptr_wire(labels: Iterable[str]) -> bytes:
    return b"".join(_label(x.encode()) for x in labels)


def private_forms(env: Env) -> dict[bytes, str]:
    """Every byte pattern that betrays a private value of `env` (call after building the
    packets: the Env knows the values drawn so far), mapped to the form's name.

    IPv4: raw, inverted, plus one, text (dotted, dashed), in-addr.arpa (text and DNS labels, also of the /16).
    IPv6: raw, text, ip6.arpa labels; the /48 prefix raw, as text and as ip6.arpa labels.
    MACs: raw, as an EUI-64 interface ID, as text (colons or dashes, either case).
    All patterns are at least 4 bytes long, so a chance match is rare.
    """
    forms: dict[bytes, str] = {}
    for v in env.v4s.values():
        forms[v] = "v4"
        forms[bytes(b ^ 0xFF for b in v)] = "v4 inverted"
        forms[((int.from_bytes(v, "big") + 1) & 0xFFFFFFFF).to_bytes(4, "big")] = "v4+1"
        forms[str(ipaddress.IPv4Address(v)).encode()] = "v4 text"
        forms["-".join(str(o) for o in v).encode()] = "v4 dashed text"
        octets = [str(o) for o in reversed(v)]
        forms[_ptr_text(octets, ".in-addr.arpa")] = "v4 PTR text"
        forms[_ptr_wire(octets) + b"\x07in-addr"] = "v4 PTR labels"
    net = [str(o) for o in reversed(_NET4)]
    forms[_ptr_text(net, ".in-addr.arpa")] = "v4 /16 PTR text"
    forms[_ptr_wire(net) + b"\x07in-addr"] = "v4 /16 PTR labels"
    for v in env.v6s.values():
        forms[v] = "v6"
        text = str(ipaddress.IPv6Address(v))
        forms[text.encode()] = "v6 text"
        forms[text.upper().encode()] = "v6 text"
        forms[_ptr_wire(reversed(v.hex()))] = "v6 PTR labels"
        forms[_ptr_text(reversed(v.hex()), "")] = "v6 PTR text"
    forms[_NET6] = "v6 prefix"
    for t in ("fd00:10:1:", "FD00:10:1:", "fd00:0010:0001", "FD00:0010:0001"):
        forms[t.encode()] = "v6 prefix text"
    nibbles = list(reversed(_NET6.hex()))
    forms[_ptr_wire(nibbles) + b"\x03ip6"] = "v6 prefix PTR labels"
    forms[_ptr_text(nibbles, ".ip6.arpa")] = "v6 prefix PTR text"
    for m in env.macs.values():
        forms[m] = "mac"
        forms[eui64(m)] = "eui64"
        for sep in (":", "-"):
            forms[m.hex(sep).encode()] = "mac text"
            forms[m.hex(sep).upper().encode()] = "mac text"
    return forms


# ---------------------------------------------------------------- layer builders

def ipv4(src: Blob | bytes, dst: Blob | bytes, proto: int, payload: Blob | bytes = b"", *, opts: Blob | bytes = b"",
         frag: int = 0, total: int | None = None, ttl: int = 64, ident: int = 0x1234) -> Blob:
    """An IPv4 packet; options are padded with EOL to a multiple of 4; the transport's
    pseudo-header checksum is computed here."""
    opts = _b(opts)
    opts = opts + bytes(-len(opts) % 4)
    ihl = 20 + len(opts)
    payload = _b(payload)
    tot = ihl + len(payload) if total is None else total
    head = cat(struct.pack("!BBHHHBBH", 0x40 | ihl // 4, 0, tot, ident, frag, ttl, proto, 0), src, dst, opts)
    head = head.set16(10, csum(head.data)).with_sum(Checksum(10, 0, ihl))
    return _resolve(head + payload, 12, 16, 4)


def ipv6(src: Blob | bytes, dst: Blob | bytes, nh: int, payload: Blob | bytes = b"", *, plen: int | None = None,
         hlim: int = 64) -> Blob:
    """An IPv6 packet (payload: extension headers and the transport)."""
    payload = _b(payload)
    head = cat(struct.pack("!IHBB", 0x60000000, len(payload) if plen is None else plen, nh, hlim), src, dst)
    return _resolve(head + payload, 8, 24, 16)


def tlv(typ: int, value: Blob | bytes) -> Blob:
    """An IPv6 option (type, length, value)."""
    return cat(bytes([typ, len(value)]), value)


def ext_opts(nh: int, *options: Blob | bytes) -> Blob:
    """A hop-by-hop or destination options header, padded with PadN to a multiple of 8."""
    body = cat(*options)
    pad = -(2 + len(body)) % 8
    if pad == 1:
        body = body + b"\0"
    elif pad:
        body = body + bytes([1, pad - 2]) + bytes(pad - 2)
    return cat(bytes([nh, (2 + len(body)) // 8 - 1]), body)


def routing6(nh: int, rtype: int, segleft: int, addrs: list[Blob | bytes]) -> Blob:
    """A routing header carrying addresses (type 0, 2 or 4: SRH with last-entry and flags)."""
    fields = bytes([len(addrs) - 1, 0, 0, 0]) if rtype == 4 else bytes(4)
    return cat(bytes([nh, 2 * len(addrs), rtype, segleft]), fields, *addrs)


def frag6(nh: int, offset: int, more: bool, ident: int = 0xABCD0001) -> bytes:
    return struct.pack("!BBHI", nh, 0, (offset << 3) | int(more), ident)


def tcp(sport: int, dport: int, *, seq: int | Blob = 0x3A4B5C6D, ack: int | Blob = 0, flags: int = SYN | ACK,
        opts: Blob | bytes = b"", payload: Blob | bytes = b"", window: int = 29200) -> Blob:
    """A TCP segment; options padded with EOL; checksum computed by the enclosing IP builder."""
    opts = _b(opts)
    opts = opts + bytes(-len(opts) % 4)
    seqb = seq if isinstance(seq, Blob) else struct.pack("!I", seq & 0xFFFFFFFF)
    ackb = ack if isinstance(ack, Blob) else struct.pack("!I", ack & 0xFFFFFFFF)
    seg = cat(struct.pack("!HH", sport, dport), seqb, ackb,
              struct.pack("!BBHHH", (20 + len(opts)) // 4 << 4, flags, window, 0, 0), opts, payload)
    return seg.with_sum(Checksum(16, 0, len(seg), proto=6, pending=True))


def udp(sport: int, dport: int, payload: Blob | bytes = b"", zero_sum: bool = False) -> Blob:
    payload = _b(payload)
    dgram = cat(struct.pack("!HHHH", sport, dport, 8 + len(payload), 0), payload)
    return dgram if zero_sum else dgram.with_sum(Checksum(6, 0, len(dgram), proto=17, udp=True, pending=True))


def icmp(typ: int, code: int, rest: Blob | bytes = bytes(4), body: Blob | bytes = b"") -> Blob:
    """An ICMPv4 message: type, code, checksum, 4 bytes `rest`, body."""
    msg = cat(struct.pack("!BBH", typ, code, 0), rest, body)
    return msg.set16(2, csum(msg.data)).with_sum(Checksum(2, 0, len(msg)))


def icmp6(typ: int, code: int, body: Blob | bytes = b"") -> Blob:
    """An ICMPv6 message: type, code, checksum, body (from byte 4)."""
    msg = cat(struct.pack("!BBH", typ, code, 0), body)
    return msg.with_sum(Checksum(2, 0, len(msg), proto=58, pending=True))


def gre(proto: int, inner: Blob | bytes, *, checksum: bool = False, key: int | Blob | bytes | None = None,
        seq: int | Blob | bytes | None = None) -> Blob:
    """A GRE header (RFC 2784/2890) with optional checksum, key and sequence number."""
    flags = (0x8000 if checksum else 0) | (0x2000 if key is not None else 0) | (0x1000 if seq is not None else 0)
    parts: list[Blob | bytes] = [struct.pack("!HH", flags, proto)]
    if checksum:
        parts.append(bytes(4))
    for v in (key, seq):
        if v is not None:
            parts.append(struct.pack("!I", v) if isinstance(v, int) else v)
    body = cat(*parts, inner)
    if checksum:
        body = body.set16(4, csum(body.data)).with_sum(Checksum(4, 0, len(body)))
    return body


def eth(dst: Blob | bytes, src: Blob | bytes, ethertype: int, payload: Blob | bytes,
        tags: tuple[tuple[int, int], ...] = ()) -> Blob:
    """An Ethernet frame with optional VLAN tags (tpid, vid)."""
    return cat(dst, src, *(struct.pack("!HH", tpid, vid) for tpid, vid in tags), struct.pack("!H", ethertype), payload)


def arp(op: int, sha: Blob | bytes, spa: Blob | bytes, tha: Blob | bytes, tpa: Blob | bytes) -> Blob:
    return cat(struct.pack("!HHBBH", 1, 0x0800, 6, 4, op), sha, spa, tha, tpa)


def nd_opt(typ: int, body: Blob | bytes) -> Blob:
    """An ND option (type, length in 8-byte units, body), zero padded."""
    body = _b(body)
    body = body + bytes(-(2 + len(body)) % 8)
    return cat(bytes([typ, (2 + len(body)) // 8]), body)


def dns_name(*labels: Blob | bytes) -> Blob:
    """A DNS name: each part is a plain label, or a Blob of ready-made wire labels."""
    return cat(*(p if isinstance(p, Blob) else _label(p) for p in labels), b"\0")


def _ber(tag: int, content: Blob | bytes) -> Blob:
    content = _b(content)
    assert len(content) < 128
    return cat(bytes([tag, len(content)]), content)


# ---------------------------------------------------------------- classes

@dataclass(frozen=True)
class LeakClass:
    """A class of packets: a builder over an assignment, the network layer it starts with
    (ip4, ip6, arp, rarp: which link types can carry it), the issue-13 channel, a description."""

    name: str
    channel: str
    net: str
    build: Callable[[Env], Blob]
    doc: str


CLASSES: list[LeakClass] = []


def leak_class(channel: str, net: str = "ip4") -> Callable[[Callable[[Env], Blob]], Callable[[Env], Blob]]:
    def register(fn: Callable[[Env], Blob]) -> Callable[[Env], Blob]:
        CLASSES.append(LeakClass(fn.__name__, channel, net, fn, " ".join((fn.__doc__ or "").split())))
        return fn
    return register


MSS = bytes([2, 4, 0x05, 0xB4])
TS_OPT = bytes([8, 10]) + struct.pack("!II", 0x5EED1234, 0)


def _syn_ack(src: Blob | bytes, dst: Blob | bytes, ipopts: Blob | bytes = b"", **tcp_kw: object) -> Blob:
    """A SYN-ACK; `ipopts` are IPv4 options, other keywords go to `tcp` (opts: TCP options)."""
    return ipv4(src, dst, 6, tcp(80, 40001, ack=0x11223345, **tcp_kw), opts=ipopts)


def _syn_ack6(src: Blob | bytes, dst: Blob | bytes, **kw: object) -> Blob:
    return ipv6(src, dst, 6, tcp(80, 40001, ack=0x11223345, **kw))


def _udp4(src: Blob | bytes, dst: Blob | bytes, sport: int, dport: int, payload: Blob | bytes = b"") -> Blob:
    return ipv4(src, dst, 17, udp(sport, dport, payload))


def _udp6(src: Blob | bytes, dst: Blob | bytes, sport: int, dport: int, payload: Blob | bytes = b"") -> Blob:
    return ipv6(src, dst, 17, udp(sport, dport, payload))


# -- ordinary telescope traffic

@leak_class("ordinary")
def tcp_synack_backscatter(env: Env) -> Blob:
    """SYN-ACK from a victim answering a SYN spoofed with the telescope host's address."""
    return _syn_ack(PUB4, env.v4("host"), opts=MSS)


@leak_class("ordinary")
def tcp_rst_backscatter(env: Env) -> Blob:
    """RST-ACK backscatter."""
    return ipv4(PUB4B, env.v4("host"), 6, tcp(443, 51000, flags=RST | ACK, window=0))


@leak_class("ordinary")
def tcp_ordinary_options(env: Env) -> Blob:
    """SYN-ACK with every ordinary option: MSS, SACK-permitted, timestamps, NOP, window scale."""
    return _syn_ack(PUB4, env.v4("host"), opts=MSS + b"\x04\x02" + TS_OPT + b"\x01\x03\x03\x07")


@leak_class("ordinary")
def tcp_sack_blocks(env: Env) -> Blob:
    """ACK with SACK blocks."""
    return ipv4(PUB4, env.v4("host"), 6, tcp(80, 40001, flags=ACK, opts=b"\x01\x01\x05\x12" + bytes(range(16))))


@leak_class("ordinary")
def udp_plain(env: Env) -> Blob:
    """A UDP datagram to the telescope with a small payload holding nothing private."""
    return _udp4(PUB4, env.v4("host"), 5353, 1900, b"M-SEARCH * HTTP/1.1\r\n")


@leak_class("ordinary")
def udp_zero_checksum(env: Env) -> Blob:
    """UDP sent without checksum (zero): it must stay zero."""
    return ipv4(PUB4, env.v4("host"), 17, udp(123, 123, b"\x1b" + bytes(15), zero_sum=True))


@leak_class("ordinary")
def icmp_echo_request(env: Env) -> Blob:
    """Ping of the telescope host."""
    return ipv4(PUB4, env.v4("host"), 1, icmp(8, 0, b"\x12\x34\x00\x01", bytes(range(32))))


@leak_class("ordinary")
def icmp_echo_reply(env: Env) -> Blob:
    """Echo reply from the host."""
    return ipv4(env.v4("host"), PUB4, 1, icmp(0, 0, b"\x12\x34\x00\x01", bytes(range(32))))


@leak_class("ordinary", "ip6")
def tcp6_synack_backscatter(env: Env) -> Blob:
    """IPv6 SYN-ACK backscatter."""
    return _syn_ack6(PUB6, env.v6("host6"), opts=MSS)


@leak_class("ordinary", "ip6")
def udp6_plain(env: Env) -> Blob:
    """IPv6 UDP."""
    return _udp6(PUB6, env.v6("host6"), 5353, 1900, b"probe")


@leak_class("ordinary", "ip6")
def icmp6_echo_request(env: Env) -> Blob:
    """ICMPv6 echo request."""
    return ipv6(PUB6, env.v6("host6"), 58, icmp6(128, 0, b"\x12\x34\x00\x01" + bytes(range(24))))


@leak_class("ordinary")
def esp4(env: Env) -> Blob:
    """IPsec ESP (ciphertext only)."""
    return ipv4(PUB4, env.v4("host"), 50, struct.pack("!II", 0x1001, 7) + bytes(range(40, 72)))


@leak_class("ordinary", "ip6")
def esp6(env: Env) -> Blob:
    """IPv6 + ESP (crashed leakcheck: 'IP6' object has no attribute 'p')."""
    return ipv6(PUB6, env.v6("host6"), 50, struct.pack("!II", 0x1001, 7) + bytes(range(40, 72)))


@leak_class("ordinary", "ip6")
def ah6_tcp(env: Env) -> Blob:
    """IPv6 AH then TCP."""
    return ipv6(PUB6, env.v6("host6"), 51, cat(bytes([6, 4]), bytes(2), struct.pack("!II", 0x2002, 3), bytes(12),
                                                 tcp(80, 40001, flags=RST | ACK)))


# -- 1. IPv4 options

@leak_class("1 ipv4 options")
def ip4opt_rr_beyond_pointer(env: Env) -> Blob:
    """Record Route with one slot filled (pointer 8) and private addresses in the slots beyond."""
    rr = cat(bytes([7, 19, 8]), env.v4("gw"), env.v4("peer"), env.v4("dns"), env.v4("peer2"))
    return _syn_ack(env.v4("host"), PUB4, ipopts=rr)


@leak_class("1 ipv4 options")
def ip4opt_rr_full(env: Env) -> Blob:
    """Record Route with every slot filled."""
    rr = cat(bytes([7, 11, 12]), env.v4("gw"), env.v4("peer"))
    return _syn_ack(env.v4("host"), PUB4, ipopts=rr)


@leak_class("1 ipv4 options")
def ip4opt_ts_flag1_beyond_pointer(env: Env) -> Blob:
    """Timestamp flag 1 (address + time): one pair filled, two pairs beyond the pointer."""
    ts = cat(bytes([68, 28, 13, 0x01]), env.v4("gw"), b"\0\0\0\x09", env.v4("peer"), b"\0\0\0\0",
             env.v4("dns"), b"\0\0\0\0")
    return _syn_ack(env.v4("host"), PUB4, ipopts=ts)


@leak_class("1 ipv4 options")
def ip4opt_ts_flag3_prespecified(env: Env) -> Blob:
    """Timestamp flag 3: prespecified addresses at and after the pointer (none filled)."""
    ts = cat(bytes([68, 28, 5, 0x03]), env.v4("peer"), bytes(4), env.v4("gw"), bytes(4), env.v4("dns"), bytes(4))
    return _syn_ack(env.v4("host"), PUB4, ipopts=ts)


@leak_class("1 ipv4 options")
def ip4opt_ts_flag0(env: Env) -> Blob:
    """Timestamp flag 0 (times only): nothing private in the option."""
    return _syn_ack(env.v4("host"), PUB4, ipopts=bytes([68, 12, 9, 0x00]) + struct.pack("!II", 99, 0))


@leak_class("1 ipv4 options")
def ip4opt_unknown_9e(env: Env) -> Blob:
    """Unknown option 0x9E holding an address."""
    return _syn_ack(env.v4("host"), PUB4, ipopts=cat(bytes([0x9E, 6]), env.v4("peer")))


@leak_class("1 ipv4 options")
def ip4opt_traceroute_82(env: Env) -> Blob:
    """RFC 1393 traceroute option: the originator address."""
    return _syn_ack(PUB4, env.v4("host"), ipopts=cat(bytes([82, 12]), struct.pack("!HHH", 7, 1, 0xFFFF), env.v4("peer")))


@leak_class("1 ipv4 options")
def ip4opt_bytes_after_eol(env: Env) -> Blob:
    """NOP, EOL, then bytes looking like a Record Route with an address."""
    return _syn_ack(env.v4("host"), PUB4, ipopts=cat(bytes([1, 0, 7, 7, 4]), env.v4("peer")))


@leak_class("1 ipv4 options")
def ip4opt_ihl15_leading_eol(env: Env) -> Blob:
    """IHL 15: an EOL first, then 36 bytes of addresses hidden behind it."""
    names = ("peer", "gw", "dns", "peer2", "host", "peer", "gw", "dns", "peer2")
    return _syn_ack(env.v4("host"), PUB4, ipopts=cat(bytes(4), *(env.v4(n) for n in names)))


@leak_class("1 ipv4 options")
def ip4opt_length_overruns_header(env: Env) -> Blob:
    """An option whose length runs past the IHL into the TCP header (which holds seq = the
    address)."""
    pkt = ipv4(env.v4("host"), PUB4, 6, tcp(80, 40001, seq=env.v4("host"), flags=SYN), opts=cat(b"\x07\x0c\x04", env.v4("peer")))
    return pkt


@leak_class("1 ipv4 options")
def ip4opt_lsrr(env: Env) -> Blob:
    """Loose source route through private hops."""
    return _syn_ack(env.v4("host"), PUB4, ipopts=cat(bytes([131, 11, 4]), env.v4("gw"), env.v4("peer")))


@leak_class("1 ipv4 options")
def ip4opt_ssrr(env: Env) -> Blob:
    """Strict source route through private hops."""
    return _syn_ack(env.v4("host"), PUB4, ipopts=cat(bytes([137, 11, 8]), env.v4("gw"), env.v4("peer")))


@leak_class("1 ipv4 options")
def ip4opt_router_alert(env: Env) -> Blob:
    """Router alert (no address) before an experimental option (0x1E, RFC 4727) holding an address."""
    return _syn_ack(env.v4("host"), PUB4, ipopts=cat(bytes([148, 4, 0, 0]), bytes([0x1E, 6]), env.v4("peer")))


# -- 2. IP total length shorter than the frame

@leak_class("2 short total length")
def ip4_trailer_private(env: Env) -> Blob:
    """RST whose frame goes on after the IP total length: an address, a MAC and an IPv6
    address in the trailer (Etherleak-style padding)."""
    pkt = ipv4(PUB4, env.v4("host"), 6, tcp(443, 51000, flags=RST | ACK, window=0))
    return cat(pkt, env.v4("peer"), env.mac("peer_mac"), env.v6("peer6"), b"\0\0")


@leak_class("2 short total length")
def ip4_total_short_icmp_quote(env: Env) -> Blob:
    """Destination unreachable whose IP total length ends after the ICMP header: the quote
    behind it (a whole private packet) is outside the packet."""
    quote = _udp4(env.v4("host"), env.v4("peer"), 40000, 53, b"\x12\x34")
    return cat(ipv4(PUB4, env.v4("host"), 1, icmp(3, 1, bytes(4))), quote)


@leak_class("2 short total length")
def ip4_total_cuts_udp(env: Env) -> Blob:
    """UDP whose IP total length ends inside the UDP payload; the rest holds an address."""
    dgram = udp(5000, 6000, cat(b"ABCD", env.v4("peer"), env.mac("peer_mac")))
    return ipv4(PUB4, env.v4("host"), 17, dgram, total=20 + 12)


@leak_class("2 short total length")
def udp_length_short(env: Env) -> Blob:
    """UDP length shorter than the IP payload: the bytes between them hold private values."""
    dgram = udp(5000, 6000, b"ABCD")
    return ipv4(PUB4, env.v4("host"), 17, cat(dgram, env.v4("peer"), env.v6("peer6"), env.mac("peer_mac")))


@leak_class("2 short total length")
def icmp_quote_trailer(env: Env) -> Blob:
    """Unreachable whose quoted packet's total length ends before the quote does: private
    bytes after the quoted datagram, inside the ICMP message."""
    quoted = _udp4(env.v4("host"), PUB4B, 40000, 53, b"q")
    return ipv4(PUB4, env.v4("host"), 1, icmp(3, 3, bytes(4), cat(quoted, env.v4("peer"), env.v6("peer6"))))


@leak_class("2 short total length", "ip6")
def ip6_trailer_private(env: Env) -> Blob:
    """IPv6 packet followed by trailing bytes holding private addresses."""
    return cat(ipv6(PUB6, env.v6("host6"), 6, tcp(443, 51000, flags=RST | ACK)), env.v6("peer6"), env.v4("peer"))


# -- 3. TCP options

@leak_class("3 tcp options")
def tcpopt_mptcp_add_addr_own(env: Env) -> Blob:
    """MPTCP ADD_ADDR (kind 30, echo) announcing the packet's own address."""
    return ipv4(env.v4("host"), PUB4, 6, tcp(80, 40001, flags=ACK, opts=cat(bytes([30, 8, 0x31, 1]), env.v4("host"))))


@leak_class("3 tcp options")
def tcpopt_mptcp_add_addr_other_hmac(env: Env) -> Blob:
    """MPTCP ADD_ADDR with HMAC announcing another host's address."""
    opt = cat(bytes([30, 16, 0x30, 2]), env.v4("peer"), bytes(range(8)))
    return ipv4(env.v4("host"), PUB4, 6, tcp(80, 40001, flags=ACK, opts=opt))


@leak_class("3 tcp options")
def tcpopt_mptcp_add_addr_v6_port(env: Env) -> Blob:
    """MPTCP ADD_ADDR with an IPv6 address and a port, in an IPv4 segment."""
    opt = cat(bytes([30, 22, 0x31, 3]), env.v6("peer6"), b"\x1f\x90")
    return ipv4(env.v4("host"), PUB4, 6, tcp(80, 40001, flags=ACK, opts=opt))


@leak_class("3 tcp options", "ip6")
def tcpopt_mptcp_add_addr_in_ip6(env: Env) -> Blob:
    """MPTCP ADD_ADDR with an IPv6 address in an IPv6 segment."""
    opt = cat(bytes([30, 20, 0x31, 4]), env.v6("peer6"))
    return ipv6(env.v6("host6"), PUB6, 6, tcp(80, 40001, flags=ACK, opts=opt))


@leak_class("3 tcp options")
def tcpopt_unknown_kinds(env: Env) -> Blob:
    """Unknown option kinds holding addresses: 253 (experiment, with an ExID) and 99."""
    opt = cat(bytes([253, 8, 0xF9, 0x89]), env.v4("peer"), bytes([99, 6]), env.v4("gw"))
    return _syn_ack(PUB4, env.v4("host"), opts=opt)


@leak_class("3 tcp options", "ip6")
def tcpopt_unknown_kind_v6(env: Env) -> Blob:
    """Unknown option kind 79 holding an IPv6 address."""
    return _syn_ack6(PUB6, env.v6("host6"), opts=cat(bytes([79, 18]), env.v6("peer6")))


@leak_class("3 tcp options")
def tcpopt_mptcp_bad_length(env: Env) -> Blob:
    """MPTCP option (kind 30) of subtype 0 with a length no subtype-0 option has (6), its
    4 bytes an address."""
    return _syn_ack(env.v4("host"), PUB4, opts=cat(bytes([30, 6]), env.v4("peer")))


@leak_class("3 tcp options")
def tcpopt_length_overruns_header(env: Env) -> Blob:
    """An unknown option whose length runs past the data offset into the payload."""
    return ipv4(PUB4, env.v4("host"), 6, tcp(51000, 80, flags=PSH | ACK, opts=b"\x01\x01\xfd\x10",
                                               payload=cat(env.v4("peer"), env.v6("peer6"))))


@leak_class("3 tcp options")
def tcpopt_full_40_bytes(env: Env) -> Blob:
    """Data offset 15: 40 bytes of options, unknown kinds holding addresses between known ones."""
    opts = cat(MSS, bytes([254, 10, 0xF9, 0x89]), env.v4("peer"), b"\0\0", bytes([77, 18]), env.v6("peer6"),
               b"\x01\x01\x04\x02")
    return _syn_ack(PUB4, env.v4("host"), opts=opts)


@leak_class("3 tcp options")
def tcpopt_bytes_after_eol(env: Env) -> Blob:
    """MSS, EOL, then an address in the rest of the option space."""
    return _syn_ack(PUB4, env.v4("host"), opts=cat(MSS, b"\0\0\0\0", env.v4("peer")))


# -- 4. IPv6 option TLVs

@leak_class("4 ipv6 options", "ip6")
def ip6_no_next_header_data(env: Env) -> Blob:
    """No next header (59), yet the payload length covers bytes holding addresses."""
    return ipv6(PUB6, env.v6("host6"), 59, cat(env.v6("peer6"), env.v4("peer"), env.mac("peer_mac")))


@leak_class("4 ipv6 options", "ip6")
def ip6_hbh_unknown_option(env: Env) -> Blob:
    """Hop-by-hop option of unknown type (0x1E, skip) holding an IPv6 address."""
    return ipv6(PUB6, env.v6("host6"), 0, cat(ext_opts(6, tlv(0x1E, env.v6("peer6"))), tcp(443, 51000, flags=RST)))


@leak_class("4 ipv6 options", "ip6")
def ip6_dst_unknown_option(env: Env) -> Blob:
    """Destination option of unknown type (0x3E) holding an IPv4 and an IPv6 address."""
    opts = ext_opts(17, tlv(0x3E, cat(env.v4("peer"), env.v6("peer6"))))
    return ipv6(env.v6("host6"), PUB6, 60, cat(opts, udp(5000, 53, b"q")))


@leak_class("4 ipv6 options", "ip6")
def ip6_padn_with_address(env: Env) -> Blob:
    """PadN whose padding bytes are not zero: an IPv4 address in them."""
    hbh = cat(bytes([6, 0, 1, 4]), env.v4("peer"))
    return ipv6(PUB6, env.v6("host6"), 0, cat(hbh, tcp(443, 51000, flags=RST)))


@leak_class("4 ipv6 options", "ip6")
def ip6_router_alert_then_unknown(env: Env) -> Blob:
    """Router alert (known) then an unknown option with an address."""
    return ipv6(env.v6("host6"), PUB6, 0, cat(ext_opts(17, tlv(5, b"\0\0"), tlv(0x1F, env.v6("peer6"))),
                                              udp(5000, 53, b"q")))


@leak_class("4 ipv6 options", "ip6")
def ip6_home_address_option(env: Env) -> Blob:
    """Home Address destination option (a private home address)."""
    opts = ext_opts(17, b"\x01\x02\0\0", tlv(0xC9, env.v6("peer6")))
    return ipv6(PUB6, env.v6("host6"), 60, cat(opts, udp(5000, 53, b"q")))


@leak_class("4 ipv6 options", "ip6")
def ip6_routing_srh(env: Env) -> Blob:
    """Segment routing header (type 4) through private segments."""
    return ipv6(PUB6, env.v6("host6"), 43, cat(routing6(17, 4, 1, [env.v6("host6"), env.v6("peer6")]), udp(1, 2, b"s")))


@leak_class("4 ipv6 options", "ip6")
def ip6_routing_type0(env: Env) -> Blob:
    """Deprecated type 0 routing header with private addresses."""
    return ipv6(env.v6("host6"), PUB6, 43, cat(routing6(17, 0, 1, [env.v6("peer6")]), udp(1, 2, b"r")))


# -- 5. IPv6 addresses embedding a private IPv4 address

def _embed(prefix: bytes, v4: Blob, suffix: bytes = b"") -> Blob:
    return addr6(prefix, v4, suffix)


@leak_class("5 embedded ipv4", "ip6")
def v6embed_compat(env: Env) -> Blob:
    """IPv4-compatible ::a.b.c.d."""
    return _udp6(_embed(bytes(12), env.v4("host")), PUB6, 5000, 53, b"c")


@leak_class("5 embedded ipv4", "ip6")
def v6embed_mapped(env: Env) -> Blob:
    """IPv4-mapped ::ffff:a.b.c.d."""
    return _udp6(PUB6, _embed(bytes(10) + b"\xff\xff", env.v4("host")), 53, 5000, b"m")


@leak_class("5 embedded ipv4", "ip6")
def v6embed_siit(env: Env) -> Blob:
    """SIIT IPv4-translated ::ffff:0:a.b.c.d."""
    return _udp6(_embed(bytes(8) + b"\xff\xff\0\0", env.v4("host")), PUB6, 5000, 53, b"s")


@leak_class("5 embedded ipv4", "ip6")
def v6embed_nat64_wkp(env: Env) -> Blob:
    """NAT64 well-known prefix 64:ff9b::a.b.c.d."""
    return _udp6(PUB6, _embed(a6("64:ff9b::")[:12], env.v4("host")), 53, 5000, b"n")


@leak_class("5 embedded ipv4", "ip6")
def v6embed_nat64_local(env: Env) -> Blob:
    """NAT64 local-use prefix 64:ff9b:1::a.b.c.d."""
    return _udp6(_embed(a6("64:ff9b:1::")[:12], env.v4("host")), PUB6, 5000, 53, b"l")


@leak_class("5 embedded ipv4", "ip6")
def v6embed_nat64_local_split(env: Env) -> Blob:
    """NAT64 local-use /48 in the RFC 6052 /48 layout: the IPv4 address split around the
    u-octet, 64:ff9b:1:AABB:00CC:DD00::."""
    v4 = env.v4_value("host")
    # the second half is host bits, which --pnat keeps by design: the 16-byte slot and the
    # raw-form search still catch a second half left as it was under Crypto-PAn
    addr = addr6(a6("64:ff9b:1::")[:6], private_bytes(v4[:2], "v4 split"), b"\0", v4[2:], bytes(5))
    return _udp6(addr, PUB6, 5000, 53, b"l")


@leak_class("5 embedded ipv4", "ip6")
def v6embed_isatap(env: Env) -> Blob:
    """ISATAP interface ID ::0:5efe:a.b.c.d under a public /64."""
    return _udp6(_embed(PUB6_NET + b"\0\0\x5e\xfe", env.v4("host")), PUB6, 5000, 53, b"i")


@leak_class("5 embedded ipv4", "ip6")
def v6embed_isatap_200(env: Env) -> Blob:
    """ISATAP ::200:5efe:a.b.c.d under the private /64 (the prefix maps, the IID must too)."""
    return _udp6(addr6(env.v6net("host6"), b"\x02\x00\x5e\xfe", env.v4("host")), PUB6, 5000, 53, b"j")


@leak_class("5 embedded ipv4", "ip6")
def v6embed_6to4(env: Env) -> Blob:
    """6to4 2002:a.b.c.d::/48."""
    return _udp6(_embed(b"\x20\x02", env.v4("host"), b"\0\x01" + bytes(7) + b"\x01"), PUB6, 5000, 53, b"6")


@leak_class("5 embedded ipv4", "ip6")
def v6embed_teredo(env: Env) -> Blob:
    """Teredo 2001:0:server:flags:port:~client, private server and (inverted) client."""
    addr = addr6(b"\x20\x01\0\0", env.v4("gw"), b"\x80\0\xf5\xfe", env.v4inv("host"))
    return _udp6(addr, PUB6, 5000, 53, b"t")


# -- 6. neighbour discovery options

def _ra(options: Blob | bytes) -> Blob:
    return icmp6(134, 0, cat(struct.pack("!BBHII", 64, 0, 1800, 0, 0), options))


@leak_class("6 nd options", "ip6")
def nd_ra_dnssl_arpa(env: Env) -> Blob:
    """RA with a DNSSL option listing the ip6.arpa and in-addr.arpa zones of the private prefixes."""
    nibbles = [_label(c.encode()) for c in reversed(env.v6_value("host6")[:8].hex())]
    zone6 = dns_name(private_bytes(b"".join(nibbles), "name"), b"ip6", b"arpa")
    zone4 = dns_name(private_bytes(_label(b"1") + _label(b"10"), "name"), b"in-addr", b"arpa")
    dnssl = nd_opt(31, cat(b"\0\0", struct.pack("!I", 600), zone6, zone4))
    return ipv6(a6("fe80::1"), a6("ff02::1"), 58, _ra(cat(nd_opt(1, env.mac("gw_mac")), dnssl)), hlim=255)


@leak_class("6 nd options", "ip6")
def nd_ra_unknown_option(env: Env) -> Blob:
    """RA with an unknown option (type 200) holding an address."""
    return ipv6(a6("fe80::1"), a6("ff02::1"), 58, _ra(nd_opt(200, cat(bytes(6), env.v6("peer6")))), hlim=255)


@leak_class("6 nd options", "ip6")
def nd_ra_full(env: Env) -> Blob:
    """RA with source link-layer address, MTU, prefix information, route information, RDNSS."""
    pio = nd_opt(3, cat(bytes([64, 0xC0]), struct.pack("!III", 86400, 14400, 0), env.v6prefix("host6")))
    rio = nd_opt(24, cat(bytes([48, 0]), struct.pack("!I", 600), env.v6prefix("peer6")))
    rdnss = nd_opt(25, cat(b"\0\0", struct.pack("!I", 600), env.v6("dns6")))
    opts = cat(nd_opt(1, env.mac("gw_mac")), nd_opt(5, b"\0\0\0\0\x05\xdc"), pio, rio, rdnss)
    return ipv6(addr6(LL_NET, env.eui64("gw_mac")), a6("ff02::1"), 58, _ra(opts), hlim=255)


@leak_class("6 nd options", "ip6")
def nd_ns_unknown_option(env: Env) -> Blob:
    """NS with a source link-layer address and an unknown option holding an IPv4 address and a MAC."""
    body = cat(bytes(4), env.v6("peer6"), nd_opt(1, env.mac("host_mac")), nd_opt(199, cat(env.v4("peer"), env.mac("peer_mac"))))
    return ipv6(env.v6("host6"), a6("ff02::1:ff00:1"), 58, icmp6(135, 0, body), hlim=255)


@leak_class("6 nd options", "ip6")
def nd_ns(env: Env) -> Blob:
    """Neighbour solicitation with source link-layer address."""
    body = cat(bytes(4), env.v6("peer6"), nd_opt(1, env.mac("host_mac")))
    return ipv6(env.v6("host6"), a6("ff02::1:ff00:1"), 58, icmp6(135, 0, body), hlim=255)


@leak_class("6 nd options", "ip6")
def nd_na(env: Env) -> Blob:
    """Neighbour advertisement with target link-layer address."""
    body = cat(b"\x60\0\0\0", env.v6("peer6"), nd_opt(2, env.mac("peer_mac")))
    return ipv6(env.v6("peer6"), env.v6("host6"), 58, icmp6(136, 0, body), hlim=255)


@leak_class("6 nd options", "ip6")
def nd_rs(env: Env) -> Blob:
    """Router solicitation with source link-layer address."""
    return ipv6(env.v6("host6"), a6("ff02::2"), 58, icmp6(133, 0, cat(bytes(4), nd_opt(1, env.mac("host_mac")))), hlim=255)


@leak_class("6 nd options", "ip6")
def nd_redirect(env: Env) -> Blob:
    """Redirect: target, destination, target link-layer address, redirected header."""
    quoted = _udp6(env.v6("host6"), env.v6("peer6"), 5000, 53, b"redir")
    body = cat(bytes(4), env.v6("gw6"), env.v6("peer6"), nd_opt(2, env.mac("gw_mac")), nd_opt(4, cat(bytes(6), quoted)))
    return ipv6(a6("fe80::1"), env.v6("host6"), 58, icmp6(137, 0, body), hlim=255)


@leak_class("6 nd options", "ip6")
def mld2_report_sources(env: Env) -> Blob:
    """MLDv2 report with private sources."""
    rec = cat(bytes([1, 0]), struct.pack("!H", 2), a6("ff3e::1234"), env.v6("peer6"), env.v6("dns6"))
    return ipv6(env.v6("host6"), a6("ff02::16"), 58, icmp6(143, 0, cat(b"\0\0\0\x01", rec)), hlim=1)


@leak_class("6 nd options", "ip6")
def mld2_query_sources(env: Env) -> Blob:
    """MLDv2 query for a group with private sources."""
    body = cat(struct.pack("!HH", 1000, 0), a6("ff3e::1234"), b"\x02\x7d\x00\x01", env.v6("peer6"))
    return ipv6(env.v6("gw6"), a6("ff02::1"), 58, icmp6(130, 0, body), hlim=1)


# -- 7. GRE

@leak_class("7 gre")
def gre_key_seq_private(env: Env) -> Blob:
    """GRE with key and sequence number equal to private addresses."""
    inner = _udp4(env.v4("peer"), PUB4, 5000, 53, b"g")
    return ipv4(env.v4("gw"), env.v4("host"), 47, gre(0x0800, inner, key=env.v4("host"), seq=env.v4("peer")))


@leak_class("7 gre")
def gre_checksum_ip6(env: Env) -> Blob:
    """GRE with checksum and key carrying IPv6."""
    inner = _udp6(env.v6("peer6"), PUB6, 5000, 53, b"g6")
    return ipv4(env.v4("gw"), env.v4("host"), 47, gre(0x86DD, inner, checksum=True, key=7))


@leak_class("7 gre")
def gre_ethernet(env: Env) -> Blob:
    """GRE transparent Ethernet bridging: inner MACs and addresses."""
    inner = eth(env.mac("peer_mac"), env.mac("inner_mac"), 0x0800, _syn_ack(env.v4("peer"), PUB4))
    return ipv4(env.v4("gw"), env.v4("host"), 47, gre(0x6558, inner))


@leak_class("7 gre", "ip6")
def gre_over_ip6(env: Env) -> Blob:
    """GRE over IPv6 with a key equal to an address, carrying IPv4."""
    inner = _syn_ack(env.v4("peer"), PUB4)
    return ipv6(env.v6("gw6"), env.v6("host6"), 47, gre(0x0800, inner, key=env.v4("peer")))


@leak_class("6 nd options", "ip6")
def nd_ra_dnssl_hostname(env: Env) -> Blob:
    """RA whose DNSSL domain embeds a private address as a dashed host-name label."""
    host = env.dashed4("peer_t")
    label = cat(bytes([3 + len(host)]), b"ip-", host)
    dnssl = nd_opt(31, cat(b"\0\0", struct.pack("!I", 600), dns_name(label, b"corp", b"example")))
    return ipv6(a6("fe80::1"), a6("ff02::1"), 58, _ra(dnssl), hlim=255)


@leak_class("6 nd options", "ip6")
def icmp6_node_info(env: Env) -> Blob:
    """ICMPv6 node information reply (140) about a private subject, answering with addresses."""
    body = cat(struct.pack("!HH", 3, 0), bytes(8), struct.pack("!I", 60), env.v6("peer6"), struct.pack("!I", 60), env.v6("dns6"))
    return ipv6(env.v6("peer6"), env.v6("host6"), 58, icmp6(140, 0, body))


@leak_class("6 nd options", "ip6")
def icmp6_inverse_nd(env: Env) -> Blob:
    """Inverse ND advertisement (142): link-layer options and a target address list."""
    tal = nd_opt(10, cat(bytes(6), env.v6("peer6")))
    body = cat(bytes(4), nd_opt(1, env.mac("peer_mac")), nd_opt(2, env.mac("host_mac")), tal)
    return ipv6(env.v6("peer6"), env.v6("host6"), 58, icmp6(142, 0, body), hlim=255)


# -- 8. ARP

def _arp_pad(env: Env) -> Blob:
    return cat(env.v4("peer"), env.mac("peer_mac"), bytes(8))


@leak_class("8 arp", "arp")
def arp_request_padding(env: Env) -> Blob:
    """ARP request padded to the Ethernet minimum with an address and a MAC in the padding."""
    return cat(arp(1, env.mac("host_mac"), env.v4("host"), bytes(6), env.v4("gw")), _arp_pad(env))


@leak_class("8 arp", "arp")
def arp_reply_padding(env: Env) -> Blob:
    """ARP reply with private padding."""
    return cat(arp(2, env.mac("gw_mac"), env.v4("gw"), env.mac("host_mac"), env.v4("host")), _arp_pad(env))


@leak_class("8 arp", "arp")
def arp_probe(env: Env) -> Blob:
    """ARP probe (sender 0.0.0.0)."""
    return arp(1, env.mac("host_mac"), bytes(4), bytes(6), env.v4("host"))


@leak_class("8 arp", "rarp")
def rarp_reply(env: Env) -> Blob:
    """RARP reply."""
    return arp(4, env.mac("gw_mac"), env.v4("gw"), env.mac("host_mac"), env.v4("host"))


# -- 9. EUI-64 interface identifiers

@leak_class("9 eui-64", "ip6")
def eui64_slaac_private(env: Env) -> Blob:
    """SLAAC address under the private prefix: the IID is the host's MAC."""
    return _udp6(env.slaac("host6", "host_mac"), PUB6, 5000, 53, b"e")


@leak_class("9 eui-64", "ip6")
def eui64_public_prefix(env: Env) -> Blob:
    """EUI-64 IID of a private MAC under a public prefix."""
    return _syn_ack6(PUB6, addr6(PUB6_NET, env.eui64("host_mac")))


@leak_class("9 eui-64", "ip6")
def eui64_link_local_ns(env: Env) -> Blob:
    """NS from the link-local EUI-64 address for a SLAAC target."""
    body = cat(bytes(4), env.slaac("peer6", "peer_mac"), nd_opt(1, env.mac("host_mac")))
    return ipv6(addr6(LL_NET, env.eui64("host_mac")), a6("ff02::1:ff00:1"), 58, icmp6(135, 0, body), hlim=255)


# -- 10. UDP tunnels

def _inner_eth(env: Env) -> Blob:
    return eth(env.mac("peer_mac"), env.mac("inner_mac"), 0x0800, _syn_ack(env.v4("peer"), PUB4))


@leak_class("10 udp tunnels")
def vxlan(env: Env) -> Blob:
    """VXLAN: inner Ethernet frame with private MACs and addresses."""
    return _udp4(env.v4("gw"), env.v4("host"), 49152, 4789, cat(b"\x08\0\0\0\0\x12\x34\0", _inner_eth(env)))


@leak_class("10 udp tunnels", "ip6")
def vxlan_over_ip6(env: Env) -> Blob:
    """VXLAN over IPv6."""
    return _udp6(env.v6("gw6"), env.v6("host6"), 49152, 4789, cat(b"\x08\0\0\0\0\x12\x34\0", _inner_eth(env)))


@leak_class("10 udp tunnels")
def vxlan_inner_arp(env: Env) -> Blob:
    """VXLAN carrying an ARP request with private padding."""
    inner = eth(b"\xff" * 6, env.mac("inner_mac"), 0x0806,
                cat(arp(1, env.mac("inner_mac"), env.v4("peer"), bytes(6), env.v4("gw")), _arp_pad(env)))
    return _udp4(env.v4("gw"), env.v4("host"), 49152, 4789, cat(b"\x08\0\0\0\0\x12\x34\0", inner))


@leak_class("10 udp tunnels")
def geneve(env: Env) -> Blob:
    """GENEVE with an option TLV holding an address, inner Ethernet."""
    opt = cat(b"\x01\x03\x80\x01", env.v4("peer"))
    hdr = cat(bytes([len(opt) // 4, 0]), b"\x65\x58", b"\0\x12\x34\0", opt)
    return _udp4(env.v4("gw"), env.v4("host"), 49152, 6081, cat(hdr, _inner_eth(env)))


@leak_class("10 udp tunnels")
def gtpu(env: Env) -> Blob:
    """GTP-U G-PDU carrying a UE's IPv4 packet."""
    inner = _syn_ack(env.v4("peer"), PUB4)
    return _udp4(env.v4("gw"), env.v4("host"), 2152, 2152, cat(struct.pack("!BBHI", 0x30, 0xFF, len(inner), 0x1234ABCD), inner))


@leak_class("10 udp tunnels")
def gtpu_extension(env: Env) -> Blob:
    """GTP-U with sequence number and a PDU session container extension, inner IPv6."""
    inner = _udp6(env.v6("peer6"), PUB6, 5000, 53, b"ue")
    ext = b"\0\x07\0\x85" + b"\x01\x00\x01\x00"
    return _udp4(env.v4("gw"), env.v4("host"), 2152, 2152,
                 cat(struct.pack("!BBHI", 0x36, 0xFF, len(ext) + len(inner), 0x1234ABCD), ext, inner))


@leak_class("10 udp tunnels")
def l2tp_ppp(env: Env) -> Blob:
    """L2TPv2 data message carrying PPP carrying IPv4."""
    inner = _syn_ack(env.v4("peer"), PUB4)
    return _udp4(env.v4("gw"), env.v4("host"), 1701, 1701, cat(b"\x00\x02\x00\x05\x00\x09\xff\x03\x00\x21", inner))


@leak_class("10 udp tunnels")
def l2tp_with_length(env: Env) -> Blob:
    """L2TPv2 data message with the length bit set (a longer header), PPP, IPv4."""
    inner = _syn_ack(env.v4("peer"), PUB4)
    body = cat(struct.pack("!HHHH", 0x4002, 12 + len(inner), 5, 9), b"\xff\x03\x00\x21", inner)
    return _udp4(env.v4("gw"), env.v4("host"), 1701, 1701, body)


@leak_class("10 udp tunnels")
def teredo_origin(env: Env) -> Blob:
    """Teredo with an origin indication (inverted client address) and an inner IPv6 packet."""
    taddr = addr6(b"\x20\x01\0\0", env.v4("gw"), b"\x80\0\xf5\xfe", env.v4inv("peer"))
    inner = _udp6(PUB6, taddr, 53, 5000, b"t")
    return _udp4(env.v4("gw"), env.v4("host"), 3544, 40000, cat(b"\0\0\xf5\xfe", env.v4inv("peer"), inner))


# -- 11. fragments

def _frag4(src: Blob, dst: Blob, proto: int, l4: Blob, first: int) -> Blob:
    full = ipv4(src, dst, proto, l4)  # the transport checksum covers the whole datagram
    return ipv4(src, dst, proto, full.sub(20, 20 + first), frag=0x2000)


@leak_class("11 fragments")
def ip4_frag_first(env: Env) -> Blob:
    """First IPv4 fragment of a UDP datagram whose data holds private addresses."""
    l4 = udp(5000, 53, cat(b"DATA", env.v4("peer"), env.v6("peer6"), bytes(40)))
    return _frag4(env.v4("host"), PUB4, 17, l4, 40)


@leak_class("11 fragments")
def ip4_frag_later_udp(env: Env) -> Blob:
    """Later IPv4 fragment (offset 24) of UDP: data with private addresses."""
    return ipv4(env.v4("host"), PUB4, 17, cat(env.v4("peer"), env.v6("peer6"), env.mac("peer_mac"), b"xy"), frag=3)


@leak_class("11 fragments")
def ip4_frag_later_icmp(env: Env) -> Blob:
    """Later fragment of an ICMP error: the rest of a quoted private packet."""
    return ipv4(PUB4, env.v4("host"), 1, cat(bytes(4), env.v4("host"), env.v4("peer"), bytes(8)), frag=1)


@leak_class("11 fragments", "ip6")
def ip6_frag_first(env: Env) -> Blob:
    """First IPv6 fragment of UDP with private data."""
    dgram = udp(5000, 53, cat(b"DATA", env.v6("peer6"), env.v4("peer"), bytes(40)))
    full = ipv6(env.v6("host6"), PUB6, 17, dgram)  # the UDP checksum covers the whole datagram
    return ipv6(env.v6("host6"), PUB6, 44, cat(frag6(17, 0, True), full.sub(40, 40 + 32)))


@leak_class("11 fragments", "ip6")
def ip6_frag_later(env: Env) -> Blob:
    """Later IPv6 fragment of UDP with private data."""
    return ipv6(env.v6("host6"), PUB6, 44, cat(frag6(17, 4, False), env.v6("peer6"), env.v4("peer"), b"zz"))


@leak_class("11 fragments", "ip6")
def ip6_frag_later_icmp6(env: Env) -> Blob:
    """Later IPv6 fragment of an ICMPv6 error (the quote's tail)."""
    return ipv6(PUB6, env.v6("host6"), 44, cat(frag6(58, 6, False), env.v6("host6"), env.v6("peer6")))


# -- 12. application payloads

@leak_class("12 payloads")
def dns_a_aaaa_answer(env: Env) -> Blob:
    """DNS response with A and AAAA records of private hosts."""
    q = dns_name(b"www", b"corp", b"example") + b"\0\x01\0\x01"
    ans = cat(b"\xc0\x0c\0\x01\0\x01\0\0\x01\x2c\0\x04", env.v4("peer"),
              b"\xc0\x0c\0\x1c\0\x01\0\0\x01\x2c\0\x10", env.v6("peer6"))
    return _udp4(env.v4("dns"), env.v4("host"), 53, 40000, cat(b"\x1a\x2b\x81\x80\0\x01\0\x02\0\0\0\0", q, ans))


@leak_class("12 payloads")
def dns_ptr_query_v4(env: Env) -> Blob:
    """DNS PTR query for a private host's in-addr.arpa name."""
    q = cat(dns_name(env.ptr4_labels("peer_t"), b"in-addr", b"arpa"), b"\0\x0c\0\x01")
    return _udp4(env.v4("host"), PUB4, 40000, 53, cat(b"\x1a\x2c\x01\0\0\x01\0\0\0\0\0\0", q))


@leak_class("12 payloads", "ip6")
def dns_ptr_query_v6(env: Env) -> Blob:
    """DNS PTR query for a private host's ip6.arpa name."""
    q = cat(dns_name(env.ptr6_labels("peer6"), b"ip6", b"arpa"), b"\0\x0c\0\x01")
    return _udp6(env.v6("host6"), PUB6, 40000, 53, cat(b"\x1a\x2d\x01\0\0\x01\0\0\0\0\0\0", q))


@leak_class("12 payloads")
def dhcp_ack(env: Env) -> Blob:
    """DHCPv4 ACK: yiaddr, siaddr, giaddr, chaddr, server id, router, DNS, requested address, client id."""
    bootp = cat(struct.pack("!BBBBIHH", 2, 1, 6, 0, 0xDEADBEEF, 0, 0), env.v4("peer"), env.v4("host"),
                env.v4("gw"), env.v4("dns"), env.mac("host_mac"), bytes(10), bytes(192), b"\x63\x82\x53\x63")
    opts = cat(b"\x35\x01\x05", b"\x36\x04", env.v4("gw"), b"\x01\x04\xff\xff\0\0", b"\x03\x04", env.v4("gw"),
               b"\x06\x04", env.v4("dns"), b"\x32\x04", env.v4("host"), b"\x3d\x07\x01", env.mac("host_mac"),
               b"\x0c\x05host1", b"\xff")
    return _udp4(env.v4("gw"), env.v4("host"), 67, 68, cat(bootp, opts))


@leak_class("12 payloads", "ip6")
def dhcpv6_reply(env: Env) -> Blob:
    """DHCPv6 reply: DUID-LL and DUID-LLT with MACs, an IA_NA address, DNS servers."""
    client = cat(b"\0\x01\0\x0a\0\x03\0\x01", env.mac("host_mac"))
    server = cat(b"\0\x02\0\x0e\0\x01\0\x01\x2a\x2b\x2c\x2d", env.mac("gw_mac"))
    ia = cat(b"\0\x03\0\x28", struct.pack("!III", 1, 3600, 5400), b"\0\x05\0\x18", env.v6("host6"),
             struct.pack("!II", 7200, 7500))
    dns = cat(b"\0\x17\0\x10", env.v6("dns6"))
    return _udp6(env.v6("gw6"), env.v6("host6"), 547, 546, cat(b"\x07\x12\x34\x56", client, server, ia, dns))


@leak_class("12 payloads")
def syslog_text(env: Env) -> Blob:
    """Syslog line with addresses and a MAC as text."""
    msg = cat(b"<38>1 2024-01-01T00:00:00Z fw01 sshd - - Accepted password for root from ", env.text4("peer_t"),
              b" port 22 via ", env.text6("peer6_t"), b" mac ", env.textmac("peer_mac"))
    return _udp4(env.v4("host_t"), PUB4, 514, 514, msg)


@leak_class("12 payloads")
def http_text(env: Env) -> Blob:
    """HTTP request naming private hosts (Host, X-Forwarded-For, Forwarded)."""
    req = cat(b"GET /admin HTTP/1.1\r\nHost: ", env.text4("host_t"), b"\r\nX-Forwarded-For: ", env.text4("peer_t"),
              b"\r\nForwarded: for=\"[", env.text6("peer6_t"), b"]\"\r\n\r\n")
    return ipv4(PUB4, env.v4("host_t"), 6, tcp(51000, 80, flags=PSH | ACK, payload=req))


@leak_class("12 payloads")
def tcp_payload_binary(env: Env) -> Blob:
    """TCP payload holding raw addresses and a MAC."""
    data = cat(b"\x00\x01", env.v4("host"), env.v4("peer"), env.v6("peer6"), env.mac("peer_mac"), b"\x7f")
    return ipv4(PUB4, env.v4("host"), 6, tcp(51000, 5555, flags=PSH | ACK, payload=data))


@leak_class("12 payloads")
def icmp_echo_binary(env: Env) -> Blob:
    """ICMP echo whose data holds raw addresses."""
    return ipv4(env.v4("host"), PUB4, 1, icmp(8, 0, b"\0\x07\0\x01", cat(env.v4("host"), env.v4("peer"), env.v6("peer6"))))


@leak_class("12 payloads")
def icmp_mask_reply(env: Env) -> Blob:
    """ICMP address mask reply whose mask field holds an address."""
    return ipv4(env.v4("gw"), env.v4("host"), 1, icmp(18, 0, b"\0\x07\0\x01", env.v4("peer")))


@leak_class("12 payloads")
def icmp_ext_interface(env: Env) -> Blob:
    """Time exceeded with RFC 4884 extensions: an RFC 5837 interface object naming a private
    interface address (its own extension checksum)."""
    quote = _udp4(env.v4("host"), PUB4, 40000, 33434, b"\0" * 8)
    quote = quote + bytes(128 - len(quote))
    obj = cat(struct.pack("!HBB", 24, 2, 0x0E), b"\0\0\0\x05", b"\0\x01\0\0", env.v4("gw"), b"\x08eth0\0\0\0")
    ext = cat(b"\x20\0\0\0", obj)
    ext = ext.set16(2, csum(ext.data)).with_sum(Checksum(2, 0, len(ext)))
    return ipv4(PUB4, env.v4("host"), 1, icmp(11, 0, b"\0\x20\0\0", cat(quote, ext)))


@leak_class("12 payloads")
def netflow_v5(env: Env) -> Blob:
    """NetFlow v5 export with a flow between private hosts and a private next hop."""
    head = struct.pack("!HHIIIIBBH", 5, 1, 1000, 1700000000, 0, 42, 0, 0, 0)
    rec = cat(env.v4("peer"), env.v4("dns"), env.v4("gw"), struct.pack("!HHIIIIHHBBBBHHBBH", 1, 2, 10, 1500, 0, 0,
                                                                         5000, 53, 0, 0, 17, 0, 0, 0, 24, 24, 0))
    return _udp4(env.v4("gw"), env.v4("host"), 2055, 2055, cat(head, rec))


@leak_class("12 payloads")
def snmp_trap(env: Env) -> Blob:
    """SNMPv1 trap: agent address and a varbind value that are private addresses."""
    oid = b"\x2b\x06\x01\x04\x01"
    varbind = _ber(0x30, _ber(0x30, cat(_ber(0x06, oid + b"\x01"), _ber(0x40, env.v4("peer")))))
    pdu = _ber(0xA4, cat(_ber(0x06, oid), _ber(0x40, env.v4("gw")), _ber(0x02, b"\x06"), _ber(0x02, b"\x01"),
                         _ber(0x43, b"\x01\x02"), varbind))
    return _udp4(env.v4("gw"), env.v4("host"), 40000, 162, _ber(0x30, cat(_ber(0x02, b"\0"), _ber(0x04, b"public"), pdu)))


@leak_class("12 payloads")
def rip_v2(env: Env) -> Blob:
    """RIPv2 response with a private route and next hop."""
    entry = cat(b"\0\x02\0\0", env.v4("peer"), b"\xff\xff\xff\0", env.v4("gw"), b"\0\0\0\x01")
    return _udp4(env.v4("gw"), a4("224.0.0.9"), 520, 520, cat(b"\x02\x02\0\0", entry))


@leak_class("12 payloads")
def hsrp_hello(env: Env) -> Blob:
    """HSRP hello with a private virtual address."""
    return _udp4(env.v4("gw"), a4("224.0.0.2"), 1985, 1985, cat(b"\0\0\x10\x03\x0a\x64\x01\0cisco\0\0\0", env.v4("peer")))


@leak_class("12 payloads")
def ntp_refid(env: Env) -> Blob:
    """NTP stratum-2 reply whose reference ID is the private upstream server's address."""
    return _udp4(env.v4("gw"), env.v4("host"), 123, 123, cat(b"\x24\x02\x06\xe9", bytes(8), env.v4("dns"), bytes(32)))


# -- 13. TCP sequence numbers that are addresses

@leak_class("13 tcp seq")
def tcp_seq_is_dst(env: Env) -> Blob:
    """Scanner SYN with seq equal to the destination address (Mirai)."""
    return ipv4(PUB4, env.v4("host"), 6, tcp(40001, 23, seq=env.v4("host"), flags=SYN))


@leak_class("13 tcp seq")
def tcp_seq_is_src(env: Env) -> Blob:
    """SYN from the private host whose seq is its own address."""
    return ipv4(env.v4("host"), PUB4, 6, tcp(40001, 23, seq=env.v4("host"), flags=SYN))


@leak_class("13 tcp seq")
def tcp_ack_is_dst_plus1(env: Env) -> Blob:
    """SYN-ACK answering a Mirai SYN spoofed with the host's address: ack = address + 1."""
    return ipv4(PUB4, env.v4("host"), 6, tcp(23, 40001, ack=env.v4plus1("host"), flags=SYN | ACK))


# -- ICMP errors quoting packets

@leak_class("icmp errors")
def icmp_unreach_udp(env: Env) -> Blob:
    """Port unreachable quoting a whole private UDP datagram."""
    return ipv4(PUB4, env.v4("host"), 1, icmp(3, 3, bytes(4), _udp4(env.v4("host"), env.v4("peer"), 40000, 53, b"q" * 6)))


@leak_class("icmp errors")
def icmp_time_exceeded_tcp_seq(env: Env) -> Blob:
    """Time exceeded quoting the first 8 bytes of a SYN whose seq is its destination."""
    quoted = ipv4(env.v4("host"), env.v4("peer"), 6, tcp(40001, 23, seq=env.v4("peer"), flags=SYN))
    return ipv4(PUB4, env.v4("host"), 1, icmp(11, 0, bytes(4), quoted.cut(28)))


@leak_class("icmp errors")
def icmp_redirect(env: Env) -> Blob:
    """Redirect: a private gateway address and a quote."""
    quoted = _syn_ack(env.v4("host"), PUB4)
    return ipv4(env.v4("gw"), env.v4("host"), 1, icmp(5, 1, env.v4("gw2"), quoted.cut(28)))


@leak_class("icmp errors")
def icmp_param_problem_options(env: Env) -> Blob:
    """Parameter problem quoting a packet with a Record Route option."""
    quoted = _syn_ack(env.v4("host"), PUB4, ipopts=cat(bytes([7, 11, 8]), env.v4("gw"), env.v4("peer")))
    return ipv4(PUB4, env.v4("host"), 1, icmp(12, 0, b"\x14\0\0\0", quoted))


@leak_class("icmp errors")
def icmp_source_quench(env: Env) -> Blob:
    """Source quench quoting a private UDP datagram."""
    return ipv4(PUB4, env.v4("host"), 1, icmp(4, 0, bytes(4), _udp4(env.v4("host"), PUB4B, 40000, 53, b"sq")))


@leak_class("icmp errors")
def icmp_nested_error(env: Env) -> Blob:
    """Unreachable quoting a time exceeded quoting a private datagram."""
    inner = _udp4(env.v4("peer"), env.v4("dns"), 40000, 53, b"nest")
    middle = ipv4(env.v4("host"), env.v4("peer"), 1, icmp(11, 0, bytes(4), inner))
    return ipv4(PUB4, env.v4("host"), 1, icmp(3, 1, bytes(4), middle))


@leak_class("icmp errors")
def icmp_quote_of_tunnel(env: Env) -> Blob:
    """Time exceeded quoting a whole GRE packet: the inner private packet is in the quote."""
    quoted = ipv4(env.v4("host"), PUB4B, 47, gre(0x0800, _udp4(env.v4("peer"), env.v4("dns"), 5000, 53, b"in")))
    return ipv4(PUB4, env.v4("host"), 1, icmp(11, 0, bytes(4), quoted))


@leak_class("icmp errors")
def icmp_quote_of_6in4(env: Env) -> Blob:
    """Unreachable quoting a whole 6in4 packet: private IPv6 addresses inside the quote."""
    quoted = ipv4(env.v4("host"), PUB4B, 41, _udp6(env.v6("peer6"), PUB6, 5000, 53, b"6"))
    return ipv4(PUB4, env.v4("host"), 1, icmp(3, 1, bytes(4), quoted))


@leak_class("icmp errors")
def icmp_unknown_type(env: Env) -> Blob:
    """ICMP type 40 (Photuris) whose body holds addresses."""
    return ipv4(env.v4("gw"), env.v4("host"), 1, icmp(40, 0, env.v4("peer"), cat(env.v4("host"), env.v6("peer6"))))


@leak_class("icmp errors", "ip6")
def icmp6_ext_interface(env: Env) -> Blob:
    """ICMPv6 time exceeded with RFC 4884 extensions: an RFC 5837 object with a private IPv6
    interface address."""
    quote = _udp6(env.v6("host6"), PUB6, 40000, 33434, bytes(8))
    quote = quote + bytes(128 - len(quote))
    obj = cat(struct.pack("!HBB", 24, 2, 0x04), b"\0\x02\0\0", env.v6("gw6"))
    ext = cat(b"\x20\0\0\0", obj)
    ext = ext.set16(2, csum(ext.data)).with_sum(Checksum(2, 0, len(ext)))
    return ipv6(PUB6, env.v6("host6"), 58, icmp6(3, 0, cat(b"\x10\0\0\0", quote, ext)))


@leak_class("icmp errors")
def icmp_router_advertisement(env: Env) -> Blob:
    """ICMP router advertisement listing private routers."""
    return ipv4(env.v4("gw"), a4("224.0.0.1"), 1, icmp(9, 0, b"\x02\x02\x07\x08",
                                                       cat(env.v4("gw"), bytes(4), env.v4("gw2"), bytes(4))))


@leak_class("icmp errors", "ip6")
def icmp6_unreach_udp(env: Env) -> Blob:
    """ICMPv6 unreachable quoting a private UDP datagram."""
    return ipv6(PUB6, env.v6("host6"), 58, icmp6(1, 4, cat(bytes(4), _udp6(env.v6("host6"), env.v6("peer6"), 5000, 53, b"u"))))


@leak_class("icmp errors", "ip6")
def icmp6_time_exceeded_tcp(env: Env) -> Blob:
    """ICMPv6 time exceeded quoting a TCP SYN from a SLAAC address."""
    quoted = ipv6(env.slaac("host6", "host_mac"), env.v6("peer6"), 6, tcp(40001, 22, flags=SYN, opts=MSS))
    return ipv6(PUB6, env.v6("host6"), 58, icmp6(3, 0, cat(bytes(4), quoted)))


@leak_class("icmp errors", "ip6")
def icmp6_too_big(env: Env) -> Blob:
    """Packet too big quoting a private packet, cut as routers cut it."""
    quoted = _udp6(env.v6("host6"), env.v6("peer6"), 5000, 53, bytes(64))
    return ipv6(PUB6, env.v6("host6"), 58, icmp6(2, 0, cat(struct.pack("!I", 1280), quoted.cut(56))))


@leak_class("icmp errors", "ip6")
def icmp6_param_problem_ext(env: Env) -> Blob:
    """Parameter problem quoting a packet with an unknown destination option holding an address."""
    quoted = ipv6(env.v6("host6"), PUB6, 60, cat(ext_opts(17, tlv(0x1E, env.v6("peer6"))), udp(1, 2, b"p")))
    return ipv6(PUB6, env.v6("host6"), 58, icmp6(4, 2, cat(struct.pack("!I", 42), quoted)))


@leak_class("icmp errors", "ip6")
def icmp6_nested_error(env: Env) -> Blob:
    """ICMPv6 error quoting an ICMPv6 error quoting a private datagram."""
    inner = _udp6(env.v6("peer6"), env.v6("dns6"), 5000, 53, b"n")
    middle = ipv6(env.v6("host6"), env.v6("peer6"), 58, icmp6(1, 0, cat(bytes(4), inner)))
    return ipv6(PUB6, env.v6("host6"), 58, icmp6(3, 0, cat(bytes(4), middle)))


# -- network and transport protocols the walk does not follow

@leak_class("other protocols")
def sctp_init_addresses(env: Env) -> Blob:
    """SCTP INIT with IPv4 and IPv6 address parameters (multi-homing)."""
    chunk = cat(b"\x01\0\0\x2c", struct.pack("!IIHHI", 0x1234, 65535, 10, 10, 77), b"\0\x05\0\x08", env.v4("peer"),
                b"\0\x06\0\x14", env.v6("peer6"))
    return ipv4(env.v4("host"), PUB4, 132, cat(struct.pack("!HHII", 5000, 80, 0, 0), chunk))


@leak_class("other protocols")
def igmpv3_report(env: Env) -> Blob:
    """IGMPv3 membership report with private sources."""
    rec = cat(b"\x01\0\0\x02", a4("232.1.1.1"), env.v4("peer"), env.v4("dns"))
    msg = cat(b"\x22\0\0\0\0\0\0\x01", rec)
    msg = msg.set16(2, csum(msg.data)).with_sum(Checksum(2, 0, len(msg)))
    return ipv4(env.v4("host"), a4("224.0.0.22"), 2, msg, opts=b"\x94\x04\0\0", ttl=1)


@leak_class("other protocols")
def vrrp_advertisement(env: Env) -> Blob:
    """VRRPv2 advertisement with private virtual addresses."""
    msg = cat(b"\x21\x01\x64\x02\0\x01\0\0", env.v4("gw"), env.v4("gw2"), bytes(8))
    msg = msg.set16(6, csum(msg.data)).with_sum(Checksum(6, 0, len(msg)))
    return ipv4(env.v4("gw"), a4("224.0.0.18"), 112, msg, ttl=255)


# -- link-layer protocols the walk does not parse

@leak_class("14 macs", "lldp")
def lldp_management_address(env: Env) -> Blob:
    """LLDP: chassis ID (a MAC), port ID, TTL, management address (private IPv4)."""
    def tlv7(typ: int, value: Blob | bytes) -> Blob:
        return cat(struct.pack("!H", typ << 9 | len(value)), value)
    return cat(tlv7(1, cat(b"\x04", env.mac("gw_mac"))), tlv7(2, b"\x05ge-0/0/1"), tlv7(3, b"\0\x78"),
               tlv7(8, cat(b"\x05\x01", env.v4("gw"), b"\x02\0\0\0\x01\0")), tlv7(0, b""))


# -- tunnels

@leak_class("tunnels")
def ipip(env: Env) -> Blob:
    """IPv4 in IPv4."""
    return ipv4(env.v4("gw"), env.v4("host"), 4, _syn_ack(env.v4("peer"), PUB4))


@leak_class("tunnels")
def sixin4(env: Env) -> Blob:
    """IPv6 in IPv4 (protocol 41)."""
    return ipv4(env.v4("gw"), env.v4("host"), 41, _udp6(env.v6("peer6"), PUB6, 5000, 53, b"6in4"))


@leak_class("tunnels", "ip6")
def ip6in6(env: Env) -> Blob:
    """IPv6 in IPv6."""
    return ipv6(env.v6("gw6"), env.v6("host6"), 41, _syn_ack6(env.v6("peer6"), PUB6))


@leak_class("tunnels", "ip6")
def ip4in6(env: Env) -> Blob:
    """IPv4 in IPv6 (protocol 4)."""
    return ipv6(env.v6("gw6"), env.v6("host6"), 4, _syn_ack(env.v4("peer"), PUB4))


# ---------------------------------------------------------------- link types

ETHERTYPES = {"ip4": 0x0800, "ip6": 0x86DD, "arp": 0x0806, "rarp": 0x8035, "lldp": 0x88CC}
_IP = frozenset({"ip4", "ip6"})
_ANY = frozenset(ETHERTYPES)


@dataclass(frozen=True)
class Link:
    """A link type (and variant) a class can be framed in."""

    name: str
    linktype: int
    nets: frozenset[str]
    wrap: Callable[[Blob, str, Env], Blob]
    ethernet: bool = False


def _eth(tags: tuple[tuple[int, int], ...]) -> Callable[[Blob, str, Env], Blob]:
    return lambda pkt, net, env: eth(env.mac("gw_mac"), env.mac("host_mac"), ETHERTYPES[net], pkt, tags)


def _pppoe(pkt: Blob, net: str, env: Env) -> Blob:
    head = struct.pack("!BBHHH", 0x11, 0, 0x1234, 2 + len(pkt), 0x0021 if net == "ip4" else 0x0057)
    return eth(env.mac("gw_mac"), env.mac("host_mac"), 0x8864, cat(head, pkt))


def _mpls(pkt: Blob, net: str, env: Env) -> Blob:
    labels = struct.pack("!II", (1000 << 12) | 64, (2000 << 12) | 0x100 | 64)
    return eth(env.mac("gw_mac"), env.mac("host_mac"), 0x8847, cat(labels, pkt))


def _sll(pkt: Blob, net: str, env: Env) -> Blob:
    return cat(struct.pack("!HHH", 0, 1, 6), env.mac("gw_mac"), b"\0\0", struct.pack("!H", ETHERTYPES[net]), pkt)


def _sll2(pkt: Blob, net: str, env: Env) -> Blob:
    return cat(struct.pack("!HHIHBB", ETHERTYPES[net], 0, 2, 1, 0, 6), env.mac("gw_mac"), b"\0\0", pkt)


def _null(pkt: Blob, net: str, env: Env) -> Blob:
    return cat(struct.pack("<I", 2 if net == "ip4" else 24), pkt)


def _raw(pkt: Blob, net: str, env: Env) -> Blob:
    return pkt


LINKS: tuple[Link, ...] = (
    Link("eth", 1, _ANY, _eth(()), True),
    Link("eth.1q", 1, _ANY, _eth(((0x8100, 100),)), True),
    Link("eth.qinq", 1, _ANY, _eth(((0x88A8, 200), (0x8100, 100))), True),
    Link("eth.pppoe", 1, _IP, _pppoe, True),
    Link("eth.mpls", 1, _IP, _mpls, True),
    Link("null", 0, _IP, _null),
    Link("raw12", 12, _IP, _raw),
    Link("raw14", 14, _IP, _raw),
    Link("raw101", 101, _IP, _raw),
    Link("sll", 113, _ANY, _sll),
    Link("sll2", 276, _ANY, _sll2),
    Link("ipv4", 228, frozenset({"ip4"}), _raw),
    Link("ipv6", 229, frozenset({"ip6"}), _raw),
)
LINKTYPES: tuple[int, ...] = tuple(sorted({lk.linktype for lk in LINKS}))


def frame(cls: LeakClass, link: Link, env: Env) -> Blob:
    """One class built under `env` and framed in `link`."""
    pkt = link.wrap(cls.build(env), cls.net, env)
    assert not any(c.pending for c in pkt.sums), f"{cls.name}: a transport checksum outside an IP packet"
    return pkt


@dataclass(frozen=True)
class Sample:
    """One corpus packet: a framed class, captured up to caplen (origlen = the whole frame)."""

    cls: LeakClass
    link: Link
    frame: Blob
    caplen: int

    @property
    def data(self) -> bytes:
        return self.frame.data[:self.caplen]


def every_offset(link: Link, pkt: Blob) -> list[int]:
    """Every capture length from 0 to the whole frame."""
    return list(range(len(pkt) + 1))


def samples(env: Env | None = None, offsets: Callable[[Link, Blob], Iterable[int]] = every_offset,
            classes: Iterable[LeakClass] | None = None, links: Iterable[Link] = LINKS) -> Iterator[Sample]:
    """The corpus: every class in every link type that can carry it, at every chosen cut."""
    env = env or corpus_env()
    links = tuple(links)
    for cls in (CLASSES if classes is None else classes):
        for link in links:
            if cls.net in link.nets:
                pkt = frame(cls, link, env)
                for caplen in offsets(link, pkt):
                    yield Sample(cls, link, pkt, caplen)


T0_NS = 1_700_000_000 * 10**9


def records(batch: Iterable[Sample]) -> bytes:
    """Canonical records, 1 µs apart (capture time identifies the packet: the cuts of one
    frame share their origlen)."""
    return b"".join(pack_record(T0_NS + i * 1000, s.data, origlen=len(s.frame)) for i, s in enumerate(batch))


def write_corpus(outdir: str | Path, env: Env | None = None,
                 offsets: Callable[[Link, Blob], Iterable[int]] = every_offset) -> dict[int, tuple[Path, list[Sample]]]:
    """Write the corpus as one pcap file per link type (`adversarial-<linktype>.pcap`).
    Returns linktype -> (path, the samples in file order)."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    by_type: dict[int, list[Sample]] = {}
    for s in samples(env, offsets):
        by_type.setdefault(s.link.linktype, []).append(s)
    files = {}
    for linktype, batch in sorted(by_type.items()):
        path = out / f"adversarial-{linktype}.pcap"
        path.write_bytes(global_header(linktype, 65535, False) + records(batch))
        files[linktype] = (path, batch)
    return files
