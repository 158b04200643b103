"""Artifact folders are per database (issue 17, item 3): job 1 of one database and job 1 of
another, in the same folder with the same NAS_ARTIFACTS, never share a detached driver's log
or a weight-sharing checkpoint; the database's id is stored in the database, so every URL
naming it finds the same folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nas import api
from nas.storage import Storage
from tests.conftest import ROOT, nb201_spec, wait_until
from workers.weight_sharing import CHECKPOINT

#: A small DARTS search over NB201 (as in tests/test_weight_sharing_driver.py).
DARTS = {"name": "darts", "space": "nb201", "strategy": "darts",
         "strategy_args": {"epochs": 1, "dataset": {"kind": "digits", "limit": 200},
                           "batch_size": 32, "channels": 4},
         "evaluator": "benchmark", "evaluator_args": {"table": "nb201-cifar10"},
         "objectives": [{"metric": "valid_acc", "mode": "max"}], "budget": {"trials": 1},
         "executor": "local", "parallelism": 1, "batch_size": 1, "seed": 1}


def _submit_detached(folder: Path, db: str, artifacts: Path) -> dict:
    spec = folder / "job.yaml"
    spec.write_text(yaml.safe_dump(nb201_spec(budget={"trials": 12}), sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NAS_ARTIFACTS": str(artifacts)}
    env.pop("NAS_DB_URL", None)
    proc = subprocess.run([sys.executable, "-m", "nas", "--db", f"sqlite:///{db}", "submit",
                           str(spec), "--json"], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.integration
def test_two_databases_in_one_folder_keep_their_driver_logs_apart(tmp_path):
    artifacts = tmp_path / "artifacts"
    first = _submit_detached(tmp_path, "a.db", artifacts)
    second = _submit_detached(tmp_path, "b.db", artifacts)
    assert first["job"] == second["job"] == 1
    assert first["log"] != second["log"]
    for name in ("a.db", "b.db"):
        storage = Storage(f"sqlite:///{tmp_path / name}")
        wait_until(lambda s=storage: s.jobs.get(1).status == "completed", f"job 1 of {name}",
                   timeout=120)
        storage.close()
    for data in (first, second):  # the driver prints its last line after the status write
        log = Path(data["log"])
        wait_until(lambda log=log: "job 1 completed" in log.read_text(), "the driver's end")
        assert log.read_text().count("job 1 completed") == 1


@pytest.mark.integration
def test_weight_sharing_jobs_of_two_databases_do_not_share_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("NAS_ARTIFACTS", str(tmp_path / "artifacts"))
    for name in ("a.db", "b.db"):
        storage = Storage(f"sqlite:///{tmp_path / name}")
        job = api.submit(storage, DARTS)
        assert job == 1 and api.run(storage, job) == "completed"
        storage.close()
    checkpoints = sorted((tmp_path / "artifacts").rglob(CHECKPOINT))
    assert len(checkpoints) == 2, checkpoints  # one supernet each, none adopted
    for checkpoint in checkpoints:
        record = json.loads((checkpoint.parent / "history.json").read_text())
        assert record["resumed_from_epoch"] == 0


def test_every_url_of_one_database_gives_one_id(tmp_path, monkeypatch, pg_url):
    monkeypatch.chdir(tmp_path)
    absolute = Storage(f"sqlite:///{tmp_path / 'a.db'}")
    relative = Storage("sqlite:///a.db")
    other = Storage(f"sqlite:///{tmp_path / 'b.db'}")
    assert absolute.database_id == relative.database_id != other.database_id
    for storage in (absolute, relative, other):
        storage.close()
    assert Storage("sqlite:///a.db").database_id == absolute.database_id  # stable
    by_ip = Storage(pg_url)
    by_name = Storage(pg_url.replace("@127.0.0.1", "@localhost"))
    assert by_ip.database_id == by_name.database_id not in (absolute.database_id, None)
    by_ip.close()
    by_name.close()


def test_a_database_made_before_the_id_gets_one_on_upgrade(tmp_path):
    from nas.storage import make_engine, upgrade

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    upgrade(engine, "0005")  # the schema before database ids
    upgrade(engine)  # `nas db upgrade`
    engine.dispose()
    storage = Storage(url)
    assert len(storage.database_id) == 36
    storage.close()
