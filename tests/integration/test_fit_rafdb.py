"""``train fit --data rafdb:FIXTURE`` trains a tiny hybrid end-to-end on a RAF-DB-layout fixture."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

RAF_CODES = {"surprise": 1, "fear": 2, "disgust": 3, "happiness": 4, "sadness": 5, "anger": 6, "neutral": 7}


def write_rafdb_fixture(root: Path, per_class_train: int = 6, per_class_test: int = 2) -> int:
    """RAF-DB basic layout (label list, aligned 100x100 JPEGs, manual attributes) from SynthFER faces."""
    from train.data import synthfer

    ds = synthfer.load(None, "train", size=64, n=700, seed=1)
    pools = {name: list(np.flatnonzero(ds.labels == k)) for k, name in enumerate(ds.label_names)}
    lines, k = [], 0
    for part, count in (("train", per_class_train), ("test", per_class_test)):
        for name in RAF_CODES:
            for _ in range(count):
                k += 1
                stem = f"{part}_{k:05d}"
                lines.append(f"{stem}.jpg {RAF_CODES[name]}")
                img = ds.load_image(int(pools[name].pop())).resize((100, 100), Image.BILINEAR)
                (root / "Image/aligned").mkdir(parents=True, exist_ok=True)
                img.save(root / "Image/aligned" / f"{stem}_aligned.jpg", quality=95)
                attr = root / "Annotation/manual" / f"{stem}_manu_attri.txt"
                attr.parent.mkdir(parents=True, exist_ok=True)
                attr.write_text("".join(f"{30 + i}.0\t{40 + i}.0\n" for i in range(5)) + f"{k % 2}\n{k % 3}\n{k % 5}\n")
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel/list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return per_class_test * len(RAF_CODES)


def test_fit_on_rafdb_fixture(tmp_path, _artifacts_root):
    pytest.importorskip("train.models")
    pytest.importorskip("train.engine")
    from train.cli import main
    from train.runs import list_runs

    n_test = write_rafdb_fixture(tmp_path / "RAF-DB")
    spec = f"rafdb:{tmp_path / 'RAF-DB'}"
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
