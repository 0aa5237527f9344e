"""`probe extract | linear | cka | umap | norms` end to end on tiny untrained runs."""
from __future__ import annotations

import csv
import json

import pytest

pytest.importorskip("train.models")
pytest.importorskip("train.data.synthfer")
pytest.importorskip("train.engine")

SPEC = "synthfer:size=32,n=400,seed=0"


def make_run(root, name, block):
    import torch

    from train.models import create_model
    from train.runs import save_run

    torch.manual_seed(0)
    model_name = f"ferlens_tiny_{block}_s3"
    config = {"model": {"name": model_name, "kwargs": {"img_size": 32}}, "num_classes": 7,
              "label_names": ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"],
              "data": {"spec": SPEC, "attr_kinds": {}}, "input": {"img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}}
    return save_run(root / "runs" / name, create_model(model_name, num_classes=7, img_size=32), config)


@pytest.mark.slow
def test_probe_cli_end_to_end(_artifacts_root, capsys):
    from probe.cli import main

    vit, cat = make_run(_artifacts_root, "vit", "vit"), make_run(_artifacts_root, "cat", "cataftermlp")
    assert main(["extract", "--run", "vit", "--batch-size", "16"]) == 0
    assert (vit / "features" / "synthfer-n400-seed0-size32-test" / "index.json").is_file()
    assert main(["linear", "--run", "vit,cat", "--tokens", "cls,patch", "--targets", "expression,background,yaw",
                 "--layers", "0,-1", "--cv", "2", "--seeds", "1", "--baseline", "random-init"]) == 0
    out = capsys.readouterr().out
    assert "expression (accuracy [selectivity]" in out and "blocks.3" in out
    rows = json.loads((cat / "probes" / "linear.json").read_text())
    assert {r["target"] for r in rows} == {"expression", "background", "yaw"}
    assert all(r["random_init_accuracy"] is not None for r in rows)
    by = {(r["target"], r["layer"], r["tokens"]): r for r in rows}
    assert by[("expression", "tokens", "patch")]["metric"] == by[("expression", "blocks.3", "patch")]["metric"]
    with open(cat / "probes" / "linear.csv") as f:
        header = next(csv.reader(f))
    assert {"accuracy", "accuracy_lo", "accuracy_hi", "selectivity", "random_init_accuracy"} <= set(header)

    assert main(["cka", "--run", "vit,cat"]) == 0
    cka = json.loads((vit / "probes" / "cka.json").read_text())
    names = [m["name"] for m in cka["matrices"]]
    assert names[:3] == ["cls_vs_cls", "patch_vs_patch", "cls_vs_patch"] and "vit_vs_cat_cls" in names
    diag = cka["matrices"][1]["values"]  # patch_vs_patch (CLS at `tokens` is a constant: CKA 0 by convention)
    assert all(abs(diag[i][i] - 1) < 1e-6 for i in range(len(diag)))
    assert (vit / "probes" / "cka.png").stat().st_size > 1000

    assert main(["umap", "--run", "vit", "--method", "pca", "--layers", "0,-1"]) == 0
    scores = json.loads((vit / "probes" / "umap_scores.json").read_text())
    assert len(scores) == 4 and all(0 <= s["trustworthiness"] <= 1 for s in scores)
    with open(vit / "probes" / "umap.csv") as f:
        header = next(csv.reader(f))
    assert header[:7] == ["sample_id", "layer", "tokens", "method", "x", "y", "expression"]

    assert main(["norms", "--run", "cat", "--n", "16"]) == 0
    with open(cat / "probes" / "norms.csv") as f:
        norms = list(csv.DictReader(f))
    assert {r["tokens"] for r in norms} == {"cls", "patch"}
    with open(cat / "probes" / "attn_entropy.csv") as f:
        ent = list(csv.DictReader(f))
    assert ent and all(0 <= float(r["entropy_norm"]) <= 1 + 1e-6 for r in ent)

    assert main(["linear", "--run", "vit", "--tokens", "cls,nope"]) == 2
    assert "valid readouts are" in capsys.readouterr().err
    assert main(["linear", "--run", "vit", "--targets", "pose"]) == 2
    assert "valid targets are expression" in capsys.readouterr().err


@pytest.mark.slow
def test_erase_several_concepts_in_one_call(_artifacts_root, capsys):
    """`probe erase --concept expression,background` writes both concepts' rows (and causal rows for the CLS)
    in one process, exactly as two calls would leave them in erasure.json."""
    from probe.cli import main

    cat = make_run(_artifacts_root, "cat", "cataftermlp")
    assert main(["erase", "--run", "cat", "--concept", "expression,background", "--layers", "-1", "--cv", "2",
                 "--seeds", "2", "--fit-split", "val", "--causal-n", "16", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "erase expression:" in out and "erase background:" in out
    data = json.loads((cat / "probes" / "erasure.json").read_text())
    assert {r["concept"] for r in data["rows"]} == {"expression", "background"}
    assert {(r["concept"], r["target"]) for r in data["rows"]} == {
        ("expression", "expression"), ("background", "background"), ("background", "expression")}
    assert {c["concept"] for c in data["causal"]} == {"expression", "background"}
    for r in data["rows"]:
        assert 0.0 <= r["after"] <= 1.0 and r["n_seeds"] == 2
    with pytest.raises(SystemExit):
        main(["erase", "--run", "cat"])  # --concept is required
