"""An independent leak oracle for tests: every address dpkt can see in a packet.

The sanitizer has its own compiled header walk; this one uses dpkt (a different parser,
written by other people) so that a blind spot shared by the walk and its tests cannot hide
a leak. It looks where an address can be read by anyone parsing the packet: outer IPv4 and
IPv6, ARP, 802.1Q/QinQ, IP-in-IP tunnels, and the packets quoted in ICMP and ICMPv6 errors,
recursively.
"""

from __future__ import annotations

import ipaddress
import socket
from struct import error as struct_error
from typing import Iterable, Iterator

import dpkt

from bridge.pcap import iter_packets

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_ICMP4_QUOTING = (3, 4, 5, 11, 12)  # unreachable, source quench, redirect, time exceeded, parameter problem
_ICMP6_QUOTING = (1, 2, 3, 4)  # unreachable, packet too big, time exceeded, parameter problem
_MAX_DEPTH = 8


def _ip_addresses(ip: dpkt.Packet, depth: int) -> Iterator[bytes]:
    """Addresses of an IPv4/IPv6 packet and of everything it carries that holds addresses."""
    yield ip.src
    yield ip.dst
    if depth >= _MAX_DEPTH:
        return
    inner = ip.data
    if isinstance(inner, (dpkt.ip.IP, dpkt.ip6.IP6)):
        yield from _ip_addresses(inner, depth + 1)
    elif isinstance(inner, dpkt.icmp.ICMP) and inner.type in _ICMP4_QUOTING:
        quoted = getattr(inner.data, "data", None)
        yield from _quoted(quoted, bytes(inner)[8:], depth)
    elif isinstance(inner, dpkt.icmp6.ICMP6) and inner.type in _ICMP6_QUOTING:
        yield from _quoted(None, bytes(inner)[8:], depth)


def _quoted(parsed: object, raw: bytes, depth: int) -> Iterator[bytes]:
    """The packet quoted by an ICMP error; parsed leniently because quotes are usually cut."""
    if isinstance(parsed, (dpkt.ip.IP, dpkt.ip6.IP6)):
        yield from _ip_addresses(parsed, depth + 1)
        return
    version = raw[0] >> 4 if raw else 0
    if version == 4 and len(raw) >= 20:
        yield raw[12:16]
        yield raw[16:20]
        try:
            yield from _ip_addresses(dpkt.ip.IP(raw), depth + 1)
        except (dpkt.UnpackError, ValueError, IndexError, struct_error):
            pass
    elif version == 6 and len(raw) >= 40:
        yield raw[8:24]
        yield raw[24:40]
        try:
            yield from _ip_addresses(dpkt.ip6.IP6(raw), depth + 1)
        except (dpkt.UnpackError, ValueError, IndexError, struct_error):
            pass


def packet_addresses(linktype: int, data: bytes) -> list[bytes]:
    """Every IPv4 (4-byte) and IPv6 (16-byte) address dpkt can read in one captured packet."""
    out: list[bytes] = []
    try:
        if linktype == 1:
            eth = dpkt.ethernet.Ethernet(data)
            layer = eth.data
        elif linktype in (12, 14, 101):
            version = data[0] >> 4 if data else 0
            layer = dpkt.ip.IP(data) if version == 4 else dpkt.ip6.IP6(data) if version == 6 else None
        else:
            return out
        if isinstance(layer, dpkt.arp.ARP):
            out += [layer.spa, layer.tpa]
        elif isinstance(layer, (dpkt.ip.IP, dpkt.ip6.IP6)):
            out += list(_ip_addresses(layer, 0))
    except (dpkt.UnpackError, ValueError, IndexError, struct_error, AttributeError, TypeError):
        # dpkt cannot read the packet as a whole; fall back to what a lenient reader sees
        out += _lenient(linktype, data)
    return out


def _lenient(linktype: int, data: bytes) -> list[bytes]:
    """Addresses at the fixed offsets of a cut or damaged Ethernet/IP packet."""
    pos = 0
    if linktype == 1:
        pos = 12
        etype = int.from_bytes(data[pos:pos + 2], "big")
        while etype in (0x8100, 0x88A8, 0x9100) and len(data) >= pos + 6:
            pos += 4
            etype = int.from_bytes(data[pos:pos + 2], "big")
        pos += 2
        if etype == 0x0806 and len(data) >= pos + 28:
            return [data[pos + 14:pos + 18], data[pos + 24:pos + 28]]
    rest = data[pos:]
    return list(_quoted(None, rest, 0))


def leaks(linktype: int, packets: bytes, private: Iterable[str]) -> list[tuple[int, str]]:
    """(packet index, address) of every private address found in canonical pcap records."""
    nets: list[Network] = [ipaddress.ip_network(p) for p in private]
    found: list[tuple[int, str]] = []
    for index, (_ts, _caplen, _orig, data) in enumerate(iter_packets(packets)):
        for raw in packet_addresses(linktype, bytes(data)):
            if len(raw) == 4:
                addr = ipaddress.IPv4Address(raw)
            elif len(raw) == 16:
                addr = ipaddress.IPv6Address(raw)
            else:
                continue
            if any(addr.version == n.version and addr in n for n in nets):
                found.append((index, socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)))
    return found
