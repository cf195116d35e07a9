"""`sanitize_file`: the sanitizer engine on a pcap file, in place, with progress and a summary."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from bridge.pcap import PcapHeader, global_header, parse_global_header, read_pcap
from bridge.sanitize import kernels
from bridge.sanitize.engine import Sanitizer
from bridge.sanitize.policy import Policy

CHUNK_BYTES = 4 << 20  # records per engine call: bounds the site tables' memory


@dataclass
class FileSummary:
    """What sanitize_file did."""

    count: int = 0
    kept: int = 0
    cut: int = 0
    dropped: int = 0
    reasons: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        rate = self.count / self.seconds if self.seconds > 0 else 0.0
        out = [f"packets: {self.count} in, {self.kept} kept, {self.cut} cut, {self.dropped} dropped "
               f"({self.seconds:.2f} s, {rate:,.0f} packets/s)"]
        out += [f"  {reason}: {n}" for reason, n in sorted(self.reasons.items(), key=lambda kv: -kv[1])]
        return out


def read_records(path: str | Path) -> tuple[PcapHeader, np.ndarray, np.ndarray, int]:
    """Read a pcap file into a writable array of canonical records. Returns (header, records,
    record offsets, bytes of a truncated last record left out). Little-endian files are used
    as they are (no copy beyond the read); others are normalized first."""
    data = np.fromfile(path, dtype=np.uint8)
    header = parse_global_header(data[:24].tobytes())
    if header.big_endian:
        header, canonical = read_pcap(path)
        body = np.frombuffer(bytearray(canonical), dtype=np.uint8)
    else:
        body = data[24:]
    offs = kernels.record_offsets(body)
    trailing = 0
    if len(offs) and offs[-1] < 0:
        offs = offs[:-1]
        end = int(offs[-1]) + 16 + int(body[offs[-1] + 8:offs[-1] + 12].view("<u4")[0]) if len(offs) else 0
        trailing = len(body) - end
        body = body[:end]
    return header, body, offs, trailing


def _chunks(records: np.ndarray, offs: np.ndarray) -> Iterator[tuple[int, int]]:
    """(start, end) byte ranges of whole records, about CHUNK_BYTES each."""
    if not len(offs):
        return
    cuts = np.unique(np.searchsorted(offs, np.arange(CHUNK_BYTES, len(records), CHUNK_BYTES)))
    starts = [0] + [int(offs[c]) for c in cuts if 0 < c < len(offs)]
    ends = starts[1:] + [len(records)]
    yield from zip(starts, ends)


def sanitize_file(in_path: str | Path, out_path: str | Path, policy: Policy, progress: bool = True,
                  stream: IO[str] | None = None) -> FileSummary:
    """Sanitize a pcap file (either byte order) into a little-endian pcap file.

    A progress line is drawn on `stream` (default stderr) when it is a terminal and
    progress is on.
    """
    stream = stream or sys.stderr
    show = progress and stream.isatty()
    t0 = time.perf_counter()
    header, records, offs, trailing = read_records(in_path)
    summary = FileSummary()
    if trailing:
        summary.dropped += 1
        summary.count += 1
        summary.reasons["truncated_record"] += 1
    sanitizer = Sanitizer(policy)
    with open(out_path, "wb") as out:
        out.write(global_header(header.linktype, header.snaplen, header.nsec))
        total = len(records)
        for start, end in _chunks(records, offs):
            res = sanitizer.sanitize_inplace(header.linktype, records[start:end])
            out.write(res.packets)
            summary.count += res.count
            summary.kept += res.kept
            summary.cut += res.cut
            summary.dropped += res.dropped
            summary.reasons.update(res.reasons)
            if show:
                stream.write(f"\rsanitize: {100 * end // max(total, 1):3d}% {summary.count:,} packets")
                stream.flush()
    if show:
        stream.write("\n")
    summary.seconds = time.perf_counter() - t0
    return summary
