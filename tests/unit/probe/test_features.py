"""Feature extraction: store layout, reuse vs re-extraction, resumption, cataftermlp patches, clsonly."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("train.models")
pytest.importorskip("train.data.synthfer")
pytest.importorskip("train.engine")

from probe.features import extract, extract_to_disk, load_features, open_folder  # noqa: E402
from train.errors import FerlensError  # noqa: E402

SPEC = "synthfer:size=32,n=400,seed=0"
LABELS = ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"]


def make_run(root, name, block="vit", seed=0):
    import torch

    from train.models import create_model
    from train.runs import save_run

    torch.manual_seed(seed)
    model_name = f"ferlens_tiny_{block}_s3"
    model = create_model(model_name, num_classes=7, img_size=32)
    config = {"model": {"name": model_name, "kwargs": {"img_size": 32}}, "num_classes": 7, "label_names": LABELS,
              "data": {"spec": SPEC, "attr_kinds": {}}, "input": {"img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
              "seed": seed}
    return save_run(root / "runs" / name, model, config)


def test_store_layout_and_reuse(_artifacts_root):
    run = make_run(_artifacts_root, "v")
    folder = extract_to_disk(run, progress=False, batch_size=16)
    index = json.loads((folder / "index.json").read_text())
    assert index["complete"] and index["layers"][0] == "tokens" and index["stem"] == "stem.stage3"
    fs = load_features(run)
    n, L = fs.n, len(fs.layers)
    assert fs.arrays["cls"].shape == (n, L, index["dims"]["cls"]) and fs.arrays["patch"].shape[1] == L
    assert isinstance(fs.arrays["cls"], np.memmap) and np.isfinite(fs.arrays["cls"]).all()
    assert fs.stem.shape == (n, index["dims"]["stem"]) and len(fs.sample_ids) == n
    assert "identity" in fs.target_names() and fs.target("yaw")[1] == "continuous"
    stamp = (folder / "cls.npy").stat().st_mtime_ns
    extract_to_disk(run, progress=False)  # up to date: re-used
    assert (folder / "cls.npy").stat().st_mtime_ns == stamp
    make_run(_artifacts_root, "v", seed=1)  # new weights: the cache is stale
    with pytest.raises(FerlensError, match="other weights"):
        load_features(run)
    extract_to_disk(run, progress=False, batch_size=16)
    assert json.loads((folder / "index.json").read_text())["fingerprint"] != index["fingerprint"]
    assert not np.allclose(load_features(run).arrays["cls"][:, -1], fs.arrays["cls"][:, -1])


def test_resumable_extraction_matches_one_pass(_artifacts_root):
    run = make_run(_artifacts_root, "r")
    folder = extract_to_disk(run, progress=False, batch_size=8, stop_after=8)
    assert not (folder / "index.json").exists()
    assert json.loads((folder / "progress.rank0.json").read_text())["done"] == 8
    extract_to_disk(run, progress=False, batch_size=8)
    assert not list(folder.glob("progress*")) and not list(folder.glob(".*partial"))
    from train.data import load_dataset
    from train.engine import make_eval_transform
    from train.runs import load_run

    model, config = load_run(run)
    ref = extract(model, load_dataset(SPEC, "test", transform=make_eval_transform(config)), progress=False)
    fs = load_features(run)
    for name in ("cls", "patch", "patch_max"):
        np.testing.assert_allclose(fs.arrays[name], ref.arrays[name], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fs.stem, ref.stem, rtol=1e-4, atol=1e-5)


def test_cataftermlp_patches_never_change(_artifacts_root):
    from probe.linear import evaluate_features, encode_target

    run = make_run(_artifacts_root, "c", block="cataftermlp")
    fs = open_folder(extract_to_disk(run, progress=False, patch_tokens=True))
    patch = fs.arrays["patch"]
    for i in range(1, len(fs.layers)):
        np.testing.assert_array_equal(patch[:, i], patch[:, 0])
    assert not np.allclose(fs.arrays["cls"][:, 1], fs.arrays["cls"][:, -1])
    xs = [fs.readout("patch", layer) for layer in fs.layers]
    res = evaluate_features(xs, encode_target(fs.labels, "categorical"), cv=2)
    assert len({json.dumps(r["metric"]) for r in res}) == 1  # the same probe at every layer
    # patch@r,c comes from the stored float16 tokens; their mean is the patch readout
    one = fs.readout("patch@1,2", "blocks.0")
    assert one.shape == (fs.n, fs.arrays["patch"].shape[-1])
    np.testing.assert_allclose(fs.patch_tokens[:, 1].astype(np.float32).mean(1), patch[:, 1], atol=2e-2)
    with pytest.raises(FerlensError, match="outside"):
        fs.readout("patch@9,9", "blocks.0")


def test_clsonly_records_patch_layers(_artifacts_root):
    run = make_run(_artifacts_root, "o", block="clsonly")
    fs = load_features(extract_to_disk(run, progress=False).parents[1])
    assert fs.patch_layers == ["tokens"] and fs.arrays["patch"].shape[1] == 1
    assert [p[1] for p in fs.pairs("patch", "all")] == ["tokens"]
    with pytest.raises(FerlensError, match="valid layers are tokens"):
        fs.readout("patch", "blocks.1")
