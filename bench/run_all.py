"""``make bench`` = ``python -m bench.run_all``: every ``bench/bench_*.py`` in one run, side by side.

Each benchmark module has ``main() -> dict`` and prints its own table of ratios against a yardstick run
in the same process. Here each one runs in its own subprocess (so one crash or hang cannot take the
others down) with a per-benchmark timeout inside a total budget; its returned dict is collected with
the machine description into ``bench/results.json`` (atomic write), and a summary table is printed.
A failing benchmark is reported, not fatal.

    python -m bench.run_all                       # all, 25-minute budget
    python -m bench.run_all --only scaling,app    # a subset (names without the bench_ prefix)
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from train.io import atomic_write_json

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
MARKER = "@@FERLENS_BENCH_RESULT@@"
# benchmarks that need more than --timeout on a 2-core machine (probe sweep: three full passes over the demo's
# real features, one of them sklearn solved to tol 1e-6 as the accuracy reference)
TIMEOUTS = {"bench_probe_sweep": 900.0}
# The child imports the module, calls main() and prints the result after a marker line.
CHILD = ("import json, sys\n"
         "from bench import {name} as m\n"
         "r = m.main()\n"
         "sys.stdout.flush()\n"
         "print('\\n' + {marker!r} + json.dumps(r, default=str))\n")


def discover(only: Sequence[str] | None = None) -> list[str]:
    """Module names ``bench_*`` in bench/ (sorted), optionally filtered by ``only`` (with or without prefix)."""
    names = sorted(p.stem for p in BENCH_DIR.glob("bench_*.py"))
    if only:
        wanted = {w if w.startswith("bench_") else f"bench_{w}" for w in only}
        missing = wanted - set(names)
        if missing:
            from train.errors import FerlensError

            raise FerlensError(f"No benchmark named {', '.join(sorted(missing))}; choose among "
                               f"{', '.join(n.removeprefix('bench_') for n in names)}.")
        names = [n for n in names if n in wanted]
    return names


def run_one(name: str, timeout: float) -> dict[str, Any]:
    """Run ``bench.<name>.main()`` in a subprocess; return status, seconds, result or error tail."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.setdefault("OMP_NUM_THREADS", "2")
    env.setdefault("TQDM_DISABLE", "1")
    start = time.perf_counter()
    # A session of its own, so a timeout also ends whatever the benchmark started (e.g. a streamlit server).
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(name=name, marker=MARKER)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        return {"status": "timeout", "seconds": round(time.perf_counter() - start, 2),
                "error": f"no result within {timeout:.0f} s", "output": (stdout or "")[-3000:]}
    seconds = round(time.perf_counter() - start, 2)
    head, sep, tail = stdout.rpartition(MARKER)
    if proc.returncode != 0 or not sep:
        return {"status": "failed", "seconds": seconds, "returncode": proc.returncode,
                "error": (stderr or stdout)[-3000:]}
    try:
        result = json.loads(tail.strip().splitlines()[0])
    except (json.JSONDecodeError, IndexError):
        return {"status": "failed", "seconds": seconds, "error": "main() did not return a JSON-serialisable dict"}
    return {"status": "ok", "seconds": seconds, "result": result, "output": head.strip()[-6000:]}


def headline(result: Any, limit: int = 4) -> str:
    """A few top-level numbers of a result (ratios and speed-ups first) for the summary table."""
    if not isinstance(result, dict):
        return ""
    items = [(k, v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    items.sort(key=lambda kv: not any(w in kv[0] for w in ("ratio", "speedup", "×", "per_s", "exponent")))
    text = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in items[:limit])
    lists = [f"{k}={v}" for k, v in result.items() if k.endswith("exponent") and isinstance(v, list)]
    return ", ".join(x for x in (text, *lists) if x)


def run_all(names: Sequence[str], out: Path, budget: float, timeout: float) -> dict[str, Any]:
    """Run the benchmarks within ``budget`` seconds (each at most ``timeout``) and write ``out``."""
    from train.demo import machine

    results: dict[str, Any] = {}
    start = time.perf_counter()
    for name in names:
        left = budget - (time.perf_counter() - start)
        if left < 10:
            results[name] = {"status": "skipped", "seconds": 0.0, "error": f"total budget of {budget:.0f} s used up"}
            print(f"  {name:24s} skipped (budget)", flush=True)
            continue
        limit = min(max(timeout, TIMEOUTS.get(name, 0.0)), left)
        print(f"  {name:24s} running (timeout {limit:.0f} s) ...", flush=True)
        results[name] = run_one(name, limit)
        r = results[name]
        print(f"  {name:24s} {r['status']} in {r['seconds']:.1f} s", flush=True)
    report = {"machine": machine(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "total_seconds": round(time.perf_counter() - start, 2), "benchmarks": results}
    atomic_write_json(out, report)
    return report


def print_table(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"\nmachine: {m.get('cpu')} ({m.get('isa_label')}: {m.get('isa_reason')}), {m.get('cores')} cores, "
          f"torch {m.get('torch')} "
          f"({m.get('torch_threads')} threads), OMP_NUM_THREADS={m.get('omp_num_threads')}")
    print(f"{'benchmark':24s} {'status':8s} {'seconds':>8s}  headline")
    for name, r in report["benchmarks"].items():
        detail = headline(r.get("result")) if r["status"] == "ok" else (r.get("error") or "").strip().splitlines()[-1:]
        detail = detail if isinstance(detail, str) else " ".join(detail)
        print(f"{name:24s} {r['status']:8s} {r['seconds']:8.1f}  {detail[:110]}")
    print(f"total {report['total_seconds']:.1f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated benchmark names, e.g. scaling,app")
    parser.add_argument("--out", default=str(BENCH_DIR / "results.json"), help="results file (default bench/results.json)")
    parser.add_argument("--budget", type=float, default=1500.0, help="total seconds for all benchmarks (default 1500)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per benchmark (default 300)")
    args = parser.parse_args(argv)
    from train.errors import FerlensError

    try:
        names = discover([s for s in args.only.split(",") if s.strip()])
    except FerlensError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    from train.demo import machine

    m = machine()
    print(f"bench on {m.get('cpu')} ({m.get('isa_label')}), {m.get('cores')} cores", flush=True)
    report = run_all(names, Path(args.out), args.budget, args.timeout)
    print_table(report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
