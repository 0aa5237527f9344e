"""Rewrite the generated blocks of README.md from the demo's facts (``probe report``'s ``facts.json``), so
no number in the README is typed by hand.

A block is a marked region of the README::

    <!-- BEGIN generated:NAME -->
    ...replaced on every run...
    <!-- END generated:NAME -->

``BLOCKS`` maps each name to the function that renders it from the facts (and the demo's timings,
``artifacts/demo_timings.json``). ``probe readme --facts artifacts/reports/demo/facts.json`` rewrites the
README in place (atomically); ``--check`` only verifies that the blocks are well-formed and up to date.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from train.errors import FerlensError

from .report import Doc, _cls_read_section, _interventions_section, _localisation_section, _pct

BEGIN = re.compile(r"<!-- BEGIN generated:([A-Za-z0-9_-]+) -->")
END = re.compile(r"<!-- END generated:([A-Za-z0-9_-]+) -->")


def find_blocks(text: str) -> dict[str, tuple[int, int]]:
    """Names of the generated blocks and the (start, end) offsets of their bodies; a malformed block
    (unclosed, nested, closed under another name, repeated) ends in one sentence."""
    marks = sorted([(m.start(), m.end(), "begin", m.group(1)) for m in BEGIN.finditer(text)]
                   + [(m.start(), m.end(), "end", m.group(1)) for m in END.finditer(text)])
    blocks: dict[str, tuple[int, int]] = {}
    open_name, body_start = None, 0
    for start, end, kind, name in marks:
        line = text.count("\n", 0, start) + 1
        if kind == "begin":
            if open_name is not None:
                raise FerlensError(f"README line {line}: block '{name}' begins inside block '{open_name}'; close "
                                   f"'{open_name}' first with <!-- END generated:{open_name} -->.")
            if name in blocks:
                raise FerlensError(f"README line {line}: block '{name}' appears twice; keep one.")
            open_name, body_start = name, end
        else:
            if open_name != name:
                raise FerlensError(f"README line {line}: <!-- END generated:{name} --> does not close an open "
                                   f"block '{name}'" + (f" (open: '{open_name}')" if open_name else "") + ".")
            blocks[name] = (body_start, start)
            open_name = None
    if open_name is not None:
        raise FerlensError(f"README block '{open_name}' is never closed; add <!-- END generated:{open_name} -->.")
    return blocks


# ------------------------------------------------------------------------------------------ blocks


def machine_block(facts: dict[str, Any], timings: dict[str, Any] | None) -> str:
    m = dict(facts.get("machine") or {})
    tm = (timings or {}).get("machine") or {}
    capped = ""
    if tm.get("isa_caps"):  # the demo ran with the ISA capped (an AVX2-only CPU emulated): say so
        caps = ", ".join(f"{k}={v}" for k, v in tm["isa_caps"].items())
        capped = f", run as an {tm.get('isa_label')} CPU ({caps}: {tm.get('isa_reason')})"
        m["isa"] = None
    parts = [m.get("cpu") or "an unnamed CPU"]
    detail = [f"{m['cores']} cores" if m.get("cores") else None, m.get("isa"),
              f"torch {m['torch']}" if m.get("torch") else None]
    text = f"Measured on {parts[0]} ({', '.join(d for d in detail if d)}), no GPU{capped}"
    if timings:
        text += (f"; the demo pipeline took {timings['total_seconds']:.0f} s with {timings.get('jobs', '?')} "
                 "stages side by side")
    return text + "."


def timings_block(facts: dict[str, Any], timings: dict[str, Any] | None) -> str:
    if not timings:
        return "No demo timings yet: run `make demo` (it writes `artifacts/demo_timings.json`)."
    rows = ["| stage | seconds | started at (s) |", "| --- | --- | --- |"]
    for s in timings.get("stages", []):
        start = "–" if s.get("start") is None else f"{s['start']:.1f}"
        rows.append(f"| {s['stage']} | {s['seconds']:.1f} | {start} |")
    return "\n".join(rows) + f"\n\nWhole pipeline: {timings['total_seconds']:.1f} s."


def results_block(facts: dict[str, Any], timings: dict[str, Any] | None) -> str:
    runs = facts["per_run"]
    accs = []
    for rec in runs.values():
        t = rec.get("test") or {}
        if t.get("accuracy") is not None:
            ci = t.get("accuracy_ci") or [None, None]
            ci_text = f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci[0] is not None else ""
            accs.append(f"{rec['label']} {_pct(t['accuracy'])}{ci_text}")
    n = next((rec["test"]["n"] for rec in runs.values() if rec.get("test") and rec["test"].get("n")), None)
    lines = []
    if accs:
        lines.append(f"Test accuracy: **{', '.join(accs)}**" + (f" ({n} identity-disjoint test faces, bootstrap "
                                                                  "95% CIs)." if n else "."))
    labels = [rec["label"] for rec in runs.values()]
    targets: dict[str, dict[str, Any]] = {}
    for rec in runs.values():
        for k in rec.get("keep") or []:
            targets.setdefault(k["target"], {})[rec["label"]] = k
    if targets:
        head = "| target (chance) | " + " | ".join(f"{lab} CLS | {lab} patch (mean)" for lab in labels) + " |"
        lines += ["", head, "|" + " --- |" * (1 + 2 * len(labels))]
        for target, per in targets.items():
            any_k = next(iter(per.values()))
            if any_k["metric"] == "r2":
                continue
            cells = [f"{target} ({_pct(any_k.get('chance'))})"]
            for lab in labels:
                k = per.get(lab, {})
                for tokens in ("cls", "patch"):
                    v = k.get(tokens)
                    if not v or v.get("value") is None:
                        cells.append("–")
                        continue
                    ci = v.get("ci") or [None, None]
                    text = _pct(v["value"]) + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci[0] is not None else "")
                    if v.get("selectivity") is not None:
                        text += f", sel. {100 * v['selectivity']:+.1f}"
                    cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if lines else "No test metrics or probes in these facts."


def _section(render: Callable[[dict[str, Any], Doc], None]) -> Callable[[dict[str, Any], Any], str]:
    """A README block from one of the report's section builders (the same sentences as report.md)."""
    def block(facts: dict[str, Any], timings: dict[str, Any] | None) -> str:
        doc = Doc()
        render(facts["per_run"], doc)
        doc.blocks = [b for b in doc.blocks if b[0] != "h"]           # the README has its own headings
        return doc.markdown(__import__("pathlib").Path(".")).strip()
    return block


BLOCKS: dict[str, Callable[[dict[str, Any], dict[str, Any] | None], str]] = {
    "machine": machine_block,
    "demo-timings": timings_block,
    "demo-results": results_block,
    "interventions": _section(_interventions_section),
    "localisation": _section(_localisation_section),
    "cls-read": _section(_cls_read_section),
}


# blocks another generator writes (from other artifacts); ``rewrite`` leaves their bodies as they are
OWNED_ELSEWHERE = {"performance": "python -m bench.readme --results bench/results*.json",
                   "demo-budget": "python -m bench.readme --demo bench/demo-budget-*.json"}


def rewrite(text: str, facts: dict[str, Any], timings: dict[str, Any] | None = None) -> str:
    """``text`` with the body of every generated block replaced by its rendering from ``facts``."""
    blocks = find_blocks(text)
    unknown = [n for n in blocks if n not in BLOCKS and n not in OWNED_ELSEWHERE]
    if unknown:
        raise FerlensError(f"README block '{unknown[0]}' has no generator; use one of "
                           f"{', '.join([*BLOCKS, *OWNED_ELSEWHERE])}.")
    out, pos = [], 0
    for name, (start, end) in sorted(blocks.items(), key=lambda kv: kv[1][0]):
        if name in OWNED_ELSEWHERE:
            continue
        out += [text[pos:start], "\n", BLOCKS[name](facts, timings).strip(), "\n"]
        pos = end
    out.append(text[pos:])
    return "".join(out)
