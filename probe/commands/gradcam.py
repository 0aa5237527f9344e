"""`probe gradcam --run RUN [--data SPEC] [--n 64] [--methods gradcam,...] [--layer blocks.2|stem.stage3]`:
Grad-CAM family maps (pytorch-grad-cam) with metrics merged into ``explain/attribution_metrics``."""
from __future__ import annotations

import argparse

from probe.commands.rollout import add_explain_arguments, run_explain

DEFAULT_METHODS = ["gradcam", "gradcampp", "layercam", "eigencam"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_explain_arguments(parser, DEFAULT_METHODS)


def run(args: argparse.Namespace) -> int:
    return run_explain(args)
