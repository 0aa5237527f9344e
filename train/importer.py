"""``train import``: a model trained elsewhere becomes a normal run folder.

    result = import_run(ImportOptions(model="my_code.models:ir50_vit", weights="ckpt.pth",
                                      data="rafdb:/data/RAF-DB/basic", run_name="ir50vit",
                                      img_size=112, mean=(0.5,) * 3, std=(0.5,) * 3,
                                      hook_map={"blocks": "layers", "tokens": "embed"}))

The model is built (ferlens variant, timm name or ``MODULE:FUNCTION``), the checkpoint is read safely
(``train.checkpoint``) and loaded strictly, and the folder (config.json + model.safetensors, optionally
metrics.json) is assembled in the claimed staging folder (``train.runs.claim_run``) and renamed into place
only once ``train.load_run`` has been shown to rebuild the same logits from it — a failed import leaves nothing.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import FerlensError

VERIFY_TOL = 1e-5   # max |logit difference| between the imported model and the run folder's rebuild


@dataclass
class ImportOptions:
    """Everything ``train import`` needs (the CLI flags, one to one)."""

    model: str                                   # ferlens / timm name or MODULE:FUNCTION
    data: str                                    # data spec: label names and attribute kinds of the run
    run_name: str
    weights: str = ""                            # .pth/.pt (weights_only) or .safetensors; "" = as built
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    key_map: list[str] = field(default_factory=list)       # REGEX=REPLACEMENT renames, applied in order
    hook_map: dict[str, str] = field(default_factory=dict)  # hook name -> module path
    img_size: int = 0                            # 0 = the model's own input size
    mean: tuple[float, ...] | None = None        # None = the model's own normalisation
    std: tuple[float, ...] | None = None
    seed: int = 0                                # seeds the build (what a run without --weights holds)
    out: str = ""                                # runs root; "" = artifacts/runs
    overwrite: bool = False


@dataclass
class ImportResult:
    run_dir: Path
    config: dict[str, Any]
    n_tensors: int
    max_abs_diff: float                          # imported model vs load_run of the written folder
    metrics: dict[str, Any] | None = None
    probe_note: str | None = None                # why probe commands cannot read the tokens (no hook map)


def run_dir_for(opts: ImportOptions) -> Path:
    from .runs import runs_root

    if not opts.run_name or Path(opts.run_name).name != opts.run_name or opts.run_name.startswith("."):
        raise FerlensError(f"--run_name '{opts.run_name}' is not a folder name; pass a plain name such as "
                           "--run_name ir50vit_rafdb.")
    return (Path(opts.out) if opts.out else Path(runs_root())) / opts.run_name


def build(opts: ImportOptions, num_classes: int):
    """The model with the import's kwargs (``img_size`` routed to models that take it); returns (model, kwargs)."""
    import torch

    from .models import create_model, takes_img_size

    kwargs = dict(opts.model_kwargs)
    if opts.img_size and takes_img_size(opts.model):
        kwargs["img_size"] = opts.img_size
    torch.manual_seed(opts.seed)
    return create_model(opts.model, num_classes=num_classes, **kwargs), kwargs


def input_config(model, opts: ImportOptions) -> dict[str, Any]:
    """config.json ``input``: the flags, else the model's timm ``pretrained_cfg``, else the factory's
    ``img_size`` default; an external model without any of them must be told."""
    from .models.external import default_of, is_external, load_factory

    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = opts.img_size or (cfg.get("input_size") or (None,))[-1]
    if not size and is_external(opts.model):
        size = default_of(load_factory(opts.model), "img_size")
    mean = opts.mean or cfg.get("mean")
    std = opts.std or cfg.get("std")
    lacking = [flag for flag, v in (("--img_size", size), ("--mean", mean), ("--std", std)) if not v]
    if lacking:
        raise FerlensError(f"{opts.model} does not say its input {', '.join(f[2:] for f in lacking)}; pass the "
                           f"values it was trained with: {' '.join(lacking)} (e.g. --img_size 112 --mean 0.5,0.5,0.5 "
                           "--std 0.5,0.5,0.5).")
    mean, std = _triple(mean, "--mean"), _triple(std, "--std")
    return {"img_size": int(size), "mean": mean, "std": std}


def _triple(values, flag: str) -> list[float]:
    values = [float(v) for v in values]
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise FerlensError(f"{flag} takes 1 or 3 numbers (one per RGB channel), got {len(values)}; "
                           f"e.g. {flag} 0.5,0.5,0.5.")
    return values


def load_weights(model, opts: ImportOptions) -> tuple[int, list[str], str | None]:
    """Read, unwrap, rename and strictly load ``opts.weights``; returns (tensors, unwrapped, sha256)."""
    from .checkpoint import apply_key_map, load_strict, parse_key_map, read_checkpoint, strip_prefixes

    rules = parse_key_map(opts.key_map)  # checked before the file is read
    if not opts.weights:
        if rules:
            raise FerlensError("--key-map renames the keys of --weights, but no --weights was given; add "
                               "--weights PATH or drop --key-map.")
        return 0, [], None
    ck = read_checkpoint(opts.weights)
    state, stripped = strip_prefixes(ck.state, model.state_dict().keys())
    state = apply_key_map(state, rules)
    load_strict(model, state, opts.weights)
    digest = hashlib.sha256(Path(opts.weights).read_bytes()).hexdigest()
    return len(state), ck.unwrapped + stripped, digest


def probe_batch(img_size: int, seed: int = 0):
    """Two fixed random images (2, 3, S, S) the import checks its outputs on."""
    import torch

    return torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(seed))


def logits_of(model, x, num_classes: int, name: str):
    """``model(x)`` in eval mode, checked to be (B, num_classes) logits."""
    import torch

    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FerlensError(f"{name} cannot run on {tuple(x.shape[1:])} images ({first}); pass the --img_size "
                           "(and model options) it was trained with.") from None
    if not isinstance(out, torch.Tensor):
        raise FerlensError(f"{name} returns a {type(out).__name__}, not a logits tensor; make its forward return "
                           "the (B, classes) logits (e.g. wrap it in a function that returns a module doing so).")
    if tuple(out.shape) != (x.shape[0], num_classes):
        raise FerlensError(f"{name} outputs {tuple(out.shape[1:])} per image but the data has {num_classes} classes; "
                           f"build it with {num_classes} outputs (--model_kwargs.num_classes {num_classes}) or pass a "
                           "data spec with its classes.")
    return out


def import_run(opts: ImportOptions, evaluate: bool = False, eval_batch_size: int = 256, workers: int = 0,
               bootstrap: int = 1000) -> ImportResult:
    """Write the run folder ``<out>/<run_name>`` for an external model (see module docstring).

    Args:
        opts: what to import.
        evaluate: also write metrics.json on the data's test split (the code of ``train eval``).
        eval_batch_size, workers, bootstrap: ``train eval``'s options.
    """
    from .data import load_dataset
    from .models import set_input_config
    from .models.external import model_entry, set_hook_map
    from .runs import claim_run, load_run, save_run

    run_dir = run_dir_for(opts)
    if run_dir.exists() and any(run_dir.iterdir()) and not opts.overwrite:
        raise FerlensError(f"The run folder {run_dir} already exists; pass --overwrite to replace it or "
                           "--run_name NAME for a new one.")
    with claim_run(run_dir, overwrite=opts.overwrite) as claim:   # staged in .<name>.partial, renamed at the end
        ds = load_dataset(opts.data, "test")
        label_names = list(ds.label_names)
        model, kwargs = build(opts, len(label_names))
        inp = input_config(model, opts)
        set_input_config(model, inp["img_size"], inp["mean"], inp["std"])
        hook_map = set_hook_map(model, opts.hook_map)
        n_tensors, unwrapped, digest = load_weights(model, opts)
        x = probe_batch(inp["img_size"], opts.seed)
        before = logits_of(model, x, len(label_names), opts.model)
        config = {"model": model_entry(opts.model, kwargs, hook_map), "num_classes": len(label_names),
                  "label_names": label_names,
                  "data": {"spec": opts.data, "attr_kinds": dict(getattr(ds, "attr_kinds", {}))},
                  "input": inp, "seed": opts.seed,
                  "import": {"weights": os.path.abspath(opts.weights) if opts.weights else None, "sha256": digest,
                             "unwrapped": unwrapped, "key_map": list(opts.key_map), "tensors": n_tensors}}
        save_run(claim.path, model, config)
        rebuilt, config = load_run(claim.path)
        diff = float((logits_of(rebuilt, x, len(label_names), opts.model) - before).abs().max())
        if diff > VERIFY_TOL:
            raise FerlensError(f"The run folder does not rebuild {opts.model} (max logit difference {diff:.2e}): "
                               "the model holds state outside its state_dict (random non-persistent buffers?); "
                               "make that state a persistent buffer or a parameter.")
        metrics = _evaluate(claim.path, eval_batch_size, workers, bootstrap) if evaluate else None
    config["run_dir"] = str(run_dir)
    return ImportResult(run_dir, config, n_tensors, diff, metrics, probe_note(rebuilt))


def probe_note(model) -> str | None:
    """Why ``probe`` commands cannot read this model's tokens yet (None when the adapter knows them)."""
    from .models.adapters import model_spec

    try:
        spec = model_spec(model)
    except FerlensError as e:
        return str(e)
    if not spec.token_layers:
        return (f"ferlens finds no token layers in {type(model).__name__}; import it again with --hook-map "
                "NAME=MODULE_PATH (e.g. blocks=layers tokens=embed stem.stage3=cnn.layer3) to probe its tokens.")
    return None


def _evaluate(run_dir: Path, batch_size: int, workers: int, bootstrap: int) -> dict[str, Any]:
    """metrics.json of the run's own test split, through ``train eval``'s code."""
    from .engine import evaluate_run
    from .io import atomic_write_json

    metrics, path = evaluate_run(str(run_dir), None, "test", batch_size, workers, bootstrap)
    atomic_write_json(path, metrics)
    return metrics
