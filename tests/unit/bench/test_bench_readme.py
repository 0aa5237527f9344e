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


def test_demo_table_names_the_cpu_and_the_budget():
    from bench.readme import demo_table

    record = {"machine": {"cpu": "AMD EPYC 7B13", "cores": 2, "isa_label": "AVX2", "cpu_capability": "AVX2"},
              "commit": "abc1234", "make_demo_to_app_seconds": 512.4, "setup_seconds": 101.0,
              "pipeline_seconds": 398.2, "target_seconds": 600.0, "min_accuracy": 0.9,
              "test_accuracy": {"vit": 0.9573, "cataftermlp": 0.9348}, "load_average_before": 0.1,
              "stages": [{"stage": "fit vit", "seconds": 280.0}, {"stage": "linear probes demo_vit", "seconds": 40.0}]}
    text = demo_table(record)
    assert "AMD EPYC 7B13" in text and "(AVX2;" in text and "commit abc1234" in text
    assert "**512 s**" in text and "setup 101 s" in text and "pipeline 398 s" in text and "≤ 600 s" in text
    assert "vit 95.7%" in text and "cataftermlp 93.5%" in text and "fit vit 280 s" in text


def test_app_row_quotes_the_explain_page_and_the_medians():
    report = {**REPORT, "benchmarks": {"bench_app": {"status": "ok", "result": {
        "first_page": 3.9, "page_switch_max": 0.8, "explain_page": 1.7, "explain_request": 0.6, "runs": 3,
        "pages": {"Probes": 0.8, "Explain": 1.7}}}}}
    row = next(line for line in table(report).splitlines() if "bench_app" in line)
    assert "3.90 s / 0.80 s / 1.70 s / 0.60 s" in row and "median of 3 runs" in row and "Explain 1.70 s" in row
    assert "≤ 5 s / 1.5 s / 2 s / 2 s" in row


def test_probe_row_splits_agreement_at_chance():
    from bench.bench_probe_sweep import _agreement_split
    from bench.readme import _probe

    runs = {"demo_vit": {"targets": {"expression": {"acc_diff_points": [0.1, 0.2], "informative": [True, True]},
                                     "yaw_bin": {"acc_diff_points": [1.5, 0.3], "informative": [False, True]}}}}
    split = _agreement_split(runs)
    assert split == {"real_max_acc_diff_informative_points": 0.3, "real_informative_matrices": 3,
                     "real_max_acc_diff_at_chance_points": 1.5, "real_at_chance_matrices": 1}
    row = _probe({"full_speedup": 3.4, "full_max_acc_diff_points": 1.0, "real_speedup": 7.35,
                  "real_source": "demo_vit", **split})
    assert "**7.35×**" in row[2] and "0.30 pt on the 3 matrices whose probe beats chance" in row[2]
    assert "1.50 pt on the 1 at chance" in row[2]


def test_probe_row_quotes_the_distance_to_the_optimum_when_measured():
    from bench.bench_probe_sweep import _agreement_split
    from bench.readme import _probe

    runs = {"demo_vit": {"targets": {"expression": {"acc_diff_points": [1.7, 0.2], "informative": [True, False],
                                                    "acc_diff_vs_converged_points": [0.0, 0.4]}}}}
    ref = _agreement_split(runs, "acc_diff_vs_converged_points", "_vs_converged")
    assert ref["real_max_acc_diff_vs_converged_informative_points"] == 0.0
    assert ref["real_max_acc_diff_vs_converged_at_chance_points"] == 0.4
    row = _probe({"full_speedup": 3.4, "full_max_acc_diff_points": 1.0, "real_speedup": 9.9, "real_source": "demo_vit",
                  **_agreement_split(runs), **ref, "real_sklearn_max_acc_diff_vs_converged_points": 1.7})
    assert "optimum (sklearn at tol 1e-6) 0.00 pt on the 1 matrices whose probe beats chance" in row[2]
    assert "0.40 pt on the 1 at chance (sklearn at the same tolerance: 1.70 pt)" in row[2]
