"""bench/bench_app.py: medians per page and per measure over the runs, each against its target."""
from __future__ import annotations

import math

from bench.bench_app import TARGETS, summarise


def _flow(first: float, probes: float, explain: float, request: float) -> dict:
    return {"first_page": first, "explain_request": request, "run_switch": 0.4,
            "pages": {"Probes": probes, "Explain": explain},
            "server_cpu": {"first_page": first / 2, "Probes": probes / 2, "Explain": explain / 2,
                           "explain_request": request / 2, "run_switch": 0.2}}


def test_medians_and_ratios_per_page():
    out = summarise([_flow(4.0, 1.0, 1.8, 0.5), _flow(6.0, 2.0, 9.0, 0.7), _flow(4.5, 1.2, 1.9, 0.6)])
    rows = out["rows"]
    assert list(rows) == ["first_page", "switch to Probes", "switch to Explain", "explain_request", "run_switch"]
    assert rows["first_page"]["seconds"] == 4.5 and math.isclose(rows["first_page"]["ratio"], 4.5 / 5.0)
    assert rows["switch to Probes"]["seconds"] == 1.2 and rows["switch to Probes"]["target"] == TARGETS["page_switch"]
    # the Explain page has its own target, and one slow run does not move the median
    assert rows["switch to Explain"]["seconds"] == 1.9 and rows["switch to Explain"]["target"] == 2.0
    assert rows["switch to Explain"]["runs"] == [1.8, 9.0, 1.9]
    assert rows["explain_request"]["server_cpu"] == 0.3
    assert out["pages"] == {"Probes": 1.2, "Explain": 1.9}
    assert out["page_switch_max"] == 1.2 and out["explain_page"] == 1.9
    assert out["meets_targets"]


def test_a_missed_target_is_reported():
    out = summarise([_flow(4.0, 1.6, 1.0, 0.5)])
    assert not out["meets_targets"] and out["rows"]["switch to Probes"]["ratio"] > 1
