"""Artifact readers for the app: one cached reader per artifact, each failure isolated to its run.

Every reader returns an ``Artifact``: the parsed content, or ``missing`` (the file is not there yet), or an
``error`` sentence (the file is there but unreadable or does not follow docs/contracts.md). Pages never
see an exception from a run folder, so one corrupt run cannot break the others.
"""
from __future__ import annotations

import json
import queue
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import streamlit as st

from train.errors import FerlensError
from train.io import file_stamp


@dataclass(frozen=True)
class Artifact:
    """One artifact of one run.

    Attributes:
        run: the run's folder name.
        path: the file the artifact lives in.
        data: parsed content (dict or DataFrame); None when missing or unreadable.
        error: one sentence when the file exists but cannot be used.
    """

    run: str
    path: Path
    data: Any = None
    error: str | None = None

    @property
    def missing(self) -> bool:
        return self.data is None and self.error is None

    @property
    def ok(self) -> bool:
        return self.data is not None


stamp = file_stamp  # (mtime_ns, size): cached readers notice a rewritten file


@st.cache_data(show_spinner=False, max_entries=512)
def _read_json(path: str, stamp: tuple[int, int]) -> tuple[Any, str | None]:
    """Parse a JSON file; returns (data, error)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{path} is not valid JSON ({type(e).__name__}); re-run the command that wrote it."


@st.cache_data(show_spinner=False, max_entries=512)
def _read_csv(path: str, stamp: tuple[int, int]) -> tuple[pd.DataFrame | None, str | None]:
    """Parse a CSV file; returns (frame, error)."""
    try:
        return pd.read_csv(path), None
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as e:
        return None, f"{path} is not a readable CSV ({type(e).__name__}); re-run the command that wrote it."


def _load(run_dir: Path, rel: str, reader: Callable, check: Callable[[Any], Any] | None = None) -> Artifact:
    """Read ``run_dir/rel`` with ``reader`` and validate with ``check`` (which may reshape the data)."""
    path = Path(run_dir) / rel
    if not path.is_file():
        return Artifact(run_dir.name, path)
    data, error = reader(str(path), stamp(path))
    if error is None and check is not None:
        try:
            data = check(data)
        except Exception as e:  # any schema problem is this run's problem only (the page goes on)
            data, error = None, (f"{path} does not follow the ferlens schema ({type(e).__name__}: {e}); "
                                 "re-run the command that wrote it.")
    return Artifact(run_dir.name, path, data if error is None else None, error)


def _require_columns(columns: list[str]) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def check(df: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise KeyError(f"columns {', '.join(missing)} are missing")
        return df
    return check


def _expect(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    """``value`` when it is a ``kind`` (bools are not numbers), else TypeError naming ``where``."""
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)) or \
            not isinstance(value, kind):
        names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise TypeError(f"{where} is {type(value).__name__} {json.dumps(value, default=str)[:40]}, not {names}")
    return value


_NUMBER = (int, float)


def _check_config(cfg: Any) -> dict:
    """Types of every config.json key the pages read (run_config in train/engine.py writes them)."""
    _expect(cfg, dict, "config.json")
    _expect(_expect(cfg.get("model"), dict, "model").get("name"), str, "model.name")
    _expect(cfg.get("model", {}).get("kwargs", {}), dict, "model.kwargs")
    _expect(cfg.get("num_classes"), int, "num_classes")
    if "label_names" in cfg:
        for name in _expect(cfg["label_names"], list, "label_names"):
            _expect(name, str, "label_names[]")
    if "data" in cfg:
        data = _expect(cfg["data"], dict, "data")
        _expect(data.get("spec", ""), str, "data.spec")
        _expect(data.get("attr_kinds", {}), dict, "data.attr_kinds")
    if "input" in cfg:
        inp = _expect(cfg["input"], dict, "input")
        _expect(inp.get("img_size"), int, "input.img_size")
        for key in ("mean", "std"):
            for v in _expect(inp.get(key), list, f"input.{key}"):
                _expect(v, _NUMBER, f"input.{key}[]")
    return cfg


def _check_metrics(m: Any) -> dict:
    """Types of the metrics.json keys the pages read (train/metrics.py classification_report)."""
    _expect(m, dict, "metrics.json")
    _expect(m.get("accuracy"), _NUMBER, "accuracy")
    for key in ("macro_f1", "balanced_accuracy", "ece", "best_val_acc", "train_seconds"):
        if m.get(key) is not None:
            _expect(m[key], _NUMBER, key)
    if m.get("best_epoch") is not None:
        _expect(m["best_epoch"], int, "best_epoch")
    for name, pair in _expect(m.get("ci95", {}), dict, "ci95").items():
        if len(_expect(pair, list, f"ci95.{name}")) != 2:
            raise ValueError(f"ci95.{name} holds {len(pair)} values, not [lo, hi]")
        for v in pair:
            _expect(v, _NUMBER, f"ci95.{name}[]")
    if m.get("confusion_matrix") is not None:
        cm = _expect(m["confusion_matrix"], list, "confusion_matrix")
        if np.asarray(cm, dtype=float).ndim != 2:
            raise ValueError("confusion_matrix is not a matrix")
    return m


def _check_profile(p: Any) -> dict:
    if not isinstance(p, dict):
        raise TypeError("profile.json is not an object")
    for row in p.get("rows", []):
        float(row["batch_size"]), float(row["throughput"])
    return p


def _flatten_linear(rows: Any) -> pd.DataFrame:
    """linear.json rows -> tidy frame with score/lo/hi (accuracy for categorical, r2 for continuous)."""
    if isinstance(rows, dict):
        rows = rows.get("rows", [])
    out = []
    for r in rows:
        if r.get("probe", "linear") != "linear":  # MLP rows live in the same file; the pages show linear probes
            continue
        metric = r["metric"]
        name = "accuracy" if "accuracy" in metric else next(iter(metric))
        lo, hi = (r.get("ci95") or {}).get(name, [np.nan, np.nan])
        out.append({"target": str(r["target"]), "layer": str(r["layer"]), "layer_index": int(r["layer_index"]),
                    "tokens": str(r["tokens"]), "metric": name, "score": float(metric[name]),
                    "lo": float(lo), "hi": float(hi),
                    "chance": float(r["chance"]) if r.get("chance") is not None else np.nan,
                    "selectivity": float(r["selectivity"]) if r.get("selectivity") is not None else np.nan,
                    "control_accuracy": (float(r["control_accuracy"]) if r.get("control_accuracy") is not None
                                         else np.nan),
                    "n_test": r.get("n_test"), "dim": r.get("dim")})
    if not out:
        raise ValueError("linear.json holds no rows")
    return pd.DataFrame(out)


def _check_cka(d: Any) -> dict:
    for m in d["matrices"]:
        values = np.asarray(m["values"], dtype=float)
        if values.shape != (len(m["y_labels"]), len(m["x_labels"])):
            raise ValueError(f"matrix {m['name']} has shape {values.shape}, not y_labels × x_labels")
    return d


# name -> (relative path, reader, check). Pages ask for artifacts by these names.
ARTIFACTS: dict[str, tuple[str, Callable, Callable | None]] = {
    "config": ("config.json", _read_json, _check_config),
    "metrics": ("metrics.json", _read_json, _check_metrics),
    "history": ("history.csv", _read_csv, _require_columns(["epoch", "train_loss", "val_loss", "val_acc"])),
    "profile": ("profile.json", _read_json, _check_profile),
    "linear": ("probes/linear.json", _read_json, _flatten_linear),
    "cka": ("probes/cka.json", _read_json, _check_cka),
    "umap": ("probes/umap.csv", _read_csv, _require_columns(["sample_id", "layer", "tokens", "method", "x", "y"])),
    "attribution": ("explain/attribution_metrics.csv", _read_csv,
                    _require_columns(["method", "deletion_auc", "insertion_auc"])),
    "interventions": ("explain/interventions.csv", _read_csv,
                      _require_columns(["layer", "mode", "accuracy"])),
}


def load(run_dir: Path, name: str) -> Artifact:
    """Read one named artifact (see ``ARTIFACTS``) of one run."""
    rel, reader, check = ARTIFACTS[name]
    return _load(Path(run_dir), rel, reader, check)


def run_label(run_dir: Path) -> str:
    """Sidebar label: ``name · variant · dataset · acc 0.812`` (or ``name · broken: <sentence>``)."""
    cfg = load(run_dir, "config")
    if not cfg.ok:
        return f"{run_dir.name} · broken: {cfg.error or 'config.json is missing'}"
    variant = str(cfg.data["model"]["name"]).removeprefix("ferlens_")
    spec = str((cfg.data.get("data") or {}).get("spec", "?"))
    dataset = spec.split(":")[0]
    metrics = load(run_dir, "metrics")
    acc = f"acc {metrics.data['accuracy']:.3f}" if metrics.ok else ("metrics broken" if metrics.error else "acc n/a")
    return f"{run_dir.name} · {variant} · {dataset} · {acc}"


# ---------------------------------------------------------------- datasets (cache_resource)

@st.cache_resource(show_spinner="Loading dataset…", max_entries=8)
def load_dataset(spec: str, split: str):
    """A dataset split (metadata in memory; images decoded on demand)."""
    from train.data import load_dataset as _load_dataset

    return _load_dataset(spec, split)


def dataset_for(spec: str, split: str):
    """Cached dataset; raises FerlensError with one sentence on failure."""
    try:
        return load_dataset(spec, split)
    except FerlensError:
        raise
    except ModuleNotFoundError as e:
        raise FerlensError(f"The module {e.name} is not available yet, so the dataset '{spec}' cannot be "
                           "loaded; install or finish it and reload the page.") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FerlensError(f"The dataset '{spec}' ({split}) cannot be loaded ({type(e).__name__}: {e}); "
                           "check the run's data.spec.") from None


_WARMED: set[str] = set()
_WARM_LOCK = threading.Lock()
_WARM_JOBS: queue.Queue[str] = queue.Queue()  # "<stack>" or a run folder, done in order by one thread
_WARM_THREAD: threading.Thread | None = None
# Script runs in progress (ui.py wraps each rerun in ``script_run``). The warm-up thread imports only
# while none is: both share one GIL, so importing beside a page run would slow that page down.
_ACTIVE_RUNS = 0
_IDLE = threading.Condition()
# What the pages draw with, then what the Explain page needs in the server (torch for train.data's
# datasets, SynthFER's renderer), in import order and in steps of well under a second each. The explain
# stack (timm, captum, pytorch-grad-cam ...) lives in the explain worker (app/worker.py).
WARM_MODULES = ("numpy", "pandas", "pyarrow", "altair", "PIL.Image", "app.charts", "app.state", "app.actions",
                "app.explainer", "torch", "train.data", "train.data.synthfer")


@contextmanager
def script_run() -> Iterator[None]:
    """Mark one script run of any session as in progress; the warm-up thread waits until none is."""
    global _ACTIVE_RUNS
    with _IDLE:
        _ACTIVE_RUNS += 1
    try:
        yield
    finally:
        with _IDLE:
            _ACTIVE_RUNS -= 1
            _IDLE.notify_all()


def wait_idle(timeout: float = 30.0) -> bool:
    """Block until no script run is in progress (or ``timeout`` s passed); True when idle."""
    with _IDLE:
        return _IDLE.wait_for(lambda: _ACTIVE_RUNS == 0, timeout=timeout)


def warm_up(runs: list[Path]) -> None:
    """Warm what the pages need: imports and the runs' datasets in a background thread of the server, the
    runs' models in the explain worker.

    Called when the server starts (``main.py``'s lifespan, with no runs) and after each page has been
    sent (with the selected runs), so neither the first page nor the first Explain visit pays for imports,
    dataset loading or model loading. Everything is warmed once per server process; the server's share by
    one thread, between script runs.
    """
    global _WARM_THREAD
    from . import compute

    with _WARM_LOCK:
        jobs = ([] if "<stack>" in _WARMED else ["<stack>"]) + [str(r) for r in runs if str(r) not in _WARMED]
        _WARMED.update(jobs)
        models = [job for job in jobs if job != "<stack>"]
        if models:
            compute.warm(models)  # its own thread: the worker loads them on the other core meanwhile
        for job in jobs:
            _WARM_JOBS.put(job)
        if jobs and _WARM_THREAD is None:
            _WARM_THREAD = threading.Thread(target=_warm_forever, name="ferlens-warm-up", daemon=True)
            _WARM_THREAD.start()


def _warm_forever() -> None:
    while True:
        job = _WARM_JOBS.get()
        if job == "<stack>":
            _warm_stack()
        else:
            _warm_run(Path(job))


def _warm_stack() -> None:
    import importlib

    for name in WARM_MODULES:
        wait_idle()
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # a missing optional package shows its error on the Explain page; warming is only an optimisation


def _warm_run(run: Path) -> None:
    """The run's test split, which the Explain page opens first (its model warms in the explain worker)."""
    try:
        wait_idle()
        config = load(run, "config")
        if config.ok:
            dataset_for(str((config.data.get("data") or {})["spec"]), "test")
    except (FerlensError, KeyError, TypeError):
        pass  # an unusable run shows its error on the Explain page; warming it is only an optimisation
