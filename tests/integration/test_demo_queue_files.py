"""The demo's d4-core stand-in: rotated .cap.gz files and LPUSHes on a real redis-server."""

from __future__ import annotations

import gzip
import uuid
from pathlib import Path

import pytest
import redis

from bridge import demo_sources as ds
from bridge.pcap import read_pcap

pytestmark = pytest.mark.integration

START = 1_790_000_000 * 10**9  # a whole multiple of the 5 s rotation


def test_rotated_files_hold_each_period_and_are_queued_like_d4_core(redis_url: str, tmp_path: Path) -> None:
    sources, _ = ds.build_live(START, 12.0, 1000.0)
    src = sources[ds.QUEUE_SOURCE]
    base = redis_url.rsplit("/", 1)[0]
    analyzer, metadata = redis.Redis.from_url(f"{base}/2"), redis.Redis.from_url(f"{base}/0")
    queue_uuid, sensor = str(uuid.uuid4()), str(uuid.uuid4())
    player = ds.D4CoreQueue(src, ds.HEADER, tmp_path, analyzer, metadata, queue_uuid, sensor, rotate_s=5.0)

    player.rotate_until(START + 9 * 10**9)  # only the period [0 s, 5 s) has ended
    assert player.files == 1
    player.rotate_until(START + 10 * 10**9)
    assert player.files == 2
    player.flush()  # the last, partial period
    assert player.files == 3

    paths = [p.decode() for p in analyzer.lrange(f"analyzer:1:{queue_uuid}", 0, -1)]
    assert len(paths) == 3
    oldest_first = list(reversed(paths))  # LPUSH: d4-core's analyzers pop the oldest from the right
    packets = b""
    for i, path in enumerate(oldest_first):
        p = Path(path)
        assert p.name.endswith(".cap.gz") and p.is_relative_to(tmp_path / uuid.UUID(sensor).hex / "1")
        unpacked = tmp_path / f"{i}.pcap"
        unpacked.write_bytes(gzip.decompress(p.read_bytes()))
        header, records = read_pcap(unpacked)
        assert header == ds.HEADER
        first = src.index_at(START + i * 5 * 10**9)
        assert records == src.slice(first, src.index_at(START + (i + 1) * 5 * 10**9))
        packets += records
    assert packets == src.packets
    assert float(metadata.hget(f"analyzer:{queue_uuid}", "last_updated")) > 0
