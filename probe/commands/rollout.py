"""`probe rollout --run RUN [--data SPEC] [--split test] [--n 64] [--methods rollout,grad_rollout,cls_attention]`:
attention-based maps, their metrics (merged by method into ``explain/attribution_metrics``) and overlay grids.

``gradcam`` and ``attribute`` reuse ``add_explain_arguments`` / ``run_explain`` from this module.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

DEFAULT_METHODS = ["rollout", "grad_rollout", "cls_attention"]
METRIC_COLUMNS = ["method", "layer", "deletion_auc", "insertion_auc", "part_mass", "nonpart_mass",
                  "pointing_game", "chance_part_mass", "part_mass_x_chance", "best_cell_part_mass",
                  "best_cell_pointing", "peak_cell", "peak_cell_count", "n_localised", "road", "sanity_spearman", "n"]


def add_explain_arguments(parser: argparse.ArgumentParser, default_methods: list[str]) -> None:
    """Arguments shared by ``probe rollout | gradcam | attribute``."""
    parser.add_argument("--run", required=True, help="run name under artifacts/runs or a run folder")
    parser.add_argument("--data", default=None, help="dataset spec (default: the run's data.spec)")
    parser.add_argument("--split", default="test", help="train, val or test (default: test)")
    parser.add_argument("--n", type=int, default=64, help="number of images (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image sample (default: 0)")
    parser.add_argument("--methods", default=",".join(default_methods),
                        help=f"comma-separated methods (default: {','.join(default_methods)})")
    parser.add_argument("--layer", default=None, help="target layer, e.g. blocks.3, tokens or stem.stage3")
    parser.add_argument("--batch-size", type=int, default=16, help="images per explain call (default: 16)")
    parser.add_argument("--steps", type=int, default=16, help="deletion/insertion steps (default: 16)")
    parser.add_argument("--baseline", default="blur", choices=["blur", "zero"], help="deletion canvas")
    parser.add_argument("--road", action="store_true", help="also compute ROAD (pytorch-grad-cam; slower)")
    parser.add_argument("--sanity", action="store_true",
                        help="cascading randomisation: Spearman of maps after re-initialising the whole model")
    parser.add_argument("--grid-rows", type=int, default=8, help="images in the overlay grids (default: 8)")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("n_steps", "internal_batch_size", "head_fusion", "discard_ratio", "nt_samples")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def _merge(path_json: Path, rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Existing rows of a table with the new rows replacing those with the same ``keys``."""
    from train.io import read_json

    old = read_json(path_json)["rows"] if path_json.is_file() else []
    new_keys = {tuple(r[k] for k in keys) for r in rows}
    return [r for r in old if tuple(r.get(k) for k in keys) not in new_keys] + rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Print rows as an aligned text table."""
    cols = [c for c in columns if any(c in r for r in rows)]
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for x in cells:
        print("  ".join(v.ljust(w) for v, w in zip(x, widths)))


def run_explain(args: argparse.Namespace) -> int:
    """Maps → metrics table + agreement table + overlay grids for the methods in ``args.methods``."""
    import torch
    from tqdm.auto import tqdm

    from probe import attribution, metrics, overlay
    from train.models.adapters import model_spec, token_grid
    from train.io import atomic_write_csv, atomic_write_json
    from train.runs import artifacts_root, load_run

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        attribution.get_method(m)
    model, config = load_run(args.run)
    run_dir = Path(config["run_dir"])
    batch = attribution.load_batch(config, args.data, args.split, args.n, args.seed)
    with torch.no_grad():
        targets = torch.cat([model(x) for x in batch.images.split(args.batch_size)]).argmax(-1)
    label_names = config.get("label_names") or batch.dataset.label_names
    opts = _options(args)

    def explain_all(mdl, images, tgts, method):
        return torch.cat([attribution.explain(mdl, x, method, target=t, layer=args.layer, **opts)
                          for x, t in zip(images.split(args.batch_size), tgts.split(args.batch_size))])

    grid = token_grid(model, batch.images)
    ends = metrics.endpoint_probs(model, batch.images, targets, args.baseline)  # shared by every method's curves
    rows, all_maps = [], {}
    for method in tqdm(methods, desc="methods"):
        maps = explain_all(model, batch.images, targets, method)          # (n, H, W)
        all_maps[method] = maps
        name = method if args.layer is None else f"{method}@{args.layer}"
        row = {"method": name, "layer": args.layer or _default_layer(model, method)}
        row.update(metrics.method_metrics(model, batch.images, maps, targets, batch.part_masks, label_names,
                                          steps=args.steps, baseline=args.baseline, with_road=args.road,
                                          grid_size=grid, endpoints=ends))
        if args.sanity:
            cascade = metrics.cascading_randomisation(
                model, batch.images, lambda mdl, x, t, m=method: explain_all(mdl, x, t, m), targets)
            row["sanity_spearman"] = cascade[-1]["spearman"]
        rows.append(row)

    out = run_dir / "explain"
    table = _merge(out / "attribution_metrics.json", rows, ("method",))
    atomic_write_json(out / "attribution_metrics.json", {"run": run_dir.name, "data": batch.dataset.spec,
                                                         "split": args.split, "rows": table})
    atomic_write_csv(out / "attribution_metrics.csv", table, columns=[c for c in METRIC_COLUMNS
                                                                      if any(c in r for r in table)])
    if getattr(args, "cls_read", False) and model_spec(model).cls_index is not None:
        from probe.cls_read import cls_read_record

        record = cls_read_record(model, batch.images, args.batch_size)
        atomic_write_json(out / "cls_read.json", {"run": run_dir.name, "data": batch.dataset.spec,
                                                  "split": args.split, **record})
        if "erf" in record:
            e = record["erf"]
            print(f"CLS reads cell {e['cell']} most in block {e['read_in_block']}; its token's effective receptive "
                  f"field spans {e['height_px']}x{e['width_px']} px of {record['image_size'][0]}x{record['image_size'][1]}")
    if len(all_maps) > 1:
        agree = _merge(out / "agreement.json", metrics.agreement_rows(all_maps), ("method_a", "method_b"))
        atomic_write_json(out / "agreement.json", {"rows": agree})
        atomic_write_csv(out / "agreement.csv", agree)

    k = min(args.grid_rows, batch.images.shape[0])
    mean, std = config["input"]["mean"], config["input"]["std"]
    labels = [f"{label_names[int(y)][:3]}>{label_names[int(p)][:3]}" for y, p in zip(batch.labels[:k], targets[:k])]
    fig_dir = artifacts_root() / "figures" / run_dir.name
    named = {(m if args.layer is None else f"{m}@{args.layer}"): maps[:k] for m, maps in all_maps.items()}
    for name, maps in named.items():
        overlay.save_png(overlay.overlay_grid(batch.images[:k], {name: maps}, mean, std, labels),
                         fig_dir / f"{name}.png")
    if len(named) > 1:                                                   # one grid, a column per method
        overlay.save_png(overlay.overlay_grid(batch.images[:k], named, mean, std, labels),
                         fig_dir / f"{'+'.join(named)}.png")
    print_table(rows, METRIC_COLUMNS)
    print(f"wrote {out / 'attribution_metrics.csv'} and overlays in {fig_dir}")
    return 0


# what each non-CAM method reads when no --layer is given (CAMs: probe.attribution.default_cam_layer)
METHOD_LAYERS = {"rollout": "all blocks", "grad_rollout": "all blocks", "cls_attention": "last block"}


def _default_layer(model, method: str) -> str:
    from probe.attribution import CAM, METHODS, default_cam_layer

    if issubclass(METHODS[method], CAM):
        return default_cam_layer(model)
    return METHOD_LAYERS.get(method, "input")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_explain_arguments(parser, DEFAULT_METHODS)
    parser.add_argument("--head-fusion", dest="head_fusion", default=None, choices=["mean", "max", "min"],
                        help="rollout head fusion (default: mean)")
    parser.add_argument("--discard-ratio", dest="discard_ratio", type=float, default=None,
                        help="rollout: share of the lowest attention weights dropped per layer (default: 0)")
    parser.add_argument("--no-cls-read", dest="cls_read", action="store_false",
                        help="skip explain/cls_read.json (mean CLS attention per cell and block, and the "
                             "effective receptive field of the most-read token)")


def run(args: argparse.Namespace) -> int:
    return run_explain(args)
