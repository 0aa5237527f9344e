"""The explain worker (app/worker.py) and its server-side client (app/compute.py): the framing round-trips
arrays exactly, the worker's maps are probe.explain's, a failing request is one sentence and the worker goes
on, a dead worker is restarted, and the worker ends with its stdin."""
from __future__ import annotations

import io
import os
import signal
import sys

import numpy as np
import pytest

from app import compute
from app.worker import ProtocolError, read_message, write_message
from train.errors import FerlensError

pytest.importorskip("train.models")
pytest.importorskip("probe.attribution")


@pytest.fixture(scope="module")
def module_worker():
    """One worker process for the module's tests."""
    w = compute.Worker()
    w.start()
    yield w
    w.stop()


@pytest.fixture()
def worker(module_worker, monkeypatch):
    """The module's worker as the server's worker, so ``compute.request`` goes through it."""
    monkeypatch.delenv("FERLENS_APP_WORKER", raising=False)
    monkeypatch.setattr(compute, "WORKER", module_worker)
    return module_worker


@pytest.fixture(scope="module")
def run(demo_root) -> str:
    return str(demo_root / "runs" / "tiny_vit_a")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (72, 60, 3), dtype=np.uint8)  # not the input size


def test_framing_round_trips_arrays_exactly():
    rng = np.random.default_rng(1)
    arrays = {"f4": rng.random((3, 5), dtype=np.float32), "f8": rng.random(7), "f2": rng.random(4).astype(np.float16),
              "u1": rng.integers(0, 256, (4, 6, 3), dtype=np.uint8), "i8": rng.integers(-2**40, 2**40, 9),
              "big_endian": np.arange(6, dtype=">i4").reshape(2, 3), "bool": rng.random(5) > 0.5,
              "c8": (rng.random(3) + 1j * rng.random(3)).astype(np.complex64), "scalar": np.array(3.5),
              "empty": np.zeros((0, 3), dtype=np.float32), "strided": rng.random((6, 8))[::2, ::3].T}
    stream = io.BytesIO()
    write_message(stream, {"op": "map", "run": "r", "target": 2, "layer": None}, arrays)
    write_message(stream, {"op": "spec"})
    stream.seek(0)
    header, back = read_message(stream)
    assert header == {"op": "map", "run": "r", "target": 2, "layer": None}
    assert list(back) == list(arrays)
    for name, arr in arrays.items():
        assert back[name].dtype == arr.dtype and back[name].shape == arr.shape, name
        assert np.array_equal(back[name], arr), name
    assert read_message(stream) == ({"op": "spec"}, {})
    assert read_message(stream) is None                                  # a clean end of stream


def test_framing_refuses_what_has_no_raw_bytes_and_truncated_streams():
    with pytest.raises(ProtocolError, match="object"):
        write_message(io.BytesIO(), {}, {"objects": np.array([{"a": 1}], dtype=object)})
    stream = io.BytesIO()
    write_message(stream, {"op": "predict"}, {"image": np.zeros((4, 4, 3), dtype=np.uint8)})
    for cut in (2, 10, len(stream.getvalue()) - 1):
        with pytest.raises(ProtocolError):
            read_message(io.BytesIO(stream.getvalue()[:cut]))


def test_worker_maps_equal_probe_explain(worker, run, image):
    import torch
    from PIL import Image

    import probe
    from train.engine import make_eval_transform
    from train.runs import load_run

    model, config = load_run(run)
    x = make_eval_transform(config)(Image.fromarray(image)).unsqueeze(0)  # (1, 3, 64, 64)
    _, got = compute.request("map", {"image": image}, run=run, method="rollout", target=0, layer=None, head=None)
    want = probe.explain(model, x, method="rollout", target=0)[0].numpy()
    assert got["heat"].dtype == np.float32 and got["heat"].shape == (64, 64)
    np.testing.assert_allclose(got["heat"], want, atol=1e-6, rtol=0)
    assert got["overlay"].dtype == np.uint8 and got["overlay"].shape == (64, 64, 3)
    _, pred = compute.request("predict", {"image": image}, run=run)
    with torch.no_grad():
        np.testing.assert_allclose(pred["probs"], model(x).softmax(-1)[0].numpy(), atol=1e-6)


def test_in_process_handlers_answer_like_the_worker(worker, run, image, monkeypatch):
    fields = dict(run=run, method="cls_attention", target=0, layer=None, head=1)
    _, remote = compute.request("map", {"image": image}, **fields)
    remote_spec, _ = compute.request("spec", run=run)
    monkeypatch.setenv("FERLENS_APP_WORKER", "0")
    _, local = compute.request("map", {"image": image}, **fields)
    np.testing.assert_allclose(local["heat"], remote["heat"], atol=1e-6, rtol=0)
    assert np.array_equal(local["overlay"], remote["overlay"])
    assert compute.request("spec", run=run)[0] == remote_spec
    assert remote_spec["heads"] > 1 and remote_spec["layers"][-1].startswith("blocks.")


def test_failing_request_is_one_sentence_and_the_worker_goes_on(worker, run, image):
    pid = worker.proc.pid
    with pytest.raises(FerlensError, match="Unknown attribution method 'nope'"):  # a FerlensError's own sentence
        compute.request("map", {"image": image}, run=run, method="nope", target=0)
    with pytest.raises(FerlensError, match=r"map request for run tiny_vit_a failed \(ValueError"):  # any other
        compute.request("map", {"image": image}, run=run, method="rollout", target="first")
    with pytest.raises(FerlensError, match="no .h, w, 3. uint8 RGB image"):
        compute.request("predict", {"image": image[..., 0]}, run=run)
    assert compute.request("spec", run=run)[0]["heads"] > 1
    assert worker.proc.pid == pid


def test_killed_worker_is_restarted_by_the_next_request(worker, run, image):
    old = worker.proc
    os.kill(old.pid, signal.SIGKILL)
    old.wait(10)
    _, pred = compute.request("predict", {"image": image}, run=run)
    assert pred["probs"].sum() == pytest.approx(1.0, abs=1e-5)
    assert worker.proc.pid != old.pid and worker.proc.poll() is None


def test_worker_that_keeps_failing_is_one_sentence():
    w = compute.Worker([sys.executable, "-c", "import sys; print('no explain stack here', file=sys.stderr); "
                                              "sys.exit(3)"])
    try:
        with pytest.raises(FerlensError) as e:
            w.request({"op": "spec", "run": "r"})
        assert str(e.value) == "The explain worker stopped (exit code 3): no explain stack here; reload the page."
    finally:
        w.stop()


def test_worker_ends_with_its_stdin(worker, run):
    compute.request("spec", run=run)                                     # its imports are done
    proc = worker.proc
    proc.stdin.close()
    assert proc.wait(30) == 0
