"""User-facing errors: one sentence that names the problem and the fix."""
from __future__ import annotations


class FerlensError(Exception):
    """An error caused by user input (bad path, bad spec, bad name ...).

    The CLIs catch it and print its message alone, without a traceback. The message is one
    sentence that names the thing that is wrong and how to fix it.
    """


def close_matches(word: str, choices, n: int = 3) -> str:
    """Return ' Did you mean: a, b?' for the closest choices, or '' when nothing is close."""
    import difflib

    hits = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(hits)}?" if hits else ""


def sentence(error: BaseException) -> str:
    """The user-facing sentence of an error. A FerlensError raised in a DataLoader worker reaches the
    main process re-wrapped by torch with the worker's traceback in its message; keep only the sentence."""
    text = str(error)
    if "Original Traceback" in text:
        name = type(error).__name__
        for line in reversed(text.strip().splitlines()):
            if f"{name}: " in line:
                return line.split(f"{name}: ", 1)[1].strip()
    return text


def disk_full_sentence(error: OSError) -> str:
    """One sentence for ENOSPC / EDQUOT while writing ``error.filename`` (or an unnamed file)."""
    where = f" while writing {error.filename}" if error.filename else ""
    return (f"The disk is full{where} ({error.strerror or 'no space left on device'}); free some space (or point "
            "FERLENS_ARTIFACTS at a larger disk) and run the command again — a run continues with --resume RUN.")
