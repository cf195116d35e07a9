"""egress_offsets: contiguous finished prefix per partition, epochs across rebalances."""

from __future__ import annotations

from bridge.egress_offsets import OffsetTracker

P0, P1 = ("t", 0), ("t", 1)


def test_commit_position_waits_for_every_earlier_offset():
    t = OffsetTracker()
    t.assign([P0])
    tokens = [t.read(P0, o) for o in range(10, 15)]
    t.finish(tokens[1])
    t.finish(tokens[2])
    assert t.commit_positions() == {}
    t.finish(tokens[0])
    assert t.commit_positions() == {P0: 13}
    assert t.commit_positions() == {}  # unchanged: nothing to commit again
    t.finish(tokens[4])
    t.finish(tokens[3])
    assert t.commit_positions() == {P0: 15}
    assert t.pending() == 0


def test_partitions_are_independent_and_can_be_selected():
    t = OffsetTracker()
    t.assign([P0, P1])
    a, b = t.read(P0, 0), t.read(P1, 7)
    t.finish(b)
    assert t.pending(P0) == 1 and t.pending(P1) == 0 and t.pending() == 1
    assert t.commit_positions([P0]) == {}
    assert t.commit_positions([P1]) == {P1: 8}
    t.finish(a)
    assert t.commit_positions() == {P0: 1}


def test_stale_tokens_after_revoke_and_reassign_are_ignored():
    t = OffsetTracker()
    t.assign([P0])
    old = t.read(P0, 5)
    t.revoke([P0])
    t.finish(old)  # revoked: ignored
    t.assign([P0])
    new = t.read(P0, 3)  # the new owner resumed from the committed offset
    t.finish(old)  # offset 5 of the old assignment must not count
    assert t.commit_positions() == {}
    t.finish(new)
    assert t.commit_positions() == {P0: 4}


def test_failed_commit_is_handed_out_again():
    t = OffsetTracker()
    t.assign([P0])
    t.finish(t.read(P0, 0))
    positions = t.commit_positions()
    assert positions == {P0: 1}
    t.uncommit(positions)
    assert t.commit_positions() == {P0: 1}


def test_unknown_partition_is_tracked_from_its_first_record():
    t = OffsetTracker()
    t.finish(t.read(P1, 42))
    assert t.commit_positions() == {P1: 43}
