"""egress_framing: whole-record frame payloads and timestamp unit conversion."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.egress_framing import SESSION_SNAPLEN, convert_precision, frame_payloads, session_header
from bridge.pcap import PcapFormatError, iter_packets, pack_record, parse_global_header, record_offsets


def records(sizes: list[int], nsec: bool = False) -> bytes:
    return b"".join(pack_record(1_700_000_000_123_456_789 + i * 1000, bytes([i % 251]) * n, nsec=nsec)
                    for i, n in enumerate(sizes))


def test_session_header_allows_any_record_length():
    h = parse_global_header(session_header(113, True))
    assert (h.linktype, h.snaplen, h.nsec) == (113, SESSION_SNAPLEN, True)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3000), max_size=60), st.integers(16, 9000))
def test_payloads_tile_the_input_at_record_boundaries(sizes, limit):
    packets = records(sizes)
    payloads = frame_payloads(packets, limit)
    assert b"".join(bytes(p) for p in payloads) == packets
    starts = set(record_offsets(packets).tolist())
    pos = 0
    for p in payloads:
        assert pos in starts  # every payload starts at a record
        # over the limit only when it is a single record larger than the limit
        assert len(p) <= limit or len(record_offsets(bytes(p))) == 1
        pos += len(p)


def test_payloads_are_filled_greedily():
    packets = records([84] * 10)  # 100-byte records
    assert [len(p) for p in frame_payloads(packets, 350)] == [300, 300, 300, 100]
    assert [len(p) for p in frame_payloads(packets, 1000)] == [1000]


def test_oversized_record_travels_alone():
    packets = records([50, 5000, 50])
    assert [len(p) for p in frame_payloads(packets, 1000)] == [66, 5016, 66]


def test_empty_input_gives_no_payload():
    assert frame_payloads(b"", 1000) == []


@pytest.mark.parametrize("cut", [1, 15, 17, 30])
def test_truncated_records_are_refused(cut):
    packets = records([100, 100])
    with pytest.raises(PcapFormatError) as info:
        frame_payloads(packets[:-cut], 65536)
    assert info.value.reason == "truncated"


def test_precision_conversion_keeps_times_and_data():
    usec = records([10, 20, 30])
    nsec = convert_precision(usec, False, True)
    assert len(nsec) == len(usec)
    a = [(t, bytes(d)) for t, _, _, d in iter_packets(usec, nsec=False)]
    b = [(t, bytes(d)) for t, _, _, d in iter_packets(nsec, nsec=True)]
    assert a == b
    back = convert_precision(nsec, True, False)
    assert back == usec
    assert convert_precision(usec, False, False) is usec
