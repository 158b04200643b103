"""The `hytra` space (BossNAS's HyTra: ResConv/ResAtt per layer on a fabric of scales with a
monotone downsampling path) and the `bossnas` search (block-wise self-supervised training
with ensemble bootstrapping, block-wise evaluation): derived architectures, the ranking,
checkpoint/resume (stop and kill -9) and bad arguments."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from search_spaces import check_space, get_space
from search_spaces.validation import ArgumentError, UnsupportedSpaceError
from tests.conftest import assert_same_outcome, kill_search_after_epoch, stop_then_resume
from workers.weight_sharing import BossNASSearch, get_search

#: A tiny HyTra on 8x8 digits: 3 scales (8, 4, 2 px), ResAtt at the last two.
HYTRA_ARGS = {"input_channels": 1, "input_size": 8, "stem_stride": 1, "widths": [8, 16, 32],
              "layers": 4, "head_dim": 4}
#: The search of the resume tests (also run in a subprocess: plain JSON values only):
#: 2 blocks of 2 layers, 1 epoch each, 96 unlabelled digits.
REFERENCE = {"seed": 3, "dataset": {"kind": "digits", "limit": 96}, "epochs": 1, "blocks": 2,
             "batch_size": 32, "paths": 3, "eval_samples": 32, "hidden_dim": 16,
             "projection_dim": 8, "top_k": 3}


def hytra(**overrides: Any) -> Any:
    return get_space("hytra", **{**HYTRA_ARGS, **overrides})


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


# ---- the space (unit) ----
def test_tiny_hytra_passes_check_space() -> None:
    check_space(hytra(), n=10, build_n=2)


def test_size_counts_every_monotone_path_and_its_op_choices() -> None:
    space = hytra(layers=3)
    archs = set()
    for scales in itertools.product(range(3), repeat=3):
        steps = [b - a for a, b in zip((0, *scales), scales, strict=False)]
        if any(s not in (0, 1) for s in steps):
            continue  # never up, never two scales at once
        choices = [("resconv", "resatt") if s >= 1 else ("resconv",) for s in scales]
        for ops in itertools.product(*choices):
            archs.add(space.key({"down": steps, "ops": list(ops)}))
    assert space.size() == len(archs) == len({space.key(a) for a in space.enumerate()})


def test_key_reads_the_path_and_refuses_an_upward_or_double_step() -> None:
    space = hytra()
    arch = {"down": [0, 1, 1, 0], "ops": ["resconv", "resatt", "resconv", "resatt"]}
    assert space.key(arch) == "C0-A1-C2-A2"
    assert space.from_key("C0-A1-C2-A2") == arch
    assert [(s.side_in, s.side_out, s.c_out) for s in space.plan(arch)] == \
        [(8, 8, 8), (8, 4, 16), (4, 2, 32), (2, 2, 32)]
    for bad, words in [("C0-C2-C2-C2", "stays or goes down one"),
                       ("C0-C1-C0-C0", "stays or goes down one"),
                       ("A0-C1-C1-C1", "ResAtt exists only"), ("C0-C1", "needs 4 layers")]:
        with pytest.raises(ValueError, match=words):
            space.from_key(bad)
    with pytest.raises(ValueError, match="already at the last scale"):
        space.validate({"down": [1, 1, 1, 0], "ops": ["resconv"] * 4})


@pytest.mark.parametrize("args, field", [
    ({"widths": [8]}, "widths"), ({"widths": [8, 10]}, "widths[1]"),
    ({"attention_scales": [3]}, "attention_scales"), ({"head_dim": 3}, "head_dim"),
    ({"stem_stride": 3}, "stem_stride"), ({"layers": 0}, "layers"),
])
def test_bad_space_args_name_the_field(args: dict[str, Any], field: str) -> None:
    with pytest.raises(ArgumentError) as info:
        hytra(**args)
    assert info.value.field == field


# ---- the search ----
@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted run: its outcome, final weights and folder."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("bossnas")
    search = get_search("bossnas", hytra(), **REFERENCE)
    outcome = search.run(folder)
    return {"outcome": outcome, "search": search, "folder": folder,
            "online": {k: v.clone() for k, v in search.online.state_dict().items()},
            "target": {k: v.clone() for k, v in search.target.state_dict().items()}}


def assert_same_run(search: BossNASSearch, outcome: Any, reference: dict[str, Any]) -> None:
    for net in ("online", "target"):
        state = getattr(search, net).state_dict()
        for name, tensor in reference[net].items():
            assert torch.equal(state[name], tensor), (net, name)
    assert_same_outcome(outcome, reference["outcome"])


@pytest.mark.integration
def test_search_derives_the_blockwise_best_path_first(reference: dict[str, Any]) -> None:
    search, outcome = reference["search"], reference["outcome"]
    space = hytra()
    assert [r["block"] for r in outcome.history] == [1, 2]
    assert len(outcome.archs) == 3 and len({space.key(a) for a in outcome.archs}) == 3
    for arch, metrics in zip(outcome.archs, outcome.metrics, strict=True):
        assert space.validate(arch) == arch
        assert metrics["bossnas_loss"] == pytest.approx(search.score(arch))
        assert metrics["flops"] == space.flops(arch)
    losses = [m["bossnas_loss"] for m in outcome.metrics]
    assert losses == sorted(losses)
    # the first derived architecture is each block's best path, fixed block by block
    best = outcome.archs[0]
    for b, (table, path) in enumerate(zip(search.block_losses, search.block_paths(best),
                                          strict=True)):
        assert search.path_key(path) == min(table, key=table.get)
        assert outcome.history[b]["best_path"] == search.path_key(path)
        starts = search._start(b)
        assert set(table) == {search.path_key(p) for p in search.candidates(b, starts)}
    assert all(0 <= v <= 8 for table in search.block_losses for v in table.values())


def _loss(pred: list[torch.Tensor], ensemble: list[torch.Tensor]) -> float:
    import torch.nn.functional as F

    cos = [(F.normalize(pred[v], dim=1) * F.normalize(ensemble[1 - v], dim=1)).sum(1)
           for v in (0, 1)]
    return float((4 - 2 * cos[0] - 2 * cos[1]).mean())


def _val_views(search: BossNASSearch, block: int) -> list[torch.Tensor]:
    return search._views(search._x_val, 2, torch.Generator().manual_seed(search.seed * 1000
                                                                         + block))


@pytest.mark.integration
def test_blockwise_evaluation_is_the_loss_against_the_candidates_ensemble(
        reference: dict[str, Any]) -> None:
    """Recomputed here from the definition, on copies of the networks: per candidate, every
    BatchNorm reset (mean 0, variance 1) with momentum 1, the calibration batch's two views
    through the target's prefix and the candidate of both networks in train mode, then eval
    mode on the two fixed validation views; the ensemble is the mean of the candidates'
    target outputs; a path's loss is its prediction of one view against the other's."""
    import torch.nn.functional as F

    search = reference["search"]
    block, start = 1, search._start(1)
    pool = search.candidates(block, start)
    views, calibration = _val_views(search, block), search.calibration_views()
    assert len(calibration) == 2 and len(calibration[0]) == REFERENCE["batch_size"]
    before = {k: v.clone() for k, v in search.online.state_dict().items()}
    targets, predictions = [], []
    with torch.no_grad():
        for path in pool:
            target, online = copy.deepcopy(search.target), copy.deepcopy(search.online)
            for m in [*target.modules(), *online.modules()]:
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.track_running_stats, m.momentum = True, 1.0
                    m.running_mean = torch.zeros(m.num_features)
                    m.running_var = torch.ones(m.num_features)
                    m.num_batches_tracked = torch.tensor(0)
            target.train(), online.train()
            for net in (target, online):
                for v in calibration:
                    search._block(net, search._prefix(target, v, block), block, start, path)
            target.eval(), online.eval()
            inputs = [search._prefix(target, v, block) for v in views]
            targets.append([F.normalize(search._block(target, x, block, start, path), dim=1)
                            for x in inputs])
            predictions.append([online.predictors[block](search._block(online, x, block,
                                                                       start, path))
                                for x in inputs])
    ensemble = [torch.stack([t[v] for t in targets]).mean(0) for v in (0, 1)]
    table = search.evaluate_block(block)
    for path, pred in zip(pool, predictions, strict=True):
        assert table[search.path_key(path)] == pytest.approx(_loss(pred, ensemble), abs=1e-5)
    assert table == pytest.approx(search.block_losses[block])
    # nothing is left behind: no running statistics, the same weights, train mode kept
    assert search.online.state_dict().keys() == before.keys()
    assert all(torch.equal(search.online.state_dict()[k], v) for k, v in before.items())
    assert all(m.running_mean is None and not m.track_running_stats
               for m in search.online.modules()
               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))


@pytest.mark.integration
def test_without_recalibration_the_evaluation_uses_batch_statistics(
        reference: dict[str, Any]) -> None:
    """`calibration_samples: 0`: every network in train mode on the validation views (the
    evaluation before the recalibration), which gives another table."""
    import torch.nn.functional as F

    search = reference["search"]
    block, start = 1, search._start(1)
    pool = search.candidates(block, start)
    views = _val_views(search, block)
    with torch.no_grad():
        def run(net: Any, path: Any, v: int) -> torch.Tensor:  # the target's prefix
            return search._block(net, search._prefix(search.target, views[v], block), block,
                                 start, path)

        ensemble = [torch.stack([F.normalize(run(search.target, p, v), dim=1)
                                 for p in pool]).mean(0) for v in (0, 1)]
        path = pool[0]
        expected = _loss([search.online.predictors[block](run(search.online, path, v))
                          for v in (0, 1)], ensemble)
    search.calibration_samples = 0
    try:
        table = search.evaluate_block(block)
    finally:
        search.calibration_samples = REFERENCE["batch_size"]
    assert table[search.path_key(path)] == pytest.approx(expected, abs=1e-5)
    assert table != pytest.approx(search.block_losses[block], abs=1e-4)


@pytest.mark.integration
def test_stop_mid_search_and_resume_equals_an_uninterrupted_run(reference: dict[str, Any],
                                                                 tmp_path: Path) -> None:
    first, search, outcome = stop_then_resume(
        tmp_path, lambda: get_search("bossnas", hytra(), **REFERENCE), epochs=1)
    assert len(first.archs) == 1 and hytra().validate(first.archs[0])  # the prefix, completed
    assert_same_run(search, outcome, reference)


@pytest.mark.system
def test_kill_9_between_blocks_then_resume_equals_an_uninterrupted_run(
        reference: dict[str, Any], tmp_path: Path) -> None:
    kill_search_after_epoch(tmp_path, "bossnas", "hytra", HYTRA_ARGS, REFERENCE,
                            epoch=1)
    search = get_search("bossnas", hytra(), **REFERENCE)
    outcome = search.run(tmp_path)
    assert outcome.resumed_from_epoch == 1
    assert_same_run(search, outcome, reference)


@pytest.mark.integration
def test_resume_with_other_settings_is_refused(reference: dict[str, Any]) -> None:
    other = get_search("bossnas", hytra(), **{**REFERENCE, "paths": 2})
    with pytest.raises(ValueError, match="another search"):
        other.run(reference["folder"])


@pytest.mark.integration
def test_bossnas_strategy_passes_check_strategy_once_searched(reference: dict[str, Any]) -> None:
    from nas.strategies import check_strategy, get_strategy
    from workers.weight_sharing.task import SearchResult

    space, outcome = hytra(), reference["outcome"]
    result = SearchResult([space.key(a) for a in outcome.archs], outcome.archs,
                          outcome.metrics, outcome.history)

    def factory(seed: int) -> Any:
        strategy = get_strategy("bossnas", space, seed=seed, blocks=2)
        strategy.set_outcome(result)
        return strategy

    check_strategy(factory, trials=12)


# ---- bad arguments ----
@pytest.mark.parametrize("field, value", [
    ("blocks", 0), ("blocks", 5), ("paths", 0), ("lr", 0), ("momentum", 1.0),
    ("base_momentum", 1.5), ("eval_samples", 1), ("top_k", 0), ("hidden_dim", "big"),
    ("epochs", 0), ("calibration_samples", 1), ("calibration_samples", -1),
    ("calibration_samples", 2.5),
])
def test_bad_arguments_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(ArgumentError, match=rf"^{field} must") as info:
        get_search("bossnas", hytra(), **{field: value})
    assert info.value.field == field


def test_other_spaces_and_unknown_arguments_are_refused() -> None:
    with pytest.raises(UnsupportedSpaceError, match="supports the spaces hytra"):
        get_search("bossnas", get_space("hybrid"))
    with pytest.raises(TypeError):
        get_search("bossnas", hytra(), path=2)


def test_bad_argument_is_one_line_exit_2_and_nothing_written(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    from typer.testing import CliRunner

    from nas.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NAS_DB_URL", raising=False)
    spec = {"name": "bossnas-bad", "space": "hytra", "space_args": HYTRA_ARGS,
            "strategy": "bossnas", "strategy_args": {"paths": 0},
            "evaluator": "analytic", "objectives": [{"metric": "flops", "mode": "min"}],
            "budget": {"trials": 2}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    db = tmp_path / "nas.db"
    result = CliRunner().invoke(app, ["--db", f"sqlite:///{db}", "submit", "spec.yaml"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert "strategy_args.paths" in lines[0]
    assert not db.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


@pytest.mark.integration
def test_bossnas_job_proposes_the_searched_architecture_first(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """A bossnas job through the driver: the supernet search runs as the job's preparation,
    then its derived architectures are the first trials, with the search's metrics."""
    from nas import api
    from nas.storage import Storage

    monkeypatch.setenv("NAS_ARTIFACTS", str(tmp_path / "artifacts"))
    storage = Storage("sqlite://")
    job = api.submit(storage, {
        "name": "bossnas-job", "space": "hytra", "space_args": HYTRA_ARGS,
        "strategy": "bossnas", "strategy_args": {**{k: v for k, v in REFERENCE.items()
                                                    if k != "seed"}, "top_k": 2},
        "evaluator": "analytic", "objectives": [{"metric": "flops", "mode": "min"}],
        "budget": {"trials": 3}, "executor": "local", "parallelism": 1, "batch_size": 1,
        "seed": 1})
    assert api.run(storage, job) == "completed"
    trials = sorted(storage.trials.load(job), key=lambda t: t.number)
    assert len(trials) == 3 and all(t.status == "completed" for t in trials)
    space = hytra()
    first, second = trials[0], trials[1]
    assert first.metrics["search.bossnas_loss"] <= second.metrics["search.bossnas_loss"]
    assert first.metrics["flops"] == space.flops(space.from_key(first.key))
    assert "search.bossnas_loss" not in trials[2].metrics  # a mutation of the best
