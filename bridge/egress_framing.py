"""Cut sanitized packet records into D4 frame payloads (pure core: bytes in, bytes out).

Egress sends each upstream session one pcap stream: a global header, then whole records. Each
payload handed to the D4 client holds whole records and fits one frame, so every frame boundary
is a record boundary (a receiver can resume or inspect any frame alone) and a resend after a
reconnect repeats whole records. A record larger than the frame size travels alone; the client
then splits it across frames, which the pcap byte stream allows.
"""

from __future__ import annotations

import numpy as np

from bridge.compiled import kernels
from bridge.pcap import MAX_SNAPLEN, PcapFormatError, global_header, pack_record

_loops = kernels("records")

# The session header announces the largest snaplen libpcap knows: sensors with different
# snaplens can share an upstream session, and a receiver refuses records longer than it.
SESSION_SNAPLEN = MAX_SNAPLEN


def session_header(linktype: int, nsec: bool) -> bytes:
    """The pcap global header that starts every upstream session of this link type."""
    return global_header(linktype, SESSION_SNAPLEN, nsec)


def frame_payloads(packets: bytes, frame_size: int) -> list[memoryview]:
    """Split canonical packed records into payloads of whole records, each <= ``frame_size``.

    Raises ``PcapFormatError("truncated", ...)`` when the records do not tile ``packets``.
    """
    if frame_size <= 0:
        raise ValueError("frame_size must be positive")
    if not packets:
        return []
    ends, _records, bad_at = _loops.chunk_ends(np.frombuffer(packets, np.uint8), frame_size)
    if bad_at >= 0:
        raise PcapFormatError("truncated", f"record at byte {bad_at} runs past the end ({len(packets)} bytes)")
    view = memoryview(packets)
    out: list[memoryview] = []
    start = 0
    for end in ends.tolist():
        out.append(view[start:end])
        start = end
    return out


def convert_precision(packets: bytes, from_nsec: bool, to_nsec: bool) -> bytes:
    """Rewrite the sub-second field of every record from one unit to the other.

    Microseconds -> nanoseconds is exact; nanoseconds -> microseconds truncates, as libpcap does.
    The records must tile ``packets`` (check with ``frame_payloads`` first).
    """
    if from_nsec == to_nsec:
        return packets
    buf = np.frombuffer(bytearray(packets), np.uint8)
    _loops.scale_fracs(buf, to_nsec)
    return buf.tobytes()


def warm_up() -> None:
    """Load the compiled record walks now, not under the first records (a second or more of CPU)."""
    record = pack_record(0, b"\0" * 60)
    frame_payloads(record, 65536)
    convert_precision(record, False, True)
    convert_precision(record, True, False)
