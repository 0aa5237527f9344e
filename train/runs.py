"""Run folders: a run folder alone rebuilds the model, its preprocessing and its label names.

config.json schema (keys other parts rely on)::

    {"model": {"name": "ferlens_tiny_vit_s3", "kwargs": {...},   # kwargs passed to create_model; a name may be
               "hook_map": {"blocks": "layers", ...},          #   MODULE:FUNCTION ("source": its file); optional
               "source": "/path/to/module.py"},                #   hook map for models ferlens does not know
     "num_classes": 7, "label_names": [...],
     "data": {"spec": "synthfer:size=64,n=2000", "attr_kinds": {"identity": "categorical", ...}},
     "input": {"img_size": 64, "mean": [...], "std": [...]},
     "train": {...resolved TrainConfig...}, "seed": 0,
     "ferlens_version": "0.1.0", "git_commit": "abc123" | null, "created": "2026-11-23T15:00:00"}
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # torch appears only in annotations; not importing it keeps run listing fast (app sidebar)
    import torch

from .errors import FerlensError
from .io import atomic_write_bytes, atomic_write_json, read_json

__version__ = "0.1.0"


def artifacts_root() -> Path:
    """The artifacts folder: ``$FERLENS_ARTIFACTS`` or ``./artifacts``."""
    return Path(os.environ.get("FERLENS_ARTIFACTS", "artifacts"))


def runs_root() -> Path:
    return artifacts_root() / "runs"


def resolve_run(run: str | os.PathLike) -> Path:
    """Accept a run folder path or a bare run name under ``artifacts/runs``."""
    p = Path(run)
    if (p / "config.json").is_file():
        return p
    q = runs_root() / str(run)
    if (q / "config.json").is_file():
        return q
    raise FerlensError(f"Run '{run}' not found (no config.json in {p} or {q}); train one with "
                       "'train fit --model NAME --data SPEC' or pass the run folder's path.")


def list_runs(root: str | os.PathLike | None = None) -> list[Path]:
    """Run folders (those holding a config.json) directly under ``root`` (default artifacts/runs)."""
    root = Path(root) if root is not None else runs_root()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if not p.name.startswith(".") and (p / "config.json").is_file())


# ============================================================================ claiming a run folder
STAGING_SUFFIX = ".partial"


def staging_dir(final: Path) -> Path:
    """The hidden folder a run is written into before it is published: ``<parent>/.<name>.partial``."""
    return final.parent / f".{final.name}{STAGING_SUFFIX}"


def lock_path(final: Path) -> Path:
    return final.parent / f".{final.name}.lock"


class RunClaim:
    """An exclusive claim on a run folder name (``claim_run`` makes one; see there).

    Attributes:
        final: the run folder the claim publishes.
        path: where to write now: the staging folder until ``publish()``, then ``final``.
        published: whether ``final`` holds this claim's files.
    """

    def __init__(self, final: Path, lock_fd: int, path: Path, published: bool, overwrite: bool,
                 made_parent: Path | None = None):
        self.final, self.path, self.published = final, path, published
        self._fd, self._overwrite, self._made_parent = lock_fd, overwrite, made_parent

    def publish(self) -> Path:
        """Rename the staging folder to the run folder (replacing an old run under --overwrite).

        Idempotent; after it ``path`` is ``final``. Files opened in the staging folder stay valid
        (a rename keeps inodes), so writers may keep their handles.
        """
        if self.published:
            return self.final
        if not self.path.is_dir():
            raise FerlensError(f"The staging folder {self.path} of run {self.final.name} was abandoned or removed; "
                               "start the run again.")
        old = None
        if self.final.exists():
            if not self._overwrite:  # only reachable if someone created it behind the lock's back
                raise FerlensError(f"The run folder {self.final} appeared while this run was being written; "
                                   "pick another run name.")
            old = self.final.parent / f".{self.final.name}.old-{os.getpid()}"
            os.rename(self.final, old)
        os.rename(self.path, self.final)
        self.path, self.published = self.final, True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final

    def abandon(self) -> None:
        """Delete the unpublished staging folder (nothing of the run is left)."""
        if not self.published:
            shutil.rmtree(self.path, ignore_errors=True)

    def release(self) -> None:
        """Drop the lock (and its file); the claim is over."""
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            os.unlink(lock_path(self.final))
        os.close(self._fd)
        self._fd = -1
        if self._made_parent is not None and not self.published:  # a claim that wrote nothing leaves no
            d = self.final.parent                                    # empty folders it created either
            with contextlib.suppress(OSError):
                while True:
                    os.rmdir(d)
                    if d == self._made_parent:
                        break
                    d = d.parent


def _lock(final: Path) -> int:
    """An exclusive, non-blocking flock on ``<parent>/.<name>.lock``; the kernel drops it when the
    process dies (even by SIGKILL), so a crashed run never blocks the name."""
    path = lock_path(final)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise FerlensError(f"The run folder {final} is being written by another process right now "
                                   f"(it holds {path}); wait for it to finish or pick another run name.") from None
            raise
        try:  # the holder before us may have unlinked the file: then lock the new one
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def claim(final: str | os.PathLike, *, overwrite: bool = False, resume: bool = False) -> RunClaim:
    """Claim ``final`` exclusively (see ``claim_run``); the caller must ``release()`` the claim."""
    final = Path(final)
    made_parent = None  # the topmost folder this claim creates
    for d in [final.parent, *final.parent.parents]:
        if d.exists():
            break
        made_parent = d
    final.parent.mkdir(parents=True, exist_ok=True)
    fd = _lock(final)
    try:
        if resume:
            if not final.is_dir():
                raise FerlensError(f"Run {final} does not exist, so it cannot be resumed; start it without --resume.")
            return RunClaim(final, fd, final, True, overwrite)
        if final.exists() and any(final.iterdir()):
            if not overwrite:
                raise FerlensError(f"The run folder {final} already exists; pass --resume {final.name} to continue "
                                   "it, --overwrite to replace it, or --run_name NAME for a new one.")
            if not (final / "config.json").is_file():
                raise FerlensError(f"--overwrite refuses to delete {final}: it holds no config.json, so it is not "
                                   "a ferlens run folder; pick another --run_name.")
        elif final.exists():
            final.rmdir()  # an empty folder is no run
        stage = staging_dir(final)
        if stage.exists():  # left by a process killed before its first step; we hold the lock, so it is dead
            shutil.rmtree(stage)
        os.mkdir(stage)
        return RunClaim(final, fd, stage, False, overwrite, made_parent)
    except BaseException:
        RunClaim(final, fd, final, False, overwrite, made_parent).release()
        raise


@contextlib.contextmanager
def claim_run(final: str | os.PathLike, *, overwrite: bool = False, resume: bool = False,
              publish: bool = True) -> Iterator[RunClaim]:
    """Claim a run folder name exclusively and write the run out of sight until it is good.

        with claim_run(runs_root() / "my-run") as c:
            save_run(c.path, model, config)     # writes into <runs>/.my-run.partial
            ...                                 # c.publish() may be called early (fit: after step 1)
        # on normal exit the staging folder is renamed to <runs>/my-run

    A second claim of the same name (another process) fails at once with one sentence. An exception
    before publishing deletes the staging folder, so nothing is left; after publishing, the folder
    stays as it is (a resumable run). A SIGKILL leaves only the hidden ``.<name>.partial`` (and
    ``.<name>.lock``), which the next claim of that name removes; ``list_runs`` never shows them.

    Args:
        final: the run folder to create (or, with ``resume``, to continue in place).
        overwrite: replace an existing run folder — only when this claim publishes, so a failed
            re-run keeps the old run.
        resume: the folder exists already; the claim only locks it (``path`` is ``final``).
        publish: publish on normal exit (False: the caller decides; an unpublished claim is abandoned).
    """
    c = claim(final, overwrite=overwrite, resume=resume)
    try:
        yield c
        if publish:
            c.publish()
    finally:
        try:
            c.abandon()
        finally:
            c.release()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or None
    except Exception:  # git missing or not a checkout: the commit is simply unknown
        return None


def stamp_config(config: dict[str, Any]) -> dict[str, Any]:
    """Add version, commit and creation time to a config dict (returns a new dict)."""
    out = dict(config)
    out.setdefault("ferlens_version", __version__)
    out.setdefault("git_commit", git_commit())
    out.setdefault("created", _dt.datetime.now().isoformat(timespec="seconds"))
    return out


def save_weights(path: str | os.PathLike, model: torch.nn.Module) -> Path:
    """Atomically write a model's state dict as safetensors."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic_write_bytes(path, save(state))


def save_run(run_dir: str | os.PathLike, model: torch.nn.Module, config: dict[str, Any]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``run_dir`` (atomic writes)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_weights(run_dir / "model.safetensors", model)
    atomic_write_json(run_dir / "config.json", stamp_config(config))
    return run_dir


def build_model(config: dict[str, Any]) -> torch.nn.Module:
    """Build the (untrained) model a run config describes."""
    from .models import create_model

    try:
        name = config["model"]["name"]
        kwargs = dict(config["model"].get("kwargs", {}))
        num_classes = int(config["num_classes"])
    except (KeyError, TypeError):
        raise FerlensError("The run config lacks model.name or num_classes; re-create the run with 'train fit'.") from None
    kwargs.pop("num_classes", None)
    from .models.external import is_external, load_factory, set_hook_map

    if is_external(name):  # import it first so a missing module names the file the run was made from
        load_factory(name, source=config["model"].get("source"))
    model = create_model(name, num_classes=num_classes, **kwargs)
    if config.get("input", {}).get("img_size"):
        from .models import set_input_config

        inp = config["input"]
        set_input_config(model, inp["img_size"], inp.get("mean"), inp.get("std"))
    set_hook_map(model, config["model"].get("hook_map"))  # read by the model adapter (train.models.adapters)
    return model


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict strictly; on mismatch raise one sentence naming the mismatched keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        if shape:
            parts.append("shape mismatch in " + _few([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                                       for k in shape]))
        raise FerlensError(f"The weights in {source} do not match the model ({'; '.join(parts)}); "
                           "check that the run's config names the same model and options.")
    model.load_state_dict(state, strict=True)


def _few(keys: list[str], n: int = 4) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_run(run: str | os.PathLike, map_location: str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a run's model with its weights, in eval mode, plus its config dict.

    Args:
        run: run folder or run name under artifacts/runs.
        map_location: device for the weights.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run_dir = resolve_run(run)
    config = read_json(run_dir / "config.json")
    model = build_model(config)
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise FerlensError(f"{weights} is missing; the run never finished an epoch — re-run 'train fit' or '--resume'.")
    try:
        state = load_file(str(weights), device=map_location)
    except (SafetensorError, OSError) as e:
        raise FerlensError(f"{weights} is not a readable safetensors file ({e}); re-train or restore the run.") from None
    load_state_strict(model, state, str(weights))
    config["run_dir"] = str(run_dir)
    return model.eval(), config
