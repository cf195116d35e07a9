"""Sensor admission rules of a D4 server: keys, registration, blacklists, uuid and type checks.

Pure: the rules are data (a keys file, lists from the configuration); the ingress hop adds the
d4-core Redis lookups on top. Reasons returned here are metric label values.
"""

from __future__ import annotations

import ipaddress
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ACCEPTED_TYPES = frozenset({1, 2, 4, 8, 254})
TYPE_META = 2
TYPE_EXTENDED = 254


class KeysFileError(ValueError):
    """A keys file line that is not ``uuid = key``."""


def normalize_uuid(text: str) -> str:
    """Any uuid spelling -> 32 lowercase hex digits (the d4-core identity form)."""
    return uuidlib.UUID(text.strip()).hex


def is_uuid_v4(uuid_hex: str) -> bool:
    """d4-core's rule: an RFC 4122 variant, version-4 uuid (``UUID(hex, version=4).hex == hex``)."""
    try:
        return uuidlib.UUID(hex=uuid_hex, version=4).hex == uuid_hex
    except ValueError:
        return False


def parse_keys(text: str, origin: str = "keys file") -> dict[str, bytes]:
    """Parse ``uuid = key`` lines (``#`` comments and blank lines allowed) into uuid_hex -> key.

    The key is everything after the first ``=``, with surrounding whitespace removed.
    """
    keys: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        left, sep, right = stripped.partition("=")
        key = right.strip()
        try:
            uuid_hex = normalize_uuid(left)
        except ValueError:
            raise KeysFileError(f"{origin}:{number}: '{left.strip()}' is not a uuid") from None
        if not sep or not key:
            raise KeysFileError(f"{origin}:{number}: expected 'uuid = key'")
        keys[uuid_hex] = key.encode()
    return keys


def load_keys_file(path: str | Path) -> dict[str, bytes]:
    """Read a keys file (see ``parse_keys``)."""
    return parse_keys(Path(path).read_text(), str(path))


@dataclass
class Admission:
    """Static admission rules; ``refusal`` gives the reason a sensor is refused, or None."""

    keys: dict[str, bytes] = field(default_factory=dict)
    default_key: bytes | None = None
    registration: bool = False  # only sensors listed in ``keys`` (or registered in Redis)
    blacklist_uuid: frozenset[str] = frozenset()
    blacklist_ip: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    accepted_types: frozenset[int] = DEFAULT_ACCEPTED_TYPES

    @classmethod
    def build(cls, keys: dict[str, bytes], default_key: bytes | None, registration: bool,
              blacklist_uuid: list[str], blacklist_ip: list[str], accepted_types: list[int]) -> "Admission":
        """Normalize configuration lists into an Admission."""
        return cls(
            keys=keys,
            default_key=default_key,
            registration=registration,
            blacklist_uuid=frozenset(normalize_uuid(u) for u in blacklist_uuid),
            blacklist_ip=tuple(ipaddress.ip_network(n, strict=False) for n in blacklist_ip),
            accepted_types=frozenset(int(t) for t in accepted_types),
        )

    def ip_refused(self, ip: str) -> bool:
        """True when the peer address falls in a blacklisted prefix."""
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr.version == net.version and addr in net for net in self.blacklist_ip)

    def first_header_refusal(self, uuid_hex: str, d4_type: int) -> str | None:
        """Checks on the first header of a connection, in d4-core's order."""
        if uuid_hex in self.blacklist_uuid:
            return "blacklisted_uuid"
        if not is_uuid_v4(uuid_hex):
            return "bad_uuid"
        if d4_type not in self.accepted_types:
            return "type_not_accepted"
        if d4_type == TYPE_EXTENDED:
            return "meta_header_missing"
        return None

    def static_key(self, uuid_hex: str) -> tuple[bytes | None, str | None]:
        """(key, None) or (None, refusal reason) from the keys file and default key."""
        key = self.keys.get(uuid_hex)
        if key is not None:
            return key, None
        if self.registration:
            return None, "not_registered"
        if self.default_key is None:
            return None, "unknown_uuid"
        return self.default_key, None


def next_header_refusal(first_uuid: str, current_type: int, uuid_hex: str, d4_type: int,
                        accepted_types: frozenset[int]) -> str | None:
    """Checks on every later header of a connection: same uuid, only a 2 -> 254 type change."""
    if uuid_hex != first_uuid:
        return "uuid_changed"
    if d4_type == current_type:
        return None
    if current_type == TYPE_META and d4_type == TYPE_EXTENDED and TYPE_EXTENDED in accepted_types:
        return None
    return "type_changed"
