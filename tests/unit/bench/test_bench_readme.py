"""bench/readme.py: the README's Performance block comes from bench/results.json and names the CPU."""
from __future__ import annotations

import pytest

from bench.readme import table, write_block
from train.errors import FerlensError

REPORT = {"machine": {"cpu": "AMD EPYC 7B13", "cores": 2, "torch": "2.14.1", "isa_label": "AVX2",
                      "cpu_capability": "AVX2", "isa_caps": {}},
          "created": "2026-12-02T01:00:00",
          "benchmarks": {"bench_probe_sweep": {"status": "ok", "result": {
              "full_speedup": 2.5, "full_max_acc_diff_points": 0.17, "real_speedup": 1.47,
              "real_max_acc_diff_points": 0.3, "real_source": "demo_cataftermlp"}},
              "bench_synthfer": {"status": "ok", "result": {"images_per_s": 2105.3, "with_mask_images_per_s": 1700.0}},
              "bench_app": {"status": "timeout", "seconds": 300}}}


def test_table_names_the_cpu_and_quotes_results():
    text = table(REPORT)
    assert "AMD EPYC 7B13" in text and "(AVX2;" in text
    assert "**1.47×**" in text and "2.50×" in text and "2,105 img/s" in text
    assert "| `bench_app` | — | timeout | — |" in text


def test_write_block_replaces_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- BEGIN generated:performance -->\nold\n<!-- END generated:performance -->\ntail\n")
    assert write_block(readme, "performance", "new table")
    assert readme.read_text() == ("intro\n<!-- BEGIN generated:performance -->\nnew table\n"
                                  "<!-- END generated:performance -->\ntail\n")
    assert not write_block(readme, "performance", "new table")   # unchanged the second time


def test_missing_markers_is_one_sentence(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no block here\n")
    with pytest.raises(FerlensError, match="has no '<!-- BEGIN generated:performance -->'"):
        write_block(readme, "performance", "x")
