"""Models from the user's own code: ``--model MODULE:FUNCTION``.

    model = create_external("my_code.models:ir50_vit", num_classes=7, depth=4)

The module is imported from the working directory or ``PYTHONPATH`` (like ``python -m``); the name is
recorded in the run config (``model.name``) with its kwargs, so ``train.load_run`` calls the same function again.
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any, Callable

from ..errors import FerlensError, close_matches


def is_external(name: str) -> bool:
    """``MODULE:FUNCTION`` names (registry names never hold a colon)."""
    return ":" in str(name)


def _on_path() -> str:
    """Put the working directory on ``sys.path`` (the ``train`` console script does not); returns it."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    return cwd


def load_factory(spec: str, source: str | None = None) -> Callable[..., Any]:
    """Import ``MODULE:FUNCTION`` (``FUNCTION`` may be dotted, ``models:Net.build``) and return the callable.

    Args:
        spec: e.g. ``my_pkg.models:ir50_vit``.
        source: the file the module came from when the run was made (named in the error when it is gone).
    """
    module_name, _, attr = str(spec).partition(":")
    if not module_name or not attr or not all(p.isidentifier() for p in module_name.split(".") + attr.split(".")):
        raise FerlensError(f"Cannot read --model '{spec}'; write an external model as MODULE:FUNCTION, "
                           "e.g. --model my_code.models:ir50_vit.")
    cwd = _on_path()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):  # the module itself
            was = f" (the run was made with {source})" if source else ""
            raise FerlensError(f"Cannot import module '{module_name}' for --model {spec} from the working directory "
                               f"{cwd} or PYTHONPATH{was}; run from the folder that holds it or add that folder to "
                               "PYTHONPATH (export PYTHONPATH=/path/to/your/code).") from None
        raise FerlensError(f"Importing '{module_name}' for --model {spec} failed because it imports '{e.name}', "
                           "which is not installed; install it in this environment.") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
            raise FerlensError(f"Module '{module_name}' ({getattr(module, '__file__', '?')}) has no '{attr}' "
                               f"for --model {spec}; name a function that builds the model."
                               + close_matches(part, names))
        obj = getattr(obj, part)
    if not callable(obj):
        raise FerlensError(f"'{spec}' is a {type(obj).__name__}, not a function; name a function that returns "
                           "an nn.Module.")
    return obj


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` takes a keyword ``name`` explicitly (``**kwargs`` alone does not count)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = params.get(name)
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def default_of(fn: Callable[..., Any], name: str) -> Any:
    """The default value of ``fn``'s parameter ``name``, or None."""
    try:
        p = inspect.signature(fn).parameters.get(name)
    except (TypeError, ValueError):
        return None
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def create_external(spec: str, num_classes: int | None = None, **kwargs: Any):
    """Call the user's model function; ``num_classes`` is passed when the function takes it.

    Args:
        spec: ``MODULE:FUNCTION``.
        num_classes: classifier outputs (passed as ``num_classes=`` when accepted, or through ``**kwargs``).
        **kwargs: the function's own options (``--model_kwargs.KEY VALUE``).

    Returns:
        the ``nn.Module`` the function built (in train mode, as constructed).
    """
    from torch import nn

    fn = load_factory(spec)
    call = dict(kwargs)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    takes_any = sig is not None and any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    if num_classes is not None and (accepts(fn, "num_classes") or takes_any):
        call["num_classes"] = num_classes
    if sig is not None:
        try:
            sig.bind(**call)
        except TypeError as e:
            options = ", ".join(p for p in sig.parameters if p != "num_classes") or "none"
            raise FerlensError(f"{spec} cannot be called with {sorted(call)} ({e}); its options are: {options}.") \
                from None
    model = fn(**call)
    if not isinstance(model, nn.Module):
        raise FerlensError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module; make it return "
                           "the model.")
    return model


def source_file(spec: str) -> str | None:
    """The file ``MODULE`` of ``MODULE:FUNCTION`` was imported from (recorded in the run config)."""
    module = sys.modules.get(str(spec).partition(":")[0])
    path = getattr(module, "__file__", None)
    return os.path.abspath(path) if path else None


def model_entry(name: str, kwargs: dict[str, Any], hook_map: dict[str, str] | None = None) -> dict[str, Any]:
    """config.json ``model`` section: ``{"name", "kwargs"[, "hook_map"][, "source"]}``."""
    entry: dict[str, Any] = {"name": name, "kwargs": dict(kwargs)}
    if hook_map:
        entry["hook_map"] = dict(hook_map)
    if is_external(name):
        entry["source"] = source_file(name)
    return entry


def parse_hook_map(items: list[str] | None) -> dict[str, str]:
    """``["blocks=layers", "tokens=embed", "stem.stage3=cnn.layer3"]`` -> ``{"blocks": "layers", ...}``."""
    out: dict[str, str] = {}
    for item in items or []:
        for piece in str(item).split():
            name, eq, path = piece.partition("=")
            if not eq or not name or not path:
                raise FerlensError(f"Cannot read the hook map entry '{piece}'; write NAME=MODULE_PATH, "
                                   "e.g. --hook-map blocks=layers tokens=embed stem.stage3=cnn.layer3.")
            out[name.strip()] = path.strip()
    return out


def set_hook_map(model, hook_map: dict[str, str] | None) -> dict[str, str]:
    """Set ``model.ferlens_hook_map`` (what ``train.models.adapters.model_spec`` reads) and check it there, so a
    module path the model does not have fails now, in one sentence, not in a later ``probe`` command.

    Args:
        model: the built model.
        hook_map: hook name (``blocks``, ``tokens``, ``stem.stage3`` ...) -> module path in ``model``.
    """
    if not hook_map:
        return {}
    from .adapters import model_spec

    model.ferlens_hook_map = dict(hook_map)
    model_spec(model)
    return dict(hook_map)
