"""README generated blocks: rewritten from facts.json, well-formed, and the repository README passes."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from probe import readme as RM
from probe import report as R
from train.errors import FerlensError

_spec = importlib.util.spec_from_file_location("ferlens_test_figures", Path(__file__).with_name("test_figures.py"))
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

REPO_README = Path(__file__).resolve().parents[3] / "README.md"
TEMPLATE = """# x

intro 12.5 % typed by hand stays (outside any block)

<!-- BEGIN generated:machine -->
old
<!-- END generated:machine -->

<!-- BEGIN generated:demo-results -->
<!-- END generated:demo-results -->

<!-- BEGIN generated:interventions -->
stale 99 %
<!-- END generated:interventions -->

<!-- BEGIN generated:localisation -->
<!-- END generated:localisation -->

<!-- BEGIN generated:cls-read -->
<!-- END generated:cls-read -->

<!-- BEGIN generated:demo-timings -->
<!-- END generated:demo-timings -->
tail
"""


@pytest.fixture
def facts(_artifacts_root, tmp_path):
    runs = fx.build_runs(_artifacts_root)
    rep = R.build_report(runs, tmp_path / "r", figures_dir=tmp_path / "none")
    f = json.loads(json.dumps(rep.facts))                     # as written to facts.json
    f["machine"] = {"cpu": "Test CPU 9000", "cores": 2, "isa": "AVX2", "torch": "2.14.1"}
    return f


def test_blocks_are_rewritten_from_facts_and_idempotent(facts):
    timings = {"total_seconds": 371.4, "jobs": 2, "stages": [{"stage": "fit vit", "seconds": 205.3, "start": 2.6}]}
    out = RM.rewrite(TEMPLATE, facts, timings)
    assert "intro 12.5 % typed by hand stays" in out and out.endswith("tail\n") and "stale 99 %" not in out
    assert "Measured on Test CPU 9000 (2 cores, AVX2, torch 2.14.1), no GPU; the demo pipeline took 371 s" in out
    assert "vit 93.0% [89.0, 96.0]" in out                   # metrics.json of vit_fx
    assert "| expression (14.3%) | 91.0% [88.0, 94.0], sel. +71.7" in out or "| expression (" in out
    assert "gradcam peaks on cell 3,3 in 42 of 64 faces" in out   # the count, not "every map"
    assert "After the last block it collapses to one class" in out
    assert "in block 0 the CLS puts 50.0% of its attention on the token at cell 1,2" in out
    assert "| fit vit | 205.3 | 2.6 |" in out
    assert RM.rewrite(out, facts, timings) == out             # a second run changes nothing
    assert set(RM.find_blocks(out)) == set(RM.BLOCKS)


@pytest.mark.parametrize("text, match", [
    ("<!-- BEGIN generated:a -->\nx\n", "never closed"),
    ("<!-- BEGIN generated:a -->\n<!-- BEGIN generated:b -->\n<!-- END generated:b -->\n<!-- END generated:a -->",
     "begins inside block 'a'"),
    ("<!-- END generated:a -->", "does not close an open block 'a'"),
    ("<!-- BEGIN generated:a -->\n<!-- END generated:b -->", "does not close"),
    ("<!-- BEGIN generated:machine -->\n<!-- END generated:machine -->\n" * 2, "appears twice"),
])
def test_malformed_blocks_are_one_sentence(text, match):
    with pytest.raises(FerlensError, match=match):
        RM.find_blocks(text)


def test_unknown_block_names_the_generators(facts):
    with pytest.raises(FerlensError, match="block 'nope' has no generator; use one of machine"):
        RM.rewrite("<!-- BEGIN generated:nope -->\n<!-- END generated:nope -->\n", facts)


def test_repository_readme_blocks_are_well_formed_and_known():
    blocks = RM.find_blocks(REPO_README.read_text(encoding="utf-8"))
    assert {"machine", "demo-results", "interventions", "localisation", "cls-read"} <= set(blocks)
    assert set(blocks) <= set(RM.BLOCKS) | set(RM.OWNED_ELSEWHERE)


def test_cli_rewrites_and_checks(facts, tmp_path, capsys):
    from probe.cli import main

    fpath = tmp_path / "facts.json"
    fpath.write_text(json.dumps(facts))
    readme = tmp_path / "README.md"
    readme.write_text(TEMPLATE)
    assert main(["readme", "--facts", str(fpath), "--readme", str(readme), "--check"]) == 1
    assert main(["readme", "--facts", str(fpath), "--readme", str(readme)]) == 0
    assert "Test CPU 9000" in readme.read_text()
    assert main(["readme", "--facts", str(fpath), "--readme", str(readme), "--check"]) == 0
    assert main(["readme", "--facts", str(tmp_path / "missing.json"), "--readme", str(readme)]) == 2
    assert "missing.json is missing; run 'make demo'" in capsys.readouterr().err


def test_machine_info_names_the_cpu_path():
    info = R.machine_info()
    assert set(info) >= {"cpu", "cores", "isa", "machine"}
    assert info["isa"] is None or info["isa"].split(":")[0] in (
        "AMX + AVX-512 BF16", "AVX-512 BF16", "AVX-512", "AVX2", "AMX/AVX-512 BF16")


def test_machine_block_says_when_the_isa_was_capped(facts):
    """A demo run with ATEN_CPU_CAPABILITY/ONEDNN_MAX_CPU_ISA set (an AVX2-only CPU emulated) is named as such,
    not by the flags of the CPU underneath."""
    timings = {"total_seconds": 361.0, "jobs": 2, "machine": {
        "isa_label": "AVX2", "isa_reason": "ATen capped at AVX2 (ATEN_CPU_CAPABILITY)",
        "isa_caps": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}}
    text = RM.machine_block({"machine": {"cpu": "Test CPU 9000", "cores": 2, "isa": "AMX + AVX-512 BF16"}}, timings)
    assert "run as an AVX2 CPU (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2" in text
    assert "AMX + AVX-512 BF16" not in text and "took 361 s" in text


def test_rewrite_keeps_blocks_other_generators_own(facts):
    """The performance table comes from bench/results*.json (python -m bench.readme): probe readme keeps it."""
    text = ("<!-- BEGIN generated:performance -->\n| a | b |\n<!-- END generated:performance -->\n"
            "<!-- BEGIN generated:machine -->\n<!-- END generated:machine -->\n")
    out = RM.rewrite(text, facts)
    assert "| a | b |" in out
    assert set(RM.find_blocks(out)) == {"performance", "machine"}
