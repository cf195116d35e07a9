"""What can be checked of the Docker deployment without Docker.

docker-compose.yml, the Dockerfile, the Prometheus and Grafana provisioning files and the
mounted TOML configurations must agree with each other and with the real command line: every
service runs a real ``d4-bridge`` subcommand with flags the CLI accepts, its configuration loads,
every secret it names is mounted, and Prometheus scrapes each hop on the port it serves.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from bridge.cli import COMMANDS, build_parser, overrides_from_args
from bridge.config import Config, load_config
from grafana_dashboards import dashboard_queries, exported_metric_names, metric_names_in

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
SECRETS_DIR = "/run/secrets/"

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?]([^}]*))?\}")


def interpolate(value: Any) -> Any:
    """Compose variable substitution with nothing set in the environment: ``${X:-d}`` -> d."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()))


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    return yaml.safe_load(PROMETHEUS.read_text())


def dockerfile_env() -> dict[str, str]:
    """D4BRIDGE_* variables set by the Dockerfile's ENV instructions."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for item in shlex.split(line[4:]):
                key, _, value = item.partition("=")
                env[key] = value
    return {k: v for k, v in env.items() if k.startswith("D4BRIDGE_")}


def hop_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run the d4-bridge image."""
    return {name: svc for name, svc in compose["services"].items() if svc.get("image", "").startswith("d4-bridge")}


def host_path(svc: dict[str, Any], container_path: str) -> Path | None:
    """The repository file a service mounts at ``container_path``, if any."""
    for vol in svc.get("volumes", []):
        parts = vol.split(":")
        if len(parts) >= 2 and parts[1] == container_path and parts[0].startswith("./"):
            return ROOT / parts[0]
    return None


def service_config(name: str, svc: dict[str, Any], tmp_path: Path) -> tuple[str, Config]:
    """Parse the service's command with the real CLI parser and load its configuration.

    Secret files (``--hmac-key-file /run/secrets/x``) are replaced by a stand-in file, since
    the operator provides them; everything else is loaded exactly as the container would.
    """
    try:
        args = build_parser().parse_args(svc["command"])
    except SystemExit:
        pytest.fail(f"{name}: d4-bridge refuses the command {svc['command']}")
    stand_in = tmp_path / "secret"
    stand_in.write_text("stand-in key\n")
    for dest, value in list(vars(args).items()):
        if dest.startswith("!@") and value is not None:
            assert value.startswith(SECRETS_DIR), f"{name}: {dest} should read a mounted secret, not {value}"
            assert value[len(SECRETS_DIR):] in svc.get("secrets", []), f"{name}: {value} is not mounted"
            setattr(args, dest, str(stand_in))
    config_file = None
    if args.config:
        config_file = host_path(svc, args.config)
        assert config_file is not None and config_file.is_file(), f"{name}: --config {args.config} is not mounted"
    env = {**dockerfile_env(), **{k: str(v) for k, v in svc.get("environment", {}).items()}}
    return args.command, load_config(config_file, overrides_from_args(args), env=env)


def test_compose_has_the_infrastructure(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("kafka", "redis", "prometheus", "grafana", "topics"):
        assert name in services, name
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}  # KRaft, no ZooKeeper
    assert env["KAFKA_NUM_PARTITIONS"] == "3"
    for key in ("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
                "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"):
        assert env[key] == "1", key
    node = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{node}@kafka:")


def test_every_hop_service_runs_a_real_subcommand(compose: dict[str, Any], tmp_path: Path) -> None:
    hops = hop_services(compose)
    assert {"topics", "ingress", "queue", "sanitize", "egress", "hub-ingress", "analyze", "sink"} <= set(hops)
    for name, svc in hops.items():
        command, cfg = service_config(name, svc, tmp_path)
        assert command in COMMANDS, name
        if command == "topics":
            assert cfg.topics.partitions == 3
            continue
        assert COMMANDS[command].long_running, f"{name}: {command} is not a service"
        assert cfg.metrics_port, f"{name}: /metrics is off, the healthcheck would fail"
        assert cfg.kafka.bootstrap == "kafka:9092", name


def test_hop_configurations_are_complete(compose: dict[str, Any], tmp_path: Path) -> None:
    """Each hop's mounted configuration names what the hop cannot start without."""
    for name, svc in hop_services(compose).items():
        command, cfg = service_config(name, svc, tmp_path)
        mounted = set(svc.get("secrets", []))
        paths: list[str] = []
        if command == "ingress":
            assert cfg.ingress.cert and not cfg.ingress.no_tls, name
            paths += [cfg.ingress.cert, cfg.ingress.keys]
            assert cfg.ingress.hmac_key is not None or cfg.ingress.keys, name
        elif command == "sanitize":
            policies = [cfg.sanitize.pnat, cfg.sanitize.cryptopan_key, cfg.sanitize.policy]
            assert sum(bool(p) for p in policies) == 1, f"{name}: exactly one sanitization policy"
        elif command == "egress":
            assert cfg.egress.server and cfg.egress.uuid and cfg.egress.hmac_key is not None, name
            assert not cfg.egress.no_tls and (cfg.egress.ca or cfg.egress.insecure), name
            paths.append(cfg.egress.ca)
        elif command == "queue":
            assert cfg.queue.queue_uuid and cfg.queue.redis.startswith("redis://redis:"), name
        elif command == "analyze":
            assert cfg.analyze.telescope, name
        elif command == "sink":
            assert cfg.sink.dir and cfg.sink.queue_uuid, name
            # the hop runs as a non-root user: its output volume must start owned by it
            assert f"mkdir -p {cfg.sink.dir}" in DOCKERFILE.read_text(), name
            assert any(v.split(":")[1] == cfg.sink.dir for v in svc["volumes"]), name
        for path in filter(None, paths):
            assert path.startswith(SECRETS_DIR), f"{name}: {path} should be a mounted secret"
            assert path[len(SECRETS_DIR):] in mounted, f"{name}: {path} is not mounted"


def test_secrets_are_mounted_from_deploy_secrets(compose: dict[str, Any]) -> None:
    for name, spec in compose["secrets"].items():
        assert PurePosixPath(spec["file"]).parts[:2] == ("deploy", "secrets"), name
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "deploy" in ignored and ".env" in ignored  # never in the build context, so never in the image


def test_scalable_services_have_no_fixed_names_or_ports(compose: dict[str, Any]) -> None:
    for name in ("sanitize", "egress", "queue", "analyze", "sink"):
        svc = compose["services"][name]
        assert "container_name" not in svc and "ports" not in svc, name


def test_site_and_hub_hops_are_separate_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("ingress", "queue", "sanitize", "egress"):
        assert services[name]["profiles"] == ["site"], name
    for name in ("hub-ingress", "analyze", "sink"):
        assert services[name]["profiles"] == ["hub"], name
    assert "COMPOSE_PROFILES=site" in (ROOT / ".env").read_text().splitlines()


def test_dockerfile_builds_a_non_root_image_with_a_metrics_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"pip install \.\s", text)  # the package itself, not a copy of the tree
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    health = re.search(r"^HEALTHCHECK .*?CMD (.+)$", text.replace("\\\n", " "), re.M)
    assert health and "/metrics" in health.group(1)
    assert dockerfile_env()["D4BRIDGE_METRICS_PORT"] in health.group(1) or "D4BRIDGE_METRICS_PORT" in health.group(1)
    copied = re.findall(r"^COPY (.+) \S+$", text, re.M)
    assert not [c for c in copied if "deploy" in c or ".pem" in c or "secret" in c]


def test_prometheus_scrapes_every_hop_on_its_metrics_port(compose: dict[str, Any], prometheus: dict[str, Any],
                                                          tmp_path: Path) -> None:
    ports: dict[str, int] = {}
    for name, svc in hop_services(compose).items():
        command, cfg = service_config(name, svc, tmp_path)
        if COMMANDS[command].long_running:
            ports[name] = cfg.metrics_port
    scraped: dict[str, int] = {}
    for job in prometheus["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            assert sd["type"] == "A"  # one address per replica: scaled services are all scraped
            for target in sd["names"]:
                scraped[target] = sd["port"]
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                scraped[host] = int(port)
    assert scraped == ports


def test_grafana_provisioning_matches_the_compose_mounts(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"] if v.startswith("./")}
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "d4-bridge.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert mounts[path] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (GRAFANA / "dashboards" / PurePosixPath(home).relative_to(path)).is_file()
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    ds = datasource["datasources"][0]
    assert ds["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]


def test_dashboards_are_valid_and_use_the_provisioned_datasource() -> None:
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    files = sorted((GRAFANA / "dashboards").glob("*.json"))
    assert {f.stem for f in files} >= {"pipeline", "sessions", "hub"}
    uids = set()
    for f in files:
        dash = json.loads(f.read_text())
        assert dash["uid"] not in uids
        uids.add(dash["uid"])
        queries = dashboard_queries(dash)
        assert queries, f.name
        for panel_ds, expr in queries:
            assert panel_ds == uid, f"{f.name}: {expr} uses datasource {panel_ds}"


def test_dashboards_only_name_metrics_defined_in_bridge_metrics() -> None:
    defined = exported_metric_names()
    for f in sorted((GRAFANA / "dashboards").glob("*.json")):
        for _, expr in dashboard_queries(json.loads(f.read_text())):
            names = metric_names_in(expr)
            assert names, f"{f.name}: no metric in {expr}"
            unknown = names - defined
            assert not unknown, f"{f.name}: {sorted(unknown)} not defined in bridge/metrics.py"


def test_committed_dashboards_equal_the_generator_output() -> None:
    """deploy/grafana/build_dashboards.py is the source; the JSON files must be its current output."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_dashboards", GRAFANA / "build_dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, dash in module.DASHBOARDS.items():
        assert (GRAFANA / "dashboards" / name).read_text() == module.render(dash), (
            f"{name} is stale: run python deploy/grafana/build_dashboards.py")
