"""Files named in a job spec (issue 17 item 11): a relative path is checked against the
submitter's folder, so the spec stores what was checked -- the absolute path and the file's
content hash -- and a driver or worker started in another folder reads the same file, or
fails the trial saying that the file changed."""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from nas import api
from nas.errors import SpecError
from nas.spec import parse_spec
from nas.storage import Storage, get_trial
from nas.strategies import get_strategy
from search_spaces import get_space
from tests.conftest import nb201_spec
from workers.evaluators import get_evaluator


def _table(path: Path, rows: int = 15625) -> Path:
    """The first `rows` cells of the shipped NB201 table (all of them by default)."""
    data = resources.files("workers").joinpath("data", "nb201-cifar10.csv.gz").read_bytes()
    lines = gzip.decompress(data).decode().splitlines()[: rows + 1]
    path.write_text("\n".join(lines) + "\n")
    return path


def _table_spec(**evaluator_args) -> dict:  # noqa: ANN003
    """Eight trials of random search, scored from the given table."""
    return nb201_spec(strategy="random", strategy_args={}, evaluator_args=evaluator_args,
                      budget={"trials": 8})


@pytest.mark.integration
def test_a_relative_table_is_stored_absolute_and_runs_from_another_folder(
        tmp_path, monkeypatch, sqlite_url):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    table = _table(a / "table.csv")
    monkeypatch.chdir(a)
    storage = Storage(sqlite_url)
    job = api.submit(storage, _table_spec(table="table.csv",
                                                latency_table="hw-nas-bench-cifar10"))
    stored = storage.jobs.get(job).spec["evaluator_args"]
    assert stored["table"] == str(table.resolve())
    assert stored["latency_table"] == "hw-nas-bench-cifar10"  # a built-in name stays a name
    monkeypatch.chdir(b)
    assert api.run(storage, job) == "completed"
    counts = storage.trials.counts(job)
    assert counts == {"completed": 8}, counts


def test_a_file_changed_after_submit_fails_the_trials_with_the_reason(
        tmp_path, monkeypatch, sqlite_url):
    table = _table(tmp_path / "table.csv")
    storage = Storage(sqlite_url)
    job = api.submit(storage, _table_spec(table=str(table)))
    table.write_text(table.read_text().replace("arch,", "arch, ", 1))  # another file now
    api.run(storage, job)
    errors = {get_trial(storage, job, n)["error"] for n in range(1, 9)}
    assert len(errors) == 1
    error = errors.pop()
    assert str(table) in error and "changed since the job was submitted" in error, error


@pytest.mark.integration
def test_dataset_paths_are_stored_absolute_in_the_form_given(tmp_path, monkeypatch):
    np.savez(tmp_path / "data.npz", x=np.zeros((10, 1, 8, 8), np.float32),
             y=np.arange(10) % 3)
    monkeypatch.chdir(tmp_path)
    absolute = str((tmp_path / "data.npz").resolve())
    space = {"space_args": {"input_channels": 1, "input_size": 8, "num_classes": 3}}
    for dataset, expected in (("npz:data.npz", f"npz:{absolute}"),
                              ({"kind": "npz", "path": "data.npz", "limit": 5},
                               {"kind": "npz", "path": absolute, "limit": 5})):
        for evaluator in ("train", "proxy"):
            spec = parse_spec(nb201_spec(evaluator=evaluator, **space,
                                         evaluator_args={"dataset": dataset},
                                         objectives=[{"metric": "params", "mode": "min"}]))
            assert spec.evaluator_args["dataset"] == expected
            assert list(spec.evaluator_args["checksums"]) == [absolute]
            json.dumps(spec.to_dict())  # still plain JSON
    for strategy in ("proxy", "darts"):
        spec = parse_spec(nb201_spec(strategy=strategy, **space,
                                     strategy_args={"dataset": "npz:data.npz"}))
        assert spec.strategy_args["dataset"] == f"npz:{absolute}"
        assert list(spec.strategy_args["checksums"]) == [absolute]
    np.savez(tmp_path / "data.npz", x=np.ones((10, 1, 8, 8), np.float32), y=np.arange(10) % 3)
    with pytest.raises(ValueError, match="strategy_args.checksums: .* changed since"):
        get_strategy("darts", get_space("nb201", **space["space_args"]), **spec.strategy_args)


def test_a_cifar10_folder_is_stored_absolute_with_every_file_it_reads(tmp_path, monkeypatch):
    import pickle

    folder = tmp_path / "cifar"
    folder.mkdir()
    for name in ("data_batch_1", "test_batch"):
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]},
                        handle)
    monkeypatch.chdir(tmp_path)
    spec = parse_spec(nb201_spec(evaluator="train", evaluator_args={"dataset": "cifar10:cifar"},
                                 objectives=[{"metric": "val_acc", "mode": "max"}]))
    assert spec.evaluator_args["dataset"] == f"cifar10:{folder.resolve()}"
    assert sorted(spec.evaluator_args["checksums"]) == [
        str(folder.resolve() / "data_batch_1"), str(folder.resolve() / "test_batch")]


def test_a_stored_spec_whose_file_changed_is_refused_when_checked_again(tmp_path):
    table = _table(tmp_path / "table.csv", rows=60)
    spec = parse_spec(_table_spec(table=str(table))).to_dict()
    assert parse_spec(spec).evaluator_args == spec["evaluator_args"]  # idempotent
    _table(table, rows=30)
    with pytest.raises(SpecError, match="changed since the job was submitted"):
        parse_spec(spec)
    table.unlink()
    with pytest.raises(ValueError, match="does not exist"):
        get_evaluator("benchmark", get_space("nb201"), **spec["evaluator_args"])


def test_checksums_must_be_a_mapping_of_paths_to_digests():
    with pytest.raises(SpecError, match="evaluator_args.checksums"):
        parse_spec(nb201_spec(evaluator_args={"checksums": ["x"]}))
