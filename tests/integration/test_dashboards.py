"""The Grafana dashboards only query metrics that running hops really serve.

Each hop that exists is started as the real program against the test broker (and redis-server),
its /metrics is scraped, and every metric a dashboard query names must be among the samples
some hop serves.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
import urllib.request
import uuid
from typing import Callable

import pytest
from grafana_dashboards import all_dashboard_metric_names, sample_names
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from bridge.broker import free_port

pytestmark = pytest.mark.integration


def hop_commands(broker: str, redis_url: str, unique: Callable[[str], str]) -> dict[str, list[str]]:
    """A minimal valid command line of each long-running hop (its input topics are empty)."""
    closed_port = free_port()  # egress keeps reconnecting to nothing: enough to serve /metrics
    return {
        "ingress": ["ingress", "--listen", f"127.0.0.1:{free_port()}", "--no-tls", "--hmac-key", "k",
                    "--topic", unique("pcap")],
        "queue": ["queue", "--redis", redis_url, "--queue-uuid", str(uuid.uuid4()), "--topic", unique("pcap")],
        "sanitize": ["sanitize", "--in", unique("pcap"), "--out", unique("san"), "--group", unique("g"),
                     "--pnat", "10.0.0.0/8:11.0.0.0/8"],
        "egress": ["egress", "--server", f"127.0.0.1:{closed_port}", "--uuid", str(uuid.uuid4()), "--hmac-key", "k",
                   "--no-tls", "--topic", unique("san"), "--group", unique("g")],
        "analyze": ["analyze", "--telescope", "192.0.2.0/24", "--topic", unique("pcap"), "--out", unique("bs"),
                    "--group", unique("g")],
        "sink": ["sink", "--dir", "sink-out", "--redis", redis_url, "--queue-uuid", str(uuid.uuid4()),
                 "--topic", unique("pcap"), "--group", unique("g")],
    }


def create_topics(broker: str, commands: dict[str, list[str]]) -> None:
    """Create every topic the commands name (hops refuse to start on a missing input topic)."""
    names = {argv[i + 1] for argv in commands.values() for i, a in enumerate(argv) if a in ("--topic", "--in", "--out")}
    admin = AdminClient({"bootstrap.servers": broker})
    for future in admin.create_topics([NewTopic(t, 1, 1) for t in sorted(names)]).values():
        future.result(30)


def _present(hop: str) -> bool:
    return importlib.util.find_spec(f"bridge.hops.{hop}") is not None


def _scrape(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                return resp.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"no /metrics on port {port} after {timeout:.0f} s") from None
            time.sleep(0.2)


# Series that exist only while there is an attack to show (one per attack in progress): an idle hop
# serves none; tests/unit/test_deploy.py checks that bridge/metrics.py defines them.
PER_ATTACK = {"d4bridge_analyze_attack_estimated_pps"}


def test_every_dashboard_metric_is_served_by_a_running_hop(broker: str, redis_url: str,
                                                           unique: Callable[[str], str], tmp_path) -> None:
    commands = {hop: argv for hop, argv in hop_commands(broker, redis_url, unique).items() if _present(hop)}
    assert {"ingress", "sanitize", "egress", "analyze"} <= set(commands), "core hops missing"
    create_topics(broker, commands)
    procs: dict[str, tuple[subprocess.Popen, int]] = {}
    served: set[str] = set()
    try:
        for hop, argv in commands.items():
            port = free_port()
            procs[hop] = (subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", *argv, "--bootstrap", broker, "--metrics-port", str(port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path), port)
        for hop, (proc, port) in procs.items():
            families = list(text_string_to_metric_families(_scrape(port, proc)))
            up = [s for f in families for s in f.samples if s.name == "d4bridge_hop_up" and s.labels["hop"] == hop]
            assert up and up[0].value == 1, f"{hop} does not report itself up"
            served |= sample_names(families)
    finally:
        for proc, _ in procs.values():
            proc.terminate()
        for proc, _ in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    for dashboard, names in all_dashboard_metric_names().items():
        missing = names - served - PER_ATTACK
        assert not missing, f"{dashboard} queries metrics no hop serves: {sorted(missing)}"
