"""Sidebar and shared selection: artifacts root, runs, split, target.

``ui.py`` calls ``sidebar_ui()`` on every rerun before the page runs; pages read the result with
``selection()``. Every run name or path typed in the UI (or passed as ``?runs=`` query parameter)
is resolved with ``resolve_inside`` and must stay inside the chosen artifacts root.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from train.errors import FerlensError

from . import loaders

SPLITS = ("test", "val", "train")
DEFAULT_TARGETS = ("expression",)
_KEY = "_ferlens_selection"


@dataclass
class Selection:
    """What the sidebar chose.

    Attributes:
        root: the artifacts root (resolved).
        runs: selected run folders (inside ``root``), in the order chosen.
        split: data split for dataset-based views.
        target: probe / colouring target (``expression``, ``identity``, ``yaw_bin`` ...).
        targets: all targets known from the runs' configs and probe tables.
        messages: sidebar problems (bad root, rejected paths) already shown to the user.
    """

    root: Path
    runs: list[Path] = field(default_factory=list)
    split: str = "test"
    target: str = "expression"
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    messages: list[str] = field(default_factory=list)


def default_root() -> Path:
    """``train.runs.artifacts_root()`` ($FERLENS_ARTIFACTS or ./artifacts)."""
    from train.runs import artifacts_root

    return artifacts_root()


def resolve_inside(root: Path, name: str) -> Path:
    """Resolve a run name or path typed in the UI to a folder inside ``root``.

    A bare name is looked up under ``root/runs`` and then ``root``; a relative path is taken relative to
    ``root``; an absolute path is kept. Symlinks are resolved before the check.

    Raises:
        FerlensError: the result lies outside ``root`` (``../`` escapes, absolute paths elsewhere).
    """
    base = Path(root).resolve()
    text = str(name).strip()
    if not text:
        raise FerlensError("The run name is empty; pick a run from the list or type its folder name.")
    raw = Path(text)
    candidates = [raw.resolve()] if raw.is_absolute() else [(base / "runs" / raw).resolve(), (base / raw).resolve()]
    for cand in candidates:
        if not cand.is_relative_to(base):
            raise FerlensError(f"'{text}' points outside the artifacts root {base}; "
                               "choose a run inside that root or change the root.")
    for cand in candidates:
        if (cand / "config.json").is_file():
            return cand
    raise FerlensError(f"No run folder '{text}' (with a config.json) inside {base}; "
                       "check the name or train one with 'train fit'.")


def list_runs(root: Path) -> list[Path]:
    """Run folders under ``root/runs`` (resolved, all inside ``root``)."""
    from train.runs import list_runs as _list_runs

    base = Path(root).resolve()
    return [p.resolve() for p in _list_runs(base / "runs") if p.resolve().is_relative_to(base)]


def _root_ui(messages: list[str]) -> Path:
    text = st.sidebar.text_input("Artifacts root", value=str(default_root()), key="artifacts_root",
                                 help="Folder holding runs/, figures/, reports/ (default $FERLENS_ARTIFACTS).")
    root = Path(os.path.expanduser(text.strip() or str(default_root())))
    if not root.is_dir():
        msg = f"The artifacts root {root} is not a folder; type an existing folder or train a run into it."
        st.sidebar.warning(msg)
        messages.append(msg)
    return root


def _extra_runs_ui(root: Path, messages: list[str]) -> list[Path]:
    """Runs typed by name/path or given as ``?runs=a,b``; rejected ones show a message."""
    typed = st.sidebar.text_input("Open run by name or path", value="", key="run_path",
                                  help="A run folder inside the artifacts root, e.g. 'runs/my_run' or 'my_run'.")
    names = [t for t in typed.split(",") if t.strip()]
    query = st.query_params.get("runs")
    if query:
        names += [t for t in str(query).split(",") if t.strip()]
    out = []
    for name in names:
        try:
            out.append(resolve_inside(root, name))
        except FerlensError as e:
            st.sidebar.error(str(e))
            messages.append(str(e))
    return out


def _collect_targets(runs: list[Path]) -> list[str]:
    targets = list(DEFAULT_TARGETS)
    for run in runs:
        cfg = loaders.load(run, "config")
        if cfg.ok:
            targets += [k for k in ((cfg.data.get("data") or {}).get("attr_kinds") or {})]
        lin = loaders.load(run, "linear")
        if lin.ok:
            targets += list(lin.data["target"].unique())
    return list(dict.fromkeys(targets))


def sidebar_ui() -> Selection:
    """Draw the sidebar and store the selection for the pages."""
    messages: list[str] = []
    st.sidebar.title("ferlens")
    root = _root_ui(messages)
    found = list_runs(root) if root.is_dir() else []
    extra = _extra_runs_ui(root, messages) if root.is_dir() else []
    options = list(dict.fromkeys([str(p) for p in found + extra]))
    labels = {o: loaders.run_label(Path(o)) for o in options}
    readable = [o for o in options if loaders.load(Path(o), "config").ok]
    default = [str(p) for p in extra] or readable[:2]
    seen = st.session_state.get("runs_root_seen")
    if "runs" not in st.session_state or (seen is not None and seen != str(root)):
        st.session_state["runs"] = default  # first visit or a new root: preselect
    else:
        kept = [r for r in st.session_state["runs"] if r in options]
        typed_before = set(st.session_state.get("runs_typed", []))
        st.session_state["runs"] = kept + [str(p) for p in extra if str(p) not in typed_before and str(p) not in kept]
    st.session_state["runs_root_seen"] = str(root)
    st.session_state["runs_typed"] = [str(p) for p in extra]  # newly typed runs are added once
    chosen = st.sidebar.multiselect("Runs", options, key="runs", format_func=lambda o: labels[o],
                                    help="Runs found under <root>/runs: name · variant · dataset · accuracy.")
    if not options:
        st.sidebar.info(f"No runs under {root / 'runs'}; train one with 'train fit --model NAME --data SPEC'.")
    split = st.sidebar.selectbox("Data split", SPLITS, key="split")
    runs = [Path(c) for c in chosen]
    targets = _collect_targets(runs)
    target = st.sidebar.selectbox("Target", targets, key="target",
                                  help="Probe target and colouring: expression or a non-expression factor.")
    sel = Selection(root=root.resolve() if root.is_dir() else root, runs=runs, split=split,
                    target=target, targets=targets, messages=messages)
    st.session_state[_KEY] = sel
    return sel


def selection() -> Selection:
    """The selection ``sidebar_ui`` stored on this rerun."""
    sel = st.session_state.get(_KEY)
    return sel if sel is not None else Selection(root=default_root())
