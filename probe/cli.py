"""`probe` command line: a thin dispatcher over ``probe/commands/<name>.py`` modules."""
from __future__ import annotations

import sys

from train.cli import dispatch

COMMANDS: dict[str, tuple[str, str]] = {
    "extract": ("probe.commands.extract", "cache CLS/patch/stem readouts of every layer"),
    "linear": ("probe.commands.linear", "linear probes per (run, target, layer, readout)"),
    "cka": ("probe.commands.cka", "CKA between layers, readouts and runs"),
    "umap": ("probe.commands.umap", "UMAP/PCA embeddings of a readout per layer"),
    "norms": ("probe.commands.norms", "token norms and CLS attention entropy per layer"),
    "rollout": ("probe.commands.rollout", "attention rollout maps and metrics"),
    "gradcam": ("probe.commands.gradcam", "Grad-CAM family maps and metrics"),
    "attribute": ("probe.commands.attribute", "captum attributions (IG, saliency, occlusion) and metrics"),
    "intervene": ("probe.commands.intervene", "CLS / patch interventions per layer"),
    "erase": ("probe.commands.erase", "LEACE concept erasure: probes and model accuracy before/after"),
    "figures": ("probe.commands.figures", "paper figures (PDF/SVG/PNG + tidy CSV)"),
    "report": ("probe.commands.report", "findings report (Markdown + HTML)"),
    "readme": ("probe.commands.readme", "rewrite README.md's generated blocks from the demo's facts.json"),
}


def main(argv=None) -> int:
    return dispatch("probe", COMMANDS, "Probe and explain what CLS and patch tokens encode (ferlens).", argv)


if __name__ == "__main__":
    sys.exit(main())
