"""Hardware-aware latency: measure here, import from elsewhere, predict the rest; queries
and strategies use whatever is known and say which source they used."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from nas import api
from nas.cli import app
from nas.storage import Storage, best_trials
from nas.storage.schema import architectures, measurements
from predictors.latency import AdditiveLUT, GBDTLatency, accuracy_report
from search_spaces import get_space
from search_spaces.nb201 import effective_ops
from tests.conftest import nb201_spec
from tests.test_bad_input import assert_one_line_error, dump
from workers.tables import load_table

runner = CliRunner()
SPACE = get_space("nb201")


def nas(*args: str, code: int = 0):
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == code, (result.stdout, result.stderr)
    return result


def _rows(url: str, device: str) -> list[dict]:
    storage = Storage(url)
    query = (select(architectures.c.key, measurements.c.value, measurements.c.source,
                    measurements.c.model_version)
             .select_from(measurements)
             .join(architectures, architectures.c.id == measurements.c.architecture_id)
             .where(measurements.c.device == device, measurements.c.metric == "latency_ms"))
    with storage.read() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def _pixel3_cells() -> tuple[list[str], np.ndarray]:
    rows = load_table("hw-nas-bench-cifar10").rows
    keys = sorted(k for k, r in rows.items() if "pixel3_latency_ms" in r)
    return keys, np.array([rows[k]["pixel3_latency_ms"] for k in keys])


# ---- predictors ------------------------------------------------------------------------------
def test_effective_ops_drop_dead_edges():
    # node 1 feeds nothing: the conv into it cannot affect the output
    assert effective_ops(["nor_conv_3x3", "nor_conv_3x3", "none", "skip_connect", "none",
                          "nor_conv_1x1"]) == \
        ["none", "nor_conv_3x3", "none", "skip_connect", "none", "nor_conv_1x1"]
    # the output is cut off from the input: everything is dead
    assert effective_ops(["nor_conv_3x3", "skip_connect", "nor_conv_1x1", "none", "none",
                          "none"]) == ["none"] * 6
    live = ["nor_conv_3x3"] * 6
    assert effective_ops(live) == live


@pytest.mark.integration
@pytest.mark.parametrize("model, floor", [(AdditiveLUT, 0.94), (GBDTLatency, 0.95)])
def test_predictors_rank_held_out_hw_nas_bench_cells(model, floor):
    """Fitted on 300 Pixel 3 cells, scored on 2,000 others (a fixed split)."""
    keys, values = _pixel3_cells()
    order = np.random.default_rng(0).permutation(len(keys))
    train, test = order[:300], order[300:2300]
    predictor = model(SPACE).fit([SPACE.from_key(keys[i]) for i in train], values[train])
    report = accuracy_report(predictor.predict([SPACE.from_key(keys[i]) for i in test]),
                             values[test])
    assert report["spearman"] >= floor, report
    again = model(SPACE).fit([SPACE.from_key(keys[i]) for i in train], values[train])
    assert again.version() == predictor.version()  # deterministic: same data, same model
    other = model(SPACE).fit([SPACE.from_key(keys[i]) for i in train[:-1]], values[train[:-1]])
    assert other.version() != predictor.version()


def test_predictor_input_checks():
    arch = SPACE.sample(np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 2"):
        AdditiveLUT(SPACE).fit([arch], [1.0])
    with pytest.raises(ValueError, match="finite and positive"):
        AdditiveLUT(SPACE).fit([arch, arch], [1.0, -1.0])
    with pytest.raises(RuntimeError, match="not fitted"):
        GBDTLatency(SPACE).predict([arch])


# ---- import ----------------------------------------------------------------------------------
def _write_csv(path: Path, rows: list[tuple[str, object]], metric: str = "latency_ms") -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["arch", metric])
        writer.writerows(rows)
    return path


@pytest.mark.integration
def test_import_is_validated_and_idempotent(tmp_path):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    keys, values = _pixel3_cells()
    path = _write_csv(tmp_path / "phone.csv", list(zip(keys[:50], values[:50], strict=True)))
    first = json.loads(nas("--db", url, "latency", "import", str(path), "--device", "myphone",
                           "--json").stdout)
    assert (first["new"], first["updated"], first["unchanged"]) == (50, 0, 0)
    again = json.loads(nas("--db", url, "latency", "import", str(path), "--device", "myphone",
                           "--json").stdout)
    assert (again["new"], again["updated"], again["unchanged"]) == (0, 0, 50)
    changed = _write_csv(tmp_path / "phone2.csv", [(keys[0], 99.0)])
    text = nas("--db", url, "latency", "import", str(changed), "--device", "myphone").stdout
    assert "1 updated" in text
    rows = {r["key"]: r for r in _rows(url, "myphone")}
    assert len(rows) == 50 and rows[keys[0]]["value"] == 99.0
    assert {r["source"] for r in rows.values()} == {"imported"}


@pytest.mark.integration
@pytest.mark.parametrize("content, mentions", [
    ("arch,ms\n|none~0|+|none~0|none~1|+|none~0|none~1|none~2|,1\n", ["no 'latency_ms' column"]),
    ("arch,latency_ms\nnot-a-cell,1.5\n", ["line 2", "not an architecture"]),
    ("arch,latency_ms\n|none~0|+|none~0|none~1|+|none~0|none~1|none~2|,fast\n",
     ["line 2", "must be a number"]),
    ("arch,latency_ms\n|none~0|+|none~0|none~1|+|none~0|none~1|none~2|,-3\n",
     ["line 2", "positive"]),
    ("arch,latency_ms\n|none~0|+|none~0|none~1|+|none~0|none~1|none~2|,1\n"
     "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|,2\n", ["line 3", "twice"]),
    ("arch,latency_ms\n", ["no rows"]),
])
def test_bad_import_files_are_refused_and_nothing_is_written(tmp_path, content, mentions):
    db = tmp_path / "nas.db"
    url = f"sqlite:///{db}"
    good = _write_csv(tmp_path / "good.csv", [(_pixel3_cells()[0][0], 1.0)])
    nas("--db", url, "latency", "import", str(good), "--device", "d")
    before = dump(db)
    bad = tmp_path / "bad.csv"
    # the bad row comes after a good one: all or nothing
    bad.write_text(content)
    result = runner.invoke(app, ["--db", url, "latency", "import", str(bad), "--device", "d"])
    assert_one_line_error(result, *mentions)
    assert dump(db) == before


@pytest.mark.integration
def test_bad_latency_calls(tmp_path):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    good = _write_csv(tmp_path / "good.csv", [(_pixel3_cells()[0][0], 1.0)])
    nas("--db", url, "latency", "import", str(good), "--device", "d")
    for args, mentions in (
        (["latency", "import", str(tmp_path / "nope.csv"), "--device", "d"], ["does not exist"]),
        (["latency", "import", str(good), "--device", "d", "--space", "resnet"], ["resnet"]),
        (["latency", "fit", "--device", "d"], ["only 1 known", "at least 10"]),
        (["latency", "fit", "--device", "d", "--model", "mlp"], ["--model", "mlp"]),
        (["latency", "measure"], ["JOB or --space"]),
        (["latency", "measure", "--space", "nb201", "--runtime", "tvm"], ["--runtime", "tvm"]),
    ):
        assert_one_line_error(runner.invoke(app, ["--db", url, *args]), *mentions)


# ---- fit, predict, query ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A job of 300 NB201 trials with HW-NAS-Bench latencies: some cells lack a Pixel 3 row."""
    url = f"sqlite:///{tmp_path_factory.mktemp('lat') / 'nas.db'}"
    storage = Storage(url)
    job = api.submit(storage, nb201_spec(strategy="random", strategy_args={},
                                         budget={"trials": 300}))
    api.run(storage, job)
    return url, job


@pytest.mark.integration
def test_fit_predicts_the_missing_latencies_and_best_says_so(searched):
    url, job = searched
    storage = Storage(url)
    before = best_trials(storage, job, top=300, device="pixel3")
    missing = {r["key"] for r in before if r["device_value"] is None}
    assert missing, "HW-NAS-Bench lacks 3,071 cells: a 300-trial job meets some of them"
    result = json.loads(nas("--db", url, "latency", "fit", "--device", "pixel3",
                            "--json").stdout)
    assert result["predicted"] == len(missing) and result["trained_on"] == 300 - len(missing)
    assert result["holdout"]["spearman"] > 0.8
    after = best_trials(storage, job, top=300, device="pixel3")
    assert all(r["device_value"] is not None for r in after)
    assert {r["key"] for r in after if r["device_source"] == "predicted"} == missing
    assert all(r["device_source"] == "benchmark" for r in after if r["key"] not in missing)
    stored = [r for r in _rows(url, "pixel3") if r["source"] == "predicted"]
    assert {r["model_version"] for r in stored} == {result["model_version"]}
    assert result["model_version"].startswith("gbdt-")
    # a value measured or imported later wins over the prediction
    key = sorted(missing)[0]
    from nas.storage import MeasurementRow

    storage.measurements.put("nb201", [MeasurementRow(key, SPACE.from_key(key), "pixel3",
                                                      "latency_ms", 3.25, "imported")])
    row = next(r for r in best_trials(storage, job, top=300, device="pixel3") if r["key"] == key)
    assert (row["device_value"], row["device_source"]) == (3.25, "imported")


@pytest.mark.integration
def test_fit_all_covers_the_whole_space(searched, tmp_path):
    url, _ = searched
    result = json.loads(nas("--db", url, "latency", "fit", "--device", "edgegpu", "--model",
                            "lut", "--all", "--json").stdout)
    known = result["trained_on"]
    assert result["predicted"] == 15625 - known
    assert len(_rows(url, "edgegpu")) == 15625


@pytest.mark.integration
def test_a_constrained_search_uses_predicted_latencies(searched):
    """After `latency fit --all`, every cell has a Pixel 3 latency before evaluation, so a
    constrained job spends no trial on a cell over its budget, whatever the source."""
    url, _ = searched
    nas("--db", url, "latency", "fit", "--device", "pixel3", "--all")
    storage = Storage(url)
    job = api.submit(storage, nb201_spec(
        constraints=[{"metric": "latency_ms", "device": "pixel3", "max": 12.0}],
        budget={"trials": 60}, seed=5))
    api.run(storage, job)
    rows = best_trials(storage, job, top=100, device="pixel3")
    assert len(rows) == 60 and all(r["device_value"] <= 12.0 for r in rows)


@pytest.mark.integration
def test_measure_here_with_each_runtime(tmp_path):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    for runtime, suffix in (("eager", "-t1-b1"), ("onnx", "-t1-b1-ort")):
        result = json.loads(nas("--db", url, "latency", "measure", "--space", "quant",
                                "--sample", "2", "--repeats", "3", "--runtime", runtime,
                                "--json").stdout)
        assert result["measured"] == 2 and result["device"].endswith(suffix)
        assert 0 < result["min_ms"] <= result["max_ms"]
        rows = _rows(url, result["device"])
        assert len(rows) == 2 and {r["source"] for r in rows} == {"measured"}
    int8 = json.loads(nas("--db", url, "latency", "measure", "--space", "quant", "--sample",
                          "2", "--repeats", "3", "--int8", "--json").stdout)
    assert int8["device"].endswith("-t1-b1-int8") and int8["measured"] == 2
    fp32 = {r["key"]: r["value"] for r in _rows(url, result["device"].removesuffix("-ort"))}
    assert set(fp32) == {r["key"] for r in _rows(url, int8["device"])}
    error = runner.invoke(app, ["--db", url, "latency", "measure", "--space", "nb201",
                                "--int8"])
    assert_one_line_error(error, "--int8", "nb201")


def test_measured_nb201_lut_and_its_calibration_to_whole_networks():
    """FBNet's table measured on this CPU (a small network, few repeats): a cell's latency is
    the skeleton plus its operators; calibration fits one scale on whole networks."""
    from workers.latency_lut import calibrate_nb201_lut, measure_nb201_lut, predict_from_lut

    space = get_space("nb201", channels=4, cells_per_stage=1, input_size=8, input_channels=1)
    lut = measure_nb201_lut(space, repeats=5, warmup=2)
    none = ["none"] * 6
    convs = ["nor_conv_3x3"] * 6
    assert predict_from_lut(lut, none) == lut["skeleton_ms"] > 0
    assert predict_from_lut(lut, convs) > predict_from_lut(lut, ["skip_connect"] * 6)
    calibrated = calibrate_nb201_lut(lut, space, samples=4, repeats=5, warmup=2)
    assert calibrated["scale"] > 0 and calibrated["calibration_samples"] == 4
    assert predict_from_lut(calibrated, none) == lut["skeleton_ms"]
    ops_sum = predict_from_lut(lut, convs) - lut["skeleton_ms"]
    assert predict_from_lut(calibrated, convs) == \
        pytest.approx(lut["skeleton_ms"] + calibrated["scale"] * ops_sum)
