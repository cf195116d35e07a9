"""``d4-bridge demo``: the whole private-site -> public-hub chain on one machine, no Docker.

Every part is the real program, started as a subprocess: two embedded brokers (the private
site's and the public hub's), a redis-server playing the private d4-core server's analyzer
queue, two sensors streaming live telescope traffic through ``d4-bridge send`` (D4 over TLS),
the d4-core queue fed with rotated ``.cap.gz`` files, the site's ingress, queue, two
sanitizer workers and egress, and the hub's ingress and analyzer. It prints progress while
traffic flows and a summary at the end (``--json``: one JSON object on stdout). Exit status 0
only when nothing was lost and nothing leaked.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bridge import demo_sources as ds
from bridge.backscatter.aggregate import warm_up as warm_analyzer
from bridge.broker import BrokerError, broker_command, free_port, wait_for_port
from bridge.config import Config, KafkaConfig
from bridge.d4.tls import self_signed_pem
from bridge.demo_procs import DemoError, Part, Supervisor, by_label, scrape_or_empty, value, wait_for_metrics
from bridge.demo_report import compare_content, match_attacks, percentiles, pnat_v4, read_events, read_hub, render_text
from bridge.pcap import write_pcap

HOST = "127.0.0.1"
RATE = 1500.0          # packets/s over the site's /16 telescope, live
BACKLOG_S = 90.0       # rotated files already waiting in the d4-core queue at start
BACKLOG_RATE = 500.0   # packets/s over the /16 during the backlog (the attacks' share is the same)
ROTATE_S = 5.0         # d4-core rotates every 300 s; the demo every 5 s so it shows in seconds
START_TIMEOUT = 60.0
DRAIN_TIMEOUT = 30.0   # give up waiting for the chain to deliver after this long without progress
CHECK_TIMEOUT = 120.0  # leakcheck and sanitize-file of the whole run
SOURCE_IDLE_S = 5.0    # the hub's source idle timeout (production default: 30 s)
SITE_TUNING = """
[sanitize]
# at a few thousand packets/s a transaction fills slowly: close it sooner (latency over overhead)
transaction_seconds = 0.1
"""
KAFKA_TUNING = """
[kafka]
# short group timeouts: a consumer group forms in about a second on the embedded broker
session_timeout_ms = 6000
heartbeat_interval_ms = 500
statistics_interval_ms = 1000
linger_ms = 5
"""
HUB_TUNING = f"""
[analyze]
# the demo's input stops after a few seconds of silence: finals come soon after the capture ends
source_idle_seconds = {SOURCE_IDLE_S}
update_seconds = 2
"""
SANITIZERS = 2
CONSUMER_HOPS = ("sanitize-1", "sanitize-2", "egress", "analyze")


class Interrupted(Exception):
    """SIGINT or SIGTERM: stop everything and exit."""


@dataclass
class Demo:
    """The parts of one demo run and where they listen."""

    work: Path
    sup: Supervisor
    site_kafka: KafkaConfig = field(default_factory=KafkaConfig)
    hub_kafka: KafkaConfig = field(default_factory=KafkaConfig)
    redis_port: int = 0
    queue_uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    sensor_uuids: dict[str, str] = field(default_factory=lambda: {ds.QUEUE_SOURCE: str(uuidlib.uuid4())})
    hops: dict[str, int] = field(default_factory=dict)  # /metrics endpoint name -> port
    senders: dict[str, Part] = field(default_factory=dict)
    live_start_ns: int = 0

    def cli(self, name: str, command: str, *args: str, metrics: bool = True, endpoints: tuple[str, ...] = (),
            **kwargs: Any) -> Part:
        """Start a d4-bridge command; its /metrics (one port per name in ``endpoints``, from the given port up)."""
        names = endpoints or (name,)
        port = free_ports(len(names)) if metrics else 0
        part = self.sup.start_cli(name, command, *args, metrics_port=port, **kwargs)
        if metrics:
            self.hops.update({n: port + i for i, n in enumerate(names)})
        return part


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports (a multi-worker hop serves port + i)."""
    while True:
        first = free_port(HOST)
        if all(_bindable(first + i) for i in range(1, count)):
            return first


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _write_secret(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(0o600)
    return path


def _tls(work: Path, name: str) -> tuple[Path, Path]:
    """A self-signed server PEM (certificate + key, d4-core layout) and its certificate alone (the CA file)."""
    pem = self_signed_pem(common_name=f"d4-bridge demo {name}", hosts=("localhost", HOST))
    cert = pem[:pem.index(b"-----BEGIN PRIVATE KEY-----")]
    return _write_secret(work / f"{name}.pem", pem), _write_secret(work / f"{name}-ca.crt", cert)


def _start_warm_up(d: Demo) -> Part:
    """Compile the numba packet kernels once, before the hops need them.

    numba caches compiled code on disk; on a fresh checkout nothing is cached yet and every
    process would compile the same kernels at once (the sanitizer's take ~30 s alone, long
    enough for a consumer to miss its poll deadline). One ``sanitize-file`` run with the
    demo's policy fills the sanitizer's cache; the analyzer's is filled in this process.
    """
    sample, _ = ds.build_live(time.time_ns(), 1.0, 300.0, seed=1)
    packets = b"".join(src.packets for src in sample.values())
    write_pcap(d.work / "warm-up.pcap", ds.HEADER, packets)
    return d.cli("warm-up", "sanitize-file", "warm-up.pcap", "warm-up-out.pcap", "--pnat", ds.PNAT,
                 metrics=False, one_shot=True)


def _start_infrastructure(d: Demo) -> None:
    """Brokers and redis-server, then the topics and the d4-core queue registration."""
    redis_exe = shutil.which("redis-server")
    if redis_exe is None:
        raise DemoError("redis-server is not on PATH: install it (Debian/Ubuntu: apt-get install redis-server; "
                        "`make demo` does it for you)")
    try:
        site_port, hub_port = free_port(HOST), free_port(HOST)
        d.sup.start("site-broker", broker_command(HOST, site_port), env={"RUST_LOG": "warn"})
        d.sup.start("hub-broker", broker_command(HOST, hub_port), env={"RUST_LOG": "warn"})
    except BrokerError as exc:
        raise DemoError(str(exc)) from None
    d.redis_port = free_port(HOST)
    d.sup.start("redis", [redis_exe, "--port", str(d.redis_port), "--bind", HOST, "--save", "",
                          "--appendonly", "no", "--dir", str(d.work)])
    for port in (site_port, hub_port, d.redis_port):
        try:
            wait_for_port(HOST, port, 20.0)
        except BrokerError:
            d.sup.check()
            raise DemoError(f"nothing answers on {HOST}:{port}") from None
    d.site_kafka = KafkaConfig(bootstrap=f"{HOST}:{site_port}")
    d.hub_kafka = KafkaConfig(bootstrap=f"{HOST}:{hub_port}")
    (d.work / "site.toml").write_text(
        f'site = "demo-site"\n{SITE_TUNING}{KAFKA_TUNING}bootstrap = "{d.site_kafka.bootstrap}"\n')
    (d.work / "hub.toml").write_text(f'site = "hub"\n{HUB_TUNING}{KAFKA_TUNING}bootstrap = "{d.hub_kafka.bootstrap}"\n')
    one_shots = [
        d.cli("site-topics", "topics", "--config", "site.toml", "--partitions", "3", metrics=False, one_shot=True),
        d.cli("hub-topics", "topics", "--config", "hub.toml", "--partitions", "3", metrics=False, one_shot=True),
        d.cli("create-queue", "queue", "--config", "site.toml", "--redis", _redis_url(d, 2), "--queue-uuid",
              d.queue_uuid, "--type", "1", "--create-queue", metrics=False, one_shot=True),
    ]
    for part in one_shots:
        if d.sup.wait(part, 60.0) != 0:
            raise DemoError(f"{part.name} failed:\n{part.log_tail()}")


def _redis_url(d: Demo, db: int) -> str:
    return f"redis://{HOST}:{d.redis_port}/{db}"


def _start_hops(d: Demo) -> None:
    """The hub (ingress, analyze), the site (ingress, queue, 2 sanitizers, egress) and the two sensors."""
    w = d.work
    hub_pem, hub_ca = _tls(w, "hub")
    site_pem, site_ca = _tls(w, "site")
    # Each source leaves the site under an upstream identity of its own that announces what it
    # watches (the address count of its prefix): the hub then extrapolates from the sources that
    # were capturing at each moment (the d4-core backlog alone at first, then all three).
    hub_keys, identities = [], []
    for name, prefix in ds.SOURCE_PREFIXES.items():
        upstream, key = uuidlib.uuid4(), uuidlib.uuid4().hex
        _write_secret(w / f"upstream-{name}.key", key)
        hub_keys.append(f"{upstream} = {key}")
        d.sensor_uuids.setdefault(name, str(uuidlib.uuid4()))
        identities.append(f'[sensors."{d.sensor_uuids[name]}"]\nuuid = "{upstream}"\n'
                          f'key_file = "upstream-{name}.key"\ntelescope = ["{prefix}"]\n')
    _write_secret(w / "hub-keys", "\n".join(hub_keys) + "\n")
    (w / "identities.toml").write_text("\n".join(identities))
    sensor_keys = []
    for name in ds.LIVE_SENSORS:
        key = uuidlib.uuid4().hex
        _write_secret(w / f"{name}.key", key)
        sensor_keys.append(f"{d.sensor_uuids[name]} = {key}")
    _write_secret(w / "site-keys", "\n".join(sensor_keys) + "\n")
    hub_listen, site_listen = f"{HOST}:{free_port(HOST)}", f"{HOST}:{free_port(HOST)}"

    d.cli("hub-ingress", "ingress", "--config", "hub.toml", "--listen", hub_listen, "--cert", str(hub_pem),
          "--keys", "hub-keys", "--registration")
    # --telescope only for sensors that announce nothing (here: none, once their announcement is in)
    d.cli("analyze", "analyze", "--config", "hub.toml", "--telescope", ds.PUBLIC_TELESCOPE, "--misp-dir", "misp",
          stdout=w / "events.jsonl")
    d.cli("site-ingress", "ingress", "--config", "site.toml", "--listen", site_listen, "--cert", str(site_pem),
          "--keys", "site-keys", "--registration")
    d.cli("queue", "queue", "--config", "site.toml", "--redis", _redis_url(d, 2), "--queue-uuid", d.queue_uuid,
          "--type", "1")
    # one command, two worker processes: each gets its own transactional.id (host + worker index)
    d.cli("sanitize", "sanitize", "--config", "site.toml", "--pnat", ds.PNAT, "--workers", str(SANITIZERS),
          endpoints=tuple(f"sanitize-{i + 1}" for i in range(SANITIZERS)))
    d.cli("egress", "egress", "--config", "site.toml", "--server", hub_listen, "--identity-map", "identities.toml",
          "--ca", str(hub_ca))
    for name in ds.LIVE_SENSORS:
        d.senders[name] = d.cli(name, "send", "--server", site_listen, "--uuid", d.sensor_uuids[name],
                                "--hmac-key-file", f"{name}.key", "--ca", str(site_ca), "-", stdin=subprocess.PIPE)


def _wait_ready(d: Demo) -> None:
    """Every /metrics answers and every consumer group has its partitions."""
    wait_for_metrics(d.hops, d.sup, START_TIMEOUT)
    deadline = time.monotonic() + START_TIMEOUT
    waiting = list(CONSUMER_HOPS)
    while waiting:
        d.sup.check()
        waiting = [n for n in waiting
                   if not value(scrape_or_empty(d.hops[n]), "d4bridge_kafka_rebalances_total",
                                kind="assigned")]
        if waiting and time.monotonic() > deadline:
            raise DemoError(f"consumer groups not formed after {START_TIMEOUT:.0f} s: {', '.join(waiting)}")
        time.sleep(0.2)


# --------------------------------------------------------------------------- progress


PROGRESS_COLUMNS = (
    ("site-ingress", "d4bridge_ingress_packets_total"),
    ("queue", "d4bridge_queue_packets_total"),
    ("sanitize", "d4bridge_sanitize_packets_total"),
    ("egress", "d4bridge_egress_packets_total"),
    ("hub-ingress", "d4bridge_ingress_packets_total"),
    ("analyze", "d4bridge_analyze_packets_total"),
)


def counters(d: Demo) -> dict[str, float]:
    """Packets counted by each hop so far (the sanitizers summed)."""
    out = {}
    samples = {name: scrape_or_empty(port) for name, port in d.hops.items()}
    for column, metric in PROGRESS_COLUMNS:
        names = [n for n in samples if n == column or n.startswith(column + "-")]
        out[column] = sum(value(samples[n], metric) for n in names)
    out["sanitize-in"] = sum(value(samples[n], "d4bridge_sanitize_input_packets_total")
                             for n in samples if n.startswith("sanitize-"))
    out["dropped"] = sum(value(samples[n], "d4bridge_sanitize_dropped_total")
                         for n in samples if n.startswith("sanitize-"))
    return out


class Progress:
    """One line per interval: packets/s through each hop."""

    def __init__(self, d: Demo, t0: float) -> None:
        self.d = d
        self.t0 = t0
        self.last = counters(d)
        self.last_t = time.monotonic()
        _say("  time  " + "  ".join(f"{c:>12}" for c, _ in PROGRESS_COLUMNS) + "   (packets/s)")

    def tick(self, phase: str) -> dict[str, float]:
        now = time.monotonic()
        cur = counters(self.d)
        dt = max(now - self.last_t, 1e-3)
        rates = "  ".join(f"{(cur[c] - self.last[c]) / dt:>12,.0f}" for c, _ in PROGRESS_COLUMNS)
        _say(f"{now - self.t0:>5.0f}s  {rates}   {phase}")
        self.last, self.last_t = cur, now
        return cur


# --------------------------------------------------------------------------- phases


def _feed_backlog(d: Demo, backlog: ds.Source, queue: ds.D4CoreQueue, progress: Progress) -> None:
    """Push the rotated files already waiting at the d4-core server; wait until the hub has them all."""
    queue.rotate_until(time.time_ns())
    queue.flush()
    _drain(d, progress, target=backlog.count, phase=f"d4-core backlog: {queue.files} files")


def _drain(d: Demo, progress: Progress, target: int, phase: str) -> dict[str, float]:
    """Wait until ``target`` packets reached the hub (or were dropped by the sanitizer), or progress stops."""
    last_change, last_seen = time.monotonic(), (-1.0, -1.0)
    while True:
        d.sup.check()
        time.sleep(1.0)
        cur = progress.tick(phase)
        seen = (cur["hub-ingress"] + cur["dropped"], cur["analyze"])
        if seen[0] >= target and seen[1] >= cur["hub-ingress"]:
            return cur
        if seen != last_seen:
            last_change, last_seen = time.monotonic(), seen
        if time.monotonic() - last_change > DRAIN_TIMEOUT:
            _say(f"no progress for {DRAIN_TIMEOUT:.0f} s: {target - seen[0]:.0f} packets missing at the hub")
            return cur


def _stream_live(d: Demo, live: dict[str, ds.Source], queue: ds.D4CoreQueue, progress: Progress,
                 seconds: float) -> dict[str, int]:
    """Pace both sensors through ``send`` and rotate the d4-core files until the capture ends."""
    stop = threading.Event()
    threads = []
    for name in ds.LIVE_SENSORS:
        pipe = d.senders[name].proc.stdin
        assert pipe is not None
        t = threading.Thread(target=ds.pace, args=(live[name], ds.HEADER, pipe.write, stop), daemon=True,
                             name=f"pace-{name}")
        t.start()
        threads.append(t)
    end = d.live_start_ns + int(seconds * 1e9)
    try:
        while time.time_ns() < end:
            d.sup.check()
            time.sleep(max(0.0, min(1.0, (end - time.time_ns()) / 1e9)))
            queue.rotate_until(time.time_ns())
            progress.tick("live")
        # every capture time has passed: the pacers end by themselves once send took the last records
        deadline = time.monotonic() + DRAIN_TIMEOUT
        for t in threads:
            while t.is_alive():
                d.sup.check()
                if time.monotonic() > deadline:
                    raise DemoError(f"the sensors' send did not take their input within {DRAIN_TIMEOUT:.0f} s")
                t.join(0.2)
    finally:
        stop.set()  # only matters on an error: the pacing stops here
        for t in threads:
            t.join(5.0)
    queue.flush()
    exits = {}
    for name in ds.LIVE_SENSORS:
        part = d.senders[name]
        part.one_shot = True  # from now on its exit is expected
        part.proc.stdin.close()  # end of capture: send flushes, waits for the server's acks, exits
        exits[name] = d.sup.wait(part, 60.0)
    return exits


def run(cfg: Config) -> int:
    """Run the demo; see the module docstring."""
    seconds = cfg.demo.seconds
    work = Path(tempfile.mkdtemp(prefix="d4bridge-demo-"))
    sup = Supervisor(work)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def interrupted(signum: int, _frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    for sig in previous:
        signal.signal(sig, interrupted)
    ok = False
    try:
        summary = _run(Demo(work, sup), seconds)
        ok = summary["ok"]
        print(json.dumps(summary, indent=2) if cfg.demo.json else render_text(summary), flush=True)
        return 0 if ok else 1
    except Interrupted as exc:
        _say(f"\n{exc}: stopping every part of the demo")
        return 130
    except DemoError as exc:
        _say(f"d4-bridge demo: {exc}")
        if cfg.demo.json:  # scripts get one JSON object whatever happens
            print(json.dumps({"ok": False, "problems": [str(exc).splitlines()[0]]}), flush=True)
        return 1
    finally:
        # Parts stop on SIGTERM; a second Ctrl+C during cleanup must not leave any behind.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        sup.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if ok and not cfg.demo.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:  # a failed run keeps its evidence
            _say(f"logs of every part kept in {work}")


def _run(d: Demo, seconds: float) -> dict[str, Any]:
    t0 = time.monotonic()
    _say(f"d4-bridge demo: starting brokers, redis-server and the hops (work dir {d.work})")
    warm_up = _start_warm_up(d)
    _start_infrastructure(d)
    warm_analyzer()
    if d.sup.wait(warm_up, CHECK_TIMEOUT) != 0:
        raise DemoError(f"sanitize-file failed on the warm-up sample:\n{warm_up.log_tail()}")
    if time.monotonic() - t0 > 15:
        _say(f"compiled the packet kernels in {time.monotonic() - t0:.0f} s (first run only)")
    _start_hops(d)
    _wait_ready(d)
    _say(f"ready after {time.monotonic() - t0:.1f} s; feeding the d4-core backlog, "
         f"then {seconds:.0f} s of live traffic")

    backlog = ds.build_backlog(time.time_ns(), BACKLOG_S, BACKLOG_RATE)
    queue = ds.D4CoreQueue(backlog, ds.HEADER, d.work / "d4-core-data", redis.Redis.from_url(_redis_url(d, 2)),
                           redis.Redis.from_url(_redis_url(d, 0)), d.queue_uuid, d.sensor_uuids[ds.QUEUE_SOURCE],
                           ROTATE_S)
    progress = Progress(d, t0)
    _feed_backlog(d, backlog, queue, progress)

    d.live_start_ns = time.time_ns() + 200_000_000
    live, truth = ds.build_live(d.live_start_ns, seconds, RATE)
    queue.extend(live[ds.QUEUE_SOURCE])
    send_exits = _stream_live(d, live, queue, progress, seconds)
    captured = {name: live[name].count for name in ds.LIVE_SENSORS}
    captured[ds.QUEUE_SOURCE] = backlog.count + live[ds.QUEUE_SOURCE].count
    _drain(d, progress, target=sum(captured.values()), phase="draining")
    _await_finals(d, progress)
    everything = backlog.packets + b"".join(src.packets for src in live.values())
    return _summarize(d, everything, captured, truth, send_exits, time.monotonic() - t0, seconds)


def _await_finals(d: Demo, progress: Progress) -> None:
    """Wait until every attack the hub reported has its final event (the hub's sources fell silent)."""
    deadline = time.monotonic() + SOURCE_IDLE_S + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        events = read_events(d.work / "events.jsonl")
        ids = {e["attack_id"] for e in events}
        if ids and ids == {e["attack_id"] for e in events if e["status"] == "final"}:
            return
        d.sup.check()
        time.sleep(1.0)
        progress.tick("capture over: waiting for the final events")
    _say("the hub did not report every attack final in time; the summary shows their latest events")


def _merged(samples: list[dict], name: str, label: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in samples:
        for key, v in by_label(s, name, label).items():
            out[key] = out.get(key, 0) + int(v)
    return {k: v for k, v in out.items() if v}


def _offline_checks(d: Demo, captured_pcap: Path, hub_pcap: Path) -> tuple[int, str, tuple[int, int] | None]:
    """Run, side by side, ``d4-bridge leakcheck`` on everything captured against everything the hub
    received, and ``d4-bridge sanitize-file`` with the site's policy on everything captured; return
    leakcheck's exit status and report, and how the hub's records differ from the offline output."""
    expected_pcap = d.work / "expected.pcap"
    leak = d.cli("leakcheck", "leakcheck", str(captured_pcap), str(hub_pcap), "--private", ",".join(ds.PRIVATE),
                 metrics=False, one_shot=True, stdout=d.work / "leakcheck.out")
    offline = d.cli("sanitize-file", "sanitize-file", str(captured_pcap), str(expected_pcap), "--pnat", ds.PNAT,
                    metrics=False, one_shot=True)
    content = compare_content(expected_pcap, hub_pcap) if _finish(d, offline) == 0 else None
    rc = _finish(d, leak)
    return rc, (d.work / "leakcheck.out").read_text(errors="replace") + leak.log_tail(5), content


def _finish(d: Demo, part: Part) -> int | None:
    """Exit status of a one-shot check, or None (and the part stopped) when it overran CHECK_TIMEOUT."""
    try:
        return d.sup.wait(part, CHECK_TIMEOUT)
    except DemoError as exc:
        _say(str(exc).splitlines()[0])
        d.sup.stop(part)
        return None


def _leak_count(report: str) -> int | None:
    """The count on leakcheck's ``leaks: N`` line (None when it did not get that far)."""
    match = re.search(r"^leaks: (\d+)", report, re.M)
    return int(match.group(1)) if match else None


def _summarize(d: Demo, everything: bytes, captured: dict[str, int], truth: list, send_exits: dict[str, int],
               wall_s: float, seconds: float) -> dict[str, Any]:
    samples = {name: scrape_or_empty(port) for name, port in d.hops.items()}
    sanitizers = [s for n, s in samples.items() if n.startswith("sanitize-")]
    dropped = _merged(sanitizers, "d4bridge_sanitize_dropped_total", "reason")
    cut = _merged(sanitizers, "d4bridge_sanitize_cut_total", "reason")
    dead_letters = int(sum(value(s, "d4bridge_dlq_records_total") for s in samples.values()))

    pnat_from, pnat_to = ds.PNAT.split(",")[0].split(":")
    prefixes = [(name, pnat_v4(prefix, pnat_from, pnat_to)) for name, prefix in ds.SOURCE_PREFIXES.items()]
    hub_pcap, captured_pcap = d.work / "hub.pcap", d.work / "captured.pcap"
    hub = read_hub(d.hub_kafka, "d4.pcap", hub_pcap, ds.HEADER, prefixes, ds.IPV6_SOURCE, d.live_start_ns)
    write_pcap(captured_pcap, ds.HEADER, everything)
    leak_rc, leak_report, content = _offline_checks(d, captured_pcap, hub_pcap)

    total = sum(captured.values())
    lost = max(0, total - sum(dropped.values()) - hub.unique)
    attacks, false_positives = match_attacks(truth, read_events(d.work / "events.jsonl"))
    misp_files = sorted((d.work / "misp").glob("*.json"))
    sensors_lat = [v for n in ds.LIVE_SENSORS for v in hub.latency_s.get(n, [])]
    s_p50, s_p99 = percentiles(sensors_lat)
    q_p50, q_p99 = percentiles(hub.latency_s.get(ds.QUEUE_SOURCE, []))
    problems = []
    if lost:
        problems.append(f"{lost} packets lost")
    if leak_rc is None:
        problems.append(f"leakcheck did not finish within {CHECK_TIMEOUT:.0f} s: the hub's packets are unchecked")
    elif leak_rc != 0:
        problems.append(f"leakcheck found private addresses at the hub (exit {leak_rc})")
    if content is None:
        problems.append("the offline sanitizer failed: the hub's packets could not be compared")
    elif any(content):
        problems.append(f"hub content differs from the offline sanitizer: {content[0]} packets missing, "
                        f"{content[1]} unexpected")
    problems += [f"{n} exited with status {rc}" for n, rc in send_exits.items() if rc != 0]
    transports = {n: "D4 over TLS (d4-bridge send)" for n in ds.LIVE_SENSORS}
    transports[ds.QUEUE_SOURCE] = "d4-core analyzer queue (.cap.gz)"
    return {
        "ok": not problems,
        "problems": problems,
        "seconds": seconds,
        "wall_seconds": round(wall_s, 1),
        "sources": {name: {"transport": transports[name], "prefix": ds.SOURCE_PREFIXES[name],
                           "captured": captured[name], "delivered": hub.per_source.get(name, 0)}
                    for name in ds.SOURCE_PREFIXES},
        "captured": total,
        "delivered_to_hub": hub.unique,
        "duplicates": hub.duplicates,
        "lost": lost,
        "dead_letters": dead_letters,
        "content": {"compared_with": "d4-bridge sanitize-file of every captured packet",
                    "missing": content[0] if content else None, "unexpected": content[1] if content else None},
        "sanitizer": {
            "workers": len(sanitizers), "pnat": ds.PNAT,
            "input": int(sum(value(s, "d4bridge_sanitize_input_packets_total") for s in sanitizers)),
            "output": int(sum(value(s, "d4bridge_sanitize_packets_total") for s in sanitizers)),
            "dropped": dropped, "cut": cut,
        },
        "leaks": {"private": list(ds.PRIVATE), "found": _leak_count(leak_report),
                  "leakcheck_exit": leak_rc, "report": leak_report.strip().splitlines()[-3:]},
        "attacks": {"simulated": len(attacks), "detected": sum(a["detected"] for a in attacks),
                    "list": attacks, "false_positives": false_positives,
                    "misp_events": [str(p.relative_to(d.work)) for p in misp_files]},
        "latency": {"sensors_p50_s": s_p50, "sensors_p99_s": s_p99, "queue_p50_s": q_p50, "queue_p99_s": q_p99,
                    "rotate_s": ROTATE_S},
        "metrics": {name: f"http://{HOST}:{port}/metrics" for name, port in d.hops.items()},
    }
