"""The chaos test: the whole chain under SIGKILLs and a hub outage, checked packet by packet.

Short form by default (part of ``make test``, under 3 minutes, >= 20 kills); the long form
(1M packets, 30 s hub outage) with ``D4_CHAOS=long``. See tests/system/chaos.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos import ChaosConfig, run_chaos  # noqa: E402

pytestmark = pytest.mark.system

LONG = os.environ.get("D4_CHAOS", "").lower() == "long"


@pytest.mark.timeout(1800 if LONG else 300)
def test_chaos(tmp_path: Path) -> None:
    cfg = ChaosConfig.long() if LONG else ChaosConfig()
    report = run_chaos(cfg, tmp_path, say=lambda msg: print(msg, flush=True))
    print(report.text())
    assert sum(report.kills.values()) >= cfg.min_kills, report.kills
    assert report.hub_stops == 1
    assert not report.problems, "\n".join(report.problems + report.notes)
    # sanity of the comparison itself: packets really went through every hop
    assert report.site["missing"] == 0 and report.site["packets"] >= sum(report.captured.values())
    assert report.hub["missing"] == 0 and report.hub["private_addresses"] == 0
