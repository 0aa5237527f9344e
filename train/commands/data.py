"""``train data``: generate SynthFER on disk, describe a dataset, check its files.

    train data synth --size 64 --n 12000 --seed 0 [--out DIR] [--format rafdb|folder] [--contact-sheet PNG]
    train data info SPEC [--sample 32] [--json PATH]
    train data check SPEC [--strict] [--json PATH]
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from ..errors import FerlensError, close_matches

FORMATS = ("rafdb", "folder")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = sub.add_parser("synth", help="render SynthFER into a RAF-DB or image-folder layout")
    s.add_argument("--size", default="64", help="image side in pixels (32-224, default 64)")
    s.add_argument("--n", default="12000", help="number of images (default 12000)")
    s.add_argument("--seed", default="0", help="generator seed (default 0)")
    s.add_argument("--format", default="rafdb", help="layout: rafdb (default) or folder")
    s.add_argument("--out", default=None, help="output folder (default artifacts/data/synthfer-<fmt>-s<size>-n<n>)")
    s.add_argument("--contact-sheet", default=None, metavar="PNG", help="also write a contact sheet PNG")
    s.add_argument("--per-class", default="8", help="faces per class on the contact sheet (default 8)")
    i = sub.add_parser("info", help="counts per split and class, attribute coverage, image sizes")
    i.add_argument("spec", help="data spec, e.g. rafdb:/data/RAF-DB")
    i.add_argument("--sample", type=int, default=32, help="images decoded per split for size stats")
    i.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON")
    c = sub.add_parser("check", help="decode every image and list missing/corrupt files")
    c.add_argument("spec", help="data spec, e.g. rafdb:/data/RAF-DB")
    c.add_argument("--strict", action="store_true", help="exit with an error when any file is bad")
    c.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON")


def run(args: argparse.Namespace) -> int:
    actions: dict[str, Callable[[argparse.Namespace], int]] = {"synth": run_synth, "info": run_info,
                                                                "check": run_check}
    return actions[args.action](args)


# ----------------------------------------------------------------------------------- synth
def _int_arg(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise FerlensError(f"--{name} {value} is not an integer; pass e.g. --{name} 64.") from None


def run_synth(args: argparse.Namespace) -> int:
    from ..data import synthfer
    from ..runs import artifacts_root

    fmt = args.format.strip().lower()
    if fmt not in FORMATS:
        raise FerlensError(f"--format {args.format} is unknown; use one of {', '.join(FORMATS)}."
                           + close_matches(fmt, FORMATS))
    size, n, seed = synthfer.parse_options(_int_arg("size", args.size), _int_arg("n", args.n),
                                           _int_arg("seed", args.seed))
    per_class = _int_arg("per-class", args.per_class)
    if per_class < 1:
        raise FerlensError(f"--per-class {per_class} must be at least 1.")
    out = Path(args.out) if args.out else artifacts_root() / "data" / f"synthfer-{fmt}-s{size}-n{n}"
    out = Path(synthfer.export(out, size=size, n=n, seed=seed, fmt=fmt))
    print(f"wrote SynthFER (size={size}, n={n}, seed={seed}) in the {fmt} layout to {out}")
    manifest = out / "synthfer.json"
    if manifest.is_file():
        from ..io import read_json

        counts = read_json(manifest).get("counts", {})
        print(format_table([[split, int(c)] for split, c in counts.items()], ["split", "images"]))
    print(f"use it with --data {fmt}:{out}")
    if args.contact_sheet:
        sheet = synthfer.contact_sheet(Path(args.contact_sheet), size=size, seed=seed, n=n, per_class=per_class)
        print(f"contact sheet: {sheet}")
    return 0


# ---------------------------------------------------------------------------------- tables
def format_table(rows: list[list[Any]], header: list[str]) -> str:
    """A plain-text table: numbers right-aligned, text left-aligned, a rule under the header."""
    right = [all(isinstance(r[j], (int, float)) for r in rows) for j in range(len(header))]
    cells = [header] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[j]) for r in cells) for j in range(len(header))]
    lines = []
    for k, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if right[j] else c.ljust(w)
                               for j, (c, w) in enumerate(zip(r, widths))).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.1%}" if 0 <= v <= 1 else f"{v:.1f}"
    return "" if v is None else str(v)


def _write_json(path: str | None, obj: Any) -> None:
    if path:
        from ..io import atomic_write_json

        atomic_write_json(path, obj)
        print(f"wrote {path}")


# ------------------------------------------------------------------------------------ info
def info_text(result: dict[str, Any]) -> str:
    """The printed form of ``train.data.inspect.info``."""
    splits = result["splits"]
    names = result["label_names"]
    present = [s for s in splits if "error" not in splits[s]]
    out = [f"{result['spec']}: {result['total']} images, {len(names)} classes"
           + (" (soft labels)" if result.get("soft_labels") else "")]
    rows = [[name] + [splits[s]["class_counts"][name] for s in present] for name in names]
    rows.append(["total"] + [splits[s]["n"] for s in present])
    rows.append(["skipped files"] + [splits[s]["skipped"] for s in present])
    out += ["", format_table(rows, ["class"] + present)]
    attrs = sorted({k for s in present for k in splits[s]["attr_coverage"]})
    if attrs:
        kinds = result["attr_kinds"]
        rows = [[a, kinds.get(a, "(not a probe target)")] + [splits[s]["attr_coverage"].get(a, 0.0) for s in present]
                for a in attrs]
        out += ["", format_table(rows, ["attribute", "kind"] + [f"{s} coverage" for s in present])]
    else:
        out += ["", "attributes: none"]
    rows = []
    for s in present:
        st = splits[s]["image_size"]
        if "width" in st:
            rows.append([s, st["sampled"], f"{st['width']['min']}-{st['width']['max']}",
                         f"{st['height']['min']}-{st['height']['max']}",
                         f"{st['width']['mean']:.0f}x{st['height']['mean']:.0f}", st["unreadable"]])
    if rows:
        out += ["", format_table(rows, ["split", "sampled", "width", "height", "mean WxH", "unreadable"])]
    for s in splits:
        if "error" in splits[s]:
            out.append(f"{s}: {splits[s]['error']}")
    return "\n".join(out)


def run_info(args: argparse.Namespace) -> int:
    from ..data.inspect import info

    result = info(args.spec, sample=max(1, args.sample))
    print(info_text(result))
    _write_json(args.json, result)
    return 0


# ----------------------------------------------------------------------------------- check
def check_text(report: dict[str, Any], show: int = 20) -> str:
    """The printed form of ``train.data.inspect.check`` (lists up to ``show`` bad files per split)."""
    splits = report["splits"]
    rows = [[s, v["n_listed"], v["n_ok"], len(v["missing"]), len(v["corrupt"]), len(v.get("invalid", []))]
            for s, v in splits.items() if "error" not in v]
    out = [format_table(rows, ["split", "listed", "ok", "missing", "corrupt", "invalid label"])]
    for s, v in splits.items():
        if "error" in v:
            out.append(f"{s}: {v['error']}")
            continue
        for why, n in (v.get("dropped") or {}).items():
            out.append(f"{s}: {n} samples left out by the dataset's convention: {why}")
        for item in v.get("invalid", []):                      # every invalid label row, none left out
            out.append(f"{s}: {item['problem']}")
        bad = v["missing"] + v["corrupt"]
        for item in bad[:show]:
            out.append(f"{s}: {item['path']}: {item['problem']}")
        if len(bad) > show:
            out.append(f"{s}: ... and {len(bad) - show} more (use --json PATH for the full list)")
    out.append("all files are readable" if report["n_bad"] == 0
               else f"{report['n_bad']} of {report['n_checked']} files are missing or corrupt"
               if not any(v.get("invalid") for v in splits.values())
               else f"{report['n_bad']} of {report['n_checked']} files or label rows are missing, corrupt or invalid")
    return "\n".join(out)


def run_check(args: argparse.Namespace) -> int:
    from ..data.inspect import check, problem_sentence

    report = check(args.spec, strict=False)
    print(check_text(report))
    _write_json(args.json, report)
    if args.strict and not report["ok"]:
        raise FerlensError(problem_sentence(report))
    return 0
