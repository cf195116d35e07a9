"""Fuzzing the sanitizer engine: random and mutated telescope packets never crash it and never
leak a private address (checked by an independent parser, tests/leakscan.py)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import traffic
from bridge.pcap import iter_packets, pack_record
from bridge.sanitize.engine import Sanitizer
from bridge.sanitize.policy import policy_from_flags

from leakscan import leaks

PRIVATE = ("10.0.0.0/8", "fd00::/8")
PNAT = "10.0.0.0/8:198.18.0.0/15,[fd00::/8]:[2001:db8::/32]"

# telescope traffic on private prefixes with every shape the generator has (ICMP errors quote
# private addresses, ARP, IPv6), so mutations start from packets full of addresses
_SCENARIO = traffic.Scenario(
    telescope=("10.1.0.0/16",),
    attacks=(traffic.Attack("syn_flood", "10.9.0.10", 443, 2e7, 0, 10),
             traffic.Attack("ttl_exceeded", "198.51.100.40", 8080, 2e7, 0, 10, responder="10.200.0.1"),
             traffic.Attack("host_unreachable", "10.77.0.5", 80, 2e7, 0, 10),
             traffic.Attack("icmp_flood", "198.51.100.50", 0, 2e7, 0, 10)),
    telescope6="fd00:d4::/64", seed=9,
)
_BASE = traffic.generate(_SCENARIO, 1_700_000_000 * 10**9, 2.0, 3000)
_ENDS = np.append(_BASE.offsets[1:], len(_BASE.packets))
PACKETS = [_BASE.packets[int(a) + 16:int(b)] for a, b in zip(_BASE.offsets, _ENDS)]

_sanitizers: dict[str, Sanitizer] = {}


def sanitizer(unparseable: str) -> Sanitizer:
    if unparseable not in _sanitizers:
        _sanitizers[unparseable] = Sanitizer(policy_from_flags(pnat=PNAT, on_unparseable=unparseable))
    return _sanitizers[unparseable]


@st.composite
def mutated_packet(draw) -> bytes:
    """A generated packet with byte flips, a cut, or a splice of another packet's bytes."""
    data = bytearray(PACKETS[draw(st.integers(0, len(PACKETS) - 1))])
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "splice", "extend"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[pos] = draw(st.sampled_from([0x00, 0x04, 0x06, 0x11, 0x29, 0x2F, 0x3A, 0x45, 0x4F, 0x60, 0x81, 0xFF]))
        elif kind == "cut":
            del data[pos:]
        elif kind == "splice":
            other = PACKETS[draw(st.integers(0, len(PACKETS) - 1))]
            start = draw(st.integers(0, len(other)))
            data[pos:pos] = other[start:start + draw(st.integers(1, 80))]
        else:
            data += draw(st.binary(max_size=64))
    return bytes(data)


packet = st.one_of(mutated_packet(), st.binary(max_size=200), st.sampled_from(PACKETS))


def records(datas: list[bytes]) -> bytes:
    return b"".join(pack_record(1_700_000_000 * 10**9 + i, d) for i, d in enumerate(datas))


def check(linktype: int, datas: list[bytes], unparseable: str) -> None:
    result = sanitizer(unparseable).sanitize_batch(linktype, records(datas))
    assert result.count == len(datas)
    assert result.kept + result.cut + result.dropped == result.count
    assert sum(result.reasons.values()) == result.cut + result.dropped
    out = list(iter_packets(result.packets))  # output records tile: never a broken record
    assert len(out) == result.kept + result.cut
    found = leaks(linktype, result.packets, PRIVATE)
    assert not found, f"private addresses in sanitized output: {found[:5]}"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(packet, min_size=1, max_size=40), st.sampled_from(["drop", "cut"]))
def test_mutated_ethernet_never_crashes_or_leaks(datas: list[bytes], unparseable: str) -> None:
    check(1, datas, unparseable)


@settings(max_examples=150, deadline=None)
@given(st.lists(packet, min_size=1, max_size=20), st.sampled_from([0, 12, 14, 101, 113, 147]))
def test_other_linktypes_never_crash_or_leak(datas: list[bytes], linktype: int) -> None:
    # raw-IP link types see the Ethernet payload; the odd ones must be refused, not passed
    check(linktype, [d[14:] if linktype in (12, 14, 101) else d for d in datas], "drop")


def test_whole_generated_capture_is_clean() -> None:
    # the oracle sees the private addresses of the input in every place they hide
    seen = {a.split(":")[0] if ":" in a else ".".join(a.split(".")[:2]) for _, a in leaks(1, _BASE.packets, PRIVATE)}
    assert {"10.1", "10.9", "10.77", "10.200", "fd00"} <= seen
    check(1, PACKETS, "drop")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=4000))
def test_untiled_bytes_raise_only_the_documented_error(data: bytes) -> None:
    from bridge.sanitize.engine import PcapRecordError

    try:
        sanitizer("drop").sanitize_batch(1, data)
    except PcapRecordError:
        pass


def test_huge_caplen_header_is_refused_without_allocation() -> None:
    from bridge.sanitize.engine import PcapRecordError

    bad = struct.pack("<IIII", 0, 0, 0xFFFFFFF0, 0xFFFFFFF0) + b"x" * 64
    with pytest.raises(PcapRecordError):
        sanitizer("drop").sanitize_batch(1, bad)
