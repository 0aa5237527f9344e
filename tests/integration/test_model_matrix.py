"""Every `probe` command on every model family: ferlens vit / cataftermlp, timm ViT, distilled DeiT, timm's
ResNetV2–ViT hybrid and CaiT, each saved as a normal run folder (random init, 64 px, 2 blocks), with the numbers
checked against the model adapter's layout (patch readouts exclude every prefix token, rollout maps in [0, 1],
CLS interventions only where a CLS exists)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytest.importorskip("timm")
pytest.importorskip("train.data.synthfer")

LABELS = ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"]
SPEC = "synthfer:size=64,n=300,seed=0"
FERLENS = {"img_size": 64, "depth": 2, "embed_dim": 32, "num_heads": 2}
TIMM = {"img_size": 64, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}
# run name -> (registry name, kwargs, prefix tokens of the final sequence)
FAMILIES = {
    "ferlens_vit": ("ferlens_tiny_vit_s3", FERLENS, 1),
    "ferlens_cataftermlp": ("ferlens_tiny_cataftermlp_s3", FERLENS, 1),
    "timm_vit": ("vit_tiny_patch16_224", TIMM, 1),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", TIMM, 2),
    "resnetv2_hybrid": ("vit_tiny_r_s16_p8_224", {**TIMM, "patch_size": 2}, 1),
    "cait": ("cait_xxs24_224", TIMM, 1),
}

TRICKY = ("deit_distilled", "cait", "ferlens_cataftermlp")  # two prefix tokens, CLS-less blocks, class attention


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run folder per family (config names the model, so `load_run` rebuilds it)."""
    import torch

    from train.models import create_model
    from train.runs import save_run

    root = tmp_path_factory.mktemp("matrix") / "runs"
    out = {}
    for run, (name, kwargs, _) in FAMILIES.items():
        torch.manual_seed(0)
        model = create_model(name, num_classes=7, **kwargs)
        config = {"model": {"name": name, "kwargs": kwargs}, "num_classes": 7, "label_names": LABELS,
                  "data": {"spec": SPEC}, "input": {"img_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}}
        out[run] = save_run(root / run, model, config)
    return out


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("run", list(FAMILIES))
def test_extract_and_linear(runs, run, capsys):
    """`probe extract` + `probe linear`: stored patch means equal a manual mean over the non-prefix tokens."""
    import torch

    from probe.cache import run_with_cache
    from probe.cli import main
    from probe.features import load_features
    from train.data import load_dataset
    from train.engine import make_eval_transform
    from train.models.adapters import model_spec
    from train.runs import load_run

    d = runs[run]
    assert main(["extract", "--run", str(d), "--batch-size", "16", "--patch-tokens"]) == 0
    fs = load_features(d)
    model, config = load_run(d)
    spec = model_spec(model)
    assert fs.layers == list(spec.token_layers) and fs.cls_layers == spec.cls_layers
    assert fs.grid_size == (8, 8) and fs.patch_tokens.shape[2] == 64
    ds = load_dataset(SPEC, "test", transform=make_eval_transform(config))
    x = torch.stack([ds[i][0] for i in range(4)])
    last_patch, last_cls = spec.patch_layers[-1], spec.cls_layers[-1]
    cache = run_with_cache(model, x, names=[last_patch, last_cls])
    prefix = spec.layout(last_patch).num_prefix
    manual = cache[last_patch][:, prefix:].mean(1).numpy()                 # manual: skip every prefix token
    np.testing.assert_allclose(fs.readout("patch", last_patch)[:4], manual, atol=1e-5)
    np.testing.assert_allclose(fs.readout("cls", last_cls)[:4], cache[last_cls][:, spec.layout(last_cls).cls_index],
                               atol=1e-5)
    if run == "deit_distilled":  # the distillation token (index 1) never enters the patch mean
        with_dist = cache[last_patch][:, 1:].mean(1).numpy()
        assert not np.allclose(fs.readout("patch", last_patch)[:4], with_dist, atol=1e-4)
    if run == "cait":
        assert fs.cls_layers == ["blocks_token_only.0", "blocks_token_only.1"]
        assert fs.patch_layers == ["tokens", "blocks.0", "blocks.1"]
    assert main(["norms", "--run", str(d), "--n", "8"]) == 0
    norms = _csv(d / "probes" / "norms.csv")
    assert {(r["layer"], r["tokens"]) for r in norms} == ({(n, "cls") for n in spec.cls_layers}
                                                          | {(n, "patch") for n in spec.patch_layers})
    entropy = {r["layer"] for r in _csv(d / "probes" / "attn_entropy.csv")}
    assert entropy == {spec.block_of(a) for a in spec.cls_attention_layers()}
    assert main(["linear", "--run", str(d), "--tokens", "cls,patch", "--targets", "expression", "--cv", "2",
                 "--seeds", "1"]) == 0
    rows = json.loads((d / "probes" / "linear.json").read_text())
    have = {(r["layer"], r["tokens"]) for r in rows}
    assert have == {(layer, "cls") for layer in spec.cls_layers} | {(layer, "patch") for layer in spec.patch_layers}
    assert all(0.0 <= r["metric"]["accuracy"] <= 1.0 and r["chance"] > 0 for r in rows)
    capsys.readouterr()


@pytest.mark.slow
@pytest.mark.parametrize("run", list(FAMILIES))
def test_explain_commands(runs, run, _artifacts_root, capsys):
    """`probe rollout | gradcam | attribute --methods ig`: one metrics row per method, every number in range."""
    from probe.cli import main

    d = runs[run]
    common = ["--run", str(d), "--n", "4", "--steps", "4", "--grid-rows", "2"]
    tricky = run in TRICKY  # layouts other than [CLS; patches]: every attention and grid method too
    attention = "rollout,grad_rollout,cls_attention" if tricky else "rollout"
    pixels = "ig,occlusion" if tricky else "ig"
    assert main(["rollout", *common, "--methods", attention]) == 0
    assert main(["gradcam", *common, "--methods", "gradcam"]) == 0
    assert main(["attribute", *common, "--methods", pixels, "--n-steps", "4"]) == 0
    rows = {r["method"]: r for r in _csv(d / "explain" / "attribution_metrics.csv")}
    assert set(rows) == set(attention.split(",")) | {"gradcam"} | set(pixels.split(","))
    for r in rows.values():
        assert r["n"] == "4"
        for k in ("deletion_auc", "insertion_auc", "part_mass", "pointing_game"):
            assert 0.0 <= float(r[k]) <= 1.0, (r["method"], k, r[k])
    for m in ("rollout", "gradcam", "ig"):
        assert (_artifacts_root / "figures" / d.name / f"{m}.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()


@pytest.mark.parametrize("run", list(FAMILIES))
def test_intervene(runs, run, capsys):
    """`probe intervene`: CLS modes at every layer that holds a CLS, patch_parts at every layer with patches."""
    from probe.cli import main
    from train.models.adapters import model_spec
    from train.runs import load_run

    d = runs[run]
    args = ["intervene", "--run", str(d), "--n", "8", "--modes", "mean,zero,patch_parts"]
    if run not in ("ferlens_vit", "cait"):
        args.append("--no-counterfactual")  # the renders are the same for every family: two of them suffice
    assert main(args) == 0
    rows = _csv(d / "explain" / "interventions.csv")
    spec = model_spec(load_run(d)[0])
    by_mode = {m: [r["layer"] for r in rows if r["mode"] == m] for m in ("mean", "zero", "patch_parts")}
    assert by_mode["zero"] == spec.cls_layers
    # mean-CLS on the token embedding is a no-op (one learned CLS vector for every image): that row is dropped
    assert by_mode["mean"] == [layer for layer in spec.cls_layers if layer != "tokens"]
    assert by_mode["patch_parts"] == spec.patch_layers
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 and r["n"] in ("8",) or r["layer"] == "input" for r in rows)
    if run in ("ferlens_vit", "cait"):
        assert any(r["mode"] == "counterfactual" for r in rows)
    capsys.readouterr()


@pytest.mark.slow
def test_figures_and_report_over_every_family(runs, tmp_path, capsys):
    """`probe figures` + `probe report` over all six runs at once (after the commands above wrote artifacts)."""
    from probe.cli import main

    names = ",".join(str(d) for d in runs.values())
    for d in runs.values():
        if not (d / "probes" / "linear.json").is_file():
            assert main(["linear", "--run", str(d), "--tokens", "cls,patch", "--cv", "2", "--seeds", "1"]) == 0
    assert main(["figures", "--runs", names, "--out", str(tmp_path / "fig"), "--formats", "png",
                 "--only", "1,5"]) == 0
    manifest = json.loads((tmp_path / "fig" / "figures.json").read_text())
    assert manifest["runs"] == list(runs)
    fig1 = _csv(next((tmp_path / "fig").glob("fig1_*.csv")))
    assert {r["run"] for r in fig1} >= set(runs) or {r.get("label") for r in fig1} >= set(runs)
    grid = _csv(next((tmp_path / "fig").glob("fig5_*.csv")))
    methods = {(r.get("run") or r.get("variant"), r["method"]) for r in grid}
    for run in runs:  # every family gets its attention and gradient maps in the attribution grid
        assert {m for (v, m) in methods if v == run} >= {"rollout", "gradcam"}, (run, methods)
    assert main(["report", "--runs", names, "--out", str(tmp_path / "report"), "--figures", str(tmp_path / "fig")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    for run in runs:
        assert run in md
    capsys.readouterr()
