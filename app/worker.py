"""The explain worker: a process of its own that imports the explain stack, keeps the runs' models and answers
the Explain page's requests (``python -m app.worker``, started by ``app.compute``).

Why a process: the explain stack is ~5 s of imports on one core (torch ~0.9 s, timm → torchvision →
torch._dynamo ~1.5 s, pytorch-grad-cam with matplotlib, scipy and scikit-learn ~1.4 s, captum). In the
Streamlit server they shared one GIL with the page runs: the warm-up thread got only ~4.5 s of idle server
time before the browser flow's Explain click (~6 s after the server answers), so the first Explain visit
paid ~2 s of imports and took 2.1–2.6 s (target 2 s). Started by the server's lifespan, this process imports
the stack and loads the selected runs' models on the second core while the server draws the first pages;
the server itself no longer imports timm, captum or pytorch-grad-cam (measured with bench/bench_app.py:
see the numbers in ``app/compute.py``).

Protocol (no pickle anywhere): a message is a 4-byte big-endian header length, a UTF-8 JSON header, then the
raw C-order bytes of the arrays the header lists under ``"arrays"`` (``[{"name", "dtype", "shape"}]``, in
that order; ``dtype`` is numpy's ``dtype.str`` such as ``"<f4"``). A request's header holds ``"op"`` and its
options; a reply holds the results, or ``"error"``: one sentence naming the problem and the fix.

Requests (``handle``; also called in-process by ``app.compute`` when FERLENS_APP_WORKER=0):

- ``spec`` {run} → {layers, heads}: the blocks whose CLS query attends over patch tokens, and the head count.
- ``predict`` {run} + image → probs (C,) float32.
- ``map`` {run, method, target, layer, head, n_steps} + image → heat (H, W) float32 in [0, 1] and
  overlay (H, W, 3) uint8 (pytorch-grad-cam's ``show_cam_on_image``), H = W = the run's input size.
- ``warm`` {runs} → {warmed}: load the models and run every method once on a zero input.

``image`` is always an (h, w, 3) uint8 RGB array of any size; the worker applies the run's eval transform.
"""
from __future__ import annotations

import importlib
import json
import os
import struct
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from train.errors import FerlensError, sentence
from train.io import file_stamp

MAX_HEADER_BYTES = 16 * 2**20
# Imported at start, before the first request: the import order of the stack, heaviest first.
STACK = ("torch", "torchvision", "timm", "train.models", "train.engine", "train.runs", "train.models.adapters",
         "probe.attribution", "pytorch_grad_cam", "pytorch_grad_cam.utils.image", "captum.attr")
MAX_MODELS = 16
WARM_METHODS = ("rollout", "cls_attention", "gradcam", "ig")  # first calls build hooks and load lazy modules

Arrays = dict[str, np.ndarray]


class ProtocolError(Exception):
    """A message that does not follow the framing (truncated stream, bad header): the pipe cannot be resynced."""


# ---------------------------------------------------------------------------------------------- framing

def write_message(stream: BinaryIO, header: dict[str, Any], arrays: Arrays | None = None) -> None:
    """Write one framed message (header + arrays) and flush.

    Args:
        stream: a binary stream (a pipe, a BytesIO).
        header: JSON-serialisable fields; ``"arrays"`` is set here.
        arrays: name -> array of any plain dtype and shape (object and void dtypes are refused).
    """
    blobs, listing = [], []
    for name, arr in (arrays or {}).items():
        arr = np.asarray(arr, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
        if arr.dtype.hasobject or arr.dtype.kind == "V":
            raise ProtocolError(f"array {name} has dtype {arr.dtype}, which has no raw byte form")
        listing.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape)})
        blobs.append(arr.tobytes())
    head = json.dumps({**header, "arrays": listing}).encode("utf-8")
    stream.write(struct.pack(">I", len(head)) + head + b"".join(blobs))
    stream.flush()


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if data is None or len(data) != n:
        raise ProtocolError(f"the stream ended {n - len(data or b'')} bytes short of a message")
    return data


def read_message(stream: BinaryIO) -> tuple[dict[str, Any], Arrays] | None:
    """Read one framed message; None on a clean end of stream (before its first byte).

    Returns:
        (header without ``"arrays"``, name -> array).

    Raises:
        ProtocolError: the stream ends inside a message or the header is malformed.
    """
    first = stream.read(4)
    if not first:
        return None
    if len(first) < 4:
        first += _read_exact(stream, 4 - len(first))
    size = struct.unpack(">I", first)[0]
    if size > MAX_HEADER_BYTES:
        raise ProtocolError(f"a header of {size} bytes is over the {MAX_HEADER_BYTES} byte limit")
    try:
        header = json.loads(_read_exact(stream, size).decode("utf-8"))
        listing = header.pop("arrays", [])
        arrays = {}
        for item in listing:
            dtype = np.dtype(str(item["dtype"]))
            if dtype.hasobject or dtype.kind == "V":
                raise ProtocolError(f"array {item['name']} has dtype {dtype}, which has no raw byte form")
            shape = tuple(int(s) for s in item["shape"])
            n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            arrays[str(item["name"])] = np.frombuffer(_read_exact(stream, n), dtype=dtype).reshape(shape)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError) as e:
        raise ProtocolError(f"a malformed header ({type(e).__name__}: {e})") from None
    return header, arrays


# --------------------------------------------------------------------------------------------- handlers

_MODELS: OrderedDict[str, tuple[tuple[int, int], Any, dict, Callable]] = OrderedDict()


def model_for(run: str) -> tuple[Any, dict, Callable]:
    """(model in eval mode, config, eval transform) of a run, cached until its model.safetensors changes.

    Raises:
        FerlensError: one sentence when the run cannot be loaded.
    """
    key = file_stamp(Path(run) / "model.safetensors")  # a re-trained run is reloaded
    cached = _MODELS.get(run)
    if cached is not None and cached[0] == key:
        _MODELS.move_to_end(run)
        return cached[1:]
    name = Path(run).name
    try:
        import torch

        from train.engine import make_eval_transform
        from train.runs import load_run

        torch.set_num_threads(1)  # tiny models: one thread avoids OpenMP spin contention on shared cores
        model, config = load_run(run)
        transform = make_eval_transform(config)
    except FerlensError:
        raise
    except ModuleNotFoundError as e:
        raise FerlensError(f"The module {e.name} is not available yet, so run {name} cannot be loaded; "
                           "install or finish it and reload the page.") from None
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
        raise FerlensError(f"Run {name} cannot be loaded ({type(e).__name__}: {e}); "
                           "check its config.json and model.safetensors.") from None
    _MODELS[run] = (key, model, config, transform)
    while len(_MODELS) > MAX_MODELS:
        _MODELS.popitem(last=False)
    return model, config, transform


def _input(arrays: Arrays, transform: Callable):
    """The request's (h, w, 3) uint8 image → (1, 3, H, W) model input."""
    from PIL import Image

    image = arrays.get("image")
    if image is None or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = "none" if image is None else f"{image.dtype} {tuple(image.shape)}"
        raise FerlensError(f"The explain request carries no (h, w, 3) uint8 RGB image (got {got}); reload the page.")
    pil = Image.fromarray(image)
    return pil, transform(pil).unsqueeze(0)


def handle_spec(header: dict, arrays: Arrays) -> tuple[dict, Arrays]:
    from train.models.adapters import model_spec

    spec = model_spec(model_for(header["run"])[0])
    return {"layers": [spec.block_of(n) for n in spec.cls_attention_layers()],
            "heads": int(spec.num_heads or 1)}, {}


def handle_predict(header: dict, arrays: Arrays) -> tuple[dict, Arrays]:
    import torch

    model, _, transform = model_for(header["run"])
    _, x = _input(arrays, transform)
    with torch.no_grad():
        probs = model(x).softmax(-1)[0].float().numpy()  # (C,)
    return {}, {"probs": probs}


def handle_map(header: dict, arrays: Arrays) -> tuple[dict, Arrays]:
    from PIL import Image
    from pytorch_grad_cam.utils.image import show_cam_on_image

    import probe

    model, config, transform = model_for(header["run"])
    image, x = _input(arrays, transform)
    options: dict[str, Any] = {}
    if header.get("layer"):
        options["layer"] = str(header["layer"])
    if header.get("head") is not None:
        options["head"] = int(header["head"])
    if header.get("n_steps") is not None:
        options["n_steps"] = int(header["n_steps"])
    target = header.get("target")
    heat = probe.explain(model, x, method=str(header["method"]), target=None if target is None else int(target),
                         **options)[0].numpy().astype(np.float32)  # (H, W)
    size = int(config["input"]["img_size"])
    rgb = np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0  # (H, W, 3)
    over = show_cam_on_image(rgb, heat, use_rgb=True, image_weight=0.55)  # (H, W, 3) uint8
    return {}, {"heat": heat, "overlay": over}


def handle_warm(header: dict, arrays: Arrays) -> tuple[dict, Arrays]:
    import torch

    import probe

    warmed = []
    for run in header.get("runs", []):
        try:
            model, config, _ = model_for(str(run))
            size = int(config["input"]["img_size"])
            x = torch.zeros(1, 3, size, size)  # (1, 3, H, W): the run's own input size
            for method in WARM_METHODS:
                try:
                    probe.explain(model, x, method=method, target=0, **({"n_steps": 2} if method == "ig" else {}))
                except FerlensError:
                    pass  # e.g. no CLS attention in this model: the page says so when asked
            warmed.append(str(run))
        except (FerlensError, KeyError, TypeError, ValueError):
            pass  # an unusable run shows its error on the Explain page; warming it is only an optimisation
    return {"warmed": warmed}, {}


HANDLERS: dict[str, Callable[[dict, Arrays], tuple[dict, Arrays]]] = {
    "spec": handle_spec, "predict": handle_predict, "map": handle_map, "warm": handle_warm}


def handle(header: dict[str, Any], arrays: Arrays) -> tuple[dict[str, Any], Arrays]:
    """Answer one request; every failure becomes an ``{"error": sentence}`` reply (the worker goes on)."""
    op = header.get("op")
    fn = HANDLERS.get(op)
    if fn is None:
        return {"error": f"The explain worker has no request '{op}'; use one of {', '.join(HANDLERS)}."}, {}
    try:
        return fn(header, arrays)
    except FerlensError as e:
        return {"error": sentence(e)}, {}
    except Exception as e:  # any other failure is this request's problem only
        where = f" for run {Path(header['run']).name}" if header.get("run") else ""
        return {"error": f"The explain worker's {op} request{where} failed ({type(e).__name__}: {e}); "
                         "pick other options or reload the page."}, {}


def import_stack() -> None:
    """Import the explain stack so the first request pays none of it."""
    for name in STACK:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # a missing optional package becomes the error reply of the request that needs it


def main() -> int:
    """Serve requests from stdin until it closes (the server stopped or is gone)."""
    out = os.fdopen(os.dup(1), "wb")  # the replies' stream; fd 1 now goes to stderr, so no print can corrupt it
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    import torch

    torch.set_num_threads(1)
    import_stack()
    while True:
        try:
            message = read_message(inp)
        except ProtocolError as e:
            print(f"ferlens explain worker: {e}; stopping.", file=sys.stderr, flush=True)
            return 2
        if message is None:
            return 0
        reply, arrays = handle(*message)
        try:
            write_message(out, reply, arrays)
        except BrokenPipeError:
            return 0
        except ProtocolError as e:
            write_message(out, {"error": f"The explain worker's {message[0].get('op')} reply cannot be sent ({e}); "
                                         "reload the page."})


if __name__ == "__main__":
    sys.exit(main())
