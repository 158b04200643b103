"""The `fbnetv5` search (FBNetV5: one supernet, one architecture distribution per task,
importance-weighted REINFORCE from shared uniform samples): the estimator against the exact
gradient, the decoupling of the tasks, derived architectures (one per task), checkpoint and
resume (stop and kill -9) and bad arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from search_spaces import get_space
from search_spaces.validation import ArgumentError, UnsupportedSpaceError
from tests.conftest import assert_same_outcome, kill_search_after_epoch, stop_then_resume
from workers.weight_sharing import FBNetV5Search, get_search

#: A tiny mbconv on 8x8 digits; two resolutions, so subnets see resized inputs too.
MBCONV_ARGS = {"input_channels": 1, "input_size": 8, "stage_channels": [16, 24],
               "stage_strides": [2, 2], "stem_channels": 8, "head_channels": 32,
               "depths": [1, 2], "kernel_sizes": [3, 5], "expand_ratios": [2, 4],
               "width_mults": [0.5, 1.0], "resolutions": [6, 8]}
#: The search of the resume tests (also run in a subprocess: plain JSON values only).
REFERENCE = {"seed": 2, "dataset": {"kind": "digits", "limit": 120}, "epochs": 2,
             "batch_size": 32, "tasks": ["class", "parity"], "samples": 2,
             "derive_samples": 4, "top_k": 2, "bn_samples": 32, "flops_weight": 0.1}


def mbconv(**overrides: Any) -> Any:
    return get_space("mbconv", **{**MBCONV_ARGS, **overrides})


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def prepared(**args: Any) -> FBNetV5Search:
    """A search set up (data loaded, supernet and theta built) without training."""
    search = get_search("fbnetv5", mbconv(), **{**REFERENCE, **args})
    search.device = torch.device("cpu")
    search.data = search.dataset.load()
    search._setup()
    return search


# ---- the estimator (unit) ----
def test_importance_weighted_reinforce_is_the_exact_gradient_under_uniform_draws() -> None:
    """Over every architecture of a small space weighted by U(a), the importance-weighted
    REINFORCE terms sum to the exact gradient of E_{a ~ P_t}[L_t(a)] for each task: the
    ratio, the log-probabilities and the inactive blocks are handled right."""
    space = mbconv(resolutions=[8], width_mults=[1.0], kernel_sizes=[3])
    search = get_search("fbnetv5", space, **{**REFERENCE, "max_ratio": 1e6,
                                             "tasks": ["class", "parity", "loops"]})
    search.device = torch.device("cpu")
    search.data = search.dataset.load()
    search._setup()
    with torch.no_grad():
        search.theta.normal_(0.0, 0.7, generator=torch.Generator().manual_seed(0))
    dnas = [space.to_dna(a) for a in space.enumerate()]
    assert len(dnas) == space.size() == 36  # (2 + 2 * 2) ** 2
    rng = np.random.default_rng(0)
    losses = torch.from_numpy(rng.random((len(dnas), 3)))
    uniform = torch.tensor([np.exp(search._uniform_log_prob(d)) for d in dnas])
    assert float(uniform.sum()) == pytest.approx(1.0)
    estimate = torch.autograd.grad(
        (uniform[:, None] * search.importance_terms(dnas, losses)).sum(), search.theta)[0]
    log_probs = search.log_probs()
    probs = torch.exp(torch.stack([search.arch_log_prob(log_probs, d) for d in dnas]))
    assert torch.allclose(probs.sum(dim=0), torch.ones(3, dtype=probs.dtype), atol=1e-5)
    exact = torch.autograd.grad((probs * losses.float()).sum(), search.theta)[0]
    assert exact.abs().max() > 1e-3
    assert torch.allclose(estimate, exact, atol=1e-5)


def test_each_task_distribution_moves_with_its_own_losses_only() -> None:
    search = prepared()
    dnas = [search._uniform_dna() for _ in range(4)]
    losses = np.array([[2.0, 0.5], [1.0, 0.7], [3.0, 0.1], [0.5, 0.9]])
    before = search.theta.detach().clone()
    search._arch_step(dnas, losses)  # sets the baselines to the means: a zero-mean update
    search._arch_step(dnas, losses)
    after = search.theta.detach().clone()
    assert not torch.equal(after[0], before[0]) and not torch.equal(after[1], before[1])
    other = prepared()
    other._arch_step(dnas, losses * [1.0, 5.0])
    other._arch_step(dnas, losses * [1.0, 5.0])
    assert torch.equal(other.theta.detach()[0], after[0])  # task 0 ignores task 1's losses
    assert not torch.equal(other.theta.detach()[1], after[1])


def test_the_mode_is_the_most_probable_architecture() -> None:
    space = mbconv(resolutions=[8], width_mults=[1.0])
    search = get_search("fbnetv5", space, **REFERENCE)
    search.device = torch.device("cpu")
    search.data = search.dataset.load()
    search._setup()
    with torch.no_grad():
        search.theta.normal_(0.0, 1.5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        log_probs = search.log_probs()
    for task in range(2):
        best = max(space.enumerate(), key=lambda a: float(
            search.arch_log_prob(log_probs, space.to_dna(a))[task]))
        assert space.key(search.mode(task)) == space.key(best)


def test_a_negative_seed_is_a_seed_too() -> None:
    search = prepared(seed=-3)  # seeds are any integer (numpy's generators take none < 0)
    space = mbconv()
    assert space.validate(space.from_dna(search._uniform_dna()))
    assert (len(search._xa), len(search._xw)) == (24, 96)  # limit 120: 20% scores archs


def test_derived_tasks_need_ten_classes() -> None:
    from workers.weight_sharing.fbnetv5 import task_labels

    y = np.arange(10)
    assert task_labels("parity", y, 10)[0].tolist() == [0, 1] * 5
    assert task_labels("loops", y, 10)[1] == 3 and task_labels("class", y, 7)[1] == 7
    with pytest.raises(ArgumentError, match="^tasks "):
        task_labels("parity", y, 7)


# ---- the search ----
@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("fbnetv5")
    search = get_search("fbnetv5", mbconv(), **REFERENCE)
    outcome = search.run(folder)
    return {"outcome": outcome, "search": search, "folder": folder,
            "supernet": {k: v.clone() for k, v in search.supernet.state_dict().items()},
            "theta": search.theta.detach().clone()}


def assert_same_run(search: FBNetV5Search, outcome: Any, reference: dict[str, Any]) -> None:
    state = search.supernet.state_dict()
    for name, tensor in reference["supernet"].items():
        assert torch.equal(state[name], tensor), name
    assert torch.equal(search.theta.detach(), reference["theta"])
    assert_same_outcome(outcome, reference["outcome"])


@pytest.mark.integration
def test_search_derives_its_architectures_per_task_most_probable_first(
        reference: dict[str, Any]) -> None:
    search, outcome, space = reference["search"], reference["outcome"], mbconv()
    assert len(outcome.history) == 2 and outcome.finished
    assert [int(m["task_index"]) for m in outcome.metrics] == [0, 0, 1, 1]
    for t, task in enumerate(("class", "parity")):
        mine = [(a, m) for a, m in zip(outcome.archs, outcome.metrics, strict=True)
                if m["task_index"] == t]
        assert all(m[f"task.{task}"] == 1.0 for _, m in mine)
        assert space.key(mine[0][0]) == space.key(search.mode(t))
        assert mine[0][1]["log_prob"] >= mine[1][1]["log_prob"]
        for arch, metrics in mine:
            assert space.validate(arch) == arch
            assert metrics["flops"] == space.flops(arch)
            assert metrics["supernet_acc"] == metrics[f"supernet_acc.{task}"]
            assert search.inherited_accuracy(arch) == pytest.approx(
                [metrics["supernet_acc.class"], metrics["supernet_acc.parity"]])
        record = outcome.history[-1]
        assert 0 < record[f"entropy.{task}"] < np.log(4) and record[f"train_acc.{task}"] > 0
    # two tasks, two distributions, trained from different losses
    assert not torch.equal(reference["theta"][0], reference["theta"][1])
    assert torch.isfinite(search.baselines).all()


@pytest.mark.integration
def test_stop_mid_search_and_resume_equals_an_uninterrupted_run(reference: dict[str, Any],
                                                                 tmp_path: Path) -> None:
    first, search, outcome = stop_then_resume(
        tmp_path, lambda: get_search("fbnetv5", mbconv(), **REFERENCE), epochs=1)
    assert len(first.archs) == 4
    assert_same_run(search, outcome, reference)


@pytest.mark.system
def test_kill_9_after_an_epoch_then_resume_equals_an_uninterrupted_run(
        reference: dict[str, Any], tmp_path: Path) -> None:
    kill_search_after_epoch(tmp_path, "fbnetv5", "mbconv", MBCONV_ARGS, REFERENCE,
                            epoch=1)
    search = get_search("fbnetv5", mbconv(), **REFERENCE)
    outcome = search.run(tmp_path)
    assert outcome.resumed_from_epoch == 1
    assert_same_run(search, outcome, reference)


@pytest.mark.integration
def test_resume_with_other_tasks_is_refused(reference: dict[str, Any]) -> None:
    other = get_search("fbnetv5", mbconv(), **{**REFERENCE, "tasks": ["class", "loops"]})
    with pytest.raises(ValueError, match="another search"):
        other.run(reference["folder"])


@pytest.mark.integration
def test_fbnetv5_strategy_passes_check_strategy_once_searched(reference: dict[str, Any]) -> None:
    from nas.strategies import check_strategy, get_strategy
    from workers.weight_sharing.task import SearchResult

    space, outcome = mbconv(), reference["outcome"]
    result = SearchResult([space.key(a) for a in outcome.archs], outcome.archs,
                          outcome.metrics, outcome.history)

    def factory(seed: int) -> Any:
        strategy = get_strategy("fbnetv5", space, seed=seed, tasks=["class", "parity"])
        strategy.set_outcome(result)
        return strategy

    check_strategy(factory, trials=12)


# ---- bad arguments ----
@pytest.mark.parametrize("field, value", [
    ("tasks", []), ("tasks", ["class", "class"]), ("tasks", ["colour"]), ("tasks", "class"),
    ("samples", 0), ("arch_lr", 0), ("arch_fraction", 1.0), ("warmup_epochs", 10),
    ("max_ratio", 0.5), ("baseline_decay", 1.0), ("flops_weight", -1), ("momentum", 1.0),
    ("top_k", 0), ("derive_samples", -1), ("epochs", 0),
])
def test_bad_arguments_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(ArgumentError, match=rf"^{field} must") as info:
        get_search("fbnetv5", mbconv(), **{field: value})
    assert info.value.field == field


def test_other_spaces_and_unknown_arguments_are_refused() -> None:
    with pytest.raises(UnsupportedSpaceError, match="supports the spaces mbconv"):
        get_search("fbnetv5", get_space("nb201"))
    with pytest.raises(TypeError):
        get_search("fbnetv5", mbconv(), task=["class"])


def test_bad_argument_is_one_line_exit_2_and_nothing_written(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    from typer.testing import CliRunner

    from nas.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NAS_DB_URL", raising=False)
    spec = {"name": "fbnetv5-bad", "space": "mbconv", "space_args": MBCONV_ARGS,
            "strategy": "fbnetv5", "strategy_args": {"tasks": ["class", "colour"]},
            "evaluator": "analytic", "objectives": [{"metric": "flops", "mode": "min"}],
            "budget": {"trials": 2}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    db = tmp_path / "nas.db"
    result = CliRunner().invoke(app, ["--db", f"sqlite:///{db}", "submit", "spec.yaml"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert "strategy_args.tasks" in lines[0]
    assert not db.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]
