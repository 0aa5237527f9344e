"""``train fit --data rafdb:FIXTURE`` trains a tiny hybrid end-to-end on a RAF-DB-layout fixture."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_fit_on_rafdb_fixture(tmp_path):
    pytest.importorskip("train.models")
    pytest.importorskip("train.engine")
    from train.cli import main
    from train.data import load_dataset, synthfer
    from train.runs import list_runs

    root = synthfer.export(tmp_path / "RAF-DB", size=48, n=70, seed=0, fmt="rafdb")  # the RAF-DB layout
    spec = f"rafdb:{root}"
    n_test = len(load_dataset(spec, "test"))
    rc = main(["fit", "--model", "ferlens_tiny_vit_s3", "--data", spec, "--epochs", "1", "--batch_size", "16",
               "--eval_batch_size", "32", "--img_size", "48", "--bootstrap", "50", "--run_name", "rafdb-fixture"])
    assert rc == 0
    runs = list_runs()
    assert [r.name for r in runs] == ["rafdb-fixture"]
    run = runs[0]
    for name in ("config.json", "model.safetensors", "history.csv", "metrics.json"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["spec"] == spec
    assert config["label_names"] == ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"]
    assert config["data"]["attr_kinds"] == {"gender": "categorical", "race": "categorical", "age": "categorical"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n"] == n_test and 0.0 <= metrics["accuracy"] <= 1.0
    assert len(metrics["confusion_matrix"]) == 7
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert rows and np.isfinite(float(rows[-1]["train_loss"]))
