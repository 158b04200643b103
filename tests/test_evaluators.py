"""The benchmark evaluator on the real tables, and latency measured on this CPU."""

from __future__ import annotations

import csv

import pytest

from search_spaces import get_space
from workers import EvaluatorSpec, TrialTask, evaluate_batch
from workers.evaluators import EvaluationError, get_evaluator
from workers.latency import device_key
from workers.tables import load_table

BEST_VALID = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"  # noqa: E501
IN_HW_BENCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"  # noqa: E501
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"  # noqa: E501


@pytest.mark.integration
def test_shipped_tables_match_the_shared_data(shared_data):
    shipped = load_table("nb201-cifar10")
    shared = load_table(str(shared_data / "nb201" / "nb201-cifar10.csv"))
    assert len(shipped) == len(shared) == 15625
    assert shipped.rows == shared.rows
    latency = load_table("hw-nas-bench-cifar10")
    assert len(latency) == 12554
    assert latency.rows == load_table(str(shared_data / "nb201" /
                                          "hw-nas-bench-cifar10.csv")).rows


def test_table_facts_from_the_data_readme():
    table = load_table("nb201-cifar10")
    best = max(table.rows.items(), key=lambda kv: kv[1]["valid_acc"])
    assert best[0] == BEST_VALID and best[1]["valid_acc"] == pytest.approx(91.6067)
    assert max(r["test_acc"] for r in table.rows.values()) == pytest.approx(94.3733)
    assert table.rows[ALL_SKIP]["test_acc"] == pytest.approx(54.30, abs=0.01)


def test_benchmark_evaluator_reports_table_metrics_and_device_latencies():
    space = get_space("nb201")
    evaluator = get_evaluator("benchmark", space, latency_table="hw-nas-bench-cifar10")
    result = evaluator.evaluate(space.from_key(IN_HW_BENCH), IN_HW_BENCH)
    assert result.metrics["valid_acc"] == pytest.approx(90.7693)
    assert result.params == space.params(space.from_key(IN_HW_BENCH)) == 802426
    assert result.metrics["params"] == pytest.approx(result.params)
    devices = {(m.device, m.metric) for m in result.measurements}
    assert {("pixel3", "latency_ms"), ("edgegpu", "energy_mj"), ("fpga", "latency_ms")} <= devices
    assert all(m.source == "benchmark" for m in result.measurements)
    assert evaluator.devices() == {"edgegpu", "raspi4", "pixel3", "fpga"}
    # the best-by-validation cell is one of the 3,071 without an HW-NAS-Bench row
    missing = evaluator.evaluate(space.from_key(BEST_VALID), BEST_VALID)
    assert missing.metrics["valid_acc"] == pytest.approx(91.6067)
    assert missing.measurements == []


def test_any_table_with_an_arch_column_works(tmp_path):
    path = tmp_path / "mine.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["arch", "top1", "note"])
        writer.writerow([ALL_SKIP, "12.5", "text is ignored"])
    space = get_space("nb201")
    evaluator = get_evaluator("benchmark", space, table=str(path))
    assert evaluator.metric_names() == {"top1", "params", "flops"}
    assert evaluator.evaluate(space.from_key(ALL_SKIP), ALL_SKIP).metrics["top1"] == 12.5
    with pytest.raises(EvaluationError, match="is not in table"):
        evaluator.evaluate(space.from_key(BEST_VALID), BEST_VALID)


def test_table_without_arch_column_and_missing_file_are_rejected(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("index,acc\n0,1.0\n")
    with pytest.raises(ValueError, match="no 'arch' column"):
        load_table(str(path))
    with pytest.raises(ValueError, match="neither a file nor a built-in"):
        load_table(str(tmp_path / "absent.csv"))


@pytest.mark.integration
def test_latency_measured_on_the_worker_cpu():
    space = get_space("nb201")
    evaluator = get_evaluator("benchmark", space, measure_latency=True)
    small = space.from_key(ALL_SKIP)
    large = space.from_key(BEST_VALID)
    fast = [m for m in evaluator.evaluate(small, ALL_SKIP).measurements]
    slow = [m for m in evaluator.evaluate(large, BEST_VALID).measurements]
    assert len(fast) == 1 and fast[0].source == "measured"
    assert fast[0].device == device_key() and device_key().endswith("-t1-b1")
    # 5 of 6 convolutions against none: the measured latency must tell them apart
    assert 0 < fast[0].value < slow[0].value


def test_evaluate_batch_turns_errors_into_failed_results():
    spec = EvaluatorSpec("nb201", {}, "benchmark", {"table": "nb201-cifar10"})
    space = get_space("nb201")
    good = TrialTask(1, ALL_SKIP, space.from_key(ALL_SKIP))
    broken = TrialTask(2, "not-a-key", {"ops": ["conv9x9"] * 6})
    results = evaluate_batch(spec, [good, broken])
    assert [r.status for r in results] == ["completed", "failed"]
    assert results[1].error and results[0].worker
    bad_spec = EvaluatorSpec("nb201", {}, "benchmark", {"table": "/nonexistent.csv"})
    failed = evaluate_batch(bad_spec, [good])
    assert failed[0].status == "failed" and "cannot build evaluator" in failed[0].error
