"""Assembler MB/s and packets/s on a 1M-packet capture fed in 4 KiB chunks, and codec records/s.

Target (issue 2): the assembler must not be the bottleneck of a 1 Gbit/s sensor: >= 150 MB/s.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Figure, pin_to_one_core, report  # noqa: E402

from bridge import records  # noqa: E402
from bridge.assembler import PcapAssembler  # noqa: E402
from bridge.pcap import RECORD_HEADER, global_header  # noqa: E402

PACKETS = 1_000_000


def capture(n: int = PACKETS, seed: int = 7) -> bytes:
    """A pcap stream of n packets with backscatter-like sizes (54..150 bytes)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(54, 151, n)
    parts = [global_header(1, 262144, False)]
    payload = rng.integers(0, 256, int(sizes.max()), dtype=np.uint8).tobytes()
    for i, size in enumerate(sizes.tolist()):
        parts.append(RECORD_HEADER.pack(1_700_000_000 + i // 1000, i % 1_000_000, size, size))
        parts.append(payload[:size])
    return b"".join(parts)


def main() -> None:
    note = pin_to_one_core()
    data = capture()
    warm = PcapAssembler()
    warm.feed(data[:10000])  # JIT load outside the timing
    chunk = 4096
    assembler = PcapAssembler()
    start = time.perf_counter()
    batches = []
    for pos in range(0, len(data), chunk):
        batches += assembler.feed(data[pos:pos + chunk])
    batches += assembler.close()
    elapsed = time.perf_counter() - start
    count = sum(b.count for b in batches)
    assert count == PACKETS

    recs = [records.pcap_batch(b, sensor_uuid="ab" * 16, site="bench", source="d4", session_id="s", seq=i)
            for i, b in enumerate(batches)]
    start = time.perf_counter()
    encoded = [records.encode("PcapBatch", r) for r in recs]
    enc_s = time.perf_counter() - start
    start = time.perf_counter()
    for blob in encoded:
        records.decode(blob, expect="PcapBatch")
    dec_s = time.perf_counter() - start
    mb = len(data) / 1e6
    report("assembler", [
        Figure("assembler throughput, 4 KiB chunks", mb / elapsed, "MB/s", 150, note=note),
        Figure("assembler packets/s, 4 KiB chunks", count / elapsed, "pkt/s"),
        Figure("codec encode PcapBatch (256 KiB batches)", len(recs) / enc_s, "records/s"),
        Figure("codec decode PcapBatch (256 KiB batches)", len(recs) / dec_s, "records/s"),
        Figure("codec encode+decode throughput", 2 * sum(map(len, encoded)) / 1e6 / (enc_s + dec_s), "MB/s"),
    ])


if __name__ == "__main__":
    main()
