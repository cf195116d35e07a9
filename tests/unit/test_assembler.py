"""The pcap stream assembler: any chunking reproduces the exact packets; garbage is refused cleanly."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.assembler import PcapAssembler, PcapStreamError
from bridge.pcap import MAGIC_NSEC, global_header, pack_record


def make_records(n: int, seed: int = 1, nsec: bool = False) -> list[bytes]:
    rng = random.Random(seed)
    base = 1_700_000_000_000_000_000
    return [pack_record(base + i * 1_000_000, rng.randbytes(rng.randrange(1, 1500)), nsec=nsec) for i in range(n)]


def to_big_endian(stream_records: list[bytes], nsec: bool = False) -> bytes:
    magic = MAGIC_NSEC if nsec else 0xA1B2C3D4
    head = struct.pack(">IHHiIII", magic, 2, 4, 0, 0, 65535, 1)
    return head + b"".join(struct.pack(">IIII", *struct.unpack("<IIII", r[:16])) + r[16:] for r in stream_records)


def feed_chunks(assembler: PcapAssembler, data: bytes, cuts: list[int]) -> list:
    out = []
    pos = 0
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
        out += assembler.feed(data[pos:cut])
        pos = cut
    return out + assembler.close()


RECORDS = make_records(300)
STREAM = global_header(1, 65535, False) + b"".join(RECORDS)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=60), st.integers(1000, 40000))
def test_random_chunk_boundaries_reproduce_exact_packets(cuts: list[int], batch_bytes: int) -> None:
    batches = feed_chunks(PcapAssembler(batch_bytes=batch_bytes, max_age=None), STREAM, cuts)
    assert b"".join(b.packets for b in batches) == b"".join(RECORDS)
    assert sum(b.count for b in batches) == len(RECORDS)
    for b in batches:
        assert len(b.packets) <= batch_bytes or b.count == 1


def test_byte_at_a_time() -> None:
    a = PcapAssembler(batch_bytes=4096, max_age=None)
    out = []
    for i in range(len(STREAM[:5000])):
        out += a.feed(STREAM[i:i + 1])
    data = STREAM[5000:]
    out += a.feed(data) + a.close()
    assert b"".join(b.packets for b in out) == b"".join(RECORDS)


@pytest.mark.parametrize("nsec", [False, True])
def test_big_endian_is_normalized(nsec: bool) -> None:
    recs = make_records(50, nsec=nsec)
    a = PcapAssembler(max_age=None)
    out = feed_chunks(a, to_big_endian(recs, nsec), [17, 30, 101, 999])
    assert b"".join(b.packets for b in out) == b"".join(recs)
    assert out[0].header.nsec is nsec and not out[0].header.big_endian


def test_timestamps_and_header_kept() -> None:
    recs = make_records(10, nsec=True)
    a = PcapAssembler(max_age=None)
    (batch,) = a.feed(global_header(113, 4096, True) + b"".join(recs)) + a.close()
    assert batch.header.linktype == 113 and batch.header.snaplen == 4096 and batch.header.nsec
    assert batch.first_ts_ns == 1_700_000_000_000_000_000
    assert batch.last_ts_ns == 1_700_000_000_000_000_000 + 9 * 1_000_000


def test_age_closes_batch() -> None:
    now = [100.0]
    a = PcapAssembler(max_age=0.1, clock=lambda: now[0])
    assert a.feed(STREAM[:2000]) == []
    assert a.flush_due() == []
    now[0] += 0.2
    (batch,) = a.flush_due()
    assert batch.count >= 1 and a.flush_due() == []


def test_bad_magic() -> None:
    with pytest.raises(PcapStreamError) as info:
        PcapAssembler().feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert info.value.reason == "bad_magic"


def test_record_too_long_keeps_packets_before_damage() -> None:
    good = b"".join(RECORDS[:20])
    bad = struct.pack("<IIII", 1, 0, 300000, 300000)
    a = PcapAssembler(max_age=None)
    with pytest.raises(PcapStreamError) as info:
        a.feed(global_header(1, 65535, False) + good + bad + b"x" * 100)
    assert info.value.reason == "record_too_long"
    assert b"".join(b.packets for b in info.value.batches) == good
    with pytest.raises(PcapStreamError):
        a.feed(b"more")


def test_caplen_above_snaplen_is_refused() -> None:
    a = PcapAssembler(max_age=None)
    with pytest.raises(PcapStreamError) as info:
        a.feed(global_header(1, 100, False) + pack_record(0, b"y" * 200))
    assert info.value.reason == "record_too_long"


def test_truncated_at_close_keeps_previous_packets() -> None:
    a = PcapAssembler(max_age=None)
    cut = len(global_header(1, 65535, False)) + len(b"".join(RECORDS[:5])) + 7
    assert a.feed(STREAM[:cut]) == []
    with pytest.raises(PcapStreamError) as info:
        a.close()
    assert info.value.reason == "truncated"
    assert b"".join(b.packets for b in info.value.batches) == b"".join(RECORDS[:5])


def test_truncated_global_header() -> None:
    a = PcapAssembler()
    a.feed(STREAM[:10])
    with pytest.raises(PcapStreamError) as info:
        a.close()
    assert info.value.reason == "truncated"


def test_empty_stream_is_fine() -> None:
    assert PcapAssembler().close() == []


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000))
def test_random_bytes_never_crash(data: bytes) -> None:
    a = PcapAssembler(max_age=None)
    try:
        a.feed(global_header(1, 65535, False) + data)
        a.close()
    except PcapStreamError as exc:
        assert exc.reason in ("bad_magic", "record_too_long", "truncated")
