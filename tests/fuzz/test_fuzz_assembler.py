"""Fuzzing the pcap stream assembler with mutated captures cut into random chunks.

Properties: only PcapStreamError ever escapes; every batch handed out is whole records whose
caplen respects the stream's limit; the packets before the first damaged byte come out
exactly; the bytes held stay below one batch plus one record whatever arrives.
"""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.assembler import PcapAssembler, PcapStreamError
from bridge.pcap import MAX_SNAPLEN, global_header, iter_packets, pack_record

SNAPLEN = 2000
BATCH = 4096


def capture(seed: int, n: int) -> tuple[bytes, list[int]]:
    """A pcap stream and the offsets where its records start (after the global header)."""
    rng = random.Random(seed)
    parts = [global_header(1, SNAPLEN, bool(seed & 1))]
    starts = []
    pos = 24
    for i in range(n):
        rec = pack_record(1_700_000_000 * 10**9 + i * 1000, rng.randbytes(rng.randint(0, SNAPLEN)), bool(seed & 1))
        starts.append(pos)
        parts.append(rec)
        pos += len(rec)
    return b"".join(parts), starts


@st.composite
def damaged(draw) -> tuple[bytes, int, list[int]]:
    """(stream, offset of the first damaged byte or len(stream), record starts)."""
    stream, starts = capture(draw(st.integers(0, 2**16)), draw(st.integers(0, 40)))
    data = bytearray(stream)
    first = len(data)
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "caplen"]))
        if kind == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=40))
        elif kind == "caplen" and starts:
            rec = draw(st.sampled_from(starts))
            if rec + 16 <= len(data):
                pos = rec + 8
                struct.pack_into("<I", data, pos, draw(st.sampled_from([SNAPLEN + 1, 0xFFFFFFFF, MAX_SNAPLEN + 1, 0])))
        first = min(first, pos)
    return bytes(data), first, starts


def run(data: bytes, cuts: list[int]) -> tuple[list, PcapStreamError | None, int]:
    a = PcapAssembler(batch_bytes=BATCH, max_age=None)
    out: list = []
    held = 0
    pos = 0
    try:
        for size in cuts + [len(data)]:
            chunk = data[pos:pos + size]
            pos += size
            out += a.feed(chunk)
            held = max(held, a.buffered_bytes)
            if pos >= len(data):
                break
        out += a.close()
    except PcapStreamError as exc:
        assert exc.reason in ("bad_magic", "record_too_long", "truncated")
        return out + exc.batches, exc, held
    return out, None, held


@settings(max_examples=300, deadline=None)
@given(damaged(), st.lists(st.integers(1, 5000), max_size=30))
def test_mutated_streams(case: tuple[bytes, int, list[int]], cuts: list[int]) -> None:
    data, first_damage, starts = case
    batches, error, held = run(data, cuts)
    packets = b"".join(b.packets for b in batches)
    got = list(iter_packets(packets))  # raises if the records do not tile
    assert sum(b.count for b in batches) == len(got)
    limit = SNAPLEN if first_damage >= 24 else MAX_SNAPLEN  # a damaged global header may change it
    assert all(caplen <= limit for _, caplen, _, _ in got)
    # the records whose bytes all lie before the damage come out unchanged
    # (the last record counts as damaged: its end is unknown after an insert)
    intact = sum(1 for i in range(len(starts) - 1) if starts[i + 1] <= first_damage)
    if first_damage >= 24 and intact:
        original = data[starts[0]:starts[intact]]
        assert packets[:len(original)] == original
        if error is None or error.reason != "bad_magic":
            assert len(got) >= intact
    # memory: the unfinished tail plus the open batch, never more than a batch and a record
    assert held <= BATCH + 16 + limit
