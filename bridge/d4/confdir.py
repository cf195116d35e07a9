"""Read d4-goclient / d4 C client configuration directories (``-c DIR``).

One setting per file (shared/reference/d4-protocol.md §5.1). File semantics follow d4-goclient
(``d4-golang-utils/config.ReadConfigFile``): at most 100 bytes are read, one trailing ``\\n`` then
one trailing ``\\r`` are removed. A missing or invalid ``uuid`` is replaced by a fresh v4 uuid
written back to the file, as both reference clients do.
"""

from __future__ import annotations

import json
import logging
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

GO_FILE_LIMIT = 100  # d4-golang-utils reads at most this many bytes of a config file
META_HEADER_LIMIT = 100_000  # d4-goclient MH_FILE_LIMIT
DEFAULT_SNAPLEN = 4096  # d4-goclient default when snaplen is missing or invalid


class ConfDirError(ValueError):
    """A configuration directory that cannot be used; the message names the file."""


@dataclass(frozen=True)
class SensorConf:
    """The settings of one sensor configuration directory."""

    uuid: uuidlib.UUID
    key: bytes
    d4_type: int
    version: int
    snaplen: int
    destination: str  # "stdout" or host:port
    source: str
    meta_header: bytes | None  # raw metaheader.json (types 2/254)
    root_ca: Path | None


def read_setting(path: Path) -> bytes | None:
    """Read one setting the way d4-goclient does; None when the file does not exist."""
    try:
        with path.open("rb") as fh:
            data = fh.read(GO_FILE_LIMIT)
            if fh.read(1):
                log.warning("%s is longer than %d bytes; d4-goclient reads only the first %d",
                            path, GO_FILE_LIMIT, GO_FILE_LIMIT)
    except FileNotFoundError:
        return None
    if data.endswith(b"\n"):
        data = data[:-1]
    if data.endswith(b"\r"):
        data = data[:-1]
    return data


def _int_setting(confdir: Path, name: str) -> int | None:
    raw = read_setting(confdir / name)
    if raw is None:
        return None
    try:
        return int(raw.strip())
    except ValueError:
        return None


def load_uuid(confdir: Path) -> uuidlib.UUID:
    """The sensor uuid; generated (v4) and written back when missing or unparsable."""
    path = confdir / "uuid"
    raw = read_setting(path)
    if raw is not None:
        try:
            return uuidlib.UUID(raw.decode("ascii").strip())
        except (ValueError, UnicodeDecodeError):
            log.warning("%s does not hold a uuid; generating a new one", path)
    new = uuidlib.uuid4()
    path.write_text(str(new) + "\n")
    log.info("generated sensor uuid %s in %s", new, path)
    return new


def load_meta_header(confdir: Path) -> bytes:
    """Raw ``metaheader.json`` bytes; must be a JSON object with a string ``type``."""
    path = confdir / "metaheader.json"
    try:
        with path.open("rb") as fh:
            raw = fh.read(META_HEADER_LIMIT)
    except FileNotFoundError:
        raise ConfDirError(f"{path}: missing (types 2 and 254 need a meta header)") from None
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ConfDirError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
        raise ConfDirError(f'{path}: must be a JSON object with a string "type" field')
    return raw


def load_confdir(path: str | Path) -> SensorConf:
    """Read a configuration directory; raises ConfDirError naming the offending file."""
    confdir = Path(path)
    if not confdir.is_dir():
        raise ConfDirError(f"{confdir}: not a directory")
    key = read_setting(confdir / "key")
    if key is None:
        raise ConfDirError(f"{confdir / 'key'}: missing (the HMAC key)")
    d4_type = _int_setting(confdir, "type")
    if d4_type is None or not 0 <= d4_type <= 255:
        raise ConfDirError(f"{confdir / 'type'}: missing or not a number 0..255")
    version = _int_setting(confdir, "version")
    if version is None or version < 1:
        version = 1  # d4-goclient forces 1
    snaplen = _int_setting(confdir, "snaplen")
    if snaplen is None or snaplen <= 0:
        snaplen = DEFAULT_SNAPLEN
    destination = (read_setting(confdir / "destination") or b"stdout").decode("utf-8", "replace").strip()
    source = (read_setting(confdir / "source") or b"stdin").decode("utf-8", "replace").strip()
    meta = load_meta_header(confdir) if d4_type in (2, 254) else None
    root_ca = confdir / "rootCA.crt"
    return SensorConf(
        uuid=load_uuid(confdir),
        key=key,
        d4_type=d4_type,
        version=version,
        snaplen=snaplen,
        destination=destination,
        source=source,
        meta_header=meta,
        root_ca=root_ca if root_ca.is_file() else None,
    )
