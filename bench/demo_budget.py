"""The demo budget of issue 16: from a fresh clone, ``make demo`` has the app answering in ≤ 10 min, setup
included, with both demo variants at ≥ 90 % test accuracy.

Run: ``python -m bench.demo_budget [--repo .] [--out bench/demo-budget.json]``. It clones the repository's
committed HEAD into a temporary folder (no venv, no artifacts), starts ``make demo`` there in a session of its
own, waits until streamlit's health endpoint answers on port 8501, reads the demo's ``demo_timings.json`` and
the runs' test metrics, then stops the app. The whole wait is wall-clock time on this machine as it is:
the load average before and after is recorded with the CPU (``train.demo.machine``). Not part of
``make bench`` (it takes the ten minutes it measures); to measure an AVX2-only CPU on a CPU with AVX-512,
cap both ISAs: ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m bench.demo_budget``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 600.0
MIN_ACCURACY = 0.90
PORT = 8501


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_for_record(path: Path, timeout: float = 20.0) -> None:
    """Wait until the demo has written ``app_ready_seconds`` (serve_app does it right after its own health
    check answers), so the app is stopped only once the record is complete."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            if "app_ready_seconds" in json.loads(path.read_text()):
                return
        except (OSError, json.JSONDecodeError):
            pass
        time.sleep(0.2)


def measure(repo: Path, workdir: Path, timeout: float = 1800.0) -> dict:
    """Clone ``repo`` into ``workdir``, time ``make demo`` to an answering app, return the record."""
    from train.demo import _health, machine  # the demo's own check of streamlit's health endpoint
    from train.errors import FerlensError

    if not _port_free(PORT):
        raise FerlensError(f"Port {PORT} is in use, so the demo's app could not start; stop the program using it "
                           "(another streamlit?) and run the benchmark again.")
    clone = workdir / "ferlens"
    subprocess.run(["git", "clone", "--quiet", str(repo), str(clone)], check=True)
    commit = subprocess.run(["git", "-C", str(clone), "rev-parse", "--short", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FERLENS_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env["TQDM_DISABLE"] = "1"
    log = workdir / "make_demo.log"
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(["make", "demo"], cwd=clone, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            while not _health(PORT):
                if proc.poll() is not None:
                    raise FerlensError(f"make demo ended (exit {proc.returncode}) before the app answered; "
                                       f"see {log}.")
                if time.perf_counter() - start > timeout:
                    raise FerlensError(f"The app did not answer within {timeout:.0f} s; see {log}.")
                time.sleep(0.5)
            seconds = time.perf_counter() - start
            _wait_for_record(clone / "artifacts" / "demo_timings.json")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
    artifacts = clone / "artifacts"
    timings = json.loads((artifacts / "demo_timings.json").read_text())
    accuracy = {}
    for variant in timings.get("variants", []):
        metrics = artifacts / "runs" / f"demo_{variant}" / "metrics.json"
        accuracy[variant] = round(json.loads(metrics.read_text())["accuracy"], 4) if metrics.is_file() else None
    stages = sorted(({"stage": s["stage"], "seconds": s["seconds"]} for s in timings.get("stages", [])),
                    key=lambda s: -s["seconds"])
    return {"commit": commit, "make_demo_to_app_seconds": round(seconds, 1), "target_seconds": TARGET_SECONDS,
            "pipeline_seconds": timings.get("total_seconds"), "app_ready_seconds": timings.get("app_ready_seconds"),
            "setup_seconds": round(seconds - (timings.get("app_ready_seconds") or 0.0), 1),
            "test_accuracy": accuracy, "min_accuracy": MIN_ACCURACY,
            "ok": bool(seconds <= TARGET_SECONDS and accuracy and all((a or 0) >= MIN_ACCURACY for a in accuracy.values())),
            "precision": timings.get("precision"), "stages": stages, "load_average_before": round(load_before, 2),
            "load_average_after": round(os.getloadavg()[0], 2), "machine": machine()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.demo_budget", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=str(REPO), help="repository to clone (default: this one)")
    parser.add_argument("--out", default=None, help="result file (default bench/demo-budget-<isa>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    args = parser.parse_args(argv)
    from train.errors import FerlensError
    from train.io import atomic_write_json

    tmp = Path(tempfile.mkdtemp(prefix="ferlens-demo-budget-"))
    try:
        result = measure(Path(args.repo).resolve(), tmp)
    except FerlensError as e:
        print(f"demo_budget: error: {e}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
    isa = str(result["machine"].get("isa_label", "cpu")).lower().replace(" ", "-")
    out = Path(args.out) if args.out else REPO / "bench" / f"demo-budget-{isa}.json"
    atomic_write_json(out, result)
    m = result["machine"]
    print(f"make demo → app answering: {result['make_demo_to_app_seconds']:.0f} s (target ≤ {TARGET_SECONDS:.0f} s; "
          f"setup {result['setup_seconds']:.0f} s, pipeline {result['pipeline_seconds']:.0f} s) on {m.get('cpu')} "
          f"({m.get('isa_label')}), load {result['load_average_before']:.1f} → {result['load_average_after']:.1f}")
    print("test accuracy: " + ", ".join(f"{v} {a:.3f}" for v, a in result["test_accuracy"].items() if a is not None))
    for s in result["stages"][:8]:
        print(f"  {s['stage']:<40} {s['seconds']:7.1f} s")
    print(f"{'ok' if result['ok'] else 'NOT within target'}; wrote {out}" + (f"; clone kept in {tmp}" if args.keep else ""))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
