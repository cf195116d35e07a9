"""Sanitization policy: what to rewrite and how, parsed once and validated at start.

A policy comes from a TOML file (`--policy FILE`) or from the tcprewrite-style flags
(`--pnat`, `--srcipmap`, `--dstipmap`, `--cryptopan-key FILE`). Both routes go through
`Policy.from_mapping`, so a flag and the equivalent TOML key mean exactly the same thing.

The defaults are those of the sharing use case (backscatter analysis needs headers only):
payloads are cut after the last understood header, MAC addresses are hashed with the site key
(the Crypto-PAn key, or mac.key_file) or zeroed when there is no key, and packets that cannot
be parsed far enough are dropped. `compat = "tcprewrite"` selects tcprewrite's behaviour instead
(MACs and payloads kept): an explicit, less safe choice that the hops announce with a warning.
An explicit mac.mode or payload.mode wins over both.

TOML layout (every key optional except one address mapping)::

    name = "site-a"
    compat = "none"                    # none | tcprewrite (mac and payload default to keep)
    [addresses]
    pnat = "10.1.0.0/16:192.168.0.0/16,[fd00::/16]:[2001:db8::/32]"   # tcprewrite --pnat
    srcipmap = "..."                                                    # tcprewrite --srcipmap
    dstipmap = "..."                                                    # tcprewrite --dstipmap
    cryptopan_key_file = "key.bin"     # 32 raw bytes or 64 hex digits
    cryptopan_scope = "all"            # or a list of CIDRs: ["10.0.0.0/8", "fd00::/8"]
    [mac]
    mode = "hash"                      # keep | zero | hash; default hash with a key, else zero
    key_file = "mac.key"               # for hash; defaults to the Crypto-PAn key
    [payload]
    mode = "headers"                   # keep | cut | headers (the default)
    bytes = 64                         # for cut: bytes kept after the innermost transport header
    [unparseable]
    action = "drop"                    # drop | cut
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Mapping

MacMode = Literal["keep", "zero", "hash"]
PayloadMode = Literal["keep", "cut", "headers"]
UnparseableAction = Literal["drop", "cut"]
Compat = Literal["none", "tcprewrite"]

COMPAT_CHOICES: tuple[str, ...] = ("none", "tcprewrite")

KEY_BYTES = 32


class PolicyError(ValueError):
    """An invalid policy; the message names the part that is wrong."""


@dataclass(frozen=True)
class Cidr:
    """An address prefix: family 4 or 6, network as an integer (host bits cleared), length."""

    family: int
    network: int
    prefixlen: int

    @property
    def bits(self) -> int:
        return 32 if self.family == 4 else 128

    @property
    def mask(self) -> int:
        return ((1 << self.prefixlen) - 1) << (self.bits - self.prefixlen)

    def __str__(self) -> str:
        addr = ipaddress.ip_address(self.network) if self.family == 4 else ipaddress.IPv6Address(self.network)
        return f"{addr}/{self.prefixlen}"


@dataclass(frozen=True)
class CidrPair:
    """One tcprewrite `FROM:TO` mapping: addresses in FROM get TO's prefix, host bits kept."""

    src: Cidr
    dst: Cidr

    def __str__(self) -> str:
        if self.src.family == 6:
            return f"[{self.src}]:[{self.dst}]"
        return f"{self.src}:{self.dst}"


def parse_cidr(text: str, where: str) -> Cidr:
    """Parse `a.b.c.d[/len]` or `v6addr[/len]`; without /len the prefix is a host (/32, /128)."""
    text = text.strip()
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise PolicyError(f"{where}: bad CIDR {text!r} ({exc})") from None
    return Cidr(net.version, int(net.network_address), net.prefixlen)


def _split_pair(item: str, where: str) -> tuple[str, str]:
    item = item.strip()
    if item.startswith("["):
        # IPv6 pair: [FROM]:[TO]
        close = item.find("]")
        if close < 0 or not item[close + 1:].startswith(":[") or not item.endswith("]"):
            raise PolicyError(f"{where}: IPv6 pair {item!r} must look like [FROM/len]:[TO/len]")
        return item[1:close], item[close + 3:-1]
    parts = item.split(":")
    if len(parts) != 2:
        raise PolicyError(f"{where}: pair {item!r} must be FROM:TO (IPv6 pairs in brackets)")
    return parts[0], parts[1]


def parse_cidr_map(spec: str, where: str) -> tuple[CidrPair, ...]:
    """Parse tcprewrite's comma-separated `FROM:TO` list; order is kept (first match wins)."""
    if not isinstance(spec, str) or not spec.strip():
        raise PolicyError(f"{where}: empty mapping")
    pairs = []
    for item in spec.split(","):
        if not item.strip():
            raise PolicyError(f"{where}: empty pair in {spec!r}")
        a, b = _split_pair(item, where)
        src, dst = parse_cidr(a, f"{where} pair {item.strip()!r}"), parse_cidr(b, f"{where} pair {item.strip()!r}")
        if src.family != dst.family:
            raise PolicyError(f"{where}: pair {item.strip()!r} mixes IPv4 and IPv6")
        if dst.prefixlen == 0:
            # tcprewrite shifts by 32 here (undefined behaviour in C); refuse instead of guessing
            raise PolicyError(f"{where}: pair {item.strip()!r} has a /0 TO prefix")
        pairs.append(CidrPair(src, dst))
    return tuple(pairs)


def read_key_file(path: str | Path, where: str) -> bytes:
    """Read a 32-byte key: raw bytes, or 64 hex digits (surrounding whitespace ignored)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PolicyError(f"{where}: cannot read key file {str(path)!r}: {exc.strerror}") from None
    if len(data) == KEY_BYTES:
        return data
    text = data.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise PolicyError(f"{where}: key file {str(path)!r} must hold 32 raw bytes or 64 hex digits, has {len(data)} bytes")


def _choice(value: Any, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise PolicyError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _check_keys(section: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {', '.join(unknown)}")


@dataclass(frozen=True)
class Policy:
    """A validated sanitization policy. Keys are held but never printed, logged or hashed in clear."""

    name: str
    pnat: tuple[CidrPair, ...] = ()
    srcipmap: tuple[CidrPair, ...] = ()
    dstipmap: tuple[CidrPair, ...] = ()
    cryptopan_key: bytes | None = field(default=None, repr=False)
    cryptopan_scope: tuple[Cidr, ...] | None = None  # None = every address
    mac_mode: MacMode = "zero"
    mac_key: bytes | None = field(default=None, repr=False)
    payload_mode: PayloadMode = "headers"
    payload_bytes: int = 0
    on_unparseable: UnparseableAction = "drop"
    compat: Compat = "none"  # "tcprewrite": mac and payload defaulted to keep (recorded in version)

    @property
    def mode(self) -> Literal["pnat", "cryptopan"]:
        return "cryptopan" if self.cryptopan_key is not None else "pnat"

    @property
    def payload_keep(self) -> int:
        """Bytes kept after the innermost transport header; -1 keeps everything."""
        return {"keep": -1, "cut": self.payload_bytes, "headers": 0}[self.payload_mode]

    def less_safe(self) -> str:
        """One line naming what this policy lets through that the safe defaults remove (MAC
        addresses, whole payloads), for the warning a hop logs at start; "" when nothing."""
        kept = [(what, risk) for what, risk, on in (
            ("MAC addresses", "MACs identify the site's hosts and their vendors", self.mac_mode == "keep"),
            ("payloads", "payloads can hold private addresses in any form", self.payload_mode == "keep")) if on]
        if not kept:
            return ""
        why = " (compat tcprewrite)" if self.compat == "tcprewrite" else ""
        return (f"less safe: policy {self.name!r} keeps {' and '.join(w for w, _ in kept)}{why}: "
                + "; ".join(r for _, r in kept))

    @cached_property
    def key_fingerprint(self) -> str:
        """SHA-256 (16 hex chars) over the key material; empty when the policy has no key."""
        material = (self.cryptopan_key or b"") + (self.mac_key if self.mac_key not in (None, self.cryptopan_key) else b"")
        return hashlib.sha256(material).hexdigest()[:16] if material else ""

    def normalized(self) -> dict[str, Any]:
        """Canonical, key-free description of the policy (what `version` hashes)."""
        return {
            "pnat": [str(p) for p in self.pnat],
            "srcipmap": [str(p) for p in self.srcipmap],
            "dstipmap": [str(p) for p in self.dstipmap],
            "cryptopan": self.cryptopan_key is not None,
            "cryptopan_scope": None if self.cryptopan_scope is None else [str(c) for c in self.cryptopan_scope],
            "mac": self.mac_mode,
            "payload": [self.payload_mode, self.payload_bytes],
            "unparseable": self.on_unparseable,
            "compat": self.compat,
            "key_fingerprint": self.key_fingerprint,
        }

    @cached_property
    def version(self) -> str:
        """Content hash (16 hex chars) of the normalized policy; changes with any rule or key."""
        blob = json.dumps(self.normalized(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], base_dir: Path | None = None, default_name: str = "default") -> "Policy":
        """Build a policy from the TOML structure (see the module docstring); relative key paths
        are resolved against base_dir."""
        _check_keys(data, {"name", "compat", "addresses", "mac", "payload", "unparseable"}, "policy")
        base = base_dir or Path.cwd()
        name = data.get("name", default_name)
        if not isinstance(name, str) or not name:
            raise PolicyError("name: must be a non-empty string")
        compat = _choice(data.get("compat", "none"), COMPAT_CHOICES, "compat")
        tcprewrite = compat == "tcprewrite"

        addr = data.get("addresses", {})
        _check_keys(addr, {"pnat", "srcipmap", "dstipmap", "cryptopan_key_file", "cryptopan_scope"}, "addresses")
        pnat = parse_cidr_map(addr["pnat"], "addresses.pnat") if "pnat" in addr else ()
        srcmap = parse_cidr_map(addr["srcipmap"], "addresses.srcipmap") if "srcipmap" in addr else ()
        dstmap = parse_cidr_map(addr["dstipmap"], "addresses.dstipmap") if "dstipmap" in addr else ()
        key = None
        if "cryptopan_key_file" in addr:
            key = read_key_file(base / addr["cryptopan_key_file"], "addresses.cryptopan_key_file")
        if key is not None and (pnat or srcmap or dstmap):
            raise PolicyError("addresses: choose either pnat/srcipmap/dstipmap or cryptopan_key_file, not both")
        if key is None and not (pnat or srcmap or dstmap):
            raise PolicyError("addresses: no address rewriting configured (need pnat, srcipmap, dstipmap or cryptopan_key_file)")
        scope: tuple[Cidr, ...] | None = None
        if "cryptopan_scope" in addr:
            if key is None:
                raise PolicyError("addresses.cryptopan_scope: only meaningful with cryptopan_key_file")
            raw = addr["cryptopan_scope"]
            if raw != "all":
                if isinstance(raw, str):
                    raw = raw.split(",")
                if not isinstance(raw, list) or not raw:
                    raise PolicyError("addresses.cryptopan_scope: must be \"all\" or a non-empty list of CIDRs")
                scope = tuple(parse_cidr(c, "addresses.cryptopan_scope") for c in raw)

        mac = data.get("mac", {})
        _check_keys(mac, {"mode", "key_file"}, "mac")
        # without a key a hash would be a fixed public function of the MAC: zero it instead
        safe_mac = "hash" if key is not None or "key_file" in mac else "zero"
        mac_mode = _choice(mac.get("mode", "keep" if tcprewrite else safe_mac), ("keep", "zero", "hash"), "mac.mode")
        mac_key = None
        if mac_mode == "hash":
            if "key_file" in mac:
                mac_key = read_key_file(base / mac["key_file"], "mac.key_file")
            elif key is not None:
                mac_key = key
            else:
                raise PolicyError("mac.mode: hash needs mac.key_file (or a Crypto-PAn key)")
        elif "key_file" in mac:
            raise PolicyError("mac.key_file: only meaningful with mac.mode = \"hash\"")

        payload = data.get("payload", {})
        _check_keys(payload, {"mode", "bytes"}, "payload")
        payload_mode = _choice(payload.get("mode", "keep" if tcprewrite else "headers"), ("keep", "cut", "headers"),
                               "payload.mode")
        nbytes = payload.get("bytes", 0)
        if payload_mode == "cut":
            if "bytes" not in payload or not isinstance(nbytes, int) or isinstance(nbytes, bool) or not 0 <= nbytes <= 65535:
                raise PolicyError("payload.bytes: cut needs an integer 0..65535")
        elif "bytes" in payload:
            raise PolicyError("payload.bytes: only meaningful with payload.mode = \"cut\"")

        unp = data.get("unparseable", {})
        _check_keys(unp, {"action"}, "unparseable")
        action = _choice(unp.get("action", "drop"), ("drop", "cut"), "unparseable.action")

        return cls(name=name, pnat=pnat, srcipmap=srcmap, dstipmap=dstmap, cryptopan_key=key,
                   cryptopan_scope=scope, mac_mode=mac_mode, mac_key=mac_key, payload_mode=payload_mode,
                   payload_bytes=nbytes if payload_mode == "cut" else 0, on_unparseable=action, compat=compat)


def _read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except OSError as exc:
        raise PolicyError(f"policy file {str(p)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy file {str(p)!r}: invalid TOML ({exc})") from None


def load_policy(path: str | Path) -> Policy:
    """Read and validate a TOML policy file; the policy name defaults to the file stem."""
    p = Path(path)
    return Policy.from_mapping(_read_toml(p), base_dir=p.parent, default_name=p.stem)


def policy_from_flags(*, policy_file: str | None = None, pnat: str | None = None, srcipmap: str | None = None,
                      dstipmap: str | None = None, cryptopan_key: str | None = None, mac: str | None = None,
                      payload: str | None = None, on_unparseable: str | None = None,
                      compat: str | None = None, name: str | None = None) -> Policy:
    """Build a policy from command-line flags; flags given next to --policy override its values.

    payload is "keep", "headers" or "cut:N"; compat is "none" or "tcprewrite" (it changes the
    defaults of mac and payload only, so an explicit mac or payload, flag or file, still wins).
    """
    data: dict[str, Any] = {}
    base = None
    if policy_file:
        p = Path(policy_file)
        data = _read_toml(p)
        base = p.parent
        data.setdefault("name", p.stem)
    flag_addr = {k: v for k, v in (("pnat", pnat), ("srcipmap", srcipmap), ("dstipmap", dstipmap)) if v}
    if cryptopan_key:
        flag_addr["cryptopan_key_file"] = str(Path(cryptopan_key).resolve())
    if flag_addr:
        # an address flag replaces the file's whole address section: mixing would be ambiguous
        data["addresses"] = flag_addr
    if mac:
        data["mac"] = {**data.get("mac", {}), "mode": mac}
    if payload:
        if payload.startswith("cut:"):
            try:
                data["payload"] = {"mode": "cut", "bytes": int(payload[4:])}
            except ValueError:
                raise PolicyError(f"--payload: {payload!r} must be keep, headers or cut:N") from None
        else:
            data["payload"] = {"mode": payload}
    if on_unparseable:
        data["unparseable"] = {"action": on_unparseable}
    if compat:
        data["compat"] = compat
    if name:
        data["name"] = name
    return Policy.from_mapping(data, base_dir=base, default_name="flags")


def policy_from_config(section: Any) -> Policy:
    """Build the policy from a configuration section with the policy flag fields (policy,
    pnat, srcipmap, dstipmap, cryptopan_key, mac, payload, on_unparseable, compat; "" = not given)."""
    get = lambda name: getattr(section, name, "") or None  # noqa: E731
    return policy_from_flags(policy_file=get("policy"), pnat=get("pnat"), srcipmap=get("srcipmap"),
                             dstipmap=get("dstipmap"), cryptopan_key=get("cryptopan_key"), mac=get("mac"),
                             payload=get("payload"), on_unparseable=get("on_unparseable"),
                             compat=get("compat"))
