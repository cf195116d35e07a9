"""`sanitize_file`: the sanitizer engine on a pcap file, in place, with progress and a summary."""

from __future__ import annotations

import io
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np

from bridge.pcap import GLOBAL_HEADER_LEN, PcapHeader, global_header, parse_global_header, read_pcap
from bridge.sanitize import kernels
from bridge.sanitize.engine import Sanitizer
from bridge.sanitize.policy import Policy

CHUNK_BYTES = 2 << 20  # bytes per engine call: the buffer and the site tables stay in the caches


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


def _canonical_stream(path: str | Path) -> tuple[PcapHeader, BinaryIO, int]:
    """The file as a stream of canonical (little-endian) records: (header, stream positioned
    at the first record, size of the records). Little-endian files are read as they are, in
    chunks; others are normalized in memory first."""
    f = open(path, "rb")
    try:
        header = parse_global_header(f.read(GLOBAL_HEADER_LEN))
    except BaseException:
        f.close()
        raise
    if not header.big_endian:
        return header, f, os.fstat(f.fileno()).st_size - GLOBAL_HEADER_LEN
    f.close()
    header, canonical = read_pcap(path)
    return header, io.BytesIO(canonical), len(canonical)


def sanitize_file(in_path: str | Path, out_path: str | Path, policy: Policy, progress: bool = True,
                  stream: IO[str] | None = None) -> FileSummary:
    """Sanitize a pcap file (either byte order) into a little-endian pcap file.

    The input is read in chunks of about CHUNK_BYTES into one reused buffer (sanitized there in
    place), so memory stays bounded and no page of a whole-file copy is touched. A progress
    line is drawn on `stream` (default stderr) when it is a terminal and progress is on.
    """
    stream = stream or sys.stderr
    show = progress and stream.isatty()
    t0 = time.perf_counter()
    header, src, total = _canonical_stream(in_path)
    summary = FileSummary()
    sanitizer = Sanitizer(policy)
    buf = np.empty(CHUNK_BYTES, dtype=np.uint8)
    have = done = 0
    with src, open(out_path, "wb") as out:
        out.write(global_header(header.linktype, header.snaplen, header.nsec))
        while True:
            got = src.readinto(memoryview(buf)[have:])
            done += got
            have += got
            res = sanitizer.sanitize_inplace(header.linktype, buf[:have], partial_ok=True)
            out.write(res.packets)
            summary.count += res.count
            summary.kept += res.kept
            summary.cut += res.cut
            summary.dropped += res.dropped
            summary.reasons.update(res.reasons)
            rest = have - res.consumed
            if not got:
                break
            buf[:rest] = buf[res.consumed:have]  # the start of the next record (numpy copes with the overlap)
            have = rest
            if have == len(buf):  # one record larger than the buffer: make room for it
                buf = np.concatenate((buf, np.empty(len(buf), dtype=np.uint8)))
            if show:
                stream.write(f"\rsanitize: {100 * done // max(total, 1):3d}% {summary.count:,} packets")
                stream.flush()
    if rest:
        summary.dropped += 1
        summary.count += 1
        summary.reasons["truncated_record"] += 1
    if show:
        stream.write("\n")
    summary.seconds = time.perf_counter() - t0
    return summary
