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
