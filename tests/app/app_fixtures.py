"""Demo artifacts for the app tests: two schema-exact run folders (docs/contracts.md) and a corrupt one.

``build_artifacts(root)`` writes ``root/runs/{tiny_vit_a, tiny_cat_b, corrupt_run}``. The numbers are
fake but shaped like real ones (probe accuracy rises with depth, CIs around it, chance lines ...). Model
weights come from ``train.runs.save_run`` with a real tiny model when ``train.models`` is importable.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from train.errors import FerlensError
from train.io import atomic_write_csv, atomic_write_json, atomic_write_text

LABELS = ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"]
ATTR_KINDS = {"identity": "categorical", "background": "categorical", "occluder": "categorical",
              "illumination": "categorical", "yaw_bin": "categorical", "roll_bin": "categorical",
              "yaw": "continuous", "roll": "continuous", "scale": "continuous"}
DATA_SPEC = "synthfer:size=64,n=140,seed=0"
# run name -> (model name, depth of the token stack, accuracy); the second model falls back to vit when the
# registry lacks class-attention variants.
RUNS = {"tiny_vit_a": ("ferlens_tiny_vit_s3", 2, 0.71), "tiny_cat_b": ("ferlens_tiny_cataftermlp_s3", 2, 0.64)}
CORRUPT = "corrupt_run"
MAIN = str(Path(__file__).resolve().parents[2] / "app" / "ui.py")  # the script main.py serves


def _config(model: str, kwargs: dict) -> dict:
    return {"model": {"name": model, "kwargs": kwargs}, "num_classes": 7, "label_names": LABELS,
            "data": {"spec": DATA_SPEC, "attr_kinds": ATTR_KINDS},
            "input": {"img_size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
            "train": {"epochs": 4, "batch_size": 32, "lr": 4e-4, "weight_decay": 0.05, "optimizer": "adamw"},
            "seed": 0, "ferlens_version": "0.1.0", "git_commit": None, "created": "2026-11-23T15:00:00"}


def _metrics(acc: float, rng: np.random.Generator) -> dict:
    n = 140
    cm = np.zeros((7, 7), dtype=int)
    for i in range(7):
        correct = int(round(20 * acc))
        cm[i, i] = correct
        for _ in range(20 - correct):
            cm[i, (i + 1 + rng.integers(0, 6)) % 7] += 1
    f1 = acc - 0.03
    per_class = {name: {"precision": float(acc), "recall": float(cm[i, i] / 20), "f1": float(f1), "support": 20}
                 for i, name in enumerate(LABELS)}
    return {"split": "test", "data": DATA_SPEC, "n": n, "accuracy": acc, "balanced_accuracy": acc,
            "macro_f1": f1, "auroc": 0.9, "ece": 0.05,
            "ci95": {"accuracy": [acc - 0.07, acc + 0.07], "macro_f1": [f1 - 0.08, f1 + 0.08]},
            "per_class": per_class, "confusion_matrix": cm.tolist(), "label_names": LABELS,
            "best_epoch": 3, "best_val_acc": acc + 0.01, "train_seconds": 12.5}


def _history(acc: float) -> list[dict]:
    return [{"epoch": e, "step": 5 * (e + 1), "lr": 4e-4 * (1 - e / 4), "train_loss": 1.9 - 0.45 * acc * e,
             "val_loss": 1.95 - 0.35 * acc * e, "val_acc": acc * (0.55 + 0.15 * e),
             "val_macro_f1": (acc - 0.03) * (0.55 + 0.15 * e), "seconds": 3.0 * (e + 1)} for e in range(4)]


def _profile(model: str, scale: float) -> dict:
    rows = [{"batch_size": b, "throughput": scale * 400 * b / (b + 4), "latency_ms": 1000 * b / (scale * 400 * b / (b + 4)),
             "peak_mem_mb": 40 + 3 * b} for b in (1, 8, 32)]
    return {"model": model, "img_size": 64, "device": "cpu", "params": int(1.2e6 * scale), "macs": int(5e7 * scale),
            "flops": int(1e8 * scale), "rows": rows}


def _linear_rows(run: str, depth: int, acc: float, rng: np.random.Generator) -> list[dict]:
    layers = [("stem.stage3", -1), ("tokens", 0)] + [(f"blocks.{i}", i + 1) for i in range(depth)]
    targets = {"expression": ("categorical", 1 / 7), "identity": ("categorical", 1 / 10),
               "yaw_bin": ("categorical", 1 / 3), "yaw": ("continuous", None)}
    rows = []
    for target, (kind, chance) in targets.items():
        for layer, idx in layers:
            for tokens in (("cls", "patch") if idx >= 0 else ("stem",)):
                depth_frac = (idx + 1) / (depth + 1)
                if kind == "categorical":
                    gain = (acc - chance) * depth_frac if target == "expression" else 0.4 * (1 - depth_frac)
                    s = float(np.clip(chance + gain + (0.05 if tokens == "patch" else 0) + rng.normal(0, .01), 0, 1))
                    metric = {"accuracy": s, "balanced_accuracy": s, "macro_f1": s - 0.02}
                    ci = {k: [v - 0.05, v + 0.05] for k, v in metric.items()}
                    ctrl = chance + 0.05
                    extra = {"control_accuracy": ctrl, "selectivity": s - ctrl, "chance": chance,
                             "random_init_accuracy": chance + 0.02}
                else:
                    s = float(0.6 - 0.3 * depth_frac)
                    metric, ci = {"r2": s}, {"r2": [s - 0.06, s + 0.06]}
                    extra = {"control_accuracy": None, "selectivity": None, "chance": 0.0,
                             "random_init_accuracy": None}
                rows.append({"run": run, "target": target, "layer": layer, "layer_index": idx, "tokens": tokens,
                             "metric": metric, "ci95": ci, **extra, "n_train": 100, "n_test": 40,
                             "dim": 64, "kind": kind})
    return rows


def _flatten(row: dict) -> dict:
    flat = {k: v for k, v in row.items() if k not in ("metric", "ci95")}
    for k, v in row["metric"].items():
        flat[k] = v
        flat[f"{k}_lo"], flat[f"{k}_hi"] = row["ci95"][k]
    return flat


def _cka(depth: int, rng: np.random.Generator, other: str | None) -> dict:
    labels = ["tokens"] + [f"blocks.{i}" for i in range(depth)]
    n = len(labels)
    idx = np.arange(n)
    base = np.exp(-np.abs(idx[:, None] - idx[None, :]) / 2.0)
    mats = [{"name": "cls_vs_cls", "x_labels": labels, "y_labels": labels, "values": base.tolist()},
            {"name": "cls_vs_patch", "x_labels": labels, "y_labels": labels,
             "values": (0.8 * base + 0.05 * rng.random((n, n))).clip(0, 1).tolist()}]
    if other:
        mats.append({"name": f"tiny_vit_a_vs_{other}_cls", "x_labels": labels, "y_labels": labels,
                     "values": (0.9 * base).tolist()})
    return {"kernel": "linear", "matrices": mats}


def _umap(depth: int, rng: np.random.Generator) -> list[dict]:
    rows = []
    for layer in ["tokens"] + [f"blocks.{i}" for i in range(depth)]:
        for tokens in ("cls", "patch"):
            for method in ("umap", "pca"):
                for s in range(40):
                    label = s % 7
                    centre = np.array([np.cos(label), np.sin(label)]) * (1 + int(layer[-1:].isdigit()))
                    x, y = centre + rng.normal(0, 0.3, 2)
                    rows.append({"sample_id": f"synthfer-test-{s:05d}", "layer": layer, "tokens": tokens,
                                 "method": method, "x": float(x), "y": float(y), "expression": LABELS[label],
                                 "identity": f"id{s % 5}", "yaw": float(rng.normal(0, 20))})
    return rows


def _interventions(depth: int, acc: float) -> list[dict]:
    rows = []
    for i in range(depth):
        for mode, drop in (("mean", 0.2), ("shuffle", 0.35), ("zero", 0.5)):
            a = acc - drop * (depth - i) / depth
            rows.append({"layer": f"blocks.{i}", "mode": mode, "accuracy": a, "delta_accuracy": a - acc,
                         "mean_logit_change": drop * 3, "n": 140})
    return rows


def _attribution() -> list[dict]:
    return [{"method": m, "deletion_auc": d, "insertion_auc": i, "part_mass": p, "nonpart_mass": 1 - p,
             "pointing_game": g, "n": 140}
            for m, d, i, p, g in (("rollout", .31, .52, .41, .6), ("gradcam", .27, .58, .55, .71),
                                  ("ig", .25, .6, .5, .66))]


def _save_model(run_dir: Path, config: dict) -> dict:
    """Real weights through train.runs.save_run when train.models exists (else config only)."""
    if importlib.util.find_spec("train.models") is None:
        atomic_write_json(run_dir / "config.json", config)
        return config
    from train.models import create_model
    from train.runs import save_run

    name = config["model"]["name"]
    try:
        model = create_model(name, num_classes=7, **config["model"]["kwargs"])
    except FerlensError:  # the class-attention variant may not be registered yet: fall back to the baseline
        config["model"]["name"] = name = "ferlens_tiny_vit_s3"
        model = create_model(name, num_classes=7, **config["model"]["kwargs"])
    save_run(run_dir, model, config)
    return config


def build_artifacts(root: Path, with_weights: bool = True) -> Path:
    """Write the demo run folders under ``root/runs`` and return ``root``."""
    rng = np.random.default_rng(0)
    runs = Path(root) / "runs"
    names = list(RUNS)
    for k, (run, (model, depth, acc)) in enumerate(RUNS.items()):
        d = runs / run
        config = _config(model, {"img_size": 64})
        if with_weights:
            config = _save_model(d, config)
        else:
            atomic_write_json(d / "config.json", config)
        atomic_write_json(d / "metrics.json", _metrics(acc, rng))
        atomic_write_csv(d / "history.csv", _history(acc))
        atomic_write_json(d / "profile.json", _profile(config["model"]["name"], 1.0 + 0.3 * k))
        rows = _linear_rows(run, depth, acc, rng)
        atomic_write_json(d / "probes" / "linear.json", rows)
        atomic_write_csv(d / "probes" / "linear.csv", [_flatten(r) for r in rows])
        cka = _cka(depth, rng, names[1] if k == 0 else None)
        atomic_write_json(d / "probes" / "cka.json", cka)
        atomic_write_csv(d / "probes" / "cka.csv", [
            {"name": m["name"], "x": x, "y": y, "value": m["values"][j][i]}
            for m in cka["matrices"] for j, y in enumerate(m["y_labels"]) for i, x in enumerate(m["x_labels"])])
        atomic_write_csv(d / "probes" / "umap.csv", _umap(depth, rng))
        atomic_write_csv(d / "explain" / "attribution_metrics.csv", _attribution())
        atomic_write_json(d / "explain" / "attribution_metrics.json", _attribution())
        atomic_write_csv(d / "explain" / "interventions.csv", _interventions(depth, acc))
        atomic_write_json(d / "explain" / "interventions.json", _interventions(depth, acc))
    corrupt = runs / CORRUPT
    corrupt.mkdir(parents=True, exist_ok=True)
    atomic_write_text(corrupt / "config.json", '{"model": {"name": "ferlens_tiny_vit_s3", ')  # truncated JSON
    atomic_write_text(corrupt / "metrics.json", "not json at all")
    return Path(root)


if __name__ == "__main__":  # build a demo root by hand: python tests/app/app_fixtures.py /tmp/demo
    import sys

    print(build_artifacts(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ferlens_demo_artifacts")))
