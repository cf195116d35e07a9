"""``d4-bridge``: one console script, one subcommand per hop or tool.

This module only parses arguments into the configuration and starts the
command's ``run(cfg) -> int``; every behaviour lives in the hop modules.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from bridge.config import ConfigError, load_config, read_secret_file


@dataclass
class Flag:
    """A command-line flag bound to a dotted configuration key."""

    names: tuple[str, ...]
    key: str
    help: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def F(*names: str, key: str, help: str, **kwargs: Any) -> Flag:
    return Flag(names, key, help, kwargs)


SWITCH = {"action": "store_const", "const": True}


@dataclass
class Command:
    """A subcommand: where it lives, which issue brings it, its flags."""

    module: str
    help: str
    issue: int
    flags: list[Flag]
    long_running: bool = True
    kafka: bool = True


def _policy_flags(section: str = "sanitize") -> list[Flag]:
    return [
        F("--pnat", key=f"{section}.pnat", help="tcprewrite --pnat pairs FROM:TO[,FROM:TO] (IPv6 in brackets)"),
        F("--srcipmap", key=f"{section}.srcipmap", help="tcprewrite --srcipmap pairs"),
        F("--dstipmap", key=f"{section}.dstipmap", help="tcprewrite --dstipmap pairs"),
        F("--cryptopan-key", key=f"{section}.cryptopan_key", help="Crypto-PAn 32-byte key file", metavar="FILE"),
        F("--policy", key=f"{section}.policy", help="TOML sanitization policy file", metavar="FILE"),
        F("--mac", key=f"{section}.mac", help="MAC addresses: keep, zero or hash (default: hash with a key, else zero)",
          choices=["keep", "zero", "hash"]),
        F("--payload", key=f"{section}.payload",
          help="payload: keep, headers (default) or cut:N (bytes after the transport header)"),
        F("--on-unparseable", key=f"{section}.on_unparseable", help="packets not parseable far enough: drop (default) or cut",
          choices=["drop", "cut"]),
        F("--compat", key=f"{section}.compat", choices=["none", "tcprewrite"],
          help="tcprewrite: keep MACs and payloads as tcprewrite does (less safe; --mac/--payload still override)"),
    ]


COMMANDS: dict[str, Command] = {
    "broker": Command("bridge.hops.admin:run_broker", "run the embedded Kafka-protocol broker (memory storage)", 2, [
        F("--listen", key="broker.listen", help="host:port to listen on (default 127.0.0.1:9092)"),
    ], kafka=False),
    "topics": Command("bridge.hops.admin:run_topics", "create the standard topics (idempotent)", 2, [
        F("--partitions", key="topics.partitions", help="partitions per topic (default 3)", type=int),
        F("--replication", key="topics.replication", help="replication factor (default 1)", type=int),
    ], long_running=False),
    "ingress": Command("bridge.hops.ingress:run", "D4 server (TLS, HMAC) -> pcap topic", 3, [
        F("--listen", key="ingress.listen", help="host:port (default 0.0.0.0:4443)"),
        F("--cert", key="ingress.cert", help="PEM with certificate and key (d4-core server.pem)"),
        F("--no-tls", key="ingress.no_tls", help="plain TCP, loopback tests only", **SWITCH),
        F("--hmac-key", key="ingress.hmac_key", help="default HMAC key (prefer --hmac-key-file or D4BRIDGE_INGRESS_HMAC_KEY)"),
        F("--hmac-key-file", key="@ingress.hmac_key", help="file holding the default HMAC key"),
        F("--keys", key="ingress.keys", help="file of 'uuid = key' lines"),
        F("--redis", key="ingress.redis", help="d4-core metadata Redis for per-sensor keys"),
        F("--registration", key="ingress.registration", help="accept only registered sensors", **SWITCH),
        F("--topic", key="ingress.topic", help="pcap topic (default d4.pcap)"),
        F("--records-topic", key="ingress.records_topic", help="topic for non-pcap types (default d4.records)"),
        F("--blacklist-uuid", key="ingress.blacklist_uuid", help="refused sensor uuids UUID[,UUID]"),
        F("--blacklist-ip", key="ingress.blacklist_ip", help="refused peer prefixes CIDR[,CIDR]"),
        F("--accepted-types", key="ingress.accepted_types", help="accepted D4 types (default 1,2,4,8,254)"),
        F("--idle-timeout", key="ingress.idle_timeout", help="seconds without data before a session is closed",
          type=float),
        F("--max-sessions", key="ingress.max_sessions", help="open connections at most (default 512)", type=int),
    ]),
    "queue": Command("bridge.hops.queue:run", "d4-core analyzer queue -> topic", 4, [
        F("--redis", key="queue.redis", help="redis://HOST:PORT/DB (default redis://127.0.0.1:6380/2)"),
        F("--queue-uuid", key="queue.queue_uuid", help="analyzer queue uuid"),
        F("--type", key="queue.type", help="D4 type or extended type name (default 1)"),
        F("--topic", key="queue.topic", help="pcap topic (default d4.pcap)"),
        F("--consumer", key="queue.consumer", help="name of this consumer's processing list"),
        F("--create-queue", key="queue.create_queue", help="register the queue like the d4-core UI, then exit", **SWITCH),
        F("--records-topic", key="queue.records_topic", help="topic for line items (default d4.records)"),
        F("--metadata-redis", key="queue.metadata_redis",
          help="d4-core metadata Redis for --create-queue (default: db 0 of --redis)"),
        F("--description", key="queue.description", help="--create-queue: description shown in the d4-core UI"),
        F("--sensor-uuid", key="queue.sensor_uuid", help="sensor uuid for items whose path names none"),
    ]),
    "sanitize": Command("bridge.hops.sanitize:run", "consumer group: sanitize pcap records, exactly once", 5, [
        F("--in", key="sanitize.in_topic", help="input topic (default d4.pcap)"),
        F("--out", key="sanitize.out_topic", help="output topic (default d4.pcap.sanitized)"),
        *_policy_flags(),
        F("--workers", key="sanitize.workers", help="processes to run (default 1)", type=int),
        F("--group", key="sanitize.group", help="consumer group"),
    ]),
    "egress": Command("bridge.hops.egress:run", "sanitized topic -> public D4 server", 6, [
        F("--server", key="egress.server", help="public D4 server host:port"),
        F("--uuid", key="egress.uuid", help="upstream uuid of this site"),
        F("--hmac-key", key="egress.hmac_key", help="upstream HMAC key (prefer --hmac-key-file)"),
        F("--hmac-key-file", key="@egress.hmac_key", help="file holding the upstream HMAC key"),
        F("--identity-map", key="egress.identity_map", help="TOML map internal sensor -> upstream uuid/key"),
        F("--telescope", key="egress.telescope",
          help="prefixes the site watches CIDR[,CIDR]: their count is announced to the hub"),
        F("--topic", key="egress.topic", help="input topic (default d4.pcap.sanitized)"),
        F("--ca", key="egress.ca", help="CA file to verify the server"),
        F("--insecure", key="egress.insecure", help="do not verify the server certificate", **SWITCH),
        F("--no-tls", key="egress.no_tls", help="plain TCP, loopback tests only", **SWITCH),
        F("--frame-size", key="egress.frame_size", help="largest frame payload (default 65536)", type=int),
        F("--group", key="egress.group", help="consumer group"),
    ]),
    "analyze": Command("bridge.hops.analyze:run", "backscatter detection -> d4.backscatter + JSON lines", 7, [
        F("--telescope", key="analyze.telescope",
          help="monitored prefixes CIDR[,CIDR] of sensors that announce nothing (override)"),
        F("--topic", key="analyze.topic", help="input topic (default d4.pcap)"),
        F("--out", key="analyze.out_topic", help="event topic (default d4.backscatter)"),
        F("--profile", key="analyze.profile", help="threshold profile: default or small"),
        F("--site-telescope", key="analyze.site_telescope",
          help="per-site telescopes SITE=CIDR[;CIDR][,SITE=...] (other sites: --telescope)"),
        F("--group", key="analyze.group", help="consumer group"),
        F("--misp-dir", key="analyze.misp_dir", help="write each final attack as MISP JSON into this directory"),
        F("--misp-url", key="analyze.misp_url", help="push each final attack to this MISP instance"),
        F("--misp-key-file", key="analyze.misp_key_file", help="file holding the MISP API key"),
    ]),
    "sink": Command("bridge.hops.sink:run", "topic -> rotating .cap.gz files + analyzer queue (d4-core layout)", 7, [
        F("--dir", key="sink.dir", help="output directory"),
        F("--redis", key="sink.redis", help="analyzer Redis URL"),
        F("--queue-uuid", key="sink.queue_uuid", help="analyzer queue uuid"),
        F("--topic", key="sink.topic", help="input topic (default d4.pcap)"),
        F("--rotate-seconds", key="sink.rotate_seconds", help="rotation period (default 300)", type=float),
        F("--group", key="sink.group", help="consumer group"),
    ]),
    "send": Command("bridge.hops.send:run", "D4 sensor client: pcap file or stdin -> D4 server", 3, [
        F("--server", key="send.server", help="D4 server host:port"),
        F("--uuid", key="send.uuid", help="sensor uuid"),
        F("--hmac-key", key="send.hmac_key", help="HMAC key (prefer --hmac-key-file or -c)"),
        F("--hmac-key-file", key="@send.hmac_key", help="file holding the HMAC key"),
        F("-c", "--confdir", key="send.confdir", help="d4-goclient / C client configuration directory"),
        F("--type", key="send.type", help="D4 type (default 1)", type=int),
        F("--ca", key="send.ca", help="CA file to verify the server"),
        F("--insecure", key="send.insecure", help="do not verify the server certificate", **SWITCH),
        F("--no-tls", key="send.no_tls", help="plain TCP, loopback tests only", **SWITCH),
        F("--frame-size", key="send.frame_size", help="largest frame payload (default: conf snaplen or 65535)", type=int),
        F("file", key="send.file", help="pcap file, '-' for stdin (default)", nargs="?"),
    ], kafka=False),
    "export": Command("bridge.hops.export:run", "topic -> pcap file (inspect any hop)", 2, [
        F("--topic", key="export.topic", help="topic (default d4.pcap.sanitized)"),
        F("--pcap", key="export.pcap", help="output pcap file"),
        F("--from-beginning", key="export.from_beginning", help="start at the earliest offset", **SWITCH),
        F("--idle-exit", key="export.idle_exit", help="exit after S idle seconds", type=float),
    ], long_running=False),
    "sanitize-file": Command("bridge.hops.sanitize_file:run", "offline sanitizer with progress", 5, [
        F("input", key="sanitize.input", help="input pcap"),
        F("output", key="sanitize.output", help="output pcap"),
        *_policy_flags(),
    ], long_running=False, kafka=False),
    "leakcheck": Command("bridge.hops.leakcheck:run", "exit 1 when a private address remains", 5, [
        F("orig", key="leakcheck.orig", help="original pcap"),
        F("sanitized", key="leakcheck.sanitized", help="sanitized pcap"),
        F("--private", key="leakcheck.private", help="private prefixes CIDR[,CIDR]"),
        F("--mac", key="leakcheck.mac", help="more private MAC addresses MAC[,MAC]"),
        F("--show", key="leakcheck.show", help="findings printed (default 50; all are counted)", type=int),
    ], long_running=False, kafka=False),
    "demo": Command("bridge.demo:run", "the whole private-site -> public-hub chain on one machine", 8, [
        F("--json", key="demo.json", help="print the summary as one JSON object", **SWITCH),
        F("--seconds", key="demo.seconds", help="traffic duration (default 20)", type=float),
        F("--keep", key="demo.keep", help="keep the work directory after a good run", **SWITCH),
    ], long_running=False, kafka=False),
}


def _available(module: str) -> bool:
    return importlib.util.find_spec(module.split(":")[0]) is not None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="d4-bridge",
        description="Real-time, leak-proof bridge from private D4 sensor networks to a public analysis hub.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, cmd in COMMANDS.items():
        note = "" if _available(cmd.module) else f" [not built yet: issue {cmd.issue}]"
        p = sub.add_parser(name, help=cmd.help + note, description=cmd.help + note)
        p.add_argument("--config", help="TOML configuration file", metavar="FILE")
        p.add_argument("--log-level", dest="@log_level", help="debug, info, warning, error")
        p.add_argument("--site", dest="@site", help="site name stamped on records")
        if cmd.long_running:
            p.add_argument("--metrics-port", dest="@metrics_port", type=int, help="/metrics port (0 = off)")
        if cmd.kafka:
            p.add_argument("--bootstrap", dest="@kafka.bootstrap", help="Kafka bootstrap host:port[,host:port]")
        for flag in cmd.flags:
            kwargs = dict(flag.kwargs)
            positional = not flag.names[0].startswith("-")
            kwargs.setdefault("help", flag.help)
            if positional:
                p.add_argument(flag.key.replace(".", "__"), **kwargs)
            else:
                kwargs["dest"] = "!" + flag.key
                p.add_argument(*flag.names, **kwargs)
    return parser


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Turn parsed flags into dotted config keys; ``@key`` flags read a key file."""
    out: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if value is None or dest in ("command", "config"):
            continue
        key = dest.lstrip("!").replace("__", ".")
        if key.startswith("@"):
            key = key[1:]
            if dest.startswith("!@"):  # --hmac-key-file style: the value is a path to a secret
                value = read_secret_file(value, key)
        out[key] = value
    return out


def resolve(entry: str) -> Callable[..., int]:
    module, _, func = entry.partition(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``d4-bridge`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    cmd = COMMANDS[args.command]
    if not _available(cmd.module):
        print(f"d4-bridge {args.command}: not built yet (issue {cmd.issue})", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, overrides_from_args(args))
    except ConfigError as exc:
        print(f"d4-bridge {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2
    return int(resolve(cmd.module)(cfg) or 0)


if __name__ == "__main__":
    sys.exit(main())
