"""The record codec: every hop reads and writes topic records through this module.

Default wire format is Avro single-object encoding (0xC3 0x01, the 8-byte
little-endian CRC-64-AVRO fingerprint of the writer schema, then the Avro body),
so a record is self-describing without a registry. Confluent Schema Registry
framing (0x00, 4-byte big-endian schema id, body) is supported for sites that
run a registry; the id -> schema mapping is then given to the codec.

Readers resolve old writer schemas against the current reader schema, so a
record written with an older schema version stays readable after a field is
added (Avro schema evolution).
"""

from __future__ import annotations

import io
import json
import struct
import time
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from bridge.assembler import PcapChunkBatch

# bridge/schemas links to the top-level schemas/ in the source tree and is a copy in an installed package
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
SCHEMA_NAMES = ("PcapBatch", "D4Record", "DeadLetter", "BackscatterEvent", "AnalyzeTick")
OLD_SCHEMA_DIR = "old"  # earlier versions (<Name>.v<N>.avsc): their records stay readable

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
_FP = struct.Struct("<Q")
_CONFLUENT_ID = struct.Struct(">I")


class RecordError(ValueError):
    """A record that cannot be read; ``reason`` is the DLQ/metric reason label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _fingerprint(schema: dict) -> int:
    """CRC-64-AVRO (Rabin) fingerprint of the schema's parsing canonical form."""
    canonical = to_parsing_canonical_form(schema)
    return int(fingerprint(canonical, "CRC-64-AVRO"), 16)


class Codec:
    """Encode and decode records of the known schemas.

    ``writer_schemas`` maps older schema versions (by name) so that their
    fingerprints are recognised and resolved to the current reader schema.
    ``registry_ids`` enables Confluent framing: name -> schema id for writing;
    the reverse mapping is used when reading such records.
    """

    def __init__(self, schema_dir: Path = SCHEMA_DIR, registry_ids: dict[str, int] | None = None) -> None:
        self.schemas: dict[str, dict] = {}
        self._by_fp: dict[int, tuple[str, dict]] = {}
        self._fp_bytes: dict[str, bytes] = {}
        for name in SCHEMA_NAMES:
            path = schema_dir / f"{name}.avsc"
            try:
                raw = json.loads(path.read_text())
                parsed = parse_schema(raw, _write_hint=False)
            except (OSError, ValueError, fastavro.schema.SchemaParseException) as exc:
                raise RecordError("bad_schema", f"{path}: {exc}") from exc
            self.add_schema(name, parsed, current=True)
        for path in sorted((schema_dir / OLD_SCHEMA_DIR).glob("*.avsc")):
            self.add_schema(path.name.split(".")[0], parse_schema(json.loads(path.read_text()), _write_hint=False))
        self.registry_ids = dict(registry_ids or {})
        self._by_registry_id = {v: k for k, v in self.registry_ids.items()}

    def add_schema(self, name: str, schema: dict, current: bool = False) -> None:
        """Register a schema version; the current one is used for writing and as reader."""
        fp = _fingerprint(schema)
        self._by_fp[fp] = (name, schema)
        if current:
            self.schemas[name] = schema
            self._fp_bytes[name] = SINGLE_OBJECT_MAGIC + _FP.pack(fp)

    def encode(self, name: str, record: dict[str, Any]) -> bytes:
        """Serialize ``record`` with the current schema ``name``."""
        schema = self.schemas[name]
        buf = io.BytesIO()
        if name in self.registry_ids:
            buf.write(CONFLUENT_MAGIC + _CONFLUENT_ID.pack(self.registry_ids[name]))
        else:
            buf.write(self._fp_bytes[name])
        try:
            fastavro.schemaless_writer(buf, schema, record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise RecordError("bad_record", f"{name}: {exc}") from exc
        return buf.getvalue()

    def decode(self, data: bytes | None, expect: str | None = None) -> dict[str, Any]:
        """Deserialize a record; raise RecordError for anything that is not one.

        ``expect`` names the schema the caller needs; a record of another schema
        is refused with reason ``wrong_schema``.
        """
        name, writer = self._writer_of(data)
        if expect is not None and name != expect:
            raise RecordError("wrong_schema", f"expected {expect}, got {name}")
        assert data is not None
        header = 10 if data[:2] == SINGLE_OBJECT_MAGIC else 5
        try:
            return fastavro.schemaless_reader(io.BytesIO(data[header:]), writer, self.schemas[name])
        except Exception as exc:  # fastavro raises many types on corrupt bodies
            raise RecordError("bad_avro", f"{name} body does not decode: {exc}") from exc

    def _writer_of(self, data: bytes | None) -> tuple[str, dict]:
        if not data:
            raise RecordError("empty", "record has no value")
        if data[:2] == SINGLE_OBJECT_MAGIC and len(data) >= 10:
            fp = _FP.unpack_from(data, 2)[0]
            if fp not in self._by_fp:
                raise RecordError("unknown_schema", f"unknown schema fingerprint {fp:016x}")
            return self._by_fp[fp]
        if data[:1] == CONFLUENT_MAGIC and len(data) >= 5:
            sid = _CONFLUENT_ID.unpack_from(data, 1)[0]
            if sid not in self._by_registry_id:
                raise RecordError("unknown_schema", f"unknown schema registry id {sid}")
            name = self._by_registry_id[sid]
            return name, self.schemas[name]
        raise RecordError("bad_framing", f"not an Avro single-object record (starts {data[:4].hex()})")


_default: Codec | None = None


def default_codec() -> Codec:
    """The process-wide codec, loaded and checked once."""
    global _default
    if _default is None:
        _default = Codec()
    return _default


def encode(name: str, record: dict[str, Any]) -> bytes:
    """Encode with the default codec."""
    return default_codec().encode(name, record)


def decode(data: bytes | None, expect: str | None = None) -> dict[str, Any]:
    """Decode with the default codec."""
    return default_codec().decode(data, expect)


def schema_of(data: bytes | None) -> str:
    """Name of the schema a record was written with (RecordError if it is not a known record)."""
    return default_codec()._writer_of(data)[0]


def now_ns() -> int:
    """Wall-clock time in nanoseconds, the unit of every *_ns field."""
    return time.time_ns()


def pcap_batch(
    batch: PcapChunkBatch,
    *,
    sensor_uuid: str,
    site: str,
    source: str,
    session_id: str,
    seq: int,
    file_path: str | None = None,
    batch_index: int | None = None,
) -> dict[str, Any]:
    """Build a PcapBatch record from an assembled batch."""
    return {
        "sensor_uuid": sensor_uuid,
        "site": site,
        "source": source,
        "session_id": session_id,
        "seq": seq,
        "linktype": batch.header.linktype,
        "snaplen": batch.header.snaplen,
        "ts_precision": "nsec" if batch.header.nsec else "usec",
        "first_ts_ns": batch.first_ts_ns,
        "last_ts_ns": batch.last_ts_ns,
        "packet_count": batch.count,
        "packets": batch.packets,
        "created_ns": now_ns(),
        "file_path": file_path,
        "batch_index": batch_index,
        "sanitization": None,
        "lineage": None,
    }


MAX_DEAD_LETTER_TEXT = 4096
MAX_DEAD_LETTER_PAYLOAD = 900_000  # with the clipped text fields, far below the 1,000,000-byte record limit


def _clip(text: str | None, limit: int) -> str | None:
    """Cut a text to ``limit`` characters, saying how long it was."""
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def dead_letter(
    hop: str,
    reason: str,
    detail: str,
    *,
    source_topic: str | None = None,
    source_partition: int | None = None,
    source_offset: int | None = None,
    file_path: str | None = None,
    key: bytes | None = None,
    payload: bytes | None = None,
) -> dict[str, Any]:
    """Build a DeadLetter record that always fits in one Kafka record.

    Refused input can be arbitrarily large (a "path" of megabytes on a Redis queue, a huge
    payload): text fields are clipped and an oversized payload is left out, saying so, so
    that reporting bad input can never fail in its turn.
    """
    detail = _clip(detail, MAX_DEAD_LETTER_TEXT) or ""
    if payload is not None and len(payload) > MAX_DEAD_LETTER_PAYLOAD:
        detail = f"{detail} (payload of {len(payload)} bytes not kept: too large)"
        payload = None
    return {
        "hop": hop,
        "reason": _clip(reason, 200),
        "detail": detail,
        "file_path": _clip(file_path, MAX_DEAD_LETTER_TEXT),
        "created_ns": now_ns(),
        "source_topic": source_topic,
        "source_partition": source_partition,
        "source_offset": source_offset,
        "key": key if key is None or len(key) <= MAX_DEAD_LETTER_TEXT else key[:MAX_DEAD_LETTER_TEXT],
        "payload": payload,
    }
