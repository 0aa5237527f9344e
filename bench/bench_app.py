"""App responsiveness in a real browser: first page, every page switch, the Explain page and request.

Run: ``python -m bench.bench_app [--runs 3] [--isa avx2] [--root ARTIFACTS]``. Builds the demo artifacts of
``tests/app`` (two tiny runs + a corrupt one) in a temporary folder (or uses ``--root``), then ``--runs``
times starts a fresh ``streamlit run app/main.py`` and drives headless Debian chromium through every page
(``tests/app/browser_flow.py``). It prints the median of the runs per page and per measure against the
issue's targets as a ratio (< 1 meets it), with the server's CPU seconds, the CPU it ran on and the load
average (on 2 shared cores the load dominates the wall-clock numbers). ``--isa avx2`` runs the server with
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` (what an AVX2-only machine's torch would do); caps
already set in the environment pass through to the server as well.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
# seconds a user should wait at most (issue 16, item 4): first page, each page switch, the Explain page
# (its first visit after the first page, models included), an Explain request (next image), a run switch
TARGETS = {"first_page": 5.0, "page_switch": 1.5, "explain_page": 2.0, "explain_request": 2.0, "run_switch": 1.5}
AVX2_CAPS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _median(values: list[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def summarise(flows: list[dict]) -> dict:
    """Medians over the flows of ``run_flow``: per measure (with its target and ratio) and per page.

    ``rows`` is ``{name: {"seconds", "server_cpu", "target", "ratio", "runs"}}`` where name is a measure
    (``first_page``, ``explain_request``, ``run_switch``) or a page switch (``switch to <Page>``); the
    Explain switch is held to the Explain page target, the others to the page-switch target.
    """
    rows: dict[str, dict] = {}

    def add(name: str, key: str, target: float, cpu_key: str | None = None, page: bool = False) -> None:
        runs = [(f["pages"] if page else f).get(key) for f in flows]
        cpu = [f["server_cpu"].get(cpu_key or key) for f in flows]
        sec = _median(runs)
        rows[name] = {"seconds": sec, "server_cpu": _median(cpu), "target": target, "ratio": sec / target,
                      "runs": runs}

    add("first_page", "first_page", TARGETS["first_page"])
    for page in flows[0]["pages"]:
        add(f"switch to {page}", page, TARGETS["explain_page" if page == "Explain" else "page_switch"], page=True)
    add("explain_request", "explain_request", TARGETS["explain_request"])
    add("run_switch", "run_switch", TARGETS["run_switch"])
    pages = {p: rows[f"switch to {p}"]["seconds"] for p in flows[0]["pages"]}
    others = [v for p, v in pages.items() if p != "Explain"]
    return {"rows": rows, "pages": pages, "first_page": rows["first_page"]["seconds"],
            "page_switch_max": max(others) if others else float("nan"),
            "explain_page": pages.get("Explain", float("nan")),
            "explain_request": rows["explain_request"]["seconds"], "run_switch": rows["run_switch"]["seconds"],
            "meets_targets": all(r["ratio"] <= 1 for r in rows.values())}


def main(argv: Sequence[str] | None = None, screenshots: str | None = None) -> dict:
    """Run the browser flow ``--runs`` times and print + return the medians with their ratios to the targets.

    Args:
        argv: command-line arguments (``--runs``, ``--isa``, ``--root``); none when called by ``bench.run_all``.
        screenshots: optional folder for the page screenshots of the last run (default ``$FERLENS_SCREENSHOTS``).
    """
    parser = argparse.ArgumentParser(prog="python -m bench.bench_app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh servers to time (the median is reported)")
    parser.add_argument("--isa", choices=("native", "avx2"), default="native",
                        help="avx2: cap the server's torch at AVX2 as on AVX2-only machines")
    parser.add_argument("--root", default=None, help="artifacts root to serve (default: tiny demo runs built here)")
    args = parser.parse_args([] if argv is None else argv)
    sys.path.insert(0, str(REPO / "tests" / "app"))
    from browser_flow import CHROMIUM, run_flow

    if not Path(CHROMIUM).exists():
        print(f"bench_app: skipped, {CHROMIUM} is missing (make chromium)")
        return {"skipped": f"{CHROMIUM} is missing"}
    from app_fixtures import build_artifacts

    if args.isa == "avx2":
        os.environ.update(AVX2_CAPS)  # the server inherits the environment (and machine() reports the caps)
    from train.demo import machine

    info = machine()
    shots = screenshots or os.environ.get("FERLENS_SCREENSHOTS")
    flows, loads = [], []
    with tempfile.TemporaryDirectory(prefix="ferlens-bench-app-") as tmp:
        root = Path(args.root) if args.root else build_artifacts(Path(tmp) / "artifacts")
        for k in range(args.runs):
            loads.append(os.getloadavg()[0])
            last = k == args.runs - 1
            flows.append(run_flow(root, Path(tmp) / f"browser{k}", Path(shots) if shots and last else None))
    loads.append(os.getloadavg()[0])
    out = summarise(flows)
    caps = ", ".join(f"{k}={v}" for k, v in info.get("isa_caps", {}).items()) or "no ISA caps"
    print(f"app in chromium: median of {len(flows)} fresh servers on {root.name if args.root else '2 tiny runs'}; "
          f"{info.get('cpu')} ({info.get('isa_label', '?')}, ATen {info.get('cpu_capability', '?')}, {caps}), "
          f"{info.get('cores')} cores, load average {min(loads):.1f}–{max(loads):.1f}")
    print(f"{'measure':<26}{'seconds':>9}{'target':>8}{'ratio':>8}{'server CPU s':>14}   runs")
    for name, r in out["rows"].items():
        runs = " ".join(f"{v:.2f}" for v in r["runs"] if v is not None)
        print(f"{name:<26}{r['seconds']:>9.2f}{r['target']:>8.1f}{r['ratio']:>8.2f}{r['server_cpu']:>14.2f}   {runs}")
    problems = {f"run {k}: {page}": p for k, f in enumerate(flows) for page, p in f["problems"].items() if p}
    print("targets:", "all met" if out["meets_targets"] else
          "missed: " + ", ".join(n for n, r in out["rows"].items() if r["ratio"] > 1))
    print("problems:", problems or "none")
    return {**out, "problems": problems, "ratios": {n: r["ratio"] for n, r in out["rows"].items()},
            "targets": TARGETS, "runs": len(flows), "load_average": max(loads), "load_averages": loads,
            "machine": info, "isa": args.isa}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2, default=str))
