"""Test helpers: the PromQL queries of the Grafana dashboards and the metric names they use.

Shared by tests/unit/test_deploy.py (names defined in bridge/metrics.py) and
tests/integration/test_dashboards.py (names the running hops really export). Importable
as ``grafana_dashboards`` because tests/ holds the root conftest.py (pytest puts it on sys.path).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

DASHBOARD_DIR = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards"

# PromQL words that look like identifiers but are not metric names.
_PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
    "group", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
    "unless", "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "clamp_min",
    "clamp_max", "abs", "vector", "scalar", "time", "label_replace", "label_join", "sort", "sort_desc",
    "sum_over_time", "max_over_time", "min_over_time", "avg_over_time", "last_over_time", "changes", "resets",
    "absent", "round", "ceil", "floor", "inf", "nan", "le", "atan2",
}
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_LABEL_MATCHERS = re.compile(r"\{[^}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGES = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")


def dashboard_files() -> list[Path]:
    """Every provisioned dashboard."""
    return sorted(DASHBOARD_DIR.glob("*.json"))


def _panels(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # rows hold their panels when collapsed


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(datasource uid, PromQL expression) of every panel target."""
    out = []
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            ds = target.get("datasource") or panel.get("datasource") or {}
            out.append((ds.get("uid", ""), target["expr"]))
    return out


def metric_names_in(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (strings, label matchers, groupings and ranges removed)."""
    text = _STRINGS.sub(" ", expr)
    text = _LABEL_MATCHERS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _RANGES.sub(" ", text)
    return {m for m in _IDENT.findall(text) if m not in _PROMQL_WORDS and not m.isdigit()}


def all_dashboard_metric_names() -> dict[str, set[str]]:
    """Metric names used by each dashboard file."""
    return {
        f.name: set().union(*(metric_names_in(e) for _, e in dashboard_queries(json.loads(f.read_text()))))
        for f in dashboard_files()
    }


def sample_names(families: Iterable[Any]) -> set[str]:
    """Sample names a set of metric families can produce (counters ``_total``, histograms
    ``_bucket/_sum/_count``), whether or not a labelled child has been created yet."""
    names = set()
    for family in families:
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
        names.update(s.name for s in family.samples)
    return names


def exported_metric_names() -> set[str]:
    """Sample names bridge/metrics.py defines."""
    from prometheus_client import REGISTRY

    import bridge.metrics  # noqa: F401  (registers every metric)

    return {n for n in sample_names(REGISTRY.collect()) if n.startswith("d4bridge_")}
