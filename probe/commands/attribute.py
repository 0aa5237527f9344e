"""`probe attribute --run RUN [--data SPEC] [--n 64] [--methods ig,saliency,occlusion] [--n-steps 32]`:
captum attributions with metrics merged into ``explain/attribution_metrics``."""
from __future__ import annotations

import argparse

from probe.commands.rollout import add_explain_arguments, run_explain

DEFAULT_METHODS = ["ig", "saliency", "occlusion"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_explain_arguments(parser, DEFAULT_METHODS)
    parser.add_argument("--n-steps", dest="n_steps", type=int, default=None,
                        help="integrated-gradients steps (default: 32)")
    parser.add_argument("--internal-batch-size", dest="internal_batch_size", type=int, default=None,
                        help="captum's internal batch size, bounds memory (default: 64 for ig, all at once "
                             "otherwise)")
    parser.add_argument("--nt-samples", dest="nt_samples", type=int, default=None,
                        help="wrap the methods in a captum NoiseTunnel with this many noisy samples")


def run(args: argparse.Namespace) -> int:
    return run_explain(args)
