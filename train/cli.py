"""`train` command line: a thin dispatcher. Each subcommand lives in ``train/commands/<name>.py``
with ``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only when used."""
from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import sys
import traceback
import warnings

from .errors import FerlensError, disk_full_sentence, sentence

DEBUG_ENV = "FERLENS_DEBUG"   # =1: print tracebacks (FerlensError) and re-raise unexpected errors

COMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("train.commands.fit", "train a model and write artifacts/runs/<run>"),
    "eval": ("train.commands.evaluate", "evaluate a run on a data split (metrics.json)"),
    "import": ("train.commands.import_run", "a model trained elsewhere (timm name or MODULE:FUNCTION + checkpoint) "
                                            "as a run folder"),
    "sweep": ("train.commands.sweep", "grid x seeds of fits with a mean ± 95%% CI summary"),
    "profile": ("train.commands.profile", "params, MACs/FLOPs, throughput and memory of models"),
    "data": ("train.commands.data", "SynthFER generation, dataset info and checks"),
}


def dispatch(prog: str, commands: dict[str, tuple[str, str]], description: str, argv=None) -> int:
    """Parse ``argv`` into one subcommand and run it; user errors print one line and exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in commands.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        if argv and argv[0] not in ("-h", "--help"):
            from .errors import close_matches
            print(f"{prog}: unknown command '{argv[0]}'; use one of {', '.join(commands)}."
                  + close_matches(argv[0], commands), file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name = argv[0]
    module = importlib.import_module(commands[name][0])
    sp = argparse.ArgumentParser(prog=f"{prog} {name}", description=commands[name][1].replace("%%", "%"))
    module.add_arguments(sp)
    args = sp.parse_args(argv[1:])
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        with _one_line_data_warnings(f"{prog} {name}"):
            return int(module.run(args) or 0)
    except FerlensError as e:
        if debug:
            traceback.print_exc()
        print(f"{prog} {name}: error: {sentence(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog} {name}: interrupted; finished artifacts are kept, nothing half-written is left.",
              file=sys.stderr)
        return 130
    except OSError as e:
        if debug:
            raise
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"{prog} {name}: error: {disk_full_sentence(e)}", file=sys.stderr)
        else:
            print(f"{prog} {name}: error: {e.strerror or type(e).__name__}"
                  f"{f' ({e.filename})' if e.filename else ''}; check that path and its permissions, then re-run.",
                  file=sys.stderr)
        return 2
    except Exception as e:  # a bug, not a user error: still one line, the traceback only on request
        if debug:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"{prog} {name}: internal error {type(e).__name__}: {first} — re-run with {DEBUG_ENV}=1 for the "
              "traceback and report it.", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _one_line_data_warnings(where: str):
    """Print dataset warnings (skipped files, samples left out by convention) as one stderr line each."""
    from .data._files import DataWarning

    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataWarning):
            print(f"{where}: warning: {message}", file=sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


def main(argv=None) -> int:
    return dispatch("train", COMMANDS, "Train FER hybrids and profile them (ferlens).", argv)


if __name__ == "__main__":
    sys.exit(main())
