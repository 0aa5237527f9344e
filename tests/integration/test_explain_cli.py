"""`probe rollout | gradcam | attribute | intervene` end to end on a tiny untrained run and SynthFER."""
from __future__ import annotations

import csv
import json

import pytest

pytest.importorskip("train.models")
pytest.importorskip("train.data.synthfer")
pytest.importorskip("train.engine")

LABELS = ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"]
SPEC = "synthfer:size=32,n=200,seed=0"


@pytest.fixture()
def run_dir(_artifacts_root):
    from train.models import create_model
    from train.runs import save_run

    kwargs = {"img_size": 32, "depth": 2, "embed_dim": 32, "num_heads": 2}
    model = create_model("ferlens_tiny_cataftermlp_s3", num_classes=7, **kwargs)
    config = {"model": {"name": "ferlens_tiny_cataftermlp_s3", "kwargs": kwargs}, "num_classes": 7,
              "label_names": LABELS, "data": {"spec": SPEC}, "input": {"img_size": 32, "mean": [0.5] * 3,
                                                                       "std": [0.5] * 3}}
    return save_run(_artifacts_root / "runs" / "cat", model, config)


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_explain_commands_merge_one_table(run_dir, _artifacts_root, capsys):
    from probe.cli import main

    assert main(["rollout", "--run", "cat", "--n", "3", "--steps", "4", "--methods", "rollout,cls_attention"]) == 0
    assert main(["gradcam", "--run", "cat", "--n", "3", "--steps", "4", "--methods", "gradcam"]) == 0
    assert main(["attribute", "--run", "cat", "--n", "3", "--steps", "4", "--methods", "ig", "--n-steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "deletion_auc" in out and "ig" in out
    rows = _csv(run_dir / "explain" / "attribution_metrics.csv")
    assert [r["method"] for r in rows] == ["rollout", "cls_attention", "gradcam", "ig"]
    for r in rows:
        assert r["n"] == "3"
        for k in ("deletion_auc", "insertion_auc", "part_mass", "nonpart_mass", "pointing_game"):
            assert 0.0 <= float(r[k]) <= 1.0
        assert float(r["part_mass"]) + float(r["nonpart_mass"]) <= 1.0 + 1e-6
        # chance = the defining parts' area share; the best single token cell bounds every token-level map
        assert 0.0 < float(r["chance_part_mass"]) < float(r["best_cell_part_mass"]) <= 1.0
        if r["method"] != "ig":
            assert float(r["part_mass"]) <= float(r["best_cell_part_mass"]) + 1e-6
        assert 1 <= int(r["peak_cell_count"]) <= 3
    read = json.loads((run_dir / "explain" / "cls_read.json").read_text())
    assert len(read["blocks"]) == 2 and read["erf"]["layer"] == "tokens"
    assert 1 <= read["erf"]["height_px"] <= 32 and all(0 < b["patch_share"] <= 1 for b in read["blocks"])
    # re-running a method replaces its row instead of appending
    assert main(["gradcam", "--run", "cat", "--n", "2", "--steps", "2", "--methods", "gradcam"]) == 0
    table = json.loads((run_dir / "explain" / "attribution_metrics.json").read_text())["rows"]
    assert [r["method"] for r in table].count("gradcam") == 1 and len(table) == 4
    agree = _csv(run_dir / "explain" / "agreement.csv")
    assert {(r["method_a"], r["method_b"]) for r in agree} == {("rollout", "cls_attention")}
    for m in ("rollout", "cls_attention", "gradcam", "ig"):
        png = _artifacts_root / "figures" / "cat" / f"{m}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_intervene_writes_rows_per_layer_and_mode(run_dir, capsys):
    from probe.cli import main

    assert main(["intervene", "--run", "cat", "--n", "4", "--n-reference", "6"]) == 0
    rows = _csv(run_dir / "explain" / "interventions.csv")
    from probe.intervene import COLUMNS

    assert list(rows[0]) == COLUMNS
    keys = {(r["layer"], r["mode"]) for r in rows}
    for mode in ("mean", "shuffle", "zero", "patch_parts", "top_attended_patch", "random_patch"):
        assert {("blocks.0", mode), ("blocks.1", mode)} <= keys
    assert ("tokens", "mean") not in keys and ("tokens", "zero") in keys     # the trivial rows are dropped
    assert {r["means_from"] for r in rows if r["mode"] in ("mean", "patch_parts")} == {"train"}
    assert json.loads((run_dir / "explain" / "interventions.json").read_text())["reference"]["n"] == 6
    assert ("input", "counterfactual") in keys and ("input", "counterfactual_mouth") in keys
    last = next(r for r in rows if r["layer"] == "blocks.1" and r["mode"] == "patch_parts")
    assert float(last["mean_logit_change"]) == 0.0            # cataftermlp: CLS readout ignores final patches


def test_bad_inputs_print_one_sentence(run_dir, capsys):
    from probe.cli import main

    assert main(["gradcam", "--run", "cat", "--n", "2", "--methods", "gradcm"]) == 2
    err = capsys.readouterr().err
    assert "Unknown attribution method 'gradcm'" in err and "gradcam" in err and err.count("\n") == 1
    assert main(["gradcam", "--run", "cat", "--n", "2", "--methods", "gradcam", "--layer", "blocks.7"]) == 2
    assert "Layer 'blocks.7' does not exist" in capsys.readouterr().err
    assert main(["rollout", "--run", "nope"]) == 2
    assert "Run 'nope' not found" in capsys.readouterr().err
