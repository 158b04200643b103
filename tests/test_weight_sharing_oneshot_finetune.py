"""The `oneshot` option `finetune_steps` (issue 19): a short, seeded fine-tune of each extracted
subnet before it is scored. It leaves the supernet alone, is the same every time for the same
subnet, lowers the subnet's training loss, refuses bad values, and a stopped search with it
resumes to the uninterrupted run's outcome."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from search_spaces import get_space
from search_spaces.validation import ArgumentError
from tests.conftest import assert_same_outcome
from workers.weight_sharing import get_search

MBCONV_ARGS = {"input_channels": 1, "input_size": 8, "stage_channels": [16, 24],
               "stage_strides": [2, 2], "stem_channels": 8, "head_channels": 32,
               "depths": [1, 2], "kernel_sizes": [3, 5], "expand_ratios": [2, 4],
               "width_mults": [0.5, 1.0], "resolutions": [6, 8]}
RUN = {"seed": 3, "dataset": {"kind": "digits", "limit": 200}, "epochs": 2, "batch_size": 50,
       "population": 4, "generations": 1, "top_k": 2, "latency": "none", "bn_samples": 64,
       "finetune_steps": 8, "finetune_lr": 0.05}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def mbconv() -> Any:
    return get_space("mbconv", **MBCONV_ARGS)


@pytest.mark.parametrize("field, value", [
    ("finetune_steps", -1), ("finetune_steps", 2.5), ("finetune_steps", "many"),
    ("finetune_lr", 0), ("finetune_lr", -0.1), ("finetune_lr", float("nan")),
])
def test_bad_finetune_arguments_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(ArgumentError, match=rf"^{field} must be") as info:
        get_search("oneshot", mbconv(), **{field: value})
    assert info.value.field == field


def _train_loss(search: Any, net: Any, arch: dict[str, Any]) -> float:
    net.train()  # batch statistics: the loss the fine-tune lowers
    with torch.no_grad():
        return float(F.cross_entropy(net(search._resize(search._x_train, arch)),
                                     search._y_train))


def test_finetune_is_seeded_lowers_the_loss_and_leaves_the_supernet(tmp_path: Path) -> None:
    search = get_search("oneshot", mbconv(), **{**RUN, "epochs": 1, "finetune_steps": 0})
    search.run(tmp_path)
    before = {k: v.clone() for k, v in search.supernet.state_dict().items()}
    arch = search.space.sample(np.random.default_rng(0))
    plain = search.export_subnet(arch)
    search.finetune_steps, search.finetune_lr = 20, 0.05
    tuned, again = search.export_subnet(arch), search.export_subnet(arch)
    for name, tensor in search.supernet.state_dict().items():
        assert torch.equal(tensor, before[name]), name  # extract copies: supernet untouched
    tuned_state, plain_state = tuned.state_dict(), plain.state_dict()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in tuned_state.items())
    assert any(not torch.equal(v, plain_state[k]) for k, v in tuned_state.items())
    assert _train_loss(search, tuned, arch) < _train_loss(search, plain, arch)


def test_stop_and_resume_with_finetune_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    reference = get_search("oneshot", mbconv(), **RUN).run(tmp_path / "whole")
    first = get_search("oneshot", mbconv(), **RUN).run(tmp_path / "cut", stop=lambda: True)
    assert not first.finished
    outcome = get_search("oneshot", mbconv(), **RUN).run(tmp_path / "cut")
    assert outcome.finished and outcome.resumed_from_epoch == 1
    assert_same_outcome(outcome, reference)
    # the fine-tune is part of the search's identity: a plain search will not resume it
    with pytest.raises(ValueError, match="another search"):
        get_search("oneshot", mbconv(), **{**RUN, "finetune_steps": 0}).run(tmp_path / "cut")
