"""Run many independent jobs (sweep points, probe runs) through submitit: on this machine or on Slurm.

    opts = LaunchOptions(launcher="slurm", partition="gpu", gpus_per_task=1, timeout_min=240)
    executor = make_executor(opts, folder=sweep_dir / "jobs", name="grid")
    outcomes = run_jobs(executor, tasks, opts)          # prints one progress line per task change

submitit (``pip install ferlens[cluster]``) does the submitting, the job arrays, the logs and the requeue on
preemption; this module only maps ferlens flags onto its parameters, throttles the local executor (it starts
every job at once otherwise) and prints progress. A task is any picklable callable with a ``label`` and a
``progress()`` string; tasks whose ``checkpoint()`` returns a ``DelayedSubmission`` are requeued by submitit
when Slurm preempts them or their time runs out (``FitPoint`` re-enters ``fit`` through ``--resume``).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Protocol

from .errors import FerlensError

# launcher name -> submitit AutoExecutor cluster ("" = no submitit: in this process, one after another)
LAUNCHERS: dict[str, str] = {"serial": "", "local": "local", "slurm": "slurm", "debug": "debug"}
# --slurm.KEY flags that are submitit's cluster-independent parameters (the rest become slurm_KEY)
GENERIC = {"timeout_min", "cpus_per_task", "mem_gb", "gpus_per_node"}


@dataclass
class LaunchOptions:
    launcher: str = "local"          # serial (in this process) | local (submitit LocalExecutor) | slurm | debug
    parallel: int = 0                # jobs at once; 0 = local: cores // threads per job, slurm: 256 (array limit)
    poll_s: float = 2.0              # seconds between progress checks
    timeout_min: int = 240           # wall-clock limit per job (Slurm --time; the local executor's limit too)
    partition: str = ""              # Slurm partition
    account: str = ""
    qos: str = ""
    constraint: str = ""
    gpus_per_task: int = 0
    cpus_per_task: int = 0           # 0 = the cluster's default
    mem_gb: int = 0                  # 0 = the cluster's default
    max_requeues: int = 3            # requeues after preemption/timeout before a job is given up
    setup: list[str] = field(default_factory=list)  # shell lines run before each Slurm job (module load ...)


SLURM_FLAGS = ("timeout_min", "partition", "account", "qos", "constraint", "gpus_per_task", "cpus_per_task",
               "mem_gb", "max_requeues", "setup")


def add_launcher_arguments(parser: argparse.ArgumentParser, default: str = "local") -> None:
    """``--launcher``, ``--parallel``, ``--poll`` and ``--slurm.KEY VALUE`` for every key of LaunchOptions."""
    parser.add_argument("--launcher", default=default, choices=list(LAUNCHERS),
                        help=f"where jobs run (default: {default}); local and slurm go through submitit")
    parser.add_argument("--parallel", type=int, default=0,
                        help="jobs at once (default: local = cores // threads, slurm = 256)")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between progress lines' checks")
    types = {f.name: f.type for f in fields(LaunchOptions)}
    for key in SLURM_FLAGS:
        if key == "setup":
            parser.add_argument("--slurm.setup", dest="slurm_setup", action="append", default=[],
                                metavar="LINE", help="shell line run before each Slurm job (repeatable)")
            continue
        kind = int if types[key] in ("int", int) else str
        parser.add_argument(f"--slurm.{key}", dest=f"slurm_{key}", type=kind, default=None,
                            help=f"Slurm {key} (default: {getattr(LaunchOptions(), key)!r})")


def options_from_args(args: argparse.Namespace) -> LaunchOptions:
    opts = LaunchOptions(launcher=args.launcher, parallel=args.parallel, poll_s=args.poll)
    for key in SLURM_FLAGS:
        value = getattr(args, f"slurm_{key}", None)
        if value not in (None, []):
            setattr(opts, key, value)
    return opts


def executor_parameters(opts: LaunchOptions, name: str) -> dict[str, Any]:
    """``AutoExecutor.update_parameters`` keywords for ``opts`` (generic names, ``slurm_*`` for the rest)."""
    params: dict[str, Any] = {"name": name, "timeout_min": int(opts.timeout_min)}
    if opts.launcher != "slurm":
        return params
    if opts.cpus_per_task:
        params["cpus_per_task"] = int(opts.cpus_per_task)
    if opts.mem_gb:
        params["mem_gb"] = int(opts.mem_gb)
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(opts, key):
            params[f"slurm_{key}"] = getattr(opts, key)
    if opts.gpus_per_task:
        params["slurm_gpus_per_task"] = int(opts.gpus_per_task)
    if opts.setup:
        params["slurm_setup"] = list(opts.setup)
    params["slurm_array_parallelism"] = int(opts.parallel) if opts.parallel > 0 else 256
    return params


def require_submitit():
    try:
        import submitit
    except ImportError:
        raise FerlensError("The local and slurm launchers need submitit; install it with "
                           "'pip install ferlens[cluster]' (or pass --launcher serial).") from None
    return submitit


def make_executor(opts: LaunchOptions, folder: Path, name: str):
    """A submitit AutoExecutor writing its job folders (pickles, stdout/stderr logs) under ``folder/<job id>``."""
    if opts.launcher not in LAUNCHERS or not LAUNCHERS[opts.launcher]:
        raise FerlensError(f"Launcher '{opts.launcher}' does not submit jobs; use one of local, slurm, debug.")
    submitit = require_submitit()
    cluster = LAUNCHERS[opts.launcher]
    extra = {"slurm_max_num_timeout": int(opts.max_requeues)} if cluster == "slurm" else {}
    try:
        executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster, **extra)
    except RuntimeError as e:  # SlurmExecutor: "Could not detect srun"
        raise FerlensError(f"Cannot submit to Slurm from this machine ({e}); run the command on a Slurm login "
                           "node, or use --launcher local.") from None
    try:
        executor.update_parameters(**executor_parameters(opts, name))
    except ValueError as e:
        raise FerlensError(f"submitit refused the Slurm parameters ({str(e).splitlines()[0]}); "
                           "fix the --slurm.* flags.") from None
    return executor


def default_parallel(opts: LaunchOptions, threads_per_job: int) -> int:
    if opts.parallel > 0:
        return opts.parallel
    if opts.launcher == "slurm":
        return 256
    return max(1, (os.cpu_count() or 1) // max(1, threads_per_job)) if threads_per_job > 0 else 1


class Task(Protocol):
    label: str

    def __call__(self) -> Any: ...

    def progress(self) -> str: ...


@dataclass
class Outcome:
    task: Any
    ok: bool
    result: Any = None
    error: str = ""
    job_id: str = ""
    log: str = ""


def run_jobs(executor, tasks: list[Task], opts: LaunchOptions, parallel: int,
             echo: Callable[[str], None] | None = None) -> list[Outcome]:
    """Submit ``tasks`` and wait for them, printing a line whenever a task's state or progress changes.

    The local executor gets at most ``parallel`` jobs at once (submitted as slots free up); Slurm gets
    one job array (submitit ``batch()``) limited by ``slurm_array_parallelism``. A failed job does not stop
    the others; its error and log path are in its Outcome. Ctrl-C cancels the submitted jobs (their
    checkpoints stay on disk, so the next start resumes them).
    """
    echo = echo or (lambda line: print(line, flush=True))
    pending = list(range(len(tasks)))
    jobs: dict[int, Any] = {}
    outcomes: dict[int, Outcome] = {}
    shown: dict[int, str] = {}
    n = len(tasks)

    def submit(indices: list[int]) -> None:
        if opts.launcher == "slurm" and len(indices) > 1:
            with executor.batch():
                subs = [executor.submit(tasks[i]) for i in indices]
        else:
            subs = [executor.submit(tasks[i]) for i in indices]
        for i, job in zip(indices, subs):
            jobs[i] = job
            echo(f"[{len(outcomes)}/{n} done] {tasks[i].label}: submitted as job {job.job_id}")

    limit = n if opts.launcher == "slurm" else parallel   # Slurm throttles the array itself
    try:
        while pending or len(outcomes) < len(jobs):
            free = limit - (len(jobs) - len(outcomes))
            if pending and free > 0:
                take, pending = pending[:free], pending[free:]
                submit(take)
            for i, job in jobs.items():
                if i in outcomes:
                    continue
                if opts.launcher == "debug" or job.done():   # a DebugJob runs in this process on result()
                    outcomes[i] = _outcome(tasks[i], job)
                    o = outcomes[i]
                    state = "done" if o.ok else f"FAILED ({o.error}; log {o.log})"
                    echo(f"[{len(outcomes)}/{n} done] {tasks[i].label}: {state}")
                    continue
                line = _status(job, tasks[i])
                if shown.get(i) != line:
                    shown[i] = line
                    echo(f"[{len(outcomes)}/{n} done] {tasks[i].label}: {line} (job {job.job_id})")
            if pending or len(outcomes) < len(jobs):
                time.sleep(opts.poll_s)
    except KeyboardInterrupt:
        for i, job in jobs.items():
            if i not in outcomes:
                job.cancel(check=False)
        echo("interrupted: cancelled the running jobs; their last epoch-end checkpoints are kept, so the same "
             "command resumes them.")
        raise
    finally:
        with contextlib.suppress(OSError):   # submitit leaves an empty literal '%j' folder behind
            if Path(executor.folder).name == "%j":
                Path(executor.folder).rmdir()
    return [outcomes[i] for i in range(n)]


def _status(job, task: Task) -> str:
    """``pending`` / ``running epoch 3/100`` ...: submitit's job state plus the task's own progress while it runs."""
    state = str(job.state)
    return f"{state.lower()} {task.progress() if state == 'RUNNING' else ''}".strip()


def _outcome(task: Task, job) -> Outcome:
    from submitit.core.utils import FailedJobError, UncompletedJobError

    log = str(job.paths.stderr)
    try:
        return Outcome(task, True, job.result(), job_id=str(job.job_id), log=log)
    except FailedJobError as e:  # the job raised: the traceback's last line names the error
        trace = str(e).split("-" * 22)          # submitit: header ---- traceback ---- log paths
        lines = [line.strip() for line in trace[1 if len(trace) > 1 else 0].splitlines() if line.strip()]
        error = lines[-1] if lines else "the job raised an error"
        return Outcome(task, False, error=error.removeprefix("train.errors.FerlensError: ")[:300],
                       job_id=str(job.job_id), log=log)
    except UncompletedJobError:  # no result pickle: the process was killed (SIGKILL, out of memory, node lost)
        return Outcome(task, False, error="the job ended without a result (killed?)", job_id=str(job.job_id), log=log)


# ============================================================================ train sweep points
# test hook: "<run>=<step>:<SIGNAL>[,...]" sends SIGNAL to that run's job after update <step>, first attempt only
DEBUG_JOB_SIGNAL_ENV = "FERLENS_DEBUG_JOB_SIGNAL"


@dataclass
class FitPoint:
    """One sweep point as a submitit job: fits (or resumes, or finds finished) its ordinary run folder.

    ``checkpoint()`` is submitit's preemption hook: the requeued job calls this object again and
    ``train.sweep.fit_point`` continues from the run's last epoch-end ``state.pt`` via ``--resume``, which
    ends bit-identical to an uninterrupted run (tests/integration/test_resume.py).
    """
    plan: Any                     # train.sweep.PointPlan
    artifacts: str                # absolute artifacts root, so the job writes where the sweep reads
    attempt: int = 0

    @property
    def label(self) -> str:
        return self.plan.label

    def __call__(self) -> str:
        from .engine import DEBUG_KILL_ENV
        from .sweep import fit_point

        os.environ["FERLENS_ARTIFACTS"] = self.artifacts
        os.environ.pop(DEBUG_KILL_ENV, None)
        hooks = dict(h.partition("=")[::2] for h in os.environ.get(DEBUG_JOB_SIGNAL_ENV, "").split(",") if h)
        if self.attempt == 0 and self.plan.run in hooks:
            os.environ[DEBUG_KILL_ENV] = hooks[self.plan.run]
        return str(fit_point(self.plan))

    def checkpoint(self):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(FitPoint(self.plan, self.artifacts, self.attempt + 1))

    def progress(self) -> str:
        return self.plan.progress()

