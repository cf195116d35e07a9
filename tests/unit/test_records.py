"""The record codec: single-object encoding, Confluent framing, typed errors, schema evolution."""

from __future__ import annotations

import copy
import json

import pytest

from bridge.assembler import PcapChunkBatch
from bridge.pcap import PcapHeader, pack_record
from bridge.records import SCHEMA_DIR, SCHEMA_NAMES, Codec, RecordError, dead_letter, pcap_batch


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


def sample_batch() -> dict:
    packets = pack_record(1_000, b"x" * 60) + pack_record(2_000, b"y" * 70)
    chunk = PcapChunkBatch(PcapHeader(1, 65535, False), packets, 2, 1_000, 2_000)
    return pcap_batch(chunk, sensor_uuid="cd980d75dcf147dabb60aabe94fea6b2", site="s1", source="d4",
                      session_id="sess", seq=7)


def test_single_object_round_trip(codec: Codec) -> None:
    rec = sample_batch()
    data = codec.encode("PcapBatch", rec)
    assert data[:2] == b"\xc3\x01"
    assert codec.decode(data, expect="PcapBatch") == rec


def test_every_schema_loads_with_docs(codec: Codec) -> None:
    for name, schema in codec.schemas.items():
        raw = json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())
        assert raw.get("doc"), name


def test_wrong_schema_is_refused(codec: Codec) -> None:
    data = codec.encode("DeadLetter", dead_letter("sanitize", "bad_pcap", "x"))
    with pytest.raises(RecordError) as info:
        codec.decode(data, expect="PcapBatch")
    assert info.value.reason == "wrong_schema"


@pytest.mark.parametrize("data,reason", [
    (b"", "empty"),
    (None, "empty"),
    (b"hello world", "bad_framing"),
    (b"\xc3\x01" + b"\x00" * 8 + b"abc", "unknown_schema"),
])
def test_bad_bytes_raise_typed_errors(codec: Codec, data, reason: str) -> None:
    with pytest.raises(RecordError) as info:
        codec.decode(data)
    assert info.value.reason == reason


def test_corrupt_body(codec: Codec) -> None:
    data = codec.encode("PcapBatch", sample_batch())
    with pytest.raises(RecordError) as info:
        codec.decode(data[:14])
    assert info.value.reason == "bad_avro"


def test_confluent_framing(codec: Codec) -> None:
    reg = Codec(registry_ids={"PcapBatch": 42})
    data = reg.encode("PcapBatch", sample_batch())
    assert data[:5] == b"\x00\x00\x00\x00\x2a"
    assert reg.decode(data)["seq"] == 7
    with pytest.raises(RecordError):
        codec.decode(data)  # a codec without the registry mapping does not know id 42


def test_v1_record_read_by_v2_with_optional_field(tmp_path) -> None:
    """Schema evolution: a v2 reader that adds an optional field reads v1 records."""
    v1 = Codec()
    data = v1.encode("PcapBatch", sample_batch())
    for name in SCHEMA_NAMES:
        raw = json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())
        if name == "PcapBatch":
            raw = copy.deepcopy(raw)
            raw["fields"].append({"name": "vlan_policy", "type": ["null", "string"], "default": None})
        (tmp_path / f"{name}.avsc").write_text(json.dumps(raw))
    v2 = Codec(schema_dir=tmp_path)
    v2.add_schema("PcapBatch", v1.schemas["PcapBatch"])  # the reader knows the old writer schema
    rec = v2.decode(data, expect="PcapBatch")
    assert rec["vlan_policy"] is None and rec["seq"] == 7


def test_backscatter_events_of_version_2_stay_readable(tmp_path) -> None:
    """A hub upgraded to v3 reads the v2 events already on d4.backscatter (analyze reads them back at restore)."""
    (tmp_path / "old").mkdir()
    for name in SCHEMA_NAMES:
        (tmp_path / f"{name}.avsc").write_text((SCHEMA_DIR / f"{name}.avsc").read_text())
    v2_schema = (SCHEMA_DIR / "old" / "BackscatterEvent.v2.avsc").read_text()
    (tmp_path / "BackscatterEvent.avsc").write_text(v2_schema)
    writer = Codec(schema_dir=tmp_path)
    v2 = json.loads(v2_schema)
    event = {f["name"]: f.get("default", 0) for f in v2["fields"]}
    event.update(attack_id="a", status="final", victim="198.51.100.10", protocol="tcp", ports=[443], classes={},
                 sites={"s": 3}, sensors={"x": 3}, observed_pps=1.0, estimated_pps=2.0, seq=4)
    back = Codec().decode(writer.encode("BackscatterEvent", event), expect="BackscatterEvent")
    assert back["seq"] == 4 and back["late_packets"] == 0 and back["address_seconds"] == 0.0


def test_dead_letter_of_huge_input_still_fits_one_record(codec: Codec) -> None:
    rec = dead_letter("queue", "missing", "x" * 3_000_000, file_path="/" + "p" * 3_000_000,
                      payload=b"z" * 2_000_000, key=b"k" * 10_000)
    data = codec.encode("DeadLetter", rec)
    assert len(data) < 100_000
    back = codec.decode(data, expect="DeadLetter")
    assert back["payload"] is None and "2000000 bytes not kept" in back["detail"]
    assert back["file_path"].endswith("(3000001 characters)")
    small = dead_letter("sanitize", "bad_pcap", "short", payload=b"abc", file_path="/a")
    assert small["payload"] == b"abc" and small["file_path"] == "/a" and small["detail"] == "short"
