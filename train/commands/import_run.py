"""``train import --model NAME|MODULE:FUNCTION [--weights PATH] [--key-map REGEX=REPL ...] [--hook-map NAME=PATH ...]
--data SPEC --run_name NAME [--img_size N --mean M --std S] [--eval]`` → artifacts/runs/<run>."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .fit import accept_overrides

    parser.description = (
        "Turn a model trained elsewhere into a ferlens run folder (config.json + model.safetensors), so every "
        "'probe' command and the app analyse it. The checkpoint is loaded strictly: 'module.' prefixes and "
        "state_dict/model/model_state wrappers are unwrapped, other renames are --key-map rules; .pth/.pt files "
        "are read with torch.load(weights_only=True) only. '--model_kwargs.KEY VALUE' passes options to the model.")
    parser.add_argument("--model", required=True,
                        help="ferlens variant, timm name (deit_tiny_patch16_224) or MODULE:FUNCTION from your own code "
                             "(imported from the working directory / PYTHONPATH)")
    parser.add_argument("--weights", default="", help=".pth/.pt/.bin or .safetensors state dict (default: as built)")
    parser.add_argument("--key-map", "--key_map", dest="key_map", nargs="+", action="extend", default=[],
                        metavar="REGEX=REPL", help="rename checkpoint keys (re.sub, in order, after prefixes are "
                                                   "stripped; a key renamed to '' is dropped)")
    parser.add_argument("--hook-map", "--hook_map", dest="hook_map", nargs="+", action="extend", default=[],
                        metavar="NAME=MODULE_PATH",
                        help="hook points of a model ferlens does not know, e.g. blocks=layers tokens=embed "
                             "stem.stage3=cnn.layer3")
    parser.add_argument("--data", required=True, help="data spec: the run's label names and probe targets")
    parser.add_argument("--run_name", "--run-name", dest="run_name", required=True)
    parser.add_argument("--img_size", "--img-size", dest="img_size", type=int, default=0,
                        help="input side in px (default: the model's own)")
    parser.add_argument("--mean", nargs="+", default=None, help="normalisation mean, e.g. 0.5,0.5,0.5")
    parser.add_argument("--std", nargs="+", default=None, help="normalisation std, e.g. 0.5,0.5,0.5")
    parser.add_argument("--eval", action="store_true", help="then evaluate on the data's test split (metrics.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="runs root (default artifacts/runs)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--batch-size", type=int, default=256, help="--eval batch size")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=1000, help="--eval resamples for the 95%% CIs")
    parser.epilog = ("Example: train import --model my_code.models:ir50_vit --weights best.pth "
                     "--hook-map blocks=layers tokens=embed --data rafdb:/data/RAF-DB/basic --run_name ir50vit "
                     "--img_size 112 --mean 0.5 --std 0.5 --eval")
    accept_overrides(parser)


def model_kwargs(overrides: list[str]) -> dict:
    """``--model_kwargs.KEY VALUE`` tokens -> ``{KEY: value}`` (values read as YAML scalars)."""
    from ..config import parse_overrides, set_value
    from ..errors import FerlensError

    values: dict = {}
    for key, raw in parse_overrides(overrides):
        if not key.replace("-", "_").startswith("model_kwargs."):
            raise FerlensError(f"Unknown option '--{key}' for 'train import'; model options are written "
                               "--model_kwargs.KEY VALUE (see 'train import --help').")
        set_value(values, key, raw, "the command line")
    return values.get("model_kwargs", {})


def _numbers(tokens: list[str] | None) -> tuple[float, ...] | None:
    if not tokens:
        return None
    from ..errors import FerlensError

    try:
        return tuple(float(v) for t in tokens for v in t.replace(",", " ").split())
    except ValueError:
        raise FerlensError(f"Cannot read '{' '.join(tokens)}' as numbers; write e.g. --mean 0.5,0.5,0.5.") from None


def run(args: argparse.Namespace) -> int:
    from ..importer import ImportOptions, import_run
    from ..models.external import parse_hook_map
    from .evaluate import summary

    opts = ImportOptions(model=args.model, data=args.data, run_name=args.run_name, weights=args.weights,
                         model_kwargs=model_kwargs(args.overrides), key_map=list(args.key_map),
                         hook_map=parse_hook_map(args.hook_map), img_size=args.img_size,
                         mean=_numbers(args.mean), std=_numbers(args.std), seed=args.seed, out=args.out,
                         overwrite=args.overwrite)
    result = import_run(opts, evaluate=args.eval, eval_batch_size=args.batch_size, workers=args.workers,
                        bootstrap=args.bootstrap)
    cfg = result.config
    inp = cfg["input"]
    if opts.weights:
        how = f" (unwrapped {', '.join(cfg['import']['unwrapped'])})" if cfg["import"]["unwrapped"] else ""
        print(f"loaded {result.n_tensors} tensors from {opts.weights}{how}, strict")
    else:
        print(f"no --weights: the run holds {opts.model} as built (seed {opts.seed})")
    print(f"{result.run_dir}: {opts.model}, {cfg['num_classes']} classes ({', '.join(cfg['label_names'])}), "
          f"input {inp['img_size']} px, mean {inp['mean']}, std {inp['std']}"
          + (f", hook map {cfg['model']['hook_map']}" if cfg["model"].get("hook_map") else ""))
    print(f"load_run rebuilds the same logits (max |difference| {result.max_abs_diff:.1e})")
    if result.probe_note:
        print(f"note: {result.probe_note}")
    if result.metrics is not None:
        print(summary(result.metrics))
        print(f"wrote {result.run_dir / 'metrics.json'}")
    return 0
