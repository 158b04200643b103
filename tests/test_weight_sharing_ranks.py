"""Data-parallel weight-sharing searches (`strategy_args.workers: N`, Ray Train ranks).

Unit: the `workers` argument (bad values: one line naming `strategy_args.workers`, exit 2,
nothing written), the resource check, the shard split and the global-batch BatchNorm (on a
1-process gloo group: it must equal `F.batch_norm`, outputs, gradients and running stats).
Integration: a 2-rank search of every method on digits (oneshot also with the mixture and
the ElasticViT sampler, fbnet also on mbconv) completes, its ranks hold the same
architecture after every epoch (the hashes in the history, compared by the search itself and
again here), it derives what one rank derives with the same global batch, and one rank
resumes its checkpoint (saying that the rank count changed).
Slow: kill -9 of one rank mid-epoch (the worker group restarts from the last checkpoint),
then kill -9 of the driver and `nas resume`, and the job finishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from nas import api
from nas.driver import artifact_dir
from nas.errors import SpecError
from nas.spec import parse_spec
from nas.storage import Storage
from search_spaces import get_space
from search_spaces.validation import ArgumentError
from tests.conftest import ROOT, wait_until
from workers.weight_sharing import CHECKPOINT, get_search
from workers.weight_sharing.distributed import RANKS_DIR, DataParallel, check_fits
from workers.weight_sharing.fbnet_mbconv import layer_choices
from workers.weight_sharing.task import SearchTask, run_search

DIGITS = {"kind": "digits", "limit": 96}
#: A small mbconv (one input resolution), as in tests/test_weight_sharing_driver.py.
MBCONV = {"input_channels": 1, "input_size": 8, "num_classes": 10, "stage_channels": [8, 16],
          "stage_strides": [2, 2], "stem_channels": 8, "head_channels": 16, "depths": [1, 2],
          "kernel_sizes": [3, 5], "expand_ratios": [2, 4], "width_mults": [0.5, 1.0]}
TABLE = {"none": 0.0, "skip_connect": 0.1, "nor_conv_1x1": 0.6, "nor_conv_3x3": 1.5,
         "avg_pool_3x3": 0.3, "skeleton_ms": 1.0}
#: FBNet's per-layer table on MBCONV: block i of a layer costs 1 + i ms, skip 0.
MBCONV_TABLE = {"skeleton_ms": 1.0, "layers_ms": [
    [1.0 + i for i in range(len(c) - (c[-1] == "skip"))] + [0.0] * (c[-1] == "skip")
    for c in layer_choices(get_space("mbconv", **MBCONV))]}
#: method label -> (method, space, space_args, strategy_args): tiny, 2 epochs on 96 digits
METHODS = {
    "darts-2nd": ("darts", "nb201", {}, {"order": 2, "channels": 4}),
    "pc-darts": ("pc-darts", "nb201", {}, {"k": 2, "warmup_epochs": 0, "channels": 4,
                                           "batch_size": 32}),
    "rarts": ("rarts", "nb201", {}, {"channels": 4}),
    "fbnet": ("fbnet", "nb201", {}, {"channels": 4, "max_latency_ms": 5.0,
                                     "latency_table": TABLE}),
    "oneshot": ("oneshot", "mbconv", MBCONV, {"population": 4, "generations": 1, "top_k": 2,
                                              "latency": "none", "bn_samples": 32}),
    "fbnetv5": ("fbnetv5", "mbconv", MBCONV, {"tasks": ["class", "parity"], "bn_samples": 32,
                                              "derive_samples": 2}),
    # issue 19's two options in one run (a case costs ~27 s of CPU, mostly Ray Train's
    # start): the mixture routes by global losses, the ElasticViT walk and banks follow them
    "oneshot-mixture-elasticvit": ("oneshot", "mbconv", MBCONV, {
        "population": 4, "generations": 1, "top_k": 2, "latency": "none", "bn_samples": 32,
        "supernets": 2, "sampler": "elasticvit", "flops_buckets": 4}),
    "fbnet-mbconv": ("fbnet", "mbconv", MBCONV, {"max_latency_ms": 8.0, "samples": 4, "top": 2,
                                                 "latency_table": MBCONV_TABLE}),
}


def _nb201_spec(**strategy_args) -> dict:
    return {"name": "ranks", "space": "nb201", "strategy": "darts",
            "strategy_args": {"epochs": 1, "dataset": DIGITS, "channels": 4, **strategy_args},
            "evaluator": "benchmark", "evaluator_args": {"table": "nb201-cifar10"},
            "objectives": [{"metric": "valid_acc", "mode": "max"}], "budget": {"trials": 2},
            "executor": "local", "seed": 1}


# ---- unit: the argument, the resource check, the shard split, the BatchNorm ---------------------
@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True, None])
def test_bad_workers_values_name_the_field(value):
    with pytest.raises(SpecError, match=r"strategy_args\.workers"):
        parse_spec(_nb201_spec(workers=value))


def test_more_workers_than_this_machines_cpus_is_refused_at_submit(tmp_path, monkeypatch):
    """No Ray address configured: the job runs on a local Ray of this machine's CPUs, so more
    ranks are refused at submit: one line naming `strategy_args.workers`, exit 2, no database."""
    from nas.cli import app

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("NAS_RAY_ADDRESS", raising=False)
    cpus = len(os.sched_getaffinity(0))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(_nb201_spec(workers=cpus + 1)))
    db = tmp_path / "nas.db"
    result = CliRunner().invoke(app, ["--db", f"sqlite:///{db}", "submit", str(spec)])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "strategy_args.workers" in lines[0], result.stderr
    assert f"CPUs ({cpus})" in lines[0]
    assert not db.exists()
    parse_spec(_nb201_spec(workers=cpus))  # as many as there are is fine


def test_the_resource_check_counts_gpus_for_a_gpu_search():
    check_fits(4, "cpu", {"CPU": 4.0})
    check_fits(3, "cpu", None)  # unknown cluster: checked when the search starts
    with pytest.raises(ArgumentError, match="workers must be at most the cluster's GPUs"):
        check_fits(2, "cuda", {"CPU": 16.0, "GPU": 1.0})
    check_fits(2, "auto", {"CPU": 1.0, "GPU": 2.0})  # auto on a GPU cluster: GPU ranks
    with pytest.raises(ArgumentError, match="workers must be at most the cluster's CPUs"):
        check_fits(3, "auto", {"CPU": 2.0})


def test_workers_is_not_part_of_the_config():
    """So a 1-rank and an N-rank search resume each other's checkpoints."""
    space = get_space("nb201")
    assert get_search("darts", space, workers=1).config() == \
        get_search("darts", space, workers=2).config()


def test_shards_split_each_batch_contiguously_and_weigh_the_loss():
    index = torch.arange(7)
    parts = [DataParallel(r, 3).shard(index) for r in range(3)]
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4], [5, 6]]
    ranks = DataParallel(1, 3)
    ranks.shard(index)
    assert ranks.fraction == pytest.approx(2 / 7)
    assert float(ranks.scaled(torch.tensor(1.0))) == pytest.approx(6 / 7)
    small = DataParallel(2, 3)  # fewer examples than ranks: every rank takes the batch
    assert small.shard(torch.arange(2)).tolist() == [0, 1]
    assert float(small.scaled(torch.tensor(1.0))) == pytest.approx(1.0)


@pytest.fixture
def one_process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


def test_global_batch_norm_equals_batch_norm_on_one_rank(one_process_group):
    """The all-reduced statistics on a 1-rank group are the batch's: outputs, gradients and
    running statistics equal `F.batch_norm`'s, for affine and non-affine BN."""
    torch.manual_seed(0)
    ranks = DataParallel(0, 1)
    for affine in (True, False):
        plain, synced = (torch.nn.BatchNorm2d(3, affine=affine) for _ in range(2))
        synced.load_state_dict(plain.state_dict())
        x = torch.randn(5, 3, 4, 4, requires_grad=True)
        expected = plain(x)
        (gx_expected,) = torch.autograd.grad((expected ** 2).sum(), x)
        with ranks.training():
            out = synced(x)
        (gx,) = torch.autograd.grad((out ** 2).sum(), x)
        assert torch.allclose(out, expected, atol=1e-5)
        assert torch.allclose(gx, gx_expected, atol=1e-4)
        assert torch.allclose(synced.running_mean, plain.running_mean, atol=1e-6)
        assert torch.allclose(synced.running_var, plain.running_var, atol=1e-5)


def test_local_work_uses_the_plain_batch_norm(one_process_group):
    """Inside `local()` BN normalises the rank's own batch (F.batch_norm: one example is an
    error there), outside it the global batch (no such check: other ranks may hold more)."""
    bn = torch.nn.BatchNorm2d(2)
    single = torch.randn(1, 2, 1, 1)
    ranks = DataParallel(0, 1)
    with ranks.training():
        with ranks.local(), pytest.raises(ValueError, match="more than 1 value"):
            bn(single)
        assert torch.isfinite(bn(torch.randn(2, 2, 1, 1))).all()


# ---- integration: every method on 2 ranks ----------------------------------------------------
def _search_task(label: str, workers: int, folder: Path) -> SearchTask:
    method, space, space_args, args = METHODS[label]
    return SearchTask(method, space, space_args,
                      {"epochs": 2, "dataset": DIGITS, "batch_size": 32, "workers": workers,
                       **args}, 1, str(folder))


def _arch_tensors(folder: Path) -> dict[str, torch.Tensor]:
    state = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=False)["state"]
    if "arch" in state:
        return dict(state["arch"])
    return {k: v for k, v in state["supernet"].items() if v.is_floating_point()}


@pytest.mark.integration
@pytest.mark.parametrize("label", list(METHODS))
def test_two_ranks_hold_one_architecture_and_derive_what_one_rank_derives(label, ray_local,
                                                                          tmp_path):
    two = run_search(_search_task(label, 2, tmp_path / "two"))
    one = run_search(_search_task(label, 1, tmp_path / "one"))
    assert two.workers == 2 and [r["epoch"] for r in two.history] == [1, 2]
    for record in two.history:  # every rank's hash after every epoch, all equal
        assert record["ranks"] == 2 and len(record["arch_hashes"]) == 2
        assert len(set(record["arch_hashes"])) == 1 and len(set(record["state_hashes"])) == 1
    assert "ranks" not in one.history[0]  # one rank: the history as before
    assert two.keys == one.keys  # the same derived architectures
    a, b = _arch_tensors(tmp_path / "one"), _arch_tensors(tmp_path / "two")
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert diff < 1e-4, f"{label}: 2 ranks differ from 1 by {diff}"
    ranks = sorted((tmp_path / "two" / RANKS_DIR).iterdir())
    assert [p.name for p in ranks] == ["rank-0.pid", "rank-1.pid"]
    # `workers` is not part of the search: one rank takes the 2-rank checkpoint one epoch
    # further, and says that the rank count changed
    path = tmp_path / "two" / CHECKPOINT
    payload = torch.load(path, weights_only=False)
    payload["config"]["epochs"] = 3
    torch.save(payload, path)
    task = _search_task(label, 1, tmp_path / "two")
    more = run_search(SearchTask(task.method, task.space, task.space_args,
                                 {**task.args, "epochs": 3}, 1, task.checkpoint_dir))
    assert more.resumed_from_epoch == 2 and [r["epoch"] for r in more.history] == [1, 2, 3]
    assert more.notes == ["resumed at epoch 2 on 1 rank(s) from a checkpoint written on 2 "
                          "(each batch split anew)"]


# ---- slow: kill -9 of a rank, then of the driver, then `nas resume` ---------------------------
def _pid(folder: Path, rank: int) -> int | None:
    path = folder / RANKS_DIR / f"rank-{rank}.pid"
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _epoch(checkpoint: Path) -> int:
    try:
        return int(torch.load(checkpoint, weights_only=False)["epoch"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return 0


@pytest.mark.slow
@pytest.mark.system
def test_kill_9_of_a_rank_then_of_the_driver_then_resume_finishes(tmp_path, procs):
    url = f"sqlite:///{tmp_path / 'ranks.db'}"
    storage = Storage(url)
    spec = _nb201_spec(workers=2, epochs=4, batch_size=16,
                       dataset={"kind": "digits", "limit": 160})
    job = api.submit(storage, spec)
    folder = artifact_dir(storage.database_id, job) / "search"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "driver.log"
    with open(log, "wb") as out:
        driver = subprocess.Popen([sys.executable, "-m", "nas", "--db", url, "drive", str(job)],
                                  cwd=ROOT, env=env, stdout=out, stderr=out,
                                  start_new_session=True)
    procs.append(driver)
    wait_until(lambda: _epoch(folder / CHECKPOINT) >= 1 and _pid(folder, 1), "epoch 1",
               timeout=240, logs=(log,))
    victim = _pid(folder, 1)
    os.kill(victim, signal.SIGKILL)  # rank 1, during epoch 2
    killed_at = _epoch(folder / CHECKPOINT)
    wait_until(lambda: _pid(folder, 1) not in (None, victim), "rank 1 restarted", timeout=240,
               logs=(log,))
    wait_until(lambda: _epoch(folder / CHECKPOINT) > killed_at, "an epoch after the restart",
               timeout=240, logs=(log,))
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(1.0)
    with open(log, "ab") as out:  # its Ray: whatever the reaper left of the session
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        resumed = subprocess.run([sys.executable, "-m", "nas", "--db", url, "resume", "--wait",
                                  str(job)], cwd=ROOT, env=env, stdout=out, stderr=out,
                                 timeout=300)
    assert resumed.returncode == 0, log.read_text()[-3000:]
    assert storage.jobs.get(job).status == "completed"
    record = json.loads((folder / "history.json").read_text())
    assert record["workers"] == 2 and record["resumed_from_epoch"] > killed_at
    assert [r["epoch"] for r in record["history"]] == [1, 2, 3, 4]
    assert all(len(set(r["arch_hashes"])) == 1 for r in record["history"])
    space = get_space("nb201")
    alone = get_search("darts", space, seed=1, **{**spec["strategy_args"], "workers": 1})
    assert record["derived"][0]["key"] == space.key(alone.run(tmp_path / "alone").archs[0])
