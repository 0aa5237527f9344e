"""`probe intervene --run RUN [--data SPEC] [--split test] [--n 256] [--n-reference 256]
[--modes mean,shuffle,zero,patch_parts,top_attended_patch,random_patch] [--no-counterfactual]`:
CLS / patch interventions per layer, means from the train split, paired bootstrap CIs →
``explain/interventions.{csv,json}``."""
from __future__ import annotations

import argparse
from pathlib import Path

from probe.intervene import COLUMNS, MODES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run name under artifacts/runs or a run folder")
    parser.add_argument("--data", default=None, help="dataset spec (default: the run's data.spec)")
    parser.add_argument("--split", default="test", help="train, val or test (default: test)")
    parser.add_argument("--n", type=int, default=256, help="number of evaluated images (default: 256)")
    parser.add_argument("--n-reference", type=int, default=256,
                        help="train-split images whose mean tokens replace the ablated ones (default: 256)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the samples, the shuffle, the random patch and the bootstrap (default: 0)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    parser.add_argument("--layers", default=None, help="comma-separated layers (default: tokens and every block)")
    parser.add_argument("--no-counterfactual", action="store_true", help="skip SynthFER's neutral-face renders")
    parser.add_argument("--batch-size", type=int, default=64, help="forward batch size (default: 64)")


def run(args: argparse.Namespace) -> int:
    from probe import intervene
    from probe.attribution import load_batch
    from probe.commands.rollout import print_table
    from probe.metrics import part_ids_for
    from train.engine import make_eval_transform
    from train.errors import FerlensError
    from train.io import atomic_write_csv, atomic_write_json
    from train.models.adapters import token_grid
    from train.runs import load_run

    if args.split == "train":
        raise FerlensError("--split train would take the replacement means from the evaluated images; "
                           "evaluate on val or test.")
    model, config = load_run(args.run)
    batch = load_batch(config, args.data, args.split, args.n, args.seed)
    reference = load_batch(config, args.data, "train", args.n_reference, args.seed, masks=False)
    label_names = config.get("label_names") or batch.dataset.label_names
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    cells = None
    if batch.part_masks is None:
        modes = [m for m in modes if m != "patch_parts"]
    elif "patch_parts" in modes:
        defining, _ = part_ids_for(label_names, batch.labels)
        cells = intervene.part_cells(batch.part_masks, defining, token_grid(model, batch.images))
    layers = args.layers.split(",") if args.layers else None
    clean: list = []
    rows = intervene.run_interventions(model, batch.images, batch.labels, modes=modes, layers=layers,
                                       cells=cells, batch_size=args.batch_size, seed=args.seed,
                                       reference=reference.images, clean_logits=clean)
    if not args.no_counterfactual and hasattr(batch.dataset, "render_arrays"):
        kept, cf = intervene.synthfer_counterfactuals(batch.dataset, batch.indices, make_eval_transform(config))
        pos = [batch.indices.index(i) for i in kept]
        rows += intervene.counterfactual_rows(model, batch.images[pos], cf, batch.labels[pos], args.batch_size,
                                              clean=clean[0][pos])

    out = Path(config["run_dir"]) / "explain"
    atomic_write_json(out / "interventions.json", {"run": Path(config["run_dir"]).name,
                                                   "data": batch.dataset.spec, "split": args.split,
                                                   "reference": {"split": "train", "n": int(reference.images.shape[0])},
                                                   "collapse_share": intervene.COLLAPSE_SHARE, "rows": rows})
    atomic_write_csv(out / "interventions.csv", rows, columns=COLUMNS)
    print_table(rows, COLUMNS)
    print(f"wrote {out / 'interventions.csv'}")
    return 0
