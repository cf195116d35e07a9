"""pcap helpers: headers, record offsets, file round trip."""

from __future__ import annotations

import pytest

from bridge.pcap import (PcapFormatError, PcapHeader, global_header, iter_packets, pack_record, parse_global_header,
                         read_pcap, record_offsets, write_pcap)


def test_global_header_round_trip() -> None:
    h = parse_global_header(global_header(101, 1234, True))
    assert h == PcapHeader(101, 1234, True, False)


def test_record_offsets_and_iteration() -> None:
    recs = [pack_record(5_000_000_123, b"a" * 3), pack_record(6_000_000_000, b"bb", origlen=90)]
    data = b"".join(recs)
    assert record_offsets(data).tolist() == [0, 19]
    got = [(ts, cap, orig, bytes(d)) for ts, cap, orig, d in iter_packets(data)]
    assert got == [(5_000_000_000, 3, 3, b"aaa"), (6_000_000_000, 2, 90, b"bb")]


def test_record_offsets_refuses_partial() -> None:
    with pytest.raises(PcapFormatError):
        record_offsets(pack_record(0, b"abc")[:-1])


def test_file_round_trip(tmp_path) -> None:
    recs = b"".join(pack_record(i * 1000, bytes([i]) * 10) for i in range(10))
    path = tmp_path / "x.pcap"
    write_pcap(path, PcapHeader(1, 65535, False), recs)
    header, packets = read_pcap(path)
    assert header.linktype == 1 and packets == recs
