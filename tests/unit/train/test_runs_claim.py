"""``train.runs.claim_run``: exclusive run-folder names, staging out of sight, publish by rename."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from train.errors import FerlensError
from train.runs import claim_run, list_runs, lock_path, staging_dir


def _names(root):
    return sorted(p.name for p in root.iterdir())


def test_publish_renames_staging_to_the_run_folder(tmp_path):
    final = tmp_path / "run"
    with claim_run(final) as c:
        assert c.path == staging_dir(final) and c.path.is_dir() and not final.exists()
        (c.path / "config.json").write_text("{}")
        assert list_runs(tmp_path) == []                 # staging is never listed as a run
    assert _names(tmp_path) == ["run"] and (final / "config.json").is_file()


def test_exception_before_publish_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with claim_run(tmp_path / "run") as c:
            (c.path / "config.json").write_text("{}")
            raise RuntimeError("boom")
    assert _names(tmp_path) == []


def test_exception_after_publish_keeps_the_run(tmp_path):
    with pytest.raises(RuntimeError):
        with claim_run(tmp_path / "run") as c:
            (c.path / "config.json").write_text("{}")
            c.publish()
            raise RuntimeError("boom")
    assert _names(tmp_path) == ["run"]


def test_second_claim_of_a_name_fails_at_once(tmp_path):
    with claim_run(tmp_path / "run"):
        with pytest.raises(FerlensError, match="being written by another process"):
            with claim_run(tmp_path / "run"):
                pass
    with claim_run(tmp_path / "run"):   # free again after release
        pass


def test_claim_held_by_another_process_fails_and_dies_with_it(tmp_path):
    """The flock is per open file: a claim in a live child blocks the name; after SIGKILL it is free
    and the next claim clears the dead child's staging folder."""
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from train.runs import claim
        c = claim({str(tmp_path / 'run')!r})
        (c.path / 'config.json').write_text('{{}}')
        print('claimed', flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert child.stdout.readline().strip() == "claimed"
        with pytest.raises(FerlensError, match="being written by another process"):
            claim_run(tmp_path / "run").__enter__()
    finally:
        child.kill()
        child.wait()
    assert list_runs(tmp_path) == [] and not (tmp_path / "run").exists()
    with claim_run(tmp_path / "run") as c:
        assert not (c.path / "config.json").exists()     # the dead claim's files were removed
    assert _names(tmp_path) == ["run"]


def test_existing_run_needs_overwrite_and_a_failed_overwrite_keeps_it(tmp_path):
    final = tmp_path / "run"
    final.mkdir()
    (final / "config.json").write_text('{"old": 1}')
    with pytest.raises(FerlensError, match="already exists; pass --resume run"):
        claim_run(final).__enter__()
    with pytest.raises(RuntimeError):
        with claim_run(final, overwrite=True):
            raise RuntimeError("boom")
    assert (final / "config.json").read_text() == '{"old": 1}'
    with claim_run(final, overwrite=True) as c:
        (c.path / "config.json").write_text('{"new": 1}')
    assert (final / "config.json").read_text() == '{"new": 1}' and _names(tmp_path) == ["run"]


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(FerlensError, match="refuses to delete"):
        claim_run(tmp_path / "run", overwrite=True).__enter__()
    assert not lock_path(tmp_path / "run").exists() and _names(tmp_path) == ["run"]


def test_resume_locks_in_place(tmp_path):
    final = tmp_path / "run"
    final.mkdir()
    with claim_run(final, resume=True) as c:
        assert c.path == final and c.published
        with pytest.raises(FerlensError, match="being written"):
            claim_run(final, resume=True).__enter__()
