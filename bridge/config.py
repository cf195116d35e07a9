"""One typed configuration object for every hop.

Sources, lowest precedence first: built-in defaults, the TOML file given with
``--config``, the environment (``D4BRIDGE_<SECTION>_<KEY>``, or
``D4BRIDGE_<KEY>`` for top-level keys), then command-line flags. Unknown keys
and bad values are refused at start with a message naming the key and the
expected form. Secrets (HMAC keys) are held in ``Secret`` objects that never
print their value; key files are read, never logged.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

ENV_PREFIX = "D4BRIDGE_"


class ConfigError(ValueError):
    """A configuration value or key that cannot be used."""


class Secret:
    """A secret byte string that never shows itself in logs, reprs or errors."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes | str) -> None:
        self._value = value.encode() if isinstance(value, str) else bytes(value)

    def reveal(self) -> bytes:
        """Return the secret bytes (only where they are used, e.g. to compute an HMAC)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# --- value checks: each returns the normalized value or raises ValueError(expected form)


def host_port(value: str) -> str:
    """``host:port`` or ``[v6]:port`` with a port in 1..65535."""
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("host:port (e.g. 127.0.0.1:4443 or [::1]:4443)")
    return str(value)


def host_port_list(value: str) -> str:
    """Comma-separated ``host:port`` list (Kafka bootstrap servers)."""
    parts = [p.strip() for p in str(value).split(",") if p.strip()]
    if not parts:
        raise ValueError("host:port[,host:port...]")
    for part in parts:
        host_port(part)
    return ",".join(parts)


def cidr_list(value: str | list[str]) -> list[str]:
    """CIDR prefixes, comma-separated or as a list."""
    items = value if isinstance(value, list) else [v.strip() for v in str(value).split(",") if v.strip()]
    try:
        return [str(ipaddress.ip_network(v, strict=False)) for v in items]
    except ValueError:
        raise ValueError("CIDR[,CIDR...] (e.g. 10.0.0.0/8,2001:db8::/32)") from None


_MAC_TEXT = re.compile(r"[0-9a-f]{2}([:-])(?:[0-9a-f]{2}\1){4}[0-9a-f]{2}|[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}|[0-9a-f]{12}")


def mac_list(value: list[str]) -> list[str]:
    """MAC addresses (aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff, aabb.ccdd.eeff or 12 hex digits, any
    case), normalized to lower-case aa:bb:cc:dd:ee:ff."""
    out = []
    for v in value:
        text = str(v).strip().lower()
        if not _MAC_TEXT.fullmatch(text):
            raise ValueError("MAC[,MAC...] (e.g. 02:11:22:33:44:55)")
        out.append(bytes.fromhex(re.sub(r"[:.-]", "", text)).hex(":"))
    return out


def non_negative(value: int) -> int:
    if int(value) < 0:
        raise ValueError("an integer >= 0")
    return int(value)


def port_number(value: int) -> int:
    """TCP port 0..65535 (0 = off)."""
    if not 0 <= int(value) < 65536:
        raise ValueError("a port number 0..65535 (0 = off)")
    return int(value)


def positive(value: float) -> float:
    if value <= 0:
        raise ValueError("a positive number")
    return value


def redis_url(value: str) -> str:
    if not str(value).startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("redis://HOST:PORT/DB")
    return str(value)


def log_level(value: str) -> str:
    v = str(value).upper()
    if v not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("one of debug, info, warning, error")
    return v


def uuid_text(value: str) -> str:
    import uuid as _uuid

    try:
        return _uuid.UUID(str(value)).hex
    except ValueError:
        raise ValueError("a UUID (with or without dashes)") from None


def opt(default: Any, doc: str, check: typing.Callable[[Any], Any] | None = None, secret: bool = False) -> Any:
    """A config field with its documentation and value check."""
    factory = (lambda: type(default)(default)) if isinstance(default, (list, dict)) else None
    meta = {"doc": doc, "check": check, "secret": secret}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class KafkaConfig:
    """Kafka connection and client tuning shared by every hop."""

    bootstrap: str = opt("127.0.0.1:9092", "Kafka bootstrap servers, host:port[,host:port]", host_port_list)
    session_timeout_ms: int = opt(10000, "consumer group session timeout")
    heartbeat_interval_ms: int = opt(1000, "consumer group heartbeat interval")
    linger_ms: int = opt(20, "producer batching delay; batches are already large, keep latency low")
    compression: str = opt("lz4", "producer compression codec (none, lz4, zstd, gzip, snappy)")
    queue_max_kbytes: int = opt(65536, "producer local queue bound; produce() blocks when it is full")
    statistics_interval_ms: int = opt(5000, "librdkafka statistics period (lag and queue gauges); 0 = off")
    extra: dict = opt({}, "raw librdkafka properties added to every client (e.g. security.protocol)")


@dataclass
class BrokerConfig:
    listen: str = opt("127.0.0.1:9092", "address the embedded broker listens on", host_port)


@dataclass
class TopicsConfig:
    partitions: int = opt(3, "partitions per standard topic", positive)
    replication: int = opt(1, "replication factor", positive)


@dataclass
class IngressConfig:
    listen: str = opt("0.0.0.0:4443", "D4 server listen address", host_port)
    cert: str = opt("", "PEM file holding the server certificate and key (d4-core server.pem)")
    no_tls: bool = opt(False, "serve plain TCP (loopback tests only)")
    hmac_key: Secret | None = opt(None, "default HMAC key for sensors without their own", secret=True)
    keys: str = opt("", "file of 'uuid = key' lines")
    redis: str = opt("", "d4-core metadata Redis for per-sensor keys (redis://HOST:PORT/DB)")
    registration: bool = opt(False, "accept only sensors listed in the keys file / registered_uuid")
    blacklist_uuid: list = opt([], "refused sensor uuids")
    blacklist_ip: list = opt([], "refused peer addresses or prefixes", cidr_list)
    accepted_types: list = opt([1, 2, 4, 8, 254], "accepted D4 types")
    topic: str = opt("d4.pcap", "topic for pcap batches")
    records_topic: str = opt("d4.records", "topic for non-pcap D4 types")
    idle_timeout: float = opt(300.0, "seconds without data before a session is closed", positive)
    batch_bytes: int = opt(262144, "close a batch at this size", positive)
    batch_age: float = opt(0.1, "close a batch at this age (seconds)", positive)
    max_sessions: int = opt(512, "open connections at most (bounds memory: ~1.8 MB each worst case)", positive)
    header_timeout: float = opt(30.0, "seconds a connection may take to send its first header (d4-core: 30)",
                                positive)
    max_inflight_bytes: int = opt(32 * 1024 * 1024, "record bytes awaiting broker acks before reading pauses",
                                  positive)


@dataclass
class QueueConfig:
    redis: str = opt("redis://127.0.0.1:6380/2", "d4-core analyzer Redis", redis_url)
    queue_uuid: str = opt("", "analyzer queue uuid")
    type: str = opt("1", "D4 type or extended type name of the queue")
    topic: str = opt("d4.pcap", "topic for pcap batches")
    records_topic: str = opt("d4.records", "topic for line items")
    consumer: str = opt("", "name of this consumer's processing list (default: the host name, suffixed -2, -3 ... "
                            "when another live process on this host holds it)")
    create_queue: bool = opt(False, "register the queue the way the d4-core UI does, then exit")
    metadata_redis: str = opt("", "d4-core metadata Redis for --create-queue (default: db 0 of the --redis server)")
    description: str = opt("", "--create-queue: queue description shown in the d4-core UI")
    sensor_uuid: str = opt("", "sensor uuid for items whose path does not name one (default: derived from the site)",
                           uuid_text)
    batch_bytes: int = opt(262144, "close a pcap batch at this size", positive)
    line_batch_bytes: int = opt(262144, "largest D4Record made from line items (d4-core lines reach 100 kB)", positive)
    line_batch_items: int = opt(500, "line items moved per Redis round trip", positive)
    max_inflight_bytes: int = opt(16 * 1024 * 1024, "record bytes awaiting broker acks before reading pauses",
                                  positive)
    lease_seconds: float = opt(20.0, "lifetime of this consumer's claim on its processing list without refresh; "
                               "a dead consumer's items are taken over after it", positive)


@dataclass
class SanitizeConfig:
    in_topic: str = opt("d4.pcap", "input topic")
    out_topic: str = opt("d4.pcap.sanitized", "output topic")
    pnat: str = opt("", "tcprewrite --pnat pairs FROM:TO[,FROM:TO]")
    srcipmap: str = opt("", "tcprewrite --srcipmap pairs")
    dstipmap: str = opt("", "tcprewrite --dstipmap pairs")
    cryptopan_key: str = opt("", "32-byte Crypto-PAn key file")
    policy: str = opt("", "TOML sanitization policy file")
    workers: int = opt(1, "sanitizer processes to run", positive)
    group: str = opt("d4-bridge-sanitize", "consumer group")
    input: str = opt("", "sanitize-file: input pcap")
    output: str = opt("", "sanitize-file: output pcap")
    mac: str = opt("", "MAC addresses: keep, zero or hash (default: hash with a key, else zero; overrides the "
                       "policy file)")
    payload: str = opt("", "payload: keep, headers or cut:N (default: headers; overrides the policy file)")
    on_unparseable: str = opt("", "packets not parseable far enough: drop or cut (default: drop; overrides the "
                                  "policy file)")
    compat: str = opt("", "tcprewrite: keep MACs and payloads as tcprewrite does (less safe; mac and payload still "
                          "override); none: the safe defaults (overrides the policy file)")
    transaction_records: int = opt(32, "input records per transaction at most (32 x 256 KiB batches = 8 MiB)",
                                   positive)
    transaction_seconds: float = opt(0.2, "seconds a transaction waits for records at most (latency bound)",
                                     positive)


@dataclass
class EgressConfig:
    server: str = opt("", "public D4 server host:port")
    uuid: str = opt("", "upstream sensor uuid of this site")
    hmac_key: Secret | None = opt(None, "upstream HMAC key", secret=True)
    identity_map: str = opt("", "TOML map internal sensor -> upstream uuid/key")
    telescope: list = opt([], "prefixes the site identity's sensors watch: their address count is announced "
                              "to the hub with the site name", cidr_list)
    topic: str = opt("d4.pcap.sanitized", "sanitized input topic")
    ca: str = opt("", "CA file to verify the server certificate")
    insecure: bool = opt(False, "do not verify the server certificate")
    no_tls: bool = opt(False, "plain TCP (loopback tests only)")
    frame_size: int = opt(65536, "largest D4 frame payload (at most 1000000, d4-core's limit)", positive)
    group: str = opt("d4-bridge-egress", "consumer group")
    backoff_max: float = opt(10.0, "longest wait between reconnection attempts (seconds)", positive)
    resend_buffer: int = opt(16 * 1024 * 1024, "bytes per session kept for resending after a reconnect", positive)
    resend_grace: float = opt(2.0, "seconds acknowledged data stays resendable before its offset is committed")
    max_queued_bytes: int = opt(32 * 1024 * 1024, "record bytes waiting for the upstream before reading pauses",
                                positive)
    drain_timeout: float = opt(10.0, "seconds to finish sending at shutdown", positive)


@dataclass
class AnalyzeConfig:
    telescope: list = opt([], "monitored prefixes CIDR[,CIDR] of sensors that announce nothing", cidr_list)
    topic: str = opt("d4.pcap", "input topic")
    records_topic: str = opt("d4.records", "topic of the sites' announcements (D4 type-2 meta headers)")
    out_topic: str = opt("d4.backscatter", "event topic")
    profile: str = opt("default", "threshold profile: default or small")
    group: str = opt("d4-bridge-analyze", "consumer group")
    site_telescope: list = opt([], "per-site telescopes SITE=CIDR[;CIDR...] (other sites use telescope)")
    snapshot_seconds: float = opt(5.0, "state snapshot period (a restart replays at most this much input)", positive)
    max_victims: int = opt(262144, "tracked (victim, protocol) vectors per partition; least recent evicted beyond", positive)
    source_idle_seconds: float = opt(30.0, "wall-clock silence after which a sensor stops holding event time back; "
                                           "all silent: the input ended, open attacks get final events", positive)
    allowed_lateness_seconds: float = opt(360.0, "capture-time lag of a sensor behind the others that still joins "
                                                 "its attacks (d4-core's 300 s rotation plus a minute)", positive)
    update_seconds: float = opt(10.0, "an attack's update events come at most this often", positive)
    misp_dir: str = opt("", "write each final attack as a MISP event (JSON file per attack) here")
    misp_url: str = opt("", "push each final attack to this MISP instance (https://HOST)")
    misp_key_file: str = opt("", "file holding the MISP API key (for misp_url)")
    misp_updates: bool = opt(False, "MISP outputs also get the update events (the attack's MISP event is edited)")


@dataclass
class SinkConfig:
    dir: str = opt("", "output directory (d4-core layout)")
    redis: str = opt("", "analyzer Redis to LPUSH finished files to")
    queue_uuid: str = opt("", "analyzer queue uuid")
    topic: str = opt("d4.pcap", "input topic")
    rotate_seconds: float = opt(300.0, "file rotation period", positive)
    group: str = opt("d4-bridge-sink", "consumer group")


@dataclass
class SendConfig:
    server: str = opt("", "D4 server host:port")
    uuid: str = opt("", "sensor uuid")
    hmac_key: Secret | None = opt(None, "HMAC key", secret=True)
    confdir: str = opt("", "d4-goclient / C client configuration directory")
    type: int = opt(0, "D4 type (0 = the conf dir's type, else 1)")
    ca: str = opt("", "CA file to verify the server certificate")
    insecure: bool = opt(False, "do not verify the server certificate")
    no_tls: bool = opt(False, "plain TCP (loopback tests only)")
    file: str = opt("-", "input file, '-' for stdin")
    frame_size: int = opt(0, "largest frame payload (0 = the conf dir's snaplen, else 65535)")
    resend_buffer: int = opt(16 * 1024 * 1024, "bytes kept for resending after a reconnect", positive)
    resend_grace: float = opt(2.0, "seconds acknowledged data stays resendable (server crash window)")
    ack_timeout: float = opt(30.0, "seconds to wait at the end for the server to acknowledge everything",
                             positive)


@dataclass
class ExportConfig:
    topic: str = opt("d4.pcap.sanitized", "topic to export")
    pcap: str = opt("", "output pcap file")
    from_beginning: bool = opt(False, "start at the earliest offset")
    idle_exit: float = opt(0.0, "exit after this many idle seconds (0 = never)")


@dataclass
class LeakcheckConfig:
    orig: str = opt("", "original pcap")
    sanitized: str = opt("", "sanitized pcap")
    private: list = opt([], "private prefixes CIDR[,CIDR]", cidr_list)
    mac: list = opt([], "more private MAC addresses MAC[,MAC] (besides every MAC of the original)", mac_list)
    show: int = opt(50, "findings printed (all are counted)", non_negative)


@dataclass
class DemoConfig:
    json: bool = opt(False, "print the summary as one JSON object")
    seconds: float = opt(20.0, "traffic duration", positive)
    keep: bool = opt(False, "keep the work directory (logs, pcaps, events) after a good run")


@dataclass
class Config:
    """The whole configuration of a d4-bridge process."""

    site: str = opt("site", "name of this site, stamped on every record")
    metrics_port: int = opt(0, "port of the /metrics endpoint (0 = off)", port_number)
    log_level: str = opt("INFO", "log level", log_level)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    ingress: IngressConfig = field(default_factory=IngressConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    sanitize: SanitizeConfig = field(default_factory=SanitizeConfig)
    egress: EgressConfig = field(default_factory=EgressConfig)
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    send: SendConfig = field(default_factory=SendConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    leakcheck: LeakcheckConfig = field(default_factory=LeakcheckConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)

    def describe(self) -> dict[str, Any]:
        """The configuration as a dict for logging, secrets masked."""
        return dataclasses.asdict(self, dict_factory=lambda kv: {k: (repr(v) if isinstance(v, Secret) else v) for k, v in kv})


SECTIONS = tuple(f.name for f in dataclasses.fields(Config) if f.default_factory is not dataclasses.MISSING
                 and dataclasses.is_dataclass(f.default_factory))


def _coerce(key: str, f: dataclasses.Field, value: Any, hints: dict[str, Any]) -> Any:
    """Convert a raw value (TOML, env string or flag) to the field's type and check it."""
    hint = hints[f.name]
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if origin in (typing.Union, types.UnionType) and args else (origin or hint)
    try:
        if f.metadata.get("secret"):
            value = None if value in (None, "") else (value if isinstance(value, Secret) else Secret(value))
        elif base is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError("true or false")
                value = low in ("1", "true", "yes", "on")
            elif not isinstance(value, bool):
                raise ValueError("true or false")
        elif base is int:
            if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("-").isdigit():
                raise ValueError("an integer")
            value = int(value)
        elif base is float:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError("a number")
            try:
                value = float(value)
            except ValueError:
                raise ValueError("a number") from None
        elif base is list:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list):
                raise ValueError("a list or a comma-separated string")
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else []  # type: ignore[misc]
            if default and all(isinstance(d, int) for d in default):
                if not all(str(v).strip().isdigit() for v in value):
                    raise ValueError("a list of integers")
                value = [int(v) for v in value]
        elif base is dict:
            if not isinstance(value, dict):
                raise ValueError("a table of key = value")
        elif base is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError("a string")
            value = str(value)
        check = f.metadata.get("check")
        if check is not None and value not in (None, "", []):
            value = check(value)
    except ValueError as exc:
        shown = "***" if f.metadata.get("secret") else repr(value)
        raise ConfigError(f"{key}: expected {exc}, got {shown}") from None
    return value


def _apply(target: Any, prefix: str, values: Mapping[str, Any], origin: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(target)}
    hints = typing.get_type_hints(type(target))
    for raw_key, value in values.items():
        name = raw_key.replace("-", "_")
        key = f"{prefix}{name}"
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{origin}: unknown key '{key}' (known here: {known})")
        f = fields[name]
        current = getattr(target, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: '{key}' must be a table [{key}]")
            _apply(current, f"{key}.", value, origin)
        else:
            setattr(target, name, _coerce(key, f, value, hints))


def _env_values(env: Mapping[str, str]) -> dict[str, Any]:
    """Map ``D4BRIDGE_SECTION_KEY`` variables onto the nested key layout."""
    out: dict[str, Any] = {}
    sections = set(SECTIONS)
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX):].lower()
        section, _, key = rest.partition("_")
        if section in sections and key:
            out.setdefault(section, {})[key] = value
        else:
            out[rest] = value
    return out


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Build the configuration: defaults < TOML file < environment < ``overrides`` (flags).

    ``overrides`` maps dotted keys (``"kafka.bootstrap"``, ``"site"``) to values;
    None values are ignored (flags that were not given).
    """
    cfg = Config()
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        _apply(cfg, "", data, str(path))
    _apply(cfg, "", _env_values(os.environ if env is None else env), "environment")
    nested: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        parts = dotted.split(".")
        node = nested
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    _apply(cfg, "", nested, "command line")
    return cfg


def read_secret_file(path: str | Path, what: str) -> Secret:
    """Read a key file (trailing newline stripped, as the D4 clients do)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read key file {path}: {exc.strerror}") from None
    return Secret(data.rstrip(b"\r\n"))


def reference_markdown() -> str:
    """Every configuration key with its default and meaning, as a Markdown table (for the README)."""
    rows = ["| key | default | environment | meaning |", "|---|---|---|---|"]

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
                continue
            key = f"{prefix}{f.name}"
            default = "(secret)" if f.metadata.get("secret") else repr(value).replace("|", "\\|")
            env = "TOML only" if isinstance(value, dict) else f"`{ENV_PREFIX}{key.replace('.', '_').upper()}`"
            rows.append(f"| `{key}` | `{default}` | {env} | {f.metadata.get('doc', '')} |")

    walk(Config(), "")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
