"""A nasty corpus for the sanitizer: every place an address can hide, plus broken packets.

Packets are built by hand with struct and an independent RFC 1071 checksum, so the tests do not
trust the code under test to build them. Every private address used here lies in PRIVATE.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

import dpkt

from bridge.pcap import pack_record

PRIVATE = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8", "2001:db8:1::/48"]
PNAT = ("10.0.0.0/8:44.0.0.0/8,172.16.0.0/12:45.16.0.0/12,192.168.0.0/16:46.1.0.0/16,"
        "[fd00::/8]:[2a00::/8],[2001:db8:1::/48]:[2a01:1::/48]")

MAC_A = bytes.fromhex("021122334455")
MAC_B = bytes.fromhex("02aabbccddee")
MAC_ND = bytes.fromhex("0066778899aa")


def a4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def a6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


csum = dpkt.in_cksum  # the Internet checksum (RFC 1071); the corpus builds valid packets with it


def _set16(b: bytes, off: int, v: int) -> bytes:
    return b[:off] + struct.pack("!H", v) + b[off + 2:]


def ipv4(src: str, dst: str, proto: int, payload: bytes, opts: bytes = b"", frag: int = 0, total: int | None = None,
         ttl: int = 64, ident: int = 0x1234) -> bytes:
    ihl = 20 + len(opts)
    tot = ihl + len(payload) if total is None else total
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl // 4, 0, tot, ident, frag, ttl, proto, 0, a4(src), a4(dst)) + opts
    return _set16(h, 10, csum(h)) + payload


def ipv6(src: str, dst: str, nh: int, payload: bytes, plen: int | None = None) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload) if plen is None else plen, nh, 64, a6(src), a6(dst)) + payload


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def tcp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes = b"", flags: int = 0x12, seq: int = 1000,
        ack: int = 2000) -> bytes:
    h = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 8192, 0, 0) + payload
    return _set16(h, 16, csum(_pseudo(src, dst, 6, len(h)) + h))


def udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes = b"", zero_sum: bool = False) -> bytes:
    h = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if zero_sum:
        return h
    c = csum(_pseudo(src, dst, 17, len(h)) + h)
    return _set16(h, 6, c or 0xFFFF)


def icmp(typ: int, code: int, rest: bytes, body: bytes) -> bytes:
    h = struct.pack("!BBH", typ, code, 0) + rest + body
    return _set16(h, 2, csum(h))


def icmp6(src: str, dst: str, typ: int, code: int, body: bytes) -> bytes:
    h = struct.pack("!BBH", typ, code, 0) + body
    return _set16(h, 2, csum(_pseudo(a6(src), a6(dst), 58, len(h)) + h))


def ip4_tcp(src: str, dst: str, payload: bytes = b"", **kw) -> bytes:
    return ipv4(src, dst, 6, tcp(a4(src), a4(dst), 443, 51000, payload), **kw)


def ip4_udp(src: str, dst: str, payload: bytes = b"", zero_sum: bool = False) -> bytes:
    return ipv4(src, dst, 17, udp(a4(src), a4(dst), 53, 40000, payload, zero_sum))


def ip6_udp(src: str, dst: str, payload: bytes = b"") -> bytes:
    return ipv6(src, dst, 17, udp(a6(src), a6(dst), 53, 40000, payload))


def ip6_icmp6(src: str, dst: str, typ: int, code: int, body: bytes) -> bytes:
    return ipv6(src, dst, 58, icmp6(src, dst, typ, code, body))


def eth(payload: bytes, ethertype: int = 0x0800, vlans: tuple[int, ...] = (), src: bytes = MAC_A, dst: bytes = MAC_B) -> bytes:
    tags = b"".join(struct.pack("!HH", tpid, 100) for tpid in vlans)
    return dst + src + tags + struct.pack("!H", ethertype) + payload


def eth6(payload: bytes, **kw) -> bytes:
    return eth(payload, 0x86DD, **kw)


def arp(op: int, spa: str, tpa: str) -> bytes:
    return struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, MAC_A, a4(spa), MAC_B if op == 2 else bytes(6), a4(tpa))


def gre(proto: int, inner: bytes, checksum: bool = False, key: int | None = None) -> bytes:
    flags = (0x8000 if checksum else 0) | (0x2000 if key is not None else 0)
    h = struct.pack("!HH", flags, proto)
    if checksum:
        h += b"\0\0\0\0"
    if key is not None:
        h += struct.pack("!I", key)
    body = h + inner
    if checksum:
        body = _set16(body, 4, csum(body))
    return body


def nd_opt(typ: int, data: bytes) -> bytes:
    raw = struct.pack("!BB", typ, 0) + data
    raw += bytes(-len(raw) % 8)
    return raw[:1] + bytes([len(raw) // 8]) + raw[2:]


@dataclass
class Case:
    """One corpus packet: expected outcome under the default (drop) policy."""

    name: str
    linktype: int
    data: bytes
    expect: str = "keep"           # keep | drop
    reason: str = ""               # expected drop/cut reason
    tcprewrite: bool = False       # plain outer packet: compare with tcprewrite byte for byte
    origlen: int | None = None


def cases() -> list[Case]:
    """The corpus (Ethernet unless a case says otherwise)."""
    quoted_udp = ip4_udp("10.1.2.3", "10.1.9.9", b"q" * 12)
    quoted_tcp8 = ip4_tcp("10.1.2.3", "8.8.4.4")[:28]
    time_exceeded = icmp(11, 0, bytes(4), quoted_udp)
    q6 = ip6_udp("fd00::5", "2001:db8:1::9", b"x" * 8)
    teredo_client = bytes(b ^ 0xFF for b in a4("10.1.2.3"))
    teredo_addr = str(ipaddress.IPv6Address(b"\x20\x01\x00\x00" + a4("10.0.0.1") + b"\x80\x00\xf5\xfe" + teredo_client))
    inner6 = ip6_udp("fd00::7", teredo_addr, b"t")
    origin = b"\x00\x00\xf5\xfe" + teredo_client
    rr = bytes([7, 11, 12]) + a4("10.5.5.5") + a4("10.6.6.6")        # two recorded hops, ptr after both
    ts = bytes([68, 20, 21, 0x01]) + a4("10.7.7.7") + b"\0\0\0\1" + a4("10.8.8.8") + b"\0\0\0\2"
    lsrr = bytes([131, 7, 4]) + a4("10.9.9.1") + b"\x01"
    ra = struct.pack("!BBHII", 64, 0, 1800, 0, 0)[:12] + nd_opt(1, MAC_ND) \
        + nd_opt(3, struct.pack("!BBIII", 64, 0xC0, 86400, 14400, 0) + a6("fd00:1:2:3::")) \
        + nd_opt(25, struct.pack("!HI", 0, 600) + a6("fd00::53") + a6("2001:db8:1::53"))
    redirect_hdr = nd_opt(4, bytes(6) + ip6_udp("fd00::5", "2001:db8:1::99", b"r" * 4))
    mld2 = struct.pack("!HH", 0, 1) + struct.pack("!BBH", 4, 0, 2) + a6("ff3e::1234") + a6("fd00::a") + a6("fd00::b")
    c = [
        Case("tcp", 1, eth(ip4_tcp("10.1.2.3", "8.8.8.8", b"hello")), tcprewrite=True),
        Case("tcp_reply", 1, eth(ip4_tcp("8.8.8.8", "192.168.7.9", b"")), tcprewrite=True),
        Case("udp", 1, eth(ip4_udp("192.168.1.5", "10.9.9.9", b"dns")), tcprewrite=True),
        Case("udp_zero_checksum", 1, eth(ip4_udp("172.16.4.4", "1.1.1.1", b"z", zero_sum=True)), tcprewrite=True),
        Case("icmp_echo", 1, eth(ipv4("10.1.1.1", "1.1.1.1", 1, icmp(8, 0, b"\0\1\0\1", b"ping"))), tcprewrite=True),
        Case("icmp_unreach", 1, eth(ipv4("203.0.113.1", "10.1.2.3", 1, icmp(3, 3, bytes(4), quoted_udp)))),
        Case("icmp_time_exceeded_tcp8", 1, eth(ipv4("198.51.100.1", "10.1.2.3", 1, icmp(11, 0, bytes(4), quoted_tcp8)))),
        Case("icmp_redirect", 1, eth(ipv4("10.1.0.1", "10.1.2.3", 1, icmp(5, 1, a4("10.1.0.254"), ip4_tcp("10.1.2.3", "8.8.4.4")[:28])))),
        Case("icmp_quench", 1, eth(ipv4("203.0.113.9", "192.168.3.3", 1, icmp(4, 0, bytes(4), quoted_tcp8)))),
        Case("icmp_param_problem", 1, eth(ipv4("203.0.113.9", "172.20.1.1", 1, icmp(12, 0, b"\x08\0\0\0", quoted_udp)))),
        Case("icmp_error_of_error", 1, eth(ipv4("203.0.113.7", "10.2.2.2", 1, icmp(3, 1, bytes(4), ipv4("10.2.2.2", "10.3.3.3", 1, time_exceeded))))),
        Case("icmp_router_adv", 1, eth(ipv4("10.1.0.1", "224.0.0.1", 1, icmp(9, 0, struct.pack("!BBH", 2, 2, 1800), a4("10.1.0.1") + bytes(4) + a4("10.1.0.2") + bytes(4))))),
        Case("vlan", 1, eth(ip4_tcp("10.4.4.4", "9.9.9.9"), vlans=(0x8100,))),
        Case("qinq", 1, eth(ip4_udp("10.4.4.5", "9.9.9.9", b"q"), vlans=(0x88A8, 0x8100))),
        Case("arp_request", 1, eth(arp(1, "10.1.2.3", "10.1.0.1"), 0x0806), tcprewrite=True),
        Case("arp_reply", 1, eth(arp(2, "10.1.0.1", "10.1.2.3"), 0x0806), tcprewrite=True),
        Case("ipv4_record_route", 1, eth(ip4_tcp("10.1.2.3", "8.8.8.8", opts=rr + b"\0"))),
        Case("ipv4_timestamp_addr", 1, eth(ip4_tcp("10.1.2.3", "8.8.8.8", opts=ts))),
        Case("ipv4_lsrr", 1, eth(ip4_tcp("10.1.2.3", "8.8.8.8", opts=lsrr)), "drop", "ip_source_route"),
        Case("ipip", 1, eth(ipv4("10.0.0.1", "10.0.0.2", 4, ip4_tcp("192.168.1.1", "8.8.8.8", b"in")))),
        Case("6in4", 1, eth(ipv4("10.0.0.1", "198.51.100.2", 41, ip6_udp("fd00::1", "2001:db8:1::1", b"6")))),
        Case("gre_ipv4", 1, eth(ipv4("10.0.0.1", "10.0.0.2", 47, gre(0x0800, ip4_udp("192.168.9.9", "10.7.7.7", b"g"))))),
        Case("gre_checksum_key", 1, eth(ipv4("10.0.0.1", "10.0.0.2", 47, gre(0x0800, ip4_tcp("192.168.9.8", "8.8.8.8"), checksum=True, key=7)))),
        Case("gre_ipv6", 1, eth(ipv4("10.0.0.1", "10.0.0.2", 47, gre(0x86DD, ip6_udp("fd00::9", "2001:db8:1::8", b"g6"))))),
        Case("gre_ethernet", 1, eth(ipv4("10.0.0.1", "10.0.0.2", 47, gre(0x6558, eth(ip4_tcp("172.16.1.1", "8.8.8.8")))))),
        Case("gre_ppp", 1, eth(ipv4("10.0.0.1", "10.0.0.2", 47, gre(0x880B, b"\xff\x03\x00\x21" + bytes(20)))), "drop", "unsupported_gre"),
        Case("ipv6_tcp", 1, eth6(ipv6("fd00::1", "2001:db8:1::2", 6, tcp(a6("fd00::1"), a6("2001:db8:1::2"), 80, 5000, b"v6"))), tcprewrite=True),
        Case("ipv6_udp", 1, eth6(ip6_udp("2001:db8:1::3", "2606:4700::1111", b"u6")), tcprewrite=True),
        Case("ipv6_ext_headers", 1, eth6(ipv6("fd00::1", "2001:db8:1::2", 0, bytes([60, 0, 1, 4, 0, 0, 0, 0]) + bytes([17, 0, 1, 4, 0, 0, 0, 0]) + udp(a6("fd00::1"), a6("2001:db8:1::2"), 1, 2, b"ext")))),
        Case("ipv6_fragment_first", 1, eth6(ipv6("fd00::1", "2001:db8:1::2", 44, struct.pack("!BBHI", 17, 0, 0x0001, 99) + udp(a6("fd00::1"), a6("2001:db8:1::2"), 1, 2, b"f" * 16)))),
        Case("ipv6_fragment_later_udp", 1, eth6(ipv6("fd00::1", "2001:db8:1::2", 44, struct.pack("!BBHI", 17, 0, 0x0100, 99) + b"more")),),
        Case("ipv6_fragment_later_icmp6", 1, eth6(ipv6("fd00::1", "2001:db8:1::2", 44, struct.pack("!BBHI", 58, 0, 0x0100, 99) + b"x" * 40)), "keep", "payload"),
        Case("ipv6_routing_header", 1, eth6(ipv6("fd00::1", "2001:db8:1::2", 43, bytes([17, 2, 0, 1, 0, 0, 0, 0]) + a6("fd00::99") + udp(a6("fd00::1"), a6("2001:db8:1::2"), 1, 2))), "drop", "ipv6_routing_header"),
        Case("icmp6_unreach", 1, eth6(ip6_icmp6("2001:db8:1::1", "fd00::5", 1, 3, bytes(4) + q6))),
        Case("icmp6_too_big", 1, eth6(ip6_icmp6("2606:4700::1", "fd00::5", 2, 0, struct.pack("!I", 1280) + q6))),
        Case("icmp6_error_of_error", 1, eth6(ip6_icmp6("2606:4700::2", "fd00::6", 3, 0, bytes(4) + ip6_icmp6("fd00::6", "2001:db8:1::7", 1, 0, bytes(4) + q6)))),
        Case("nd_ns", 1, eth6(ip6_icmp6("fd00::1", "ff02::1:ff00:2", 135, 0, bytes(4) + a6("fd00::2") + nd_opt(1, MAC_ND)))),
        Case("nd_na", 1, eth6(ip6_icmp6("fd00::2", "fd00::1", 136, 0, b"\x60\0\0\0" + a6("fd00::2") + nd_opt(2, MAC_ND)))),
        Case("nd_ra", 1, eth6(ip6_icmp6("fe80::1", "ff02::1", 134, 0, ra))),
        Case("nd_redirect", 1, eth6(ip6_icmp6("fe80::1", "fd00::5", 137, 0, bytes(4) + a6("fd00::fe") + a6("2001:db8:1::99") + nd_opt(2, MAC_ND) + redirect_hdr))),
        Case("mld_report", 1, eth6(ip6_icmp6("fd00::8", "ff02::16", 131, 0, bytes(4) + a6("ff02::1:ff00:8")))),
        Case("mldv2_report", 1, eth6(ip6_icmp6("fd00::8", "ff02::16", 143, 0, mld2))),
        Case("ipv4_mapped", 1, eth6(ip6_udp("::ffff:10.1.2.3", "2606:4700::1111", b"m"))),
        Case("nat64", 1, eth6(ip6_udp("2606:4700::1", "64:ff9b::c0a8:0101", b"n"))),
        Case("6to4", 1, eth6(ip6_udp("2002:0a01:0203::1", "2606:4700::1111", b"s"))),
        Case("teredo_address", 1, eth6(ip6_udp(teredo_addr, "2606:4700::1111", b"t"))),
        Case("teredo_udp", 1, eth(ipv4("10.0.0.1", "198.51.100.7", 17, udp(a4("10.0.0.1"), a4("198.51.100.7"), 3544, 40000, origin + inner6)))),
        Case("sll", 113, struct.pack("!HHH", 0, 1, 6) + MAC_A + b"\0\0" + struct.pack("!H", 0x0800) + ip4_tcp("10.8.8.8", "8.8.8.8")),
        Case("sll2", 276, struct.pack("!HHIHBB", 0x0800, 0, 3, 1, 0, 6) + MAC_A + b"\0\0" + ip4_udp("10.8.8.7", "8.8.8.8", b"2")),
        Case("pppoe", 1, eth(struct.pack("!BBHHH", 0x11, 0, 7, 2 + 20 + 20, 0x0021) + ip4_tcp("10.3.3.3", "8.8.8.8"), 0x8864)),
        Case("pppoe_ipv6", 1, eth(struct.pack("!BBHHH", 0x11, 0, 7, 2 + 40 + 8 + 2, 0x0057) + ip6_udp("fd00::3", "2606:4700::1111", b"pp"), 0x8864)),
        Case("mpls", 1, eth(struct.pack("!II", (100 << 12) | 64, (200 << 12) | 0x100 | 64) + ip4_udp("10.4.4.4", "10.5.5.5", b"m"), 0x8847)),
        Case("pppoe_lcp", 1, eth(struct.pack("!BBHHH", 0x11, 0, 7, 2 + 4, 0xC021) + b"\x01\x01\x00\x04", 0x8864), "drop", "unknown_ethertype"),
        Case("null_loopback", 0, struct.pack("<I", 2) + ip4_udp("10.8.8.9", "10.8.8.10", b"lo")),
        Case("raw_ip", 101, ip4_tcp("192.168.5.5", "8.8.8.8", b"raw")),
        Case("raw_ip6", 101, ip6_udp("fd00::77", "2606:4700::1111", b"raw6")),
        Case("ethernet_padding", 1, eth(ip4_tcp("10.1.2.3", "8.8.8.8")) + bytes(6), tcprewrite=True),
        # broken or not understood: dropped (default policy) or cut (cut policy)
        Case("truncated_ip_src", 1, eth(ip4_tcp("10.1.2.3", "8.8.8.8"))[:14 + 14], "drop", "truncated_ip_header"),
        Case("truncated_quoted_dst", 1, eth(ipv4("203.0.113.1", "10.1.2.3", 1, icmp(3, 3, bytes(4), quoted_udp)))[:14 + 20 + 8 + 18], "drop", "truncated_ip_header"),
        Case("truncated_ipv6_dst", 1, eth6(ip6_udp("fd00::1", "fd00::2"))[:14 + 30], "drop", "truncated_ip_header"),
        Case("truncated_nd_target", 1, eth6(ip6_icmp6("fd00::1", "ff02::1:ff00:2", 135, 0, bytes(4) + a6("fd00::2")))[:14 + 40 + 16], "drop", "truncated_l4"),
        Case("truncated_arp", 1, eth(arp(1, "10.1.2.3", "10.1.0.1"), 0x0806)[:14 + 20], "drop", "truncated_l4"),
        Case("lldp", 1, eth(b"\x02\x07\x04" + MAC_A + a4("10.1.2.3"), 0x88CC), "drop", "unknown_ethertype"),
        Case("ospf", 1, eth(ipv4("10.1.0.1", "224.0.0.5", 89, b"\x02\x01\x00\x2c" + a4("10.1.0.1") + bytes(36))), "drop", "unknown_ip_proto"),
        Case("bad_ihl", 1, eth(b"\x44" + ip4_tcp("10.1.2.3", "8.8.8.8")[1:]), "drop", "bad_ip_header"),
        Case("ip_version_mismatch", 1, eth(b"\x65" + ip4_tcp("10.1.2.3", "8.8.8.8")[1:]), "drop", "bad_ip_header"),
        Case("bad_nd_option", 1, eth6(ip6_icmp6("fd00::1", "ff02::1:ff00:2", 135, 0, bytes(4) + a6("fd00::2") + b"\x01\x00" + bytes(6))), "drop", "bad_nd_option"),
        Case("icmp_unknown_type", 1, eth(ipv4("10.1.0.1", "10.1.2.3", 1, icmp(42, 0, bytes(4), a4("10.1.2.3")))), "drop", "unknown_icmp_type"),
    ]
    return c


def records(selected: list[Case]) -> bytes:
    """Canonical records for the cases (timestamps 1 s apart)."""
    return b"".join(pack_record((i + 1) * 1_000_000_000, case.data, origlen=case.origlen)
                    for i, case in enumerate(selected))
