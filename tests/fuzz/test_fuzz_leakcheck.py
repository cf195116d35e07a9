"""Fuzzing leakcheck, the oracle: random and mutated packets in every link type it reads (and
records cut anywhere) never make it raise, and through the command line it exits 0 or 1 on any
readable pair of captures, never 2."""

from __future__ import annotations

import contextlib
import io
import struct
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from unit.sanitize.sanitize_corpus import MAC_A, a4, a6, cases  # tests/ is on the path (its conftest)

from bridge.cli import main
from bridge.pcap import PcapHeader, pack_record, write_pcap
from bridge.sanitize.leakcheck import LeakReport, addresses, checksum_errors, layout, leakcheck

PRIVATE = ["10.0.0.0/8", "172.16.0.0/12", "fd00::/8", "2001:db8:1::/48"]
LINKTYPES = (0, 1, 101, 113, 228, 229, 276)


def _frame(linktype: int, ip: bytes) -> bytes:
    """An IP packet in the link type's framing."""
    v6 = bool(ip) and ip[0] >> 4 == 6
    if linktype == 0:
        return struct.pack("<I", 24 if v6 else 2) + ip
    if linktype == 1:
        return MAC_A * 2 + (b"\x86\xdd" if v6 else b"\x08\x00") + ip
    if linktype == 113:
        return struct.pack("!HHH", 0, 1, 6) + MAC_A + b"\0\0" + (b"\x86\xdd" if v6 else b"\x08\x00") + ip
    if linktype == 276:
        return struct.pack("!HHIHBB", 0x86DD if v6 else 0x0800, 0, 3, 1, 0, 6) + MAC_A + b"\0\0" + ip
    return ip


# every IP packet of the sanitizer's corpus (quotes, tunnels, ND, options, ...), per link type
_IPS = [c.data[14:] for c in cases() if c.linktype == 1 and c.data[12:14] in (b"\x08\x00", b"\x86\xdd")]
BASE = {lt: [_frame(lt, ip) for ip in _IPS if lt not in (228, 229) or ip[0] >> 4 == (4 if lt == 228 else 6)]
        for lt in LINKTYPES}
BASE[1] += [c.data for c in cases() if c.linktype == 1 and c.data[12:14] not in (b"\x08\x00", b"\x86\xdd")]
_HOT = [0x00, 0x01, 0x04, 0x06, 0x0A, 0x11, 0x29, 0x2F, 0x32, 0x3A, 0x45, 0x60, 0x81, 0x86, 0x88, 0xDD, 0xFD, 0xFF]


@st.composite
def mutated(draw, linktype: int) -> bytes:
    """A corpus packet of the link type with byte flips, hot bytes, private values spliced in,
    cuts and extensions."""
    data = bytearray(draw(st.sampled_from(BASE[linktype])))
    for _ in range(draw(st.integers(0, 5))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "set", "address", "cut", "extend"]))
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[pos] = draw(st.sampled_from(_HOT))
        elif kind == "address":
            data[pos:pos] = draw(st.sampled_from([a4("10.1.2.3"), a6("fd00::5"), MAC_A, b"10.1.2.3", b"fd00::5"]))
        elif kind == "cut":
            del data[pos:]
        else:
            data += draw(st.binary(max_size=48))
    return bytes(data)


def packets(linktype: int) -> st.SearchStrategy[list[bytes]]:
    return st.lists(st.one_of(mutated(linktype), st.binary(max_size=120)), min_size=0, max_size=12)


@st.composite
def capture_pair(draw) -> tuple[int, list[bytes], list[tuple[bytes, int]]]:
    """(link type, original packets, sanitized records as (bytes, origlen)): the sanitized side
    is the original mutated again and sometimes cut, so packets pair by time and length."""
    linktype = draw(st.sampled_from(LINKTYPES))
    orig = draw(packets(linktype))
    sanitized = []
    for data in orig:
        out = draw(st.one_of(st.just(data), mutated(linktype), st.binary(max_size=80)))
        keep = draw(st.integers(0, len(out)))
        sanitized.append((out[:keep], len(data)))
    return linktype, orig, sanitized


def write_pair(work: Path, linktype: int, orig: list[bytes], sanitized: list[tuple[bytes, int]]) -> tuple[Path, Path]:
    o, s = work / "o.pcap", work / "s.pcap"
    write_pcap(o, PcapHeader(linktype, 65535, False), b"".join(pack_record(i * 1000, d) for i, d in enumerate(orig)))
    write_pcap(s, PcapHeader(linktype, 65535, False),
               b"".join(pack_record(i * 1000, d, origlen=n) for i, (d, n) in enumerate(sanitized)))
    return o, s


@st.composite
def one_packet(draw) -> tuple[int, bytes]:
    linktype = draw(st.sampled_from(LINKTYPES))
    return linktype, draw(st.one_of(mutated(linktype), st.binary(max_size=120)))


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(one_packet())
def test_decoders_keep_their_contracts(case) -> None:
    # the layout tiles the packet from byte 0 (its last region may pass a cut); dpkt's walk
    # gives whole 4- or 16-byte addresses only; the checksum pass reads any bytes
    linktype, data = case
    regions = layout(linktype, data)
    assert not data or (regions[0][0] == 0 and regions[-1][1] >= len(data))
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(regions, regions[1:]))
    assert all(len(raw) in (4, 16) for _where, raw in addresses(linktype, data))
    assert all(isinstance(e, str) for e in checksum_errors(linktype, data, len(data) + 1))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capture_pair())
def test_leakcheck_never_raises(pair) -> None:
    linktype, orig, sanitized = pair
    with tempfile.TemporaryDirectory() as work:
        o, s = write_pair(Path(work), linktype, orig, sanitized)
        report = leakcheck(o, s, PRIVATE, macs=[bytes.fromhex("02aabbccdd00")])
    assert isinstance(report, LeakReport) and report.packets_orig == len(orig)
    assert report.packets_sanitized == len(sanitized) and isinstance(report.ok, bool)
    assert all(0 <= f.offset < len(sanitized[f.packet][0]) for f in report.leaks)
    assert report.lines(3)[1].startswith(f"leaks: {len(report.leaks)} in ")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capture_pair())
def test_command_line_exits_0_or_1(pair) -> None:
    linktype, orig, sanitized = pair
    with tempfile.TemporaryDirectory() as work:
        o, s = write_pair(Path(work), linktype, orig, sanitized)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["leakcheck", str(o), str(s), "--private", ",".join(PRIVATE), "--show", "5"])
    assert rc in (0, 1), err.getvalue()
    assert (rc == 0) == ("leaks: 0 in 0 packets" in out.getvalue() and out.getvalue().endswith("checksums: ok\n"))
