"""Line and JSON-object cutting of non-pcap D4 streams."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.d4.cutters import CutError, JsonObjectCutter, LineCutter


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(st.binary(max_size=80).map(lambda b: b.replace(b"\n", b"") + b"\n"), min_size=1, max_size=60),
       cuts=st.lists(st.integers(0, 5000), max_size=30))
def test_lines_survive_any_chunking(lines, cuts):
    data = b"".join(lines)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    cutter = LineCutter(max_bytes=256)
    out = []
    for a, b in zip(points, points[1:]):
        out += cutter.feed(data[a:b], now=0.0)
    out += cutter.close()
    assert b"".join(out) == data
    assert all(r.endswith(b"\n") and len(r) <= 256 for r in out)  # whole lines, bounded


def test_long_line_is_cut_and_age_closes_open_record():
    cutter = LineCutter(max_bytes=10)
    assert cutter.feed(b"x" * 25, now=0.0) == [b"x" * 10, b"x" * 10]
    assert cutter.feed(b"\nab\n", now=0.02) == []
    assert cutter.due(now=0.05, max_age=0.1) == []
    assert cutter.due(now=0.1, max_age=0.1) == [b"xxxxx\nab\n"]
    assert cutter.close() == []


def test_json_objects_split_anywhere_even_inside_a_character():
    docs = [{"type": "ja3-jl", "note": "caf\u00e9 \u2603"}, {"type": "maltrail"}]
    data = b"".join(json.dumps(d, ensure_ascii=False).encode() + b"\n" for d in docs)
    cutter = JsonObjectCutter()
    got = []
    for i in range(len(data)):
        got += cutter.feed(data[i:i + 1])
    assert [obj for obj, _ in got] == docs
    assert [json.loads(raw) for _, raw in got] == docs


@pytest.mark.parametrize("data", [b"[1, 2]", b'{"notype": 1}', b'{"type": 3}', b"\xff\xfe{}"])
def test_bad_meta_headers(data):
    with pytest.raises(CutError) as exc:
        JsonObjectCutter().feed(data)
    assert exc.value.reason == "bad_meta_header"


def test_meta_header_without_object_is_bounded():
    cutter = JsonObjectCutter(limit=100)
    assert cutter.feed(b'{"type": "' + b"a" * 50) == []
    with pytest.raises(CutError):
        cutter.feed(b"a" * 100)
