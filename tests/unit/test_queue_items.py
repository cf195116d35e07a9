"""Queue item semantics: d4-core paths, bounded gunzip with damage reasons, line packing."""

from __future__ import annotations

import gzip
import io
import os
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.assembler import PcapAssembler, PcapStreamError
from bridge.pcap import global_header, pack_record
from bridge.queue_items import (
    FAILURE_REASONS,
    ItemError,
    QueueType,
    file_chunks,
    join_lines,
    line_payloads,
    pcap_failure,
    sensor_uuid_from_path,
    session_id_for_path,
    site_sensor_uuid,
)

SENSOR = "3d4fd4a1e6ab47b1b2e1f0c9a8b7c6d5"
D4_PATH = f"/opt/d4-core/server/data/{SENSOR}/1/2026/11/26/{SENSOR}-2026-11-26-071500.cap.gz"


def test_sensor_uuid_from_d4core_layout() -> None:
    assert sensor_uuid_from_path(D4_PATH) == SENSOR
    assert sensor_uuid_from_path(D4_PATH.replace(".cap.gz", ".cap.1.gz")) == SENSOR


def test_sensor_uuid_from_dashed_dir_and_from_file_name() -> None:
    dashed = "3D4FD4A1-E6AB-47B1-B2E1-F0C9A8B7C6D5"
    assert sensor_uuid_from_path(f"/data/{dashed}/1/2026/11/26/x.cap.gz") == SENSOR
    assert sensor_uuid_from_path(f"/moved/elsewhere/{SENSOR}-2026-11-26-071500.cap.gz") == SENSOR


def test_sensor_uuid_absent() -> None:
    assert sensor_uuid_from_path("/tmp/capture.cap.gz") is None
    # A uuid directory without the type/date layout below it is not taken for a sensor.
    assert sensor_uuid_from_path(f"/data/{SENSOR}/x.cap") is None
    assert sensor_uuid_from_path(f"/data/{SENSOR}/1/26/11/26/x.cap") is None


def test_session_id_is_stable_per_path() -> None:
    assert session_id_for_path(D4_PATH) == session_id_for_path(D4_PATH)
    assert session_id_for_path(D4_PATH) != session_id_for_path(D4_PATH + "x")
    assert len(site_sensor_uuid("a")) == 32 and site_sensor_uuid("a") != site_sensor_uuid("b")


@pytest.mark.parametrize("text,key,d4_type,meta,files", [
    ("1", "1", 1, None, True), ("3", "3", 3, None, False), ("8", "8", 8, None, False),
    ("ja3-jl", "ja3-jl", 254, "ja3-jl", False),
])
def test_queue_type_parse(text: str, key: str, d4_type: int, meta: str | None, files: bool) -> None:
    assert QueueType.parse(text) == QueueType(key, d4_type, meta, files)


@pytest.mark.parametrize("text", ["2", "254", "0", "300", "", "a:b", "x y"])
def test_queue_type_refused(text: str) -> None:
    with pytest.raises(ValueError):
        QueueType.parse(text)


def capture(n: int = 2000) -> bytes:
    return global_header(1, 65535, False) + b"".join(
        pack_record(1_700_000_000_000_000_000 + i * 1000, os.urandom(40) + bytes(20 + i % 50)) for i in range(n))


def drain(f: io.BytesIO, **kw) -> tuple[bytes, ItemError | None]:
    out = bytearray()
    try:
        for chunk in file_chunks(f, **kw):
            out += chunk
    except ItemError as exc:
        return bytes(out), exc
    return bytes(out), None


def test_plain_file_passes_through() -> None:
    data = capture()
    out, err = drain(io.BytesIO(data), read_bytes=1000)
    assert err is None and out == data


def test_gzip_chunks_are_bounded_and_complete() -> None:
    data = bytes(3_000_000)  # compresses ~1000:1: output must still come in bounded pieces
    sizes = [len(c) for c in file_chunks(io.BytesIO(gzip.compress(data)), out_bytes=65536)]
    assert sum(sizes) == len(data) and max(sizes) <= 65536


def test_concatenated_members_and_zero_padding() -> None:
    a, b = capture(100), os.urandom(5000)
    out, err = drain(io.BytesIO(gzip.compress(a) + gzip.compress(b) + bytes(512)))
    assert err is None and out == a + b


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000), st.integers(1, 3))
def test_gzip_any_read_and_output_sizes(read_bytes: int, out_bytes: int, members: int) -> None:
    parts = [capture(50 + 10 * m) for m in range(members)]
    blob = b"".join(gzip.compress(p) for p in parts)
    out, err = drain(io.BytesIO(blob), read_bytes=read_bytes, out_bytes=out_bytes)
    assert err is None and out == b"".join(parts)


def test_truncated_gzip_keeps_the_bytes_before_the_cut() -> None:
    data = capture(5000)
    blob = gzip.compress(data)
    out, err = drain(io.BytesIO(blob[: len(blob) // 2]), read_bytes=4096)
    assert err is not None and err.reason == "truncated_gzip"
    assert len(out) > 0 and data.startswith(out)


def test_gzip_cut_inside_the_trailer_is_truncated() -> None:
    blob = gzip.compress(capture(100))
    _, err = drain(io.BytesIO(blob[:-3]))
    assert err is not None and err.reason == "truncated_gzip"


def test_crc_mismatch_is_corrupt_after_all_the_data() -> None:
    data = capture(100)
    blob = bytearray(gzip.compress(data))
    blob[-8] ^= 0xFF  # CRC32 of the trailer: zlib fails the call that holds the whole member
    out, err = drain(io.BytesIO(bytes(blob)))
    assert err is not None and err.reason == "corrupt_gzip"
    assert out == data


def test_bad_deflate_data_is_corrupt_and_keeps_the_bytes_before() -> None:
    data = capture(20000)
    blob = bytearray(gzip.compress(data, compresslevel=1))
    cut = len(blob) // 2
    blob[cut:cut + 400] = b"\xff" * 400
    good = zlib.decompressobj(31).decompress(bytes(blob[:cut]))  # what the bytes before the damage hold
    out, err = drain(io.BytesIO(bytes(blob)))
    assert err is not None and err.reason == "corrupt_gzip"
    assert len(good) > 100_000 and out[: len(good)] == good


def test_trailing_garbage_is_corrupt() -> None:
    _, err = drain(io.BytesIO(gzip.compress(capture(10)) + b"this is not gzip"))
    assert err is not None and err.reason == "corrupt_gzip"


def test_empty_file() -> None:
    _, err = drain(io.BytesIO(b""))
    assert err is not None and err.reason == "empty"


def test_assembler_errors_map_to_queue_reasons() -> None:
    for stream, reason in [(b"NOTPCAP" * 10, "not_pcap"), (capture(10)[:-5], "truncated_pcap")]:
        asm = PcapAssembler()
        with pytest.raises(PcapStreamError) as info:
            asm.feed(stream)
            asm.close()
        assert pcap_failure(info.value).reason == reason
    assert set(["not_pcap", "truncated_pcap", "corrupt_pcap"]) <= set(FAILURE_REASONS)


def test_line_payloads_respect_the_size_bound() -> None:
    items = [b"a" * 10, b"b" * 10, b"c" * 10, b"d" * 40, b"e\n"]
    groups, too_large = line_payloads(items, 25)
    assert groups == [[0, 1], [2, 4]] and too_large == [3]
    for g in groups:
        assert len(join_lines([items[i] for i in g])) <= 25
    assert join_lines([b"x", b"y\n"]) == b"x\ny\n"
