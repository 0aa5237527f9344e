"""Server side of the explain worker (``app/worker.py``): one worker process per server, one request at a time.

The server's lifespan (``app/main.py``) starts the worker as the server starts, so it imports the explain
stack on the second core while the browser loads the first page; without the lifespan (AppTest runs
``ui.py`` directly) the first request starts it. A lock serialises request and reply on the pipes. A worker
that died is restarted once per request; when the restarted one fails too, the page gets one FerlensError
sentence. The worker leaves with the server: ``stop`` at lifespan exit and at exit, and the worker itself
ends on the end of its stdin (the server is gone).

FERLENS_APP_WORKER=0 runs the same handlers in the server process instead (debugging).

Measured with bench/bench_app.py (3 fresh servers, AVX2 cap, 2 shared cores, load average 1.9–3.0): the
switch to Explain went from 2.1–2.6 s (the server importing the explain stack) to 1.00 s median (runs 1.00,
0.61, 1.12); an Explain request stays at 0.50 s, the first page at 3.15 s (2.8 s before, the worker's imports
now share the two cores with it).
"""
from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

from train.errors import FerlensError

REPO = Path(__file__).resolve().parents[1]
STOP_SECONDS = 3.0


def in_process() -> bool:
    """True when FERLENS_APP_WORKER=0: the handlers run in the server process."""
    return os.environ.get("FERLENS_APP_WORKER", "1") == "0"


class Worker:
    """One ``python -m app.worker`` process (``argv``) and its pipes."""

    def __init__(self, argv: list[str] | None = None) -> None:
        self.argv = argv or [sys.executable, "-m", "app.worker"]
        self.proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._stderr: deque[str] = deque(maxlen=20)
        self._drain: threading.Thread | None = None
        self._atexit = False

    def start(self) -> None:
        """Start the process unless it is running (returns at once; the worker imports on its own)."""
        with self._lock:
            self._running()

    def _running(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self._stderr.clear()
            self.proc = subprocess.Popen(self.argv, cwd=REPO, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self._drain = threading.Thread(target=self._forward_stderr, args=(self.proc,),
                                           name="ferlens-worker-stderr", daemon=True)
            self._drain.start()
            if not self._atexit:
                atexit.register(self.stop)
                self._atexit = True
        return self.proc

    def _forward_stderr(self, proc: subprocess.Popen) -> None:
        """Copy the worker's stderr to the server's, keeping the last lines for the error sentence."""
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace")
            if line.strip():
                self._stderr.append(line.strip())
            try:
                sys.stderr.write(line)
            except (OSError, ValueError):
                pass  # the server's stderr is closed at shutdown

    def request(self, header: dict[str, Any], arrays: dict | None = None) -> tuple[dict[str, Any], dict]:
        """Send one request and wait for its reply; a dead worker is restarted once.

        Raises:
            FerlensError: the worker stopped twice in a row.
        """
        from .worker import ProtocolError, read_message, write_message

        with self._lock:
            for _ in range(2):
                proc = self._running()
                try:
                    write_message(proc.stdin, header, arrays)
                    reply = read_message(proc.stdout)
                except (OSError, ProtocolError):
                    reply = None
                if reply is not None:
                    return reply
                code = self._reap(proc)
            reason = self._stderr[-1] if self._stderr else "it printed no error"
            raise FerlensError(f"The explain worker stopped (exit code {code}): {reason.rstrip('.')}; "
                               "reload the page.")

    def _reap(self, proc: subprocess.Popen, grace: float = STOP_SECONDS) -> int:
        """Exit code of a worker whose pipe failed or closed (terminated if it still runs after ``grace`` s, then
        killed); its stderr is read to the end."""
        try:
            code = proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.terminate()  # e.g. still importing, so it has not read its stdin's end yet
            try:
                code = proc.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
        if self._drain is not None:
            self._drain.join(timeout=1.0)
        for pipe in (proc.stdin, proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        return code

    def stop(self) -> None:
        """End the worker: close its stdin (it exits on the end of input), kill it if it does not."""
        got = self._lock.acquire(timeout=STOP_SECONDS)  # a request in flight at shutdown is cut off
        try:
            proc, self.proc = self.proc, None
            if proc is None or proc.poll() is not None:
                return
            try:
                proc.stdin.close()
            except OSError:
                pass
            self._reap(proc, grace=1.0)
        finally:
            if got:
                self._lock.release()


WORKER = Worker()
_IN_PROCESS_LOCK = threading.Lock()  # the handlers share cached models, whose hooks must not interleave


def start() -> None:
    """Start the server's worker (no-op when FERLENS_APP_WORKER=0)."""
    if not in_process():
        WORKER.start()


def stop() -> None:
    """Stop the server's worker (server shutdown)."""
    WORKER.stop()


def request(op: str, arrays: dict | None = None, **fields: Any) -> tuple[dict[str, Any], dict]:
    """One request to the explain handlers (see ``app.worker``), in the worker or in-process.

    Returns:
        (reply header, name -> array).

    Raises:
        FerlensError: the handler's error sentence, or the worker stopped.
    """
    header = {"op": op, **fields}
    if in_process():
        from .worker import handle

        with _IN_PROCESS_LOCK:
            reply, out = handle(header, arrays or {})
    else:
        reply, out = WORKER.request(header, arrays)
    if "error" in reply:
        raise FerlensError(reply["error"])
    return reply, out


def warm(runs: list[str]) -> None:
    """Load the runs' models in the worker and run each method once, from a background thread (one request
    per run, so a page's request waits for one run's warm-up at most)."""
    def _warm() -> None:
        for run in runs:
            try:
                request("warm", runs=[run])
            except FerlensError:
                return  # the worker is gone: the next page request restarts it and says why if it cannot
    threading.Thread(target=_warm, name="ferlens-worker-warm", daemon=True).start()
