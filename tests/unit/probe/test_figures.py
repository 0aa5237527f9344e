"""Every paper figure renders from small schema-exact artifacts (docs/contracts.md) of two runs.

``build_runs(root)`` is the fixture builder (also used by test_report.py): two run folders with
config.json, metrics.json, history.csv, profile.json, probes/{linear.json,linear.csv,cka.json,cka.csv,
umap.csv}, explain/{attribution_metrics.csv,interventions.csv}. Figure 5 gets its maps from
``fake_attribution_source`` (the live path is tested when train.models and probe.attribution exist).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from probe import figures as F
from probe.plotting import chart_bytes
from train.io import atomic_write_csv, atomic_write_json

LABELS = ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"]
ATTR_KINDS = {"identity": "categorical", "background": "categorical", "yaw_bin": "categorical",
              "yaw": "continuous"}
SPEC = "synthfer:size=32,n=140,seed=0"
DEPTH = 3
# run name -> (model, test accuracy, throughput scale)
RUNS = {"vit_fx": ("ferlens_tiny_vit_s3", 0.93, 1.0), "cat_fx": ("ferlens_tiny_cataftermlp_s3", 0.91, 1.3)}
LAYERS = [("stem.stage3", -1), ("tokens", 0)] + [(f"blocks.{i}", i + 1) for i in range(DEPTH)]


def _config(model: str) -> dict:
    return {"model": {"name": model, "kwargs": {"depth": DEPTH}}, "num_classes": 7, "label_names": LABELS,
            "data": {"spec": SPEC, "attr_kinds": ATTR_KINDS},
            "input": {"img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
            "train": {"epochs": 4, "batch_size": 64, "lr": 4e-4, "weight_decay": 0.05},
            "seed": 0, "ferlens_version": "0.1.0", "git_commit": "abc1234", "created": "2026-11-23T15:00:00"}


def _metrics(acc: float) -> dict:
    cm = (np.eye(7) * 18 + 0.4).round().astype(int).tolist()
    return {"split": "test", "data": SPEC, "n": 140, "accuracy": acc, "balanced_accuracy": acc - 0.01,
            "macro_f1": acc - 0.02, "auroc": 0.99, "ece": 0.03,
            "ci95": {"accuracy": [acc - 0.04, acc + 0.03], "macro_f1": [acc - 0.06, acc + 0.02]},
            "per_class": {n: {"precision": acc, "recall": acc, "f1": acc, "support": 20} for n in LABELS},
            "confusion_matrix": cm, "label_names": LABELS, "best_epoch": 3, "best_val_acc": acc + 0.01,
            "train_seconds": 61.5}


def _linear_rows(run: str, acc: float, cat: bool) -> list[dict]:
    targets = {"expression": 1 / 7, "identity": 1 / 20, "background": 1 / 4, "yaw_bin": 1 / 3, "yaw": None}
    rows = []
    for target, chance in targets.items():
        for layer, idx in LAYERS:
            for tokens in (("cls", "patch") if idx >= 0 else ("stem",)):
                frac = (idx + 1) / (DEPTH + 1)
                if chance is None:
                    r2 = 0.6 - 0.1 * frac
                    metric, ci = {"r2": r2}, {"r2": [r2 - 0.05, r2 + 0.05]}
                    extra = {"control_accuracy": None, "selectivity": None, "chance": None, "kind": "continuous"}
                else:
                    if target == "expression":
                        value = chance + (acc - chance) * frac ** 2
                        if tokens == "patch" and cat:
                            value = chance + (acc - chance) * 0.3  # patches never change in cataftermlp
                    else:
                        value = chance + 0.5 * (1 - frac) * (0.6 if tokens == "cls" else 1.0)
                    value = float(min(value, 0.99))
                    metric = {"accuracy": value, "balanced_accuracy": value, "macro_f1": value - 0.01}
                    ci = {k: [v - 0.03, min(1.0, v + 0.03)] for k, v in metric.items()}
                    control = chance + 0.05
                    extra = {"control_accuracy": control, "selectivity": value - control, "chance": chance,
                             "kind": "categorical"}
                rows.append({"run": run, "target": target, "layer": layer, "layer_index": idx, "tokens": tokens,
                             "metric": metric, "ci95": ci, "random_init_accuracy": 0.2, "n_train": 112,
                             "n_test": 28, "dim": 64, **extra})
    return rows


def _cka(run: str, other: str) -> dict:
    names = ["tokens"] + [f"blocks.{i}" for i in range(DEPTH)]
    idx = np.arange(len(names))
    same = np.exp(-np.abs(idx[:, None] - idx[None, :]) / 2.0)
    return {"kernel": "linear", "matrices": [
        {"name": "cls_vs_cls", "x_labels": names, "y_labels": names, "values": same.tolist()},
        {"name": "cls_vs_patch", "x_labels": names, "y_labels": names, "values": (0.5 * same).tolist()},
        {"name": f"{sorted([run, other])[0]}_vs_{sorted([run, other])[1]}_cls", "x_labels": names,
         "y_labels": names, "values": (0.8 * same).tolist()}]}


def _umap_rows(seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for layer, _ in LAYERS[1:]:
        for tokens in ("cls", "patch"):
            for method in ("umap", "pca"):
                for i in range(70):
                    c = i % 7
                    rows.append({"sample_id": f"test-{i:04d}", "layer": layer, "tokens": tokens, "method": method,
                                 "x": float(np.cos(c) * 3 + rng.normal(0, 0.6)),
                                 "y": float(np.sin(c) * 3 + rng.normal(0, 0.6)),
                                 "expression": LABELS[c], "identity": f"id{i % 10}", "yaw": float(rng.normal())})
    return rows


def _interventions(acc: float) -> list[dict]:
    """``probe intervene`` rows: mean-CLS after the last block collapses to one class."""
    rows = [{"layer": "none", "mode": "clean", "accuracy": acc, "delta_accuracy": 0.0, "delta_lo": 0.0, "delta_hi": 0.0,
             "mean_logit_change": 0.0, "majority_share": 0.16, "collapsed": False, "means_from": "train", "n": 140}]
    for layer, idx in LAYERS[1:]:
        for mode, drop in (("mean", 0.6), ("shuffle", 0.5), ("zero", 0.7), ("patch_parts", 0.2),
                           ("top_attended_patch", 0.3), ("random_patch", 0.01)):
            d = -drop * (1 - idx / (DEPTH + 1)) * acc
            last = mode == "mean" and idx == DEPTH
            if last:
                d = 1 / 7 - acc
            rows.append({"layer": layer, "mode": mode, "accuracy": acc + d, "delta_accuracy": d,
                         "delta_lo": d - 0.03, "delta_hi": d + 0.03, "mean_logit_change": d * 3,
                         "majority_share": 1.0 if last else 0.2, "collapsed": last, "means_from": "train", "n": 140})
    return rows


def _attribution_metrics(shift: float) -> list[dict]:
    return [{"method": m, "layer": "input" if m == "ig" else "blocks.2", "deletion_auc": 0.2 + shift,
             "insertion_auc": 0.7 - shift, "part_mass": 0.4 + i * 0.05 + shift,
             "nonpart_mass": 0.6 - i * 0.05 - shift, "pointing_game": 0.5 + i * 0.1, "chance_part_mass": 0.05,
             "part_mass_x_chance": (0.4 + i * 0.05 + shift) / 0.05, "best_cell_part_mass": 0.7,
             "best_cell_pointing": 0.9, "peak_cell": "3,3", "peak_cell_count": 40 + i, "n_localised": 64, "n": 64}
            for i, m in enumerate(("rollout", "cls_attention", "gradcam", "ig"))]


def build_runs(root: Path) -> list[str]:
    """Write the two fixture runs under ``root/runs`` and return their names."""
    names = list(RUNS)
    for k, (run, (model, acc, scale)) in enumerate(RUNS.items()):
        d = root / "runs" / run
        atomic_write_json(d / "config.json", _config(model))
        atomic_write_json(d / "metrics.json", _metrics(acc))
        atomic_write_csv(d / "history.csv", [
            {"epoch": e, "step": 10 * (e + 1), "lr": 4e-4, "train_loss": 1.9 / (e + 1), "val_loss": 2.0 / (e + 1),
             "val_acc": acc * (0.6 + 0.1 * e), "val_macro_f1": acc * (0.58 + 0.1 * e), "seconds": 15.0 * (e + 1)}
            for e in range(5)])
        atomic_write_json(d / "profile.json", {
            "model": model, "img_size": 32, "device": "cpu", "params": int(1.5e6 / scale), "macs": int(6e7 / scale),
            "flops": int(1.2e8 / scale), "rows": [{"batch_size": b, "throughput": scale * 500 * b / (b + 8),
                                                   "latency_ms": 2.0 * b, "peak_mem_mb": 50 + b} for b in (1, 8, 64)]})
        rows = _linear_rows(run, acc, cat="cataftermlp" in model)
        atomic_write_json(d / "probes" / "linear.json", rows)
        atomic_write_json(d / "probes" / "cka.json", _cka(run, names[1 - k]))
        atomic_write_csv(d / "probes" / "umap.csv", _umap_rows(k))
        atomic_write_csv(d / "explain" / "attribution_metrics.csv", _attribution_metrics(0.05 * k))
        atomic_write_csv(d / "explain" / "interventions.csv", _interventions(acc))
        atomic_write_json(d / "explain" / "cls_read.json", _cls_read(k))
    return names


def _cls_read(k: int) -> dict:
    """``probe rollout``'s cls_read.json: the CLS reads cell (1, 2) of a 4x4 grid; the ERF is a 10x8 px box."""
    grids = []
    for b in range(DEPTH):
        g = np.full((4, 4), 0.02)
        g[1, 2] = 0.5 - 0.1 * b
        grids.append({"block": b, "grid": g.tolist(), "top_cell": "1,2", "top_share": float(g[1, 2]),
                      "patch_share": float(g.sum())})
    erf = np.zeros((32, 32))
    erf[8:18, 16:24] = 1.0 / 80
    return {"grid_size": [4, 4], "n": 32, "image_size": [32, 32], "blocks": grids,
            "erf": {"layer": "tokens", "cell": "1,2", "read_in_block": 0, "rows": [8, 17], "cols": [16, 23],
                    "height_px": 10, "width_px": 8, "mass": 0.95, "map": erf.tolist()}}


def fake_attribution_source(run: F.RunInfo, methods) -> F.AttributionGrid:
    """Deterministic blob maps over striped faces: (7, 32, 32) per method."""
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    images = np.stack([np.stack([(xx * 255), (yy * 255), np.full_like(xx, 40 * c)], -1) for c in range(7)]).astype(np.uint8)
    maps = {m: np.stack([np.exp(-((xx - (0.2 + 0.1 * c)) ** 2 + (yy - 0.3 - 0.1 * j) ** 2) / 0.02) for c in range(7)])
            .astype(np.float32) for j, m in enumerate(methods) if m != "ig" or run.label == "vit"}
    return F.AttributionGrid(images=images, labels=LABELS, sample_ids=[f"test-{c}" for c in range(7)],
                             preds=LABELS, maps=maps, notes={} if run.label == "vit" else {"ig": "not here"})


@pytest.fixture
def runs(_artifacts_root) -> list[str]:
    return build_runs(_artifacts_root)


# Expected CSV columns per figure (the tidy frame each figure is drawn from).
CSV_COLUMNS = {
    1: {"variant", "tokens", "layer_index", "accuracy", "accuracy_lo", "accuracy_hi", "chance"},
    2: {"variant", "tokens", "target", "layer_index", "selectivity"},
    3: {"variant", "matrix", "x", "y", "value"},
    4: {"variant", "tokens", "stage", "sample_id", "x", "y", "expression"},
    5: {"variant", "row", "column", "method", "sample_id", "pred", "part_mass"},
    6: {"variant", "mode", "layer_index", "accuracy", "delta_accuracy", "baseline_accuracy"},
    7: {"variant", "batch_size", "throughput", "params", "macs"},
    8: {"variant", "epoch", "series", "value"},
    9: {"variant", "panel", "kind", "row", "col", "value"},
}


def test_every_figure_renders(runs, tmp_path):
    out = tmp_path / "figs"
    scale = 1.5  # half the default PNG resolution keeps the test fast; sizes below scale with it
    results = F.render_figures(runs, out, attribution_source=fake_attribution_source, scale=scale)
    assert [r.number for r in results] == list(range(1, 10))
    assert not [r.note for r in results if r.skipped]
    for r in results:
        for fmt in ("png", "svg", "pdf", "csv"):
            assert r.files[fmt].is_file() and r.files[fmt].stat().st_size > 200, (r.name, fmt)
        assert r.files["pdf"].read_bytes().startswith(b"%PDF")
        assert b"<svg" in r.files["svg"].read_bytes()[:400]
        with Image.open(r.files["png"]) as im:
            w, h = im.size
        # A figure at most ~full page width (497 pt + legend) and a page tall: no degenerate strip.
        assert 150 * scale <= w <= 760 * scale and 75 * scale <= h <= 1100 * scale, (r.name, w, h)
        table = pd.read_csv(r.files["csv"])
        assert len(table) > 0 and CSV_COLUMNS[r.number] <= set(table.columns), (r.name, table.columns)
    manifest = json.loads((out / "figures.json").read_text())
    assert manifest["runs"] == runs and len(manifest["figures"]) == 9


def test_figure_data_matches_artifacts(runs, _artifacts_root):
    infos = F.load_runs(runs)
    assert [r.label for r in infos] == ["vit", "cataftermlp"]
    fig1 = F.probe_accuracy_data(infos)
    raw = json.loads((_artifacts_root / "runs" / "vit_fx" / "probes" / "linear.json").read_text())
    want = next(r for r in raw if r["target"] == "expression" and r["tokens"] == "cls" and r["layer"] == "blocks.2")
    got = fig1[(fig1.variant == "vit") & (fig1.tokens == "cls") & (fig1.layer_index == 3)].iloc[0]
    assert got.accuracy == pytest.approx(want["metric"]["accuracy"])
    assert (got.accuracy_lo, got.accuracy_hi) == pytest.approx(tuple(want["ci95"]["accuracy"]))
    assert set(fig1.layer_index) == {0, 1, 2, 3}  # stem rows (layer_index -1) are not on the depth axis
    fig2 = F.selectivity_data(infos)
    assert "yaw" not in set(fig2.target)  # continuous targets have no selectivity
    fig3 = F.cka_data(infos)
    assert (fig3.variant == "runs").sum() == 16  # the cross-run matrix is drawn once (4 × 4)
    fig4 = F.umap_data(infos)
    assert set(fig4.stage) == {"early", "middle", "last"} and set(fig4.method) == {"umap"}
    assert fig4.groupby(["variant", "tokens", "stage"]).size().eq(70).all()
    fig6 = F.intervention_data(infos)
    assert set(fig6["mode"]) == {"mean", "shuffle", "zero", "top_attended_patch", "random_patch"}
    assert fig6[fig6.collapsed].shape[0] == 2 and set(fig6[fig6.collapsed]["mode"]) == {"mean"}
    assert fig6.baseline_accuracy.round(6).groupby(fig6.variant).nunique().eq(1).all()
    table = F.efficiency_table(F.profile_data(infos))
    assert table.throughput_ratio.tolist() == pytest.approx([1.0, 1.3])


def test_missing_artifacts_skip_with_command(runs, _artifacts_root, tmp_path):
    (_artifacts_root / "runs" / "cat_fx" / "probes" / "cka.json").unlink()
    (_artifacts_root / "runs" / "vit_fx" / "profile.json").unlink()
    results = F.render_figures(runs, tmp_path / "f", only=[3, 7, 8], formats=("png",))
    notes = {r.number: r.note for r in results}
    assert "probe cka --run cat_fx" in notes[3]
    assert "train profile --run vit_fx" in notes[7]
    assert notes[8] is None and (tmp_path / "f" / "fig8_training_curves.png").is_file()
    assert not (tmp_path / "f" / "fig3_cka.png").exists()


def test_png_and_svg_are_deterministic(runs):
    chart = F.chart_probe_accuracy(F.probe_accuracy_data(F.load_runs(runs)))
    assert chart_bytes(chart, "png") == chart_bytes(chart, "png")
    assert chart_bytes(chart, "svg") == chart_bytes(chart, "svg")


def test_helpers_and_bad_input():
    assert [F.layer_position(x) for x in ("tokens", "blocks.0", "blocks.11", "stem.stage3", 4)] == [0, 1, 12, -1, 4]
    assert F.layer_short("blocks.7") == "b7" and F.layer_short("tokens") == "emb"
    assert F.examples_per_class(np.array([2, 0, 0, 1, 2]), 1) == [1, 3, 0]
    assert F.parse_only("1, 3") == [1, 3] and F.parse_only(None) == list(range(1, 10))
    with pytest.raises(F.FerlensError, match="No figure 10"):
        F.parse_only("10")
    with pytest.raises(F.FerlensError, match="not found"):
        F.load_runs(["no_such_run"])


def test_cli_figures(runs, tmp_path, capsys):
    from probe.cli import main

    assert main(["figures", "--runs", ",".join(runs), "--out", str(tmp_path / "c"), "--only", "1,8",
                 "--formats", "png"]) == 0
    out = capsys.readouterr().out
    assert "fig1_probe_accuracy" in out and "fig8_training_curves" in out
    assert (tmp_path / "c" / "fig1_probe_accuracy.png").is_file()
    assert main(["figures", "--runs", "nope", "--out", str(tmp_path / "c")]) == 2


def test_live_attribution_grid(tmp_path, _artifacts_root):
    """Figure 5's default source: real maps from probe.explain on a tiny saved model."""
    pytest.importorskip("train.models")
    pytest.importorskip("probe.attribution")
    pytest.importorskip("train.engine")
    pytest.importorskip("train.data.synthfer")
    from train.models import create_model
    from train.runs import save_run

    config = _config("ferlens_tiny_vit_s3")
    config["model"]["kwargs"] = {}
    config["input"]["img_size"] = 64
    config["data"]["spec"] = "synthfer:size=64,n=140,seed=0"
    model = create_model("ferlens_tiny_vit_s3", num_classes=7)
    save_run(_artifacts_root / "runs" / "live", model, config)
    run = F.load_runs(["live"])[0]
    grid = F.live_attribution_grid(run, ("gradcam", "rollout"))
    k = len(grid.labels)  # one face per class present in the small test split, in canonical order
    assert k >= 5 and grid.labels == [n for n in LABELS if n in grid.labels]
    assert grid.images.shape == (k, 64, 64, 3) and grid.images.dtype == np.uint8
    assert set(grid.maps) == {"gradcam", "rollout"}
    for method, heat in grid.maps.items():
        assert heat.shape == (k, 64, 64) and heat.min() >= 0 and heat.max() <= 1 + 1e-6, method
    for method, mass in grid.part_mass.items():  # SynthFER's answer key: a share of the map's mass
        assert all(0 <= m <= 1 for m in mass), method
    result = F.render_figure(F.FIGURES[5], [run], tmp_path, formats=("png",),
                             attribution_source=lambda r, methods: grid, scale=1.0)
    assert result.note is None and result.files["png"].is_file()
