"""`train sweep`: a 2×2 grid × 2 seeds gives a summary with t-intervals, the best config and a chart."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import stats

from train.cli import main
from train.sweep import parse_grid, point_overrides

pytest.importorskip("train.models")
pytest.importorskip("train.data.synthfer")

TINY = ["--img_size", "32", "--model_kwargs.embed_dim", "32", "--model_kwargs.num_heads", "2", "--epochs", "1",
        "--batch_size", "16", "--eval_batch_size", "64", "--bootstrap", "0", "--warmup_epochs", "0",
        "--threads", "1"]


def test_parse_grid_forms():
    assert parse_grid(["lr=1e-4,3e-4", "depth=2,4"]) == {"lr": [1e-4, 3e-4], "depth": [2, 4]}
    assert parse_grid(["lr=1e-4,3e-4,depth=2,4"]) == {"lr": [1e-4, 3e-4], "depth": [2, 4]}
    assert point_overrides({"lr": 1e-4, "depth": 2}) == ["--lr", "0.0001", "--model_kwargs.depth", "2"]


@pytest.mark.slow
def test_sweep_2x2_grid_2_seeds_summary(_artifacts_root, capsys):
    argv = ["sweep", "--model", "ferlens_tiny_vit_s3", "--data", "synthfer:size=32,n=70", "--grid", "lr=1e-3,3e-3",
            "depth=1,2", "--seeds", "2", "--name", "grid", "--launcher", "serial", *TINY]
    assert main(argv) == 0
    out_dir = _artifacts_root / "sweeps" / "grid"
    runs = list(csv.DictReader((out_dir / "runs.csv").open()))
    assert len(runs) == 8 and len(list((_artifacts_root / "runs").iterdir())) == 8
    summary = json.loads((out_dir / "summary.json").read_text())
    rows = summary["rows"]
    assert len(rows) == 4 and all(r["n_seeds"] == 2 for r in rows)
    for r in rows:
        accs = [float(x["accuracy"]) for x in runs if float(x["lr"]) == r["lr"] and int(x["depth"]) == r["depth"]]
        mean, half = np.mean(accs), stats.t.ppf(0.975, 1) * np.std(accs, ddof=1) / np.sqrt(2)
        assert r["accuracy_mean"] == pytest.approx(mean)
        assert (r["accuracy_lo"], r["accuracy_hi"]) == pytest.approx((mean - half, mean + half))
    assert summary["best"] == rows[0] and rows[0]["accuracy_mean"] == max(r["accuracy_mean"] for r in rows)
    assert list(csv.DictReader((out_dir / "summary.csv").open()))[0]["accuracy_mean"]
    assert (out_dir / "accuracy_vs_lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "best: lr=" in capsys.readouterr().out
    # a second call reuses the finished runs (no new fits) and gives the same table
    assert main(argv) == 0
    assert json.loads((out_dir / "summary.json").read_text())["rows"] == rows


def test_sweep_bad_grid_key_fails_before_any_fit(_artifacts_root, capsys):
    argv = ["sweep", "--model", "ferlens_tiny_vit_s3", "--data", "synthfer:size=32,n=70", "--grid", "lr=1e-3",
            "--seeds", "1", "--epochz", "1"]
    assert main(argv) == 2
    assert "Unknown config key 'epochz'" in capsys.readouterr().err
    assert not (_artifacts_root / "runs").exists()
