"""NaN guard end to end: injected non-finite losses → skip → rollback with the LR halved → stop."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from train.cli import main
from train.config import resolve_config

pytest.importorskip("train.models")
pytest.importorskip("train.data.synthfer")

TINY = ["--model", "ferlens_tiny_vit_s3", "--data", "synthfer:size=32,n=70", "--img_size", "32",
        "--model_kwargs.depth", "1", "--model_kwargs.embed_dim", "32", "--model_kwargs.num_heads", "2",
        "--epochs", "2", "--batch_size", "16", "--eval_batch_size", "64", "--bootstrap", "20",
        "--warmup_epochs", "0", "--scheduler", "constant", "--lr", "1e-3", "--run_name", "nan", "--threads", "1",
        "--amp", "none"]  # precision is not what these tests are about (auto times a probe)


def _all_finite(path):
    from safetensors.torch import load_file

    return all(torch.isfinite(v).all() for v in load_file(str(path)).values() if v.is_floating_point())


def _events(run):
    return list(csv.DictReader((run / "nan_events.csv").open()))


@pytest.mark.slow
def test_skip_then_rollback_halves_lr(tmp_path):
    from train.engine import fit

    # 3 updates per epoch: attempts 3, 4, 5 are the whole of epoch 2 → 3 skips in a row → rollback
    run = fit(resolve_config(None, TINY + ["--out", str(tmp_path), "--debug_nan_steps", "3,4,5",
                                           "--nan_max_consecutive", "3"]))
    events = _events(run)
    assert [e["action"] for e in events] == ["skip", "skip", "skip", "rollback"]
    assert {e["tensor"] for e in events} == {"loss"} and {e["epoch"] for e in events} == {"2"}
    lrs = [float(r["lr"]) for r in csv.DictReader((run / "history.csv").open())]
    assert lrs == pytest.approx([1e-3, 5e-4])              # epoch 2 re-run with the LR halved
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["guard"]["rollbacks"] == 1 and state["guard"]["lr_scale"] == 0.5
    assert state["step"] == 6                               # skipped attempts are not updates
    assert _all_finite(run / "model.safetensors")
    assert json.loads((run / "metrics.json").read_text())["n"] > 0


@pytest.mark.slow
def test_stops_after_max_rollbacks_without_nan_checkpoint(tmp_path, capsys):
    steps = ",".join(str(i) for i in range(3, 60))          # every attempt after epoch 1 is NaN
    code = main(["fit", *TINY, "--out", str(tmp_path), "--debug_nan_steps", steps, "--nan_max_consecutive", "2",
                 "--nan_max_rollbacks", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "Training diverged: loss was non-finite" in err and "\n" not in err.strip()
    run = tmp_path / "nan"
    assert [e["action"] for e in _events(run)] == ["skip", "skip", "rollback"] * 2 + ["skip", "skip", "stop"]
    assert torch.load(run / "state.pt", weights_only=True)["epoch"] == 1     # the last good epoch is kept
    assert _all_finite(run / "model.safetensors")
    assert not (run / "metrics.json").exists()


def test_nonfinite_gradient_is_named_and_skipped():
    """A gradient hook turns one parameter's gradient NaN: the step is skipped and the parameter named."""
    from train.distributed import DistInfo
    from train.engine import (build_model, load_splits, make_trainer, set_transforms, train_loader,
                              train_one_epoch)

    cfg = resolve_config(None, TINY + ["--nan_max_consecutive", "2"])
    splits = load_splits(cfg.data)
    model = build_model(cfg, 7)
    set_transforms(splits, model, cfg)
    gen = torch.Generator().manual_seed(0)
    loader = train_loader(splits["train"], cfg, DistInfo(), gen)
    t = make_trainer(cfg, model, splits["train"], loader, gen, DistInfo())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.head.weight.register_hook(lambda g: g * float("nan"))
    result = train_one_epoch(t, loader, cfg)
    assert result.diverged == "grad:head.weight"
    assert [e.action for e in t.guard.events] == ["skip", "skip"] and t.step == 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k and "num_batches" not in k)
