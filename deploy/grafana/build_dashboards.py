"""Write the Grafana dashboards in deploy/grafana/dashboards/ from one description.

Run ``python deploy/grafana/build_dashboards.py`` after changing a panel; the unit tests check
that the committed JSON equals this script's output, so the two never drift apart. Every query
uses only metrics defined in bridge/metrics.py; the ``job`` label is the compose service name
(deploy/prometheus/prometheus.yml), which tells a site's ingress from the hub's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
WINDOW = "$__rate_interval"


def q(expr: str, legend: str = "") -> dict[str, Any]:
    """A PromQL target."""
    return {"expr": expr, "legendFormat": legend}


def panel(title: str, targets: list[dict[str, Any]], unit: str = "short", kind: str = "timeseries",
          w: int = 12, h: int = 8, description: str = "", thresholds: list[tuple[float | None, str]] | None = None,
          stack: bool = False) -> dict[str, Any]:
    """One panel; its position is filled in by ``dashboard``."""
    defaults: dict[str, Any] = {"unit": unit}
    if thresholds:
        defaults["thresholds"] = {"mode": "absolute",
                                  "steps": [{"value": v, "color": c} for v, c in thresholds]}
        defaults["color"] = {"mode": "thresholds"}
    if kind == "timeseries":
        defaults["custom"] = {"fillOpacity": 10, "stacking": {"mode": "normal" if stack else "none"}}
    return {
        "type": kind, "title": title, "description": description, "datasource": DATASOURCE,
        "gridPos": {"w": w, "h": h},
        "targets": [{**t, "refId": chr(ord("A") + i), "datasource": DATASOURCE} for i, t in enumerate(targets)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"]}} if kind == "stat" else {},
    }


def dashboard(uid: str, title: str, description: str, panels: list[dict[str, Any]]) -> dict[str, Any]:
    """A dashboard with panels laid out left to right, top to bottom on Grafana's 24-column grid."""
    x = y = row_h = 0
    for i, p in enumerate(panels, start=1):
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        p["id"] = i
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        x += w
        row_h = max(row_h, h)
    return {
        "uid": uid, "title": title, "description": description, "tags": ["d4-bridge"],
        "timezone": "browser", "schemaVersion": 39, "version": 1, "editable": False,
        "refresh": "10s", "time": {"from": "now-30m", "to": "now"}, "panels": panels,
        "templating": {"list": []}, "annotations": {"list": []},
    }


def rate(metric: str, by: str = "job") -> str:
    return f"sum by ({by}) (rate({metric}[{WINDOW}]))"


def quantile(p: float, histogram: str, by: str = "job") -> str:
    return f"histogram_quantile({p}, sum by (le, {by}) (rate({histogram}_bucket[{WINDOW}])))"


GREEN_RED = [(None, "green"), (1, "red")]

PIPELINE = dashboard("d4b-pipeline", "d4-bridge: pipeline", (
    "Packets and bytes through every hop, end-to-end latency, consumer lag, dead letters, "
    "sanitizer drops and the leak self-check."), [
    panel("Packets stopped by the sanitizer self-check",
          [q("sum(d4bridge_sanitize_leaks_total) or vector(0)", "stopped")], kind="stat", w=6, h=5,
          thresholds=GREEN_RED, description="Packets that still carried a rewritten address of their own where no "
                                            "parser looks (payload, unknown field). They were dropped, not sent; "
                                            "many of them ask for payload = \"headers\" or \"cut:N\"."),
    panel("Hops up", [q("sum by (hop) (d4bridge_hop_up)", "{{hop}}")], kind="stat", w=6, h=5,
          description="Processes whose main loop runs, per hop."),
    panel("Dead letters /s", [q("sum(rate(d4bridge_dlq_records_total[$__rate_interval])) or vector(0)", "dlq")],
          unit="cps", kind="stat", w=6, h=5, thresholds=[(None, "green"), (0.001, "orange")],
          description="Records sent to d4.dlq (input that is not valid pcap or not a record)."),
    panel("Kafka delivery failures /s",
          [q("sum(rate(d4bridge_kafka_delivery_failures_total[$__rate_interval])) or vector(0)", "failures")],
          unit="cps", kind="stat", w=6, h=5, thresholds=[(None, "green"), (0.001, "red")]),
    panel("Packets /s per hop", [
        q(rate("d4bridge_ingress_packets_total"), "{{job}} in"),
        q(rate("d4bridge_queue_packets_total"), "{{job}} in"),
        q(rate("d4bridge_sanitize_input_packets_total"), "{{job}} in"),
        q(rate("d4bridge_sanitize_packets_total"), "{{job}} out"),
        q(rate("d4bridge_egress_packets_total"), "{{job}} out"),
        q(rate("d4bridge_analyze_packets_total"), "{{job}} classified"),
        q(rate("d4bridge_sink_packets_total"), "{{job}} written"),
    ], unit="pps", description="At a healthy site ingress+queue in = sanitize in = sanitize out + drops = egress out."),
    panel("Bytes /s per hop", [
        q(rate("d4bridge_ingress_bytes_total"), "{{job}} in"),
        q(rate("d4bridge_queue_bytes_total"), "{{job}} in"),
        q(rate("d4bridge_sanitize_bytes_total"), "{{job}} out"),
        q(rate("d4bridge_egress_bytes_total"), "{{job}} out"),
        q(rate("d4bridge_sink_bytes_total"), "{{job}} written"),
    ], unit="Bps"),
    panel("End-to-end latency (capture to upstream write / to hub topic)", [
        q(quantile(0.5, "d4bridge_egress_record_age_seconds"), "site egress p50"),
        q(quantile(0.99, "d4bridge_egress_record_age_seconds"), "site egress p99"),
        q(quantile(0.5, "d4bridge_ingress_capture_age_seconds"), "{{job}} p50"),
        q(quantile(0.99, "d4bridge_ingress_capture_age_seconds"), "{{job}} p99"),
    ], unit="s", description=(
        "Age of a batch's last packet (wall clock minus capture time) when the site's egress writes it "
        "upstream, and when an ingress (hub-ingress: the whole chain) produces it. Queue-file packets "
        "include d4-core's file rotation delay.")),
    panel("Per-hop processing time p99", [
        q(quantile(0.99, "d4bridge_ingress_produce_seconds"), "{{job}} produce"),
        q(quantile(0.99, "d4bridge_sanitize_batch_seconds"), "{{job}} sanitize batch"),
        q(quantile(0.99, "d4bridge_egress_send_seconds"), "{{job}} send"),
    ], unit="s"),
    panel("Consumer lag per group and partition", [
        q("max by (hop, topic, partition) (d4bridge_kafka_consumer_lag_messages)", "{{hop}} {{topic}}[{{partition}}]"),
    ], unit="short", description="Messages behind the partition end; a lag that only grows means the group is too small or stuck."),
    panel("Sanitizer drops and cuts /s by reason", [
        q(rate("d4bridge_sanitize_dropped_total", "reason"), "dropped {{reason}}"),
        q(rate("d4bridge_sanitize_cut_total", "reason"), "cut {{reason}}"),
    ], unit="pps", stack=True, description="Fail-closed decisions: packets that could not be proven safe."),
    panel("Dead letters /s by hop and reason", [
        q(rate("d4bridge_dlq_records_total", "hop, reason"), "{{hop}} {{reason}}"),
    ], unit="cps", stack=True),
    panel("Sanitizer transactions /s", [
        q(rate("d4bridge_sanitize_transactions_total", "result"), "{{result}}"),
    ], unit="cps"),
    panel("Backpressure: producer queue and blocked time", [
        q("sum by (hop) (d4bridge_kafka_producer_queue_messages)", "{{hop}} queued"),
        q(rate("d4bridge_kafka_produce_blocked_seconds_total", "hop"), "{{hop}} blocked s/s"),
    ], unit="short"),
    panel("Rebalances", [q("sum by (hop, kind) (increase(d4bridge_kafka_rebalances_total[$__rate_interval]))",
                           "{{hop}} {{kind}}")], unit="short"),
])

SESSIONS = dashboard("d4b-sessions", "d4-bridge: D4 sessions", (
    "Sensors connected to the D4 servers (ingress), connections refused by a rule, "
    "upstream sessions and reconnects, and the d4-core analyzer queue."), [
    panel("Active sensors", [q("sum by (job) (d4bridge_ingress_sessions_active)", "{{job}}")], kind="stat", w=8, h=5),
    panel("Upstream connected", [q("sum(d4bridge_egress_connected)", "egress sessions")], kind="stat", w=8, h=5,
          thresholds=[(None, "red"), (1, "green")], description="D4 sessions from this site's egress to the hub."),
    panel("Analyzer queue depth", [q("max(d4bridge_queue_depth)", "files waiting")], kind="stat", w=8, h=5),
    panel("Active sensors over time", [q("sum by (job) (d4bridge_ingress_sessions_active)", "{{job}}")]),
    panel("New sessions /s", [q(rate("d4bridge_ingress_sessions_total"), "{{job}}")], unit="cps"),
    panel("Rejections /s by reason", [q(rate("d4bridge_ingress_rejections_total", "job, reason"), "{{job}} {{reason}}")],
          unit="cps", stack=True, description="Connections closed by a rule: HMAC mismatch, blacklists, unregistered uuid, type..."),
    panel("Frames /s by D4 type", [q(rate("d4bridge_ingress_frames_total", "job, type"), "{{job}} type {{type}}")],
          unit="cps"),
    panel("Reconnects /s", [
        q(rate("d4bridge_egress_reconnects_total", "reason"), "egress {{reason}}"),
        q(rate("d4bridge_send_reconnects_total", "reason"), "send {{reason}}"),
    ], unit="cps"),
    panel("Broken pcap streams /s", [q(rate("d4bridge_ingress_assembler_errors_total", "job, reason"),
                                       "{{job}} {{reason}}")], unit="cps"),
    panel("Analyzer queue", [
        q("max(d4bridge_queue_depth)", "waiting"),
        q("sum(d4bridge_queue_processing)", "processing"),
        q("sum(rate(d4bridge_queue_files_total[$__rate_interval]))", "files /s"),
    ]),
    panel("Queue failures /s by reason", [q(rate("d4bridge_queue_failures_total", "reason"), "{{reason}}")],
          unit="cps"),
    panel("Queue file age when picked up p50/p99", [
        q(quantile(0.5, "d4bridge_queue_file_age_seconds"), "p50"),
        q(quantile(0.99, "d4bridge_queue_file_age_seconds"), "p99"),
    ], unit="s"),
])

# One row per attack in progress (the gauge holds each attack's latest event and loses it at the
# final one): an instant query shown as a table, largest estimated rate first.
CURRENT_ATTACKS = panel("Current attacks", [{
    **q("sort_desc(max by (victim, protocol, sites) (d4bridge_analyze_attack_estimated_pps))"),
    "instant": True, "format": "table"}], unit="pps", kind="table", w=24, h=8, description=(
    "Attacks declared and not yet final: victim, attacked protocol, estimated rate so far (packets x 2^32 / "
    "address-seconds watched) and the sites whose telescopes saw it."))
CURRENT_ATTACKS["transformations"] = [{"id": "organize", "options": {
    "excludeByName": {"Time": True}, "renameByName": {"Value": "estimated pps"},
    "indexByName": {"victim": 0, "protocol": 1, "Value": 2, "sites": 3}}}]

HUB = dashboard("d4b-hub", "d4-bridge: hub", (
    "The public hub: what arrives from the sites, backscatter classification and the attacks detected."), [
    panel("Active attacks", [q("sum(d4bridge_analyze_attacks_active)", "attacks")], kind="stat", w=8, h=5),
    panel("Events /s", [q("sum(rate(d4bridge_analyze_events_total[$__rate_interval]))", "events")],
          unit="cps", kind="stat", w=8, h=5),
    panel("Packets arriving /s", [q("sum(rate(d4bridge_ingress_packets_total{job=\"hub-ingress\"}[$__rate_interval]))",
                                    "packets")], unit="pps", kind="stat", w=8, h=5),
    CURRENT_ATTACKS,
    panel("Active attacks over time", [q("sum(d4bridge_analyze_attacks_active)", "attacks")]),
    panel("Backscatter events /s by status", [q(rate("d4bridge_analyze_events_total", "status"), "{{status}}")],
          unit="cps"),
    panel("Classified packets /s", [q(rate("d4bridge_analyze_packets_total", "class"), "{{class}}")],
          unit="pps", stack=True),
    panel("Late packets, duplicates, evictions /s", [
        q("sum(rate(d4bridge_analyze_late_packets_total[$__rate_interval]))", "late (attack already final)"),
        q("sum(rate(d4bridge_analyze_duplicates_total[$__rate_interval]))", "duplicates across sites"),
        q("sum(rate(d4bridge_analyze_evictions_total[$__rate_interval]))", "victims evicted"),
    ], unit="cps"),
    panel("Capture-to-hub latency p50/p99", [
        q(quantile(0.5, "d4bridge_ingress_capture_age_seconds"), "{{job}} p50"),
        q(quantile(0.99, "d4bridge_ingress_capture_age_seconds"), "{{job}} p99"),
    ], unit="s"),
    panel("Sink files and queue pushes /s", [
        q("sum(rate(d4bridge_sink_files_total[$__rate_interval]))", "files"),
        q("sum(rate(d4bridge_sink_queue_pushes_total[$__rate_interval]))", "queue pushes"),
    ], unit="cps"),
])

DASHBOARDS = {"pipeline.json": PIPELINE, "sessions.json": SESSIONS, "hub.json": HUB}


def render(dash: dict[str, Any]) -> str:
    """The file content of a dashboard (stable key order, trailing newline)."""
    return json.dumps(dash, indent=2) + "\n"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, dash in DASHBOARDS.items():
        (OUT / name).write_text(render(dash))
        print(f"wrote {OUT / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
