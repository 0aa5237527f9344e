"""Atomic artifact writes (temp file in the same folder + os.replace) and small readers.

Every artifact ferlens writes goes through these helpers, so a killed process never leaves a
half-written file behind: readers see either the old file or the new one.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give: mkstemp's 0600 is too private for artifacts


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (parent folders are created).

    Args:
        path: destination file.
        data: the bytes.
        fsync: flush to disk before the rename; bulk exports of many small files may pass False
            (the rename stays atomic, only durability across a power cut is given up).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            from .errors import FerlensError, disk_full_sentence

            raise FerlensError(disk_full_sentence(OSError(e.errno, e.strerror, str(path)))) from None
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def atomic_write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]],
                     columns: list[str] | None = None) -> Path:
    """Write dict rows as CSV; ``columns`` fixes the column order (default: keys of the first row)."""
    rows = list(rows)
    if columns is None:
        columns = list(rows[0].keys()) if rows else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(row.get(k)) for k in columns})
    return atomic_write_text(path, buf.getvalue())


def _csv_cell(v: Any) -> Any:
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=_json_default)
    return v


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Save one array as .npy atomically (loadable with ``np.load(..., mmap_mode="r")``)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def file_stamp(path: str | os.PathLike) -> tuple[int, int]:
    """(mtime_ns, size) of a file, (0, -1) when it cannot be read: a cache key that changes when the file is
    rewritten."""
    try:
        st = os.stat(path)
        return st.st_mtime_ns, st.st_size
    except OSError:
        return 0, -1


def read_json(path: str | os.PathLike) -> Any:
    from .errors import FerlensError

    path = Path(path)
    if not path.is_file():
        raise FerlensError(f"{path} does not exist; create it with the command that produces it.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FerlensError(f"{path} is not valid JSON ({e.msg if hasattr(e, 'msg') else e}); "
                           "delete it and re-run the command that wrote it.") from None
