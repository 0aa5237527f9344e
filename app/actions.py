"""Which command produces each artifact, and a button that runs the cheap ones with a progress bar.

The commands run as ``sys.executable -m train|probe ...`` subprocesses with ``FERLENS_ARTIFACTS`` set to
the chosen root, so the app holds no science and a failing command cannot take the app down.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Producer:
    """How an artifact is made.

    Attributes:
        steps: argv templates (``{run}`` is replaced by the run folder), run in order.
        cheap: whether the app offers a button (seconds on a tiny run, not minutes).
    """

    steps: tuple[tuple[str, ...], ...]
    cheap: bool = False

    def argv(self, run: Path) -> list[list[str]]:
        return [[part.replace("{run}", str(run)) for part in step] for step in self.steps]

    def text(self, run_name: str) -> str:
        return " && ".join(" ".join(part.replace("{run}", run_name) for part in step) for step in self.steps)


# artifact name (app.loaders.ARTIFACTS) -> producer
PRODUCERS: dict[str, Producer] = {
    "config": Producer((("train", "fit", "--model", "NAME", "--data", "SPEC"),)),
    "metrics": Producer((("train", "eval", "--run", "{run}"),)),
    "history": Producer((("train", "fit", "--model", "NAME", "--data", "SPEC"),)),
    "profile": Producer((("train", "profile", "--run", "{run}", "--batch-sizes", "1,8", "--repeats", "2", "--no-chart"),),
                        cheap=True),
    "linear": Producer((("probe", "linear", "--run", "{run}", "--tokens", "cls,patch"),)),
    "cka": Producer((("probe", "cka", "--run", "{run}"),), cheap=True),
    "umap": Producer((("probe", "umap", "--run", "{run}", "--method", "umap,pca"),), cheap=True),
    "attribution": Producer((("probe", "attribute", "--run", "{run}"),)),
    "interventions": Producer((("probe", "intervene", "--run", "{run}"),)),
}


def command_text(artifact: str, run_name: str) -> str:
    """The shell command that produces ``artifact`` for ``run_name``."""
    return PRODUCERS[artifact].text(run_name)


def _run_step(argv: list[str], root: Path) -> tuple[bool, str]:
    """Run one ``train``/``probe`` command; returns (ok, last line of its output)."""
    env = dict(os.environ, FERLENS_ARTIFACTS=str(root), TQDM_DISABLE="1")
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    lines = [ln for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
    return proc.returncode == 0, (lines[-1] if lines else f"exit code {proc.returncode}")


def missing_ui(artifact: str, runs: list[Path], root: Path, *, key: str) -> None:
    """Say which command produces a missing artifact; for cheap ones offer a button that runs it.

    Args:
        artifact: a name from ``PRODUCERS``.
        runs: the runs that lack it.
        root: the artifacts root the commands write into.
        key: unique widget key.
    """
    if not runs:
        return
    producer = PRODUCERS[artifact]
    names = ", ".join(r.name for r in runs)
    cmds = "\n".join(producer.text(r.name) for r in runs)
    st.info(f"No {artifact} artifact for {names}. Produce it with:")
    st.code(cmds, language="bash")
    if producer.cheap and st.button(f"Run it now ({len(runs)} run{'s' * (len(runs) > 1)})", key=f"{key}_run"):
        steps = [(run, argv) for run in runs for argv in producer.argv(run)]
        bar = st.progress(0.0, text="starting…")
        failures = []
        for i, (run, argv) in enumerate(steps):
            bar.progress(i / len(steps), text=f"{run.name}: {' '.join(argv)}")
            ok, last = _run_step(argv, root)
            if not ok:
                failures.append(f"{run.name}: {last}")
        bar.progress(1.0, text="done")
        if failures:
            for f in failures:
                st.error(f)
        else:
            st.cache_data.clear()
            st.rerun()


def gather(artifact: str, runs: list[Path], root: Path, *, key: str) -> dict[str, "object"]:
    """Load ``artifact`` for every run: errors are shown per run, missing ones get ``missing_ui``.

    Returns:
        ``{run name: data}`` for the runs whose artifact loaded.
    """
    from . import loaders

    found, missing = {}, []
    for run in runs:
        art = loaders.load(run, artifact)
        if art.error:
            st.error(f"Run {run.name}: {art.error}")
        elif art.missing:
            missing.append(run)
        else:
            found[run.name] = art.data
    missing_ui(artifact, missing, root, key=key)
    return found


def usable_runs(runs: list[Path]) -> list[Path]:
    """The selected runs whose config.json reads; each broken run gets its own error, the rest go on.

    Shows a hint when nothing is selected.
    """
    from . import loaders

    if not runs:
        st.info("No run selected. Pick runs in the sidebar, or train one with "
                "'train fit --model ferlens_tiny_vit_s3 --data synthfer:size=64,n=2000'.")
        return []
    good = []
    for run in runs:
        cfg = loaders.load(run, "config")
        if cfg.ok:
            good.append(run)
        else:
            st.error(f"Run {run.name}: {cfg.error or 'config.json is missing'}")
    return good
