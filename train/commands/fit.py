"""``train fit --model NAME --data SPEC [-c config.yaml] [--key value ...]`` → artifacts/runs/<run>."""
from __future__ import annotations

import argparse

from ..config import TrainConfig, field_types


def add_arguments(parser: argparse.ArgumentParser) -> None:
    keys = ", ".join(field_types())
    parser.description = (
        "Train a model and write its run folder (config.json, model.safetensors, state.pt, history.csv, "
        "metrics.json). Every TrainConfig key can be set as '--key value' (or '--key=value'; "
        "'--model_kwargs.depth 2' sets one model option); booleans accept a bare flag. "
        f"Keys: {keys}. Under torchrun the same command trains with DDP.")
    parser.add_argument("-c", "--config", default=None,
                        help="YAML config file or a preset name from train/configs (e.g. demo)")
    parser.add_argument("--hook-map", "--hook_map", dest="hook_map", nargs="+", action="extend", default=[],
                        metavar="NAME=MODULE_PATH",
                        help="hook points of a model ferlens does not know (--model MODULE:FUNCTION), e.g. "
                             "blocks=layers tokens=embed stem.stage3=cnn.layer3")
    parser.epilog = ("Examples: train fit -c demo --model ferlens_tiny_cataftermlp_s3;  train fit --resume RUN;  "
                     "train fit --model my_code.models:ir50_vit --hook-map blocks=layers (your own code, "
                     "imported from the working directory / PYTHONPATH)")
    accept_overrides(parser)


def accept_overrides(parser: argparse.ArgumentParser) -> None:
    """Make ``parser.parse_args`` keep unknown ``--key value`` tokens in ``args.overrides``
    (they are checked against TrainConfig by ``resolve_config``, with close matches)."""
    parser.allow_abbrev = False
    parse_known = parser.parse_known_args

    def parse_args(args=None, namespace=None):
        ns, rest = parse_known(args, namespace)
        ns.overrides = rest
        return ns

    parser.parse_args = parse_args


def run(args: argparse.Namespace) -> int:
    from ..config import resolve_config
    from ..engine import fit
    from ..io import read_json

    overrides = list(args.overrides)
    if args.hook_map:
        import json

        from ..models.external import parse_hook_map

        overrides += ["--hook_map", json.dumps(parse_hook_map(args.hook_map))]
    cfg: TrainConfig = resolve_config(args.config, overrides)
    run_dir = fit(cfg)
    if (run_dir / "metrics.json").is_file():
        m = read_json(run_dir / "metrics.json")
        lo, hi = m["ci95"]["accuracy"]
        print(f"{run_dir}: test accuracy {m['accuracy']:.4f} [{lo:.4f}, {hi:.4f}], macro-F1 {m['macro_f1']:.4f}, "
              f"{m['train_seconds']:.0f} s")
    return 0
