"""The findings report states numbers read from artifacts (change an artifact → the text changes)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from probe import report as R

_spec = importlib.util.spec_from_file_location("ferlens_test_figures", Path(__file__).with_name("test_figures.py"))
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)


@pytest.fixture
def runs(_artifacts_root) -> list[str]:
    return fx.build_runs(_artifacts_root)


def _linear(root: Path, run: str) -> Path:
    return root / "runs" / run / "probes" / "linear.json"


def test_report_numbers_come_from_artifacts(runs, _artifacts_root, tmp_path):
    before = R.build_report(runs, tmp_path / "r", figures_dir=tmp_path / "none")
    assert "93.0% [89.0, 96.0]" in before.markdown  # vit test accuracy and CI from metrics.json
    dec = before.facts["per_run"]["vit_fx"]["decodable"]["cls"]
    assert dec["layer_index"] == 3 and dec["best_accuracy"] == pytest.approx(0.93)
    # Edit one probe accuracy in linear.json: the decodable layer and the sentence follow it.
    path = _linear(_artifacts_root, "vit_fx")
    rows = json.loads(path.read_text())
    for row in rows:
        if row["target"] == "expression" and row["tokens"] == "cls" and row["layer"] == "blocks.1":
            row["metric"]["accuracy"] = 0.9123
            row["ci95"]["accuracy"] = [0.8811, 0.9377]
    path.write_text(json.dumps(rows))
    after = R.build_report(runs, tmp_path / "r", figures_dir=tmp_path / "none")
    assert after.markdown != before.markdown
    dec = after.facts["per_run"]["vit_fx"]["decodable"]["cls"]
    assert dec["layer_index"] == 2 and dec["accuracy"] == pytest.approx(0.9123)
    assert "from the CLS token at layer 2 (after block 1): 91.2% [88.1, 93.8]" in after.markdown
    assert "91.2% [88.1, 93.8]" in after.html


def test_decodable_layer_definition():
    rows = pd.DataFrame({"layer": ["tokens", "blocks.0", "blocks.1", "blocks.2"], "layer_index": [0, 1, 2, 3],
                         "value": [0.2, 0.5, 0.85, 0.9], "lo": [0.1] * 4, "hi": [0.95] * 4, "chance": [0.1] * 4})
    dec = R.decodable_layer(rows)
    # threshold = 0.1 + 0.9 * (0.9 - 0.1) = 0.82 → first reached at layer 2
    assert dec["threshold"] == pytest.approx(0.82) and dec["layer_index"] == 2 and dec["best_layer_index"] == 3


def test_sections_state_selectivity_interventions_localisation_efficiency(runs, tmp_path):
    rep = R.build_report(runs, tmp_path / "r", figures_dir=tmp_path / "none")
    md = rep.markdown
    cat = rep.facts["per_run"]["cat_fx"]
    keep = {k["target"]: k for k in cat["keep"]}
    assert keep["expression"]["patch"]["selectivity"] == pytest.approx(0.373 - (1 / 7 + 0.05), abs=1e-3)
    assert "| expression | 91.0% [88.0, 94.0] | +71.7 pts | 37.3% [34.3, 40.3] | +18.0 pts | 14.3% |" in md
    iv = rep.facts["per_run"]["vit_fx"]["interventions"]
    assert iv["worst_layer_index"] == 0 and iv["baseline"] == pytest.approx(0.93)
    assert "test faces from 93.0% to 37.2%" in md
    # after the last block mean-CLS collapses to one class: labelled, not reported as the largest drop
    assert iv["last_collapsed"] and iv["worst_layer_index"] != iv["last_layer_index"]
    assert "After the last block it collapses to one class (100.0% of the predictions are one class" in md
    assert iv["patch_control"]["random"]["delta"] > iv["patch_control"]["top"]["delta"]
    assert "one random patch token −0.9 pts [−3.9, +2.1] (the control)" in md
    assert "| cataftermlp | ig | 0.600 | 12.0× | 0.700 | 0.800 | 0.900 | 3,3 (43) | 0.250 | 0.650 | 64 |" in md
    assert "gradcam peaks on cell 3,3 in 42 of 64 faces" in md
    assert "cataftermlp has 0.77× the parameters, 0.77× the MACs and 1.30× the peak inference throughput" in md
    assert "train fit --model ferlens_tiny_vit_s3 --data synthfer:size=32,n=140,seed=0" in md
    assert '"lr": 0.0004' in md  # the config block comes from config.json
    assert "No figures for these runs" in md


def test_missing_artifacts_are_named(runs, _artifacts_root, tmp_path):
    (_artifacts_root / "runs" / "cat_fx" / "explain" / "interventions.csv").unlink()
    (_artifacts_root / "runs" / "vit_fx" / "profile.json").unlink()
    rep = R.build_report(runs, tmp_path / "r", figures_dir=tmp_path / "none")
    assert "probe intervene --run cat_fx" in rep.markdown
    assert "train profile --run vit_fx" in rep.markdown
    assert "**vit**: replacing the CLS token" in rep.markdown  # the other run's section is still there


def test_cli_writes_self_contained_html_with_figures(runs, _artifacts_root, tmp_path, capsys):
    from probe.cli import main
    from probe.figures import render_figures

    figs = _artifacts_root / "figures"
    render_figures(runs, figs, only=[1, 8], formats=("png",))
    out = tmp_path / "rep"
    assert main(["report", "--runs", ",".join(runs), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "fig1_probe_accuracy.png" in md and "fig8_training_curves.png" in md
    assert html.count("data:image/png;base64,") == 2 and "<table>" in html
    assert json.loads((out / "facts.json").read_text())["runs"] == runs
    # The link in report.md resolves from the report folder.
    link = md.split("](", 1)[1].split(")", 1)[0]
    assert (out / link).resolve().is_file()


def test_not_encoded_cites_the_upper_bound_and_erasure_and_mlp_sections_follow_artifacts(runs, _artifacts_root, tmp_path):
    path = _linear(_artifacts_root, "vit_fx")
    rows = json.loads(path.read_text())
    last = max(r["layer_index"] for r in rows)
    cell = next(r for r in rows if r["layer_index"] == last and r["tokens"] == "cls" and r["target"] != "expression"
                and "accuracy" in r["metric"])
    cell["metric"]["accuracy"], cell["ci95"]["accuracy"] = cell["chance"] + 0.01, [cell["chance"] - 0.01,
                                                                                 cell["chance"] + 0.031]
    cell["n_seeds"], cell["cv_scheme"], cell["cv_groups"] = 3, "grouped", "identity"
    mlp = dict(cell, probe="mlp", compression=1.02)
    path.write_text(json.dumps(rows + [mlp]))
    erasure = {"run": "vit_fx", "fit_split": "train", "eval_split": "test", "concepts": ["identity"], "rows": [
        {"layer": cell["layer"], "layer_index": last, "tokens": "cls", "concept": "identity", "target": "expression",
         "metric": "accuracy", "before": 0.93, "after": 0.912, "random_control_after": 0.925, "rank": 19,
         "chance": 0.16, "ci95": {"before": [0.9, 0.96], "after": [0.89, 0.93], "random_control_after": [0.92, 0.93]}}],
        "causal": [{"layer": cell["layer"], "concept": "identity", "baseline_accuracy": 0.93, "accuracy": 0.9,
                    "random_control_accuracy": 0.92, "ci95": {"accuracy": [0.87, 0.93]}, "rank": 19, "n": 128}]}
    (_artifacts_root / "runs" / "vit_fx" / "probes" / "erasure.json").write_text(json.dumps(erasure))
    md = R.build_report(runs, tmp_path / "r", figures_dir=tmp_path / "none").markdown
    assert f"**{cell['target']}** (≤ +3.1 pts over chance (95% upper bound))" in md
    assert "erasing **identity** (rank 19) takes the expression probe from 93.0% [90.0, 96.0] to 91.2% [89.0, 93.0]" in md
    assert "removing 19 random directions leaves 92.5% [92.0, 93.0]" in md
    assert "its accuracy on 128 test faces goes from 93.0% to 90.0% [87.0, 93.0]" in md
    assert "MDL compression 1.02×" in md
    # one seed: the bound carries the caveat
    cell["n_seeds"] = 1
    path.write_text(json.dumps(rows))
    md = R.build_report(runs, tmp_path / "r", figures_dir=tmp_path / "none").markdown
    assert "from 1 CV seed, fewer than the 3 a bound needs" in md
