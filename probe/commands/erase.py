"""`probe erase --run RUN --concept identity|expression|<attr>[,...] [--tokens cls,patch] [--layers all]
[--targets CONCEPT,expression] [--cv 5] [--seeds 3] [--group auto] [--data SPEC] [--fit-split train]
[--split test] [--causal-n 256 | --no-causal]`: LEACE concept erasure (``probe/erase.py``).

The eraser is fitted on the ``--fit-split`` features and the probes run on the ``--split`` features (both
extracted on demand into the run's feature cache); the control removes as many random directions.
Causal version (CLS readout): the erased CLS token is fed through the remaining blocks and the head.
Rows of this concept in ``<run>/probes/erasure.json`` (+ ``erasure.csv``) are replaced, other concepts kept.
Several concepts (``--concept expression,identity``) run one after the other in one process: the model, the
features and the causal batch are loaded once.
"""
from __future__ import annotations

import argparse

CSV_COLUMNS = ["layer", "layer_index", "tokens", "concept", "target", "metric", "before", "before_lo", "before_hi",
               "after", "after_lo", "after_hi", "random_control_after", "random_control_after_lo",
               "random_control_after_hi", "chance", "rank", "dim", "n_seeds", "cv_groups", "cv_scheme", "n_fit",
               "n_eval"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from probe.linear import DEFAULT_ENGINE, ENGINES

    parser.add_argument("--run", required=True, help="run name under artifacts/runs or a run folder")
    parser.add_argument("--concept", required=True,
                        help="concept(s) to erase, comma-separated: expression or categorical attrs")
    parser.add_argument("--tokens", default="cls,patch", help="readouts (default: cls,patch)")
    parser.add_argument("--layers", default="all", help="'all', indices (0 = tokens, -1 = last block) or hook names")
    parser.add_argument("--targets", default=None, help="probed targets (default: the concept and expression)")
    parser.add_argument("--cv", type=int, default=5, help="outer CV folds (default: 5)")
    parser.add_argument("--seeds", type=int, default=3, help="CV seeds = random-direction draws (default: 3)")
    parser.add_argument("--group", default="auto", help="fold grouping: auto (identity/subject), an attr, none")
    parser.add_argument("--data", default=None, help="dataset spec (default: the run's data.spec)")
    parser.add_argument("--fit-split", default="train", help="split the eraser is fitted on (default: train)")
    parser.add_argument("--split", default="test", help="split the probes run on (default: test)")
    parser.add_argument("--engine", default=DEFAULT_ENGINE, choices=list(ENGINES), help=f"default: {DEFAULT_ENGINE}")
    parser.add_argument("--causal-n", type=int, default=256, help="test images for the causal version (default 256)")
    parser.add_argument("--no-causal", action="store_true", help="skip the causal version")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward (default: 64)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from probe.erase import causal_erasure, erase_sweep, merge_erasure
    from probe.features import ensure_features, split_readouts
    from train.errors import FerlensError
    from train.io import atomic_write_csv, atomic_write_json, read_json
    from train.runs import resolve_run

    if args.seeds < 1:
        raise FerlensError(f"--seeds {args.seeds} must be at least 1.")
    if args.fit_split == args.split:
        raise FerlensError(f"--fit-split and --split are both '{args.split}'; fit the eraser on another split "
                           "(default: train) so the probes see held-out data.")
    run_dir = resolve_run(args.run)
    fit_set = ensure_features(run_dir, args.data, args.fit_split, batch_size=args.batch_size)
    eval_set = ensure_features(run_dir, args.data, args.split, batch_size=args.batch_size)
    readouts = split_readouts(args.tokens)
    targets = [t.strip() for t in args.targets.split(",")] if args.targets else None
    concepts = list(dict.fromkeys(c.strip() for c in args.concept.split(",") if c.strip()))
    if not concepts:
        raise FerlensError("--concept is empty; pass e.g. --concept identity or --concept expression,identity.")
    model = batch = None
    out = run_dir / "probes"
    path = out / "erasure.json"
    for concept in concepts:
        rows, erasers = erase_sweep(fit_set=fit_set, eval_set=eval_set, concept=concept, targets=targets,
                                    readouts=readouts, layers=args.layers, cv=args.cv, seeds=args.seeds,
                                    group=args.group, engine=args.engine)
        causal = []
        cls = {layer: e for (r, layer), e in erasers.items() if r == "cls"}
        if cls and not args.no_causal:
            from probe.attribution import load_batch
            from train.runs import load_run

            if model is None:
                model, config = load_run(run_dir)
                batch = load_batch(config, args.data, args.split, args.causal_n)
            fit_cls = {layer: np.asarray(fit_set.readout("cls", layer)) for layer in cls}
            causal = causal_erasure(model, batch.images, batch.labels, cls, fit_cls=fit_cls, seeds=args.seeds,
                                    batch_size=args.batch_size, concept=concept)
        new = {"run": run_dir.name, "concept": concept, "fit_split": args.fit_split, "eval_split": args.split,
               "data_spec": eval_set.meta.get("data_spec"), "rows": rows, "causal": causal}
        merged = merge_erasure(read_json(path) if path.is_file() else None, new)
        atomic_write_json(path, merged)
        atomic_write_csv(out / "erasure.csv", [_flat(r) for r in merged["rows"]], CSV_COLUMNS)
        print(f"{run_dir.name}: erase {concept}: {len(rows)} erasure probes, {len(causal)} causal rows → {path}")
        print(format_table(rows, causal))
    return 0


def _flat(row: dict) -> dict:
    flat = {k: v for k, v in row.items() if k != "ci95"}
    for k, (lo, hi) in row["ci95"].items():
        flat[f"{k}_lo"], flat[f"{k}_hi"] = lo, hi
    return flat


def format_table(rows: list[dict], causal: list[dict]) -> str:
    lines = []
    for target in dict.fromkeys(r["target"] for r in rows):
        sub = [r for r in rows if r["target"] == target]
        lines.append(f"\nerase {sub[0]['concept']} → probe {target} (before / after / random control; "
                     f"chance {sub[0]['chance']:.3f})")
        for r in sub:
            lines.append(f"{r['layer']:<12}{r['tokens']:<8} rank {r['rank']:>3}  {r['before']:.3f} / {r['after']:.3f}"
                         f" / {r['random_control_after']:.3f}")
    if causal:
        lines.append("\ncausal (model accuracy: clean / CLS erased / random control)")
        for c in causal:
            lines.append(f"{c['layer']:<12} {c['baseline_accuracy']:.3f} / {c['accuracy']:.3f} / "
                         f"{c['random_control_accuracy']:.3f}")
    return "\n".join(lines)
