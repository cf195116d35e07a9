"""Upstream identities of the egress hop: which uuid and HMAC key a sensor's packets leave under.

Two set-ups (pure: text in, objects out):

* one site identity (``--uuid`` + ``--hmac-key``): every sensor of the site is forwarded under it,
  as the seed's ``d4-goclient`` did;
* an identity map (``--identity-map FILE``, TOML), internal sensor uuid -> upstream uuid/key::

      [default]                      # optional: sensors not listed below
      uuid = "5f0c...-..."
      key_file = "/etc/d4/site.key"  # or key = "..."

      [sensors."0d4a...-..."]        # internal sensor uuid, any spelling
      uuid = "7b1e...-..."
      key = "..."
      telescope = ["10.1.0.0/17"]    # optional: what it watches, announced to the hub (count only)

Upstream uuids must be RFC 4122 version-4 uuids: d4-core drops any other.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.backscatter.telescope import PrefixSet
from bridge.config import Secret
from bridge.d4.keys import is_uuid_v4, normalize_uuid


class IdentityError(ValueError):
    """An identity or identity map that cannot be used (the message names the entry)."""


@dataclass(frozen=True)
class Identity:
    """An upstream D4 identity: uuid (32 lowercase hex digits) and HMAC key."""

    uuid_hex: str
    key: Secret
    monitored: int = 0  # IPv4 addresses its sensors watch, announced to the hub (0 = not announced)

    @property
    def uuid_bytes(self) -> bytes:
        return bytes.fromhex(self.uuid_hex)


def monitored_addresses(prefixes: list[str], where: str) -> int:
    """IPv4 addresses in the union of ``prefixes`` (IPv6 ones are not analysed, so not counted)."""
    try:
        return PrefixSet([p for p in prefixes if ipaddress.ip_network(str(p).strip(), strict=False).version == 4]).size
    except ValueError:
        raise IdentityError(f"{where}: telescope {prefixes!r}: expected CIDR prefixes") from None


def make_identity(uuid_text: str, key: bytes | str | Secret | None, where: str, monitored: int = 0) -> Identity:
    """Check and build an identity; ``where`` names it in error messages."""
    try:
        uuid_hex = normalize_uuid(str(uuid_text))
    except ValueError:
        raise IdentityError(f"{where}: '{uuid_text}' is not a uuid") from None
    if not is_uuid_v4(uuid_hex):
        raise IdentityError(f"{where}: upstream uuid {uuid_hex} is not a version-4 uuid (d4-core refuses it)")
    secret = key if isinstance(key, Secret) else Secret(key) if key else None
    if secret is None or not secret.reveal():
        raise IdentityError(f"{where}: no HMAC key")
    return Identity(uuid_hex, secret, monitored)


@dataclass
class IdentityMap:
    """Internal sensor uuid -> upstream identity, with an optional default for the others."""

    sensors: dict[str, Identity] = field(default_factory=dict)
    default: Identity | None = None

    def lookup(self, sensor_uuid: str) -> Identity | None:
        """The identity a sensor's packets leave under, or None when it has none."""
        try:
            key = normalize_uuid(sensor_uuid)
        except ValueError:
            return self.default
        return self.sensors.get(key, self.default)

    @property
    def identities(self) -> set[Identity]:
        out = set(self.sensors.values())
        if self.default is not None:
            out.add(self.default)
        return out


def _entry(table: Any, where: str, base: Path) -> Identity:
    if not isinstance(table, dict):
        raise IdentityError(f"{where}: expected a table with uuid and key or key_file")
    unknown = set(table) - {"uuid", "key", "key_file", "telescope"}
    if unknown:
        raise IdentityError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                            "(known: uuid, key, key_file, telescope)")
    if "uuid" not in table:
        raise IdentityError(f"{where}: missing uuid")
    if ("key" in table) == ("key_file" in table):
        raise IdentityError(f"{where}: give exactly one of key or key_file")
    if "key_file" in table:
        path = base / str(table["key_file"])
        try:
            # trailing newline stripped, as the D4 clients read their key files
            key: bytes = path.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise IdentityError(f"{where}: cannot read key file {path}: {exc.strerror}") from None
    else:
        key = str(table["key"]).encode()
    telescope = table.get("telescope", [])
    prefixes = [p.strip() for p in telescope.split(",")] if isinstance(telescope, str) else list(telescope)
    return make_identity(table["uuid"], key, where, monitored_addresses(prefixes, where) if prefixes else 0)


def parse_identity_map(text: str, origin: str = "identity map", base: Path = Path(".")) -> IdentityMap:
    """Parse the TOML identity map; relative ``key_file`` paths are resolved against ``base``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise IdentityError(f"{origin}: not valid TOML: {exc}") from None
    unknown = set(data) - {"default", "sensors"}
    if unknown:
        raise IdentityError(f"{origin}: unknown table(s) {', '.join(sorted(unknown))} (known: default, sensors)")
    result = IdentityMap()
    if "default" in data:
        result.default = _entry(data["default"], f"{origin}: [default]", base)
    sensors = data.get("sensors", {})
    if not isinstance(sensors, dict):
        raise IdentityError(f"{origin}: [sensors] must be a table of sensor uuid -> identity")
    for internal, table in sensors.items():
        where = f"{origin}: [sensors.\"{internal}\"]"
        try:
            internal_hex = normalize_uuid(internal)
        except ValueError:
            raise IdentityError(f"{where}: '{internal}' is not a uuid") from None
        result.sensors[internal_hex] = _entry(table, where, base)
    if not result.sensors and result.default is None:
        raise IdentityError(f"{origin}: no identity (add [default] or [sensors.\"<uuid>\"] tables)")
    return result


def load_identity_map(path: str | Path) -> IdentityMap:
    """Read an identity map file (key files relative to its directory)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise IdentityError(f"cannot read identity map {p}: {exc.strerror}") from None
    return parse_identity_map(text, str(p), p.parent)
