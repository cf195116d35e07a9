"""Which Kafka offsets may be committed when records finish out of order (pure core).

A consumer reads each partition in order but its records finish in any order (different
upstream sessions, dead letters acknowledged by another broker round trip). An offset may be
committed only when it and every earlier offset of its partition are finished; the commit
position is then the next offset to read.

Each assignment of a partition gets a new epoch, so a record that finishes after its partition
was revoked (and perhaps assigned again) cannot move the new assignment's commit position.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Hashable, Iterable

Token = tuple[Hashable, int, int]  # (partition key, offset, epoch)


@dataclass
class _Partition:
    epoch: int
    pending: deque[int] = field(default_factory=deque)  # offsets read and not yet committable
    finished: set[int] = field(default_factory=set)
    position: int | None = None  # next offset to read, once something finished
    committed: int | None = None  # last position handed out by commit_positions


class OffsetTracker:
    """Per-partition contiguous finished prefix of read offsets."""

    def __init__(self) -> None:
        self._parts: dict[Hashable, _Partition] = {}
        self._epochs = 0

    def assign(self, partitions: Iterable[Hashable]) -> None:
        """Start tracking partitions (a fresh epoch; previous state of them is forgotten)."""
        for p in partitions:
            self._epochs += 1
            self._parts[p] = _Partition(self._epochs)

    def revoke(self, partitions: Iterable[Hashable]) -> None:
        """Stop tracking partitions; their unfinished records no longer count."""
        for p in partitions:
            self._parts.pop(p, None)

    def read(self, partition: Hashable, offset: int) -> Token:
        """Note a record read (in partition order); return the token that finishes it."""
        part = self._parts.get(partition)
        if part is None:  # a record of a partition we were not told about: track it from here
            self.assign([partition])
            part = self._parts[partition]
        part.pending.append(offset)
        return (partition, offset, part.epoch)

    def finish(self, token: Token) -> None:
        """Mark a record finished; stale tokens (revoked or re-assigned partition) are ignored."""
        partition, offset, epoch = token
        part = self._parts.get(partition)
        if part is None or part.epoch != epoch:
            return
        part.finished.add(offset)
        while part.pending and part.pending[0] in part.finished:
            done = part.pending.popleft()
            part.finished.discard(done)
            part.position = done + 1

    def pending(self, partition: Hashable | None = None) -> int:
        """Records read and not yet committable (in one partition, or in all)."""
        if partition is not None:
            part = self._parts.get(partition)
            return len(part.pending) if part else 0
        return sum(len(p.pending) for p in self._parts.values())

    def commit_positions(self, partitions: Iterable[Hashable] | None = None) -> dict[Hashable, int]:
        """Positions (next offset to read) that moved since the last call: what to commit now."""
        keys = self._parts.keys() if partitions is None else [p for p in partitions if p in self._parts]
        out: dict[Hashable, int] = {}
        for p in keys:
            part = self._parts[p]
            if part.position is not None and part.position != part.committed:
                out[p] = part.position
                part.committed = part.position
        return out

    def uncommit(self, positions: dict[Hashable, int]) -> None:
        """A commit of these positions failed: hand them out again on the next call."""
        for p, pos in positions.items():
            part = self._parts.get(p)
            if part is not None and part.committed == pos:
                part.committed = None
