"""`train fit` / `train eval` end to end on a tiny SynthFER setting, and bad inputs (one sentence, nothing written)."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from train.cli import main
from train.config import resolve_config

pytest.importorskip("train.models")
pytest.importorskip("train.data.synthfer")

DATA = "synthfer:size=32,n=70"
TINY = ["--model", "ferlens_tiny_vit_s3", "--data", DATA, "--img_size", "32", "--model_kwargs.depth", "1",
        "--model_kwargs.embed_dim", "32", "--model_kwargs.num_heads", "2", "--epochs", "2", "--batch_size", "16",
        "--eval_batch_size", "64", "--bootstrap", "50", "--warmup_epochs", "0", "--run_name", "tiny",
        "--threads", "1"]


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from train.engine import fit

    out = tmp_path_factory.mktemp("runs")
    return fit(resolve_config(None, TINY + ["--out", str(out), "--ema_decay", "0.9"]))


@pytest.mark.slow
def test_run_folder_follows_the_contract(tiny_run):
    from train.engine import make_eval_transform
    from train.runs import load_run

    assert {"config.json", "model.safetensors", "state.pt", "history.csv", "metrics.json"} <= set(_files(tiny_run))
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["model"] == {"name": "ferlens_tiny_vit_s3",
                            "kwargs": {"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 32}}
    assert cfg["num_classes"] == 7 and len(cfg["label_names"]) == 7
    assert cfg["data"]["spec"] == DATA and cfg["data"]["attr_kinds"]["identity"] == "categorical"
    assert cfg["input"] == {"img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert cfg["train"]["epochs"] == 2 and cfg["seed"] == 0 and cfg["ferlens_version"]
    rows = list(csv.DictReader((tiny_run / "history.csv").open()))
    assert list(rows[0]) == ["epoch", "step", "lr", "train_loss", "val_loss", "val_acc", "val_macro_f1", "seconds"]
    assert [int(r["epoch"]) for r in rows] == [1, 2] and int(rows[-1]["step"]) == 6   # 52 train // 16 = 3 steps
    m = json.loads((tiny_run / "metrics.json").read_text())
    for key in ("split", "data", "n", "accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece", "ci95",
                "per_class", "confusion_matrix", "label_names", "best_epoch", "best_val_acc", "train_seconds"):
        assert key in m, key
    assert m["split"] == "test" and m["n"] == sum(map(sum, m["confusion_matrix"]))
    assert m["ci95"]["accuracy"][0] <= m["accuracy"] <= m["ci95"]["accuracy"][1]
    state = torch.load(tiny_run / "state.pt", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 6 and state["ema"] is not None
    model, config = load_run(tiny_run)      # rebuilds from the folder alone (EMA weights saved)
    x = make_eval_transform(config)(__import__("PIL.Image", fromlist=["Image"]).new("RGB", (64, 64)))
    assert model(x[None]).shape == (1, 7)


@pytest.mark.slow
def test_eval_command_on_other_split(tiny_run, capsys):
    before = json.loads((tiny_run / "metrics.json").read_text())
    assert main(["eval", "--run", str(tiny_run), "--split", "val", "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "macro-F1" in out
    m = json.loads((tiny_run / "metrics-synthfer-n70-size32-val.json").read_text())
    assert m["split"] == "val" and m["n"] == 8
    assert main(["eval", "--run", str(tiny_run), "--bootstrap", "50"]) == 0   # own test split → metrics.json
    after = json.loads((tiny_run / "metrics.json").read_text())
    assert after["accuracy"] == pytest.approx(before["accuracy"]) and after["best_epoch"] == before["best_epoch"]


@pytest.mark.parametrize("tokens, fragment", [
    (["--model", "ferlens_tiny_vit_s4"], "Unknown model 'ferlens_tiny_vit_s4'"),
    (["--lrr", "1e-3"], "Unknown config key 'lrr'"),
    (["--data", "rafdb:/no/such/folder"], "/no/such/folder"),
    (["--data", "synthfer:size=9"], "size"),
    (["-c", "BADYAML"], "is not valid YAML"),
])
def test_bad_inputs_one_sentence_nothing_written(tmp_path, capsys, _artifacts_root, tokens, fragment):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("epochs: [1,\n")
    tokens = [str(bad_yaml) if t == "BADYAML" else t for t in tokens]
    argv = ["fit"] + TINY + tokens
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train fit: error: ") and fragment in err and "\n" not in err, err
    assert "Traceback" not in err
    assert _files(_artifacts_root) == []


def test_unknown_model_lists_close_matches(capsys):
    assert main(["fit"] + TINY + ["--model", "ferlens_tiny_vit_s4"]) == 2
    assert "Did you mean: ferlens_tiny_vit_s3" in capsys.readouterr().err


def test_existing_run_folder_needs_resume_or_overwrite(capsys, _artifacts_root):
    run = _artifacts_root / "runs" / "tiny"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    assert main(["fit"] + TINY) == 2
    err = capsys.readouterr().err
    assert "already exists; pass --resume tiny" in err and "--overwrite" in err
    assert _files(_artifacts_root) == ["runs/tiny/config.json"]
    assert (run / "config.json").read_text() == "{}"
