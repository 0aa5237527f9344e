"""Write the README's Performance table from ``bench/results.json`` (no number typed by hand).

The table sits between ``<!-- BEGIN generated:performance -->`` and ``<!-- END generated:performance -->``
in README.md; everything outside the markers is left alone. It names the CPU the numbers were measured on
(model name and ISA: AMX/AVX-512 BF16 or AVX2), the date and the load caveat, then one row per benchmark
that ``results.json`` holds.

    python -m bench.readme --results bench/results.json   # bench/results.json -> README.md
    python -m bench.readme --results bench/results.json,bench/results-avx2.json   # one table per file
    python -m bench.readme --demo bench/demo-budget-avx2.json     # the demo-budget block (fresh-clone `make demo`)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from train.errors import FerlensError
from train.io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
BLOCK = "performance"
DEMO_BLOCK = "demo-budget"  # bench/demo_budget.py's fresh-clone `make demo` timing


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _f(v: Any, fmt: str = ".2f", unit: str = "") -> str:
    return "—" if not isinstance(v, (int, float)) else f"{v:{fmt}}{unit}"


def _probe(r: dict) -> list[str] | None:
    if "full_speedup" not in r:
        return None
    if "real_speedup" not in r:
        real = "real features: not run"
    elif "real_max_acc_diff_vs_converged_informative_points" in r:
        real = (f"real features ({r.get('real_source')}): **{_f(r.get('real_speedup'))}×** CPU time; max Δacc to the "
                f"optimum (sklearn at tol 1e-6) {_f(r.get('real_max_acc_diff_vs_converged_informative_points'))} pt on the "
                f"{r.get('real_informative_matrices')} matrices whose probe beats chance, "
                f"{_f(r.get('real_max_acc_diff_vs_converged_at_chance_points'))} pt on the "
                f"{r.get('real_at_chance_matrices')} at chance (sklearn at the same tolerance: "
                f"{_f(r.get('real_sklearn_max_acc_diff_vs_converged_points'))} pt)")
    elif "real_max_acc_diff_informative_points" in r:
        real = (f"real features ({r.get('real_source')}): **{_f(r.get('real_speedup'))}×** CPU time; max Δacc "
                f"{_f(r.get('real_max_acc_diff_informative_points'))} pt on the {r.get('real_informative_matrices')} "
                f"matrices whose probe beats chance, {_f(r.get('real_max_acc_diff_at_chance_points'))} pt on the "
                f"{r.get('real_at_chance_matrices')} at chance")
    else:
        real = (f"real features ({r.get('real_source')}): **{_f(r.get('real_speedup'))}×** CPU time, max Δacc "
                f"{_f(r.get('real_max_acc_diff_points'))} pt")
    return ["`bench_probe_sweep`: full probe (outer CV, inner-CV C, control), torch engine", "scikit-learn",
            f"{real}; synthetic sweep {_f(r.get('full_speedup'))}×, max Δacc "
            f"{_f(r.get('full_max_acc_diff_points'))} pt", "≥ 3×, Δacc ≤ 0.5 pt"]


def _synthfer(r: dict) -> list[str] | None:
    if "images_per_s" not in r:
        return None
    return ["`bench_synthfer`: SynthFER rendering at 64 px", "—",
            f"{_f(r['images_per_s'], ',.0f')} img/s per core ({_f(r.get('with_mask_images_per_s'), ',.0f')} with "
            "part masks)", "≥ 2,000"]


def _app(r: dict) -> list[str] | None:
    if "first_page" not in r:
        return None
    pages = ", ".join(f"{k} {_f(v, '.2f')} s" for k, v in (r.get("pages") or {}).items())
    explain = r.get("explain_page", (r.get("pages") or {}).get("Explain"))
    runs = f"median of {r['runs']} runs, " if r.get("runs") else ""
    return ["`bench_app`: first page / slowest other page switch / Explain page / Explain request (headless "
            "chromium)", "—",
            f"{_f(r['first_page'])} s / {_f(r.get('page_switch_max'))} s / {_f(explain)} s / "
            f"{_f(r.get('explain_request'))} s" + (f" ({runs}per page: {pages})" if pages else ""),
            "≤ 5 s / 1.5 s / 2 s / 2 s"]


def _generic(name: str) -> Callable[[dict], list[str] | None]:
    def row(r: dict) -> list[str] | None:
        nums = [(k, v) for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        nums.sort(key=lambda kv: not any(w in kv[0] for w in ("ratio", "speedup", "per_s")))
        if not nums:
            return None
        return [f"`{name}`", "—", ", ".join(f"{k} {_f(v, '.3g')}" for k, v in nums[:4]), "—"]
    return row


def _precision(r: dict) -> list[str] | None:
    rows = r.get("variants") or {}
    if not rows:
        return None
    parts = [f"{n.removeprefix('ferlens_tiny_').removesuffix('_s3')}: {v['chosen']} {_f(v['chosen_vs_fp32'])}× "
             f"(bf16 forced {_f(v['bf16_vs_fp32'])}×)" for n, v in rows.items()]
    return ["`bench_precision`: demo training step in the precision `--amp auto` picks", "a bare fp32 step",
            "; ".join(parts), "≥ 0.9×"]


ROWS: dict[str, Callable[[dict], list[str] | None]] = {
    "bench_precision": _precision, "bench_probe_sweep": _probe, "bench_synthfer": _synthfer, "bench_app": _app,
}


def table(report: dict[str, Any]) -> str:
    """The Markdown block (without markers) for a ``results.json`` report."""
    m = report.get("machine", {})
    lines = [f"Measured by `make bench` on **{m.get('cpu', '?')}** ({m.get('isa_label', '?')}; "
             f"ATen capability {m.get('cpu_capability', '?')}), {m.get('cores', '?')} cores, torch "
             f"{m.get('torch', '?')}, on {report.get('created', '?')}"
             + (f", with {', '.join(f'{k}={v}' for k, v in m['isa_caps'].items())}" if m.get("isa_caps") else "")
             + (f", load average {m['load_average']} at the start" if m.get("load_average") is not None else "")
             + ". Figures are ratios against a yardstick timed in the same run unless marked.", "",
             "| benchmark | yardstick | measured | target |", "| --- | --- | --- | --- |"]
    for name, entry in (report.get("benchmarks") or {}).items():
        if entry.get("status") != "ok":
            lines.append(f"| `{name}` | — | {entry.get('status')} | — |")
            continue
        row = ROWS.get(name, _generic(name))(entry.get("result") or {})
        if row:
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def demo_table(record: dict[str, Any]) -> str:
    """The fresh-clone ``make demo`` budget (``bench/demo_budget.py``) as a one-row table with its CPU."""
    m = record.get("machine", {})
    acc = ", ".join(f"{v} {_f(a, '.1%')}" for v, a in (record.get("test_accuracy") or {}).items())
    slowest = ", ".join(f"{s['stage']} {_f(s['seconds'], '.0f')} s" for s in (record.get("stages") or [])[:3])
    return "\n".join([
        f"Fresh clone → `make demo` → app answering, measured by `python -m bench.demo_budget` on **{m.get('cpu', '?')}** "
        f"({m.get('isa_label', '?')}; ATen capability {m.get('cpu_capability', '?')}), {m.get('cores', '?')} cores, "
        f"commit {record.get('commit', '?')}, load average {record.get('load_average_before', '?')} at the start.", "",
        "| measure | measured | target |", "| --- | --- | --- |",
        f"| `make demo` to an answering app, setup included | **{_f(record.get('make_demo_to_app_seconds'), '.0f')} s** "
        f"(setup {_f(record.get('setup_seconds'), '.0f')} s, pipeline {_f(record.get('pipeline_seconds'), '.0f')} s; "
        f"slowest stages: {slowest}) | ≤ {_f(record.get('target_seconds'), '.0f')} s |",
        f"| test accuracy of the demo variants | {acc} | ≥ {_f(record.get('min_accuracy'), '.0%')} |"])


def write_block(readme: Path, name: str, body: str) -> bool:
    """Replace the ``generated:name`` block of ``readme`` with ``body``; True when the file changed."""
    from probe.readme import find_blocks   # one parser of the README's generated blocks

    text = readme.read_text()
    blocks = find_blocks(text)
    if name not in blocks:
        raise FerlensError(f"{readme} has no '<!-- BEGIN generated:{name} -->' … '<!-- END generated:{name} -->' "
                           f"block; add the two markers where the {name} table belongs.")
    start, end = blocks[name]
    new = text[:start] + f"\n{body}\n" + text[end:]
    if new != text:
        atomic_write_text(readme, new)
    return new != text


def _read_all(names: str, make: str) -> list[dict[str, Any]]:
    """The JSON records of a comma-separated list of files; a missing one names the command that writes it."""
    out = []
    for name in [r for r in names.split(",") if r.strip()]:
        path = Path(name)
        if not path.is_file():
            raise FerlensError(f"{path} does not exist; run `{make}` first.")
        out.append(json.loads(path.read_text()))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.readme", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="",
                        help="results file(s), comma-separated: one table each (e.g. native and AVX2-emulated)")
    parser.add_argument("--demo", default="", help="demo-budget file(s) of bench/demo_budget.py, comma-separated")
    parser.add_argument("--readme", default=str(REPO / "README.md"))
    args = parser.parse_args(argv)
    try:
        if not args.results.strip() and not args.demo.strip():
            raise FerlensError("Nothing to write; pass --results bench/results.json and/or "
                               "--demo bench/demo-budget-<isa>.json.")
        tables = [table(r) for r in _read_all(args.results, "make bench")]
        demos = [demo_table(r) for r in _read_all(args.demo, "python -m bench.demo_budget")]
        changed = write_block(Path(args.readme), BLOCK, "\n\n".join(tables)) if tables else False
        if demos:
            changed = write_block(Path(args.readme), DEMO_BLOCK, "\n\n".join(demos)) or changed
    except FerlensError as e:
        print(f"bench.readme: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.readme}: {'updated' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
