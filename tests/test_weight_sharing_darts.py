"""DARTS, PC-DARTS, RARTS and FBNet weight-sharing searches: tiny real runs on `digits`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from search_spaces import get_space
from search_spaces.nb201 import OPS as NB201_OPS
from search_spaces.validation import ArgumentError, UnsupportedSpaceError
from workers.weight_sharing import CHECKPOINT, get_search
from workers.weight_sharing.mixed import MixedOp, nb201_ranked

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
DATA = {"kind": "digits", "limit": 128}
TINY = {"dataset": DATA, "batch_size": 32, "seed": 3}
#: every non-`none` op costs 1 ms: a cell's table latency is its count of live edges
UNIT_TABLE = {op: 1.0 for op in NB201_OPS if op != "none"}

torch.set_num_threads(1)


def _run(name: str, space: str, folder: Path, epochs: int = 2, **kwargs):
    search = get_search(name, get_space(space), epochs=epochs, **{**TINY, **kwargs})
    search.prepare()
    before = search.alphas()
    outcome = search.run(folder)
    return search, before, outcome


def _strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


@pytest.fixture(scope="module")
def nb201_runs(tmp_path_factory):
    """One 2-epoch run of each method on nb201, shared by the tests below."""
    runs = {}
    for label, name, kwargs in (("darts1", "darts", {"order": 1}),
                                ("darts2", "darts", {"order": 2}),
                                ("pc-darts", "pc-darts", {}),
                                ("rarts", "rarts", {})):
        runs[label] = _run(name, "nb201", tmp_path_factory.mktemp(label), **kwargs)
    return runs


@pytest.mark.parametrize("label", ["darts1", "darts2", "pc-darts", "rarts"])
def test_nb201_methods_derive_valid_cells_and_move_alphas(nb201_runs, label):
    space = get_space("nb201")
    search, before, outcome = nb201_runs[label]
    assert outcome.finished and len(outcome.archs) == len(outcome.metrics) == 1
    arch = outcome.archs[0]
    assert space.validate(arch) == arch
    assert len(outcome.history) == 2
    last = outcome.history[-1]
    assert last["arch"] == space.key(arch)
    assert last["skip_connections"] == arch["ops"].count("skip_connect")
    assert 0.0 <= outcome.metrics[0]["supernet_val_acc"] <= 1.0
    after = search.alphas()
    assert not np.allclose(after["cell"], before["cell"], atol=1e-5)
    # the argmax cell is the first of the alpha-product ranking
    probs = torch.softmax(torch.from_numpy(after["cell"]), -1).numpy()
    assert space.from_dna([int(i) for i in nb201_ranked(probs)[0][0]]) == arch


def test_first_and_second_order_differ(nb201_runs):
    first, second = nb201_runs["darts1"][0].alphas(), nb201_runs["darts2"][0].alphas()
    assert np.array_equal(nb201_runs["darts1"][1]["cell"], nb201_runs["darts2"][1]["cell"])
    assert np.abs(first["cell"] - second["cell"]).max() > 1e-6


def test_pc_darts_learns_edge_weights(nb201_runs):
    search, before, _ = nb201_runs["pc-darts"]
    assert not np.allclose(search.alphas()["beta_cell"], before["beta_cell"], atol=1e-6)


def test_rarts_couples_two_networks(nb201_runs):
    search, _, outcome = nb201_runs["rarts"]
    w, y = (torch.cat([p.detach().flatten() for p in net.parameters()])
            for net in (search.net, search.net_y))
    assert not torch.equal(w, y)  # trained on different splits
    assert outcome.history[-1]["w_y_distance"] > 0
    assert "supernet_y_val_acc" in outcome.metrics[0]


@pytest.mark.parametrize("name", ["darts", "pc-darts"])
def test_darts_space_derives_two_input_cells(tmp_path, name):
    space = get_space("darts")
    search, before, outcome = _run(name, "darts", tmp_path, epochs=1,
                                   dataset={"kind": "digits", "limit": 64})
    arch = outcome.archs[0]
    assert space.validate(arch) == arch
    for cell in ("normal", "reduce"):
        for i, node in enumerate(arch[cell]):
            assert node["inputs"][0] < node["inputs"][1] <= i + 1
            assert "none" not in node["ops"]
    assert outcome.history[0]["arch"] == space.key(arch)
    after = search.alphas()
    for cell in ("normal", "reduce"):
        assert after[cell].shape == (14, 8)
        assert not np.allclose(after[cell], before[cell], atol=1e-5)
    if name == "pc-darts":
        assert after["beta_normal"].shape == (14,)


def test_darts_derivation_maps_supernet_ops_to_the_space_without_none():
    """Issue 17 item 19: the supernet's mixed op keeps `none` (first), the discrete space
    has no `none`; the derivation skips it and names each op by the supernet's order."""
    from search_spaces.darts import OPS as DARTS_OPS
    from workers.weight_sharing.mixed import DARTS_SEARCH_OPS, derive, layout_of

    space = get_space("darts")
    layout = layout_of(space)
    assert layout.ops == DARTS_SEARCH_OPS == ("none", *DARTS_OPS)
    assert "none" not in DARTS_OPS
    edges = layout.edges["normal"]
    for target in DARTS_OPS:
        probs = np.full((edges, len(layout.ops)), 0.01)
        probs[:, 0] = 0.9  # `none` is the strongest op everywhere, as late in a DARTS search
        probs[:, layout.ops.index(target)] = 0.05
        arch = derive(space, {"normal": probs, "reduce": probs})
        assert {op for cell in ("normal", "reduce") for node in arch[cell]
                for op in node["ops"]} == {target}


def _batchnorms(module: torch.nn.Module) -> list[torch.nn.BatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]


@pytest.mark.parametrize("space_name", ["nb201", "darts"])
@pytest.mark.parametrize("k", [1, 4])
def test_search_ops_use_non_affine_batchnorm_and_discrete_nets_affine(space_name, k):
    """Issue 17 item 17: in the DARTS / PC-DARTS search network every BN of a candidate
    operation (and of the darts cells' input preprocessing) is non-affine, so BN cannot
    rescale an op's output against its architecture weight; the stem, NB201's residual
    reductions and head, and every network built for evaluation keep affine BN."""
    from workers.weight_sharing.mixed import DartsMixedCell, build_supernet

    space = get_space(space_name)
    net = build_supernet(space, channels=8, cells=1 if space_name == "nb201" else 3,
                         num_classes=10, input_channels=1, k=k)
    in_ops = {id(bn) for m in net.modules() if isinstance(m, MixedOp) for bn in _batchnorms(m)}
    in_ops |= {id(bn) for m in net.modules() if isinstance(m, DartsMixedCell)
               for bn in _batchnorms(m.preprocess0) + _batchnorms(m.preprocess1)}
    assert len(in_ops) > 20
    for bn in _batchnorms(net):
        assert bn.affine == (id(bn) not in in_ops)
        assert bn.track_running_stats
    assert _batchnorms(net.stem)[0].affine
    arch = space.sample(np.random.default_rng(0))
    built = _batchnorms(space.build(arch))
    assert built and all(bn.affine for bn in built)


@pytest.mark.parametrize("space_name", ["nb201", "darts"])
@pytest.mark.parametrize("k", [1, 4])
def test_partial_channels_reach_the_ops(space_name, k):
    name = "pc-darts" if k > 1 else "darts"
    search = get_search(name, get_space(space_name), epochs=1, **TINY,
                        **({"k": k} if k > 1 else {}))
    search.prepare()
    full: dict[int, int] = {}
    seen: list[tuple[int, int]] = []  # (channels into the edge, channels into one op)
    mixed_ops = [m for m in search.net.modules() if isinstance(m, MixedOp)]
    for mixed in mixed_ops:
        mixed.register_forward_pre_hook(
            lambda module, args: full.__setitem__(id(module), args[0].shape[1]))
        for i in mixed.live:
            mixed.ops[i].register_forward_pre_hook(
                lambda _m, args, parent=mixed: seen.append((full[id(parent)], args[0].shape[1])))
    x = search.split_w[0][:8]
    logits = search.net(x, search.arch.op_weights(), search.arch.edge_weights())
    assert len(seen) >= len(mixed_ops)
    assert all(op_in * k == full for full, op_in in seen)
    assert len(seen) == sum(len(m.live) for m in mixed_ops)
    assert logits.shape == (8, 10)


@pytest.mark.parametrize("name,kwargs", [
    ("darts", {"order": 2}),
    ("pc-darts", {}),
    ("pc-darts", {"warmup_epochs": 2}),  # stopped during the warm-up
    ("rarts", {}),
    ("fbnet", {"latency_table": UNIT_TABLE, "max_latency_ms": 3.0, "latency_weight": 0.5}),
])
def test_resume_after_stop_is_bit_identical(tmp_path, name, kwargs):
    space = get_space("nb201")
    whole, _, full = _run(name, "nb201", tmp_path / "whole", epochs=3, **kwargs)
    stopped = get_search(name, space, epochs=3, **TINY, **kwargs)
    partial = stopped.run(tmp_path / "cut", stop=lambda: True)
    assert not partial.finished and len(partial.history) == 1
    resumed = get_search(name, space, epochs=3, **TINY, **kwargs)
    outcome = resumed.run(tmp_path / "cut")
    assert outcome.resumed_from_epoch == 1 and outcome.finished
    for key, value in whole.alphas().items():
        assert np.array_equal(resumed.alphas()[key], value), key
    assert [space.key(a) for a in outcome.archs] == [space.key(a) for a in full.archs]
    assert _strip(outcome.history) == _strip(full.history)
    assert outcome.metrics == full.metrics


def test_pc_darts_has_the_papers_defaults():
    """Issue 17 item 18: PC-DARTS' own settings (train_search.py of the reference code:
    lr 0.1, arch lr 6e-4, batch 256; a warm-up of 15 of 50 epochs), not DARTS'."""
    space = get_space("nb201")
    pc = get_search("pc-darts", space, epochs=50)
    assert (pc.lr, pc.arch_lr, pc.batch_size, pc.warmup_epochs) == (0.1, 6e-4, 256, 15)
    assert pc.config()["warmup_epochs"] == 15
    assert get_search("pc-darts", space, epochs=10).warmup_epochs == 3
    assert get_search("pc-darts", space, epochs=3).warmup_epochs == 0
    assert get_search("pc-darts", space, epochs=10, warmup_epochs=0).warmup_epochs == 0
    darts = get_search("darts", space, epochs=50)
    assert (darts.lr, darts.arch_lr, darts.batch_size) == (0.025, 3e-4, 64)
    assert "warmup_epochs" not in darts.config()
    for bad in (-1, 10, 2.5, True):
        with pytest.raises(ArgumentError, match="^warmup_epochs must be"):
            get_search("pc-darts", space, epochs=10, warmup_epochs=bad)


def test_pc_darts_warm_up_trains_only_the_weights(tmp_path):
    """During the warm-up epochs alpha and beta stay at their initial values while the
    supernet's weights train; from the first epoch after it they move."""
    search = get_search("pc-darts", get_space("nb201"), epochs=3, warmup_epochs=2, **TINY)
    search.prepare()
    start = search.alphas()
    weights = [p.detach().clone() for p in search.net.parameters()]
    seen: list[dict[str, np.ndarray]] = []
    outcome = search.run(tmp_path, progress=lambda record: seen.append(search.alphas()))
    assert [r["arch_frozen"] for r in outcome.history] == [True, True, False]
    for alphas in seen[:2]:
        for key, value in start.items():
            assert np.array_equal(alphas[key], value), key
    assert not np.allclose(seen[2]["cell"], start["cell"], atol=1e-6)
    assert not np.allclose(seen[2]["beta_cell"], start["beta_cell"], atol=1e-7)
    assert not all(torch.equal(a, b.detach()) for a, b in
                   zip(weights, search.net.parameters(), strict=True))


_KILLED_RUN = """
import sys, time, torch
torch.set_num_threads(1)
from search_spaces import get_space
from workers.weight_sharing import get_search
search = get_search("darts", get_space("nb201"), epochs=3, order=1, dataset={data!r},
                    batch_size=32, seed=3)
search.run(sys.argv[1], progress=lambda record: time.sleep(600))
"""


@pytest.mark.system
def test_resume_after_kill_9_is_bit_identical(tmp_path):
    space = get_space("nb201")
    whole, _, full = _run("darts", "nb201", tmp_path / "whole", epochs=3, order=1)
    folder = tmp_path / "killed"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(_KILLED_RUN.format(data=DATA)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(folder)], env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not (folder / CHECKPOINT).exists():
            assert proc.poll() is None, "the search process died before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resumed = get_search("darts", space, epochs=3, order=1, **TINY)
    outcome = resumed.run(folder)
    assert outcome.resumed_from_epoch == 1
    assert np.array_equal(resumed.alphas()["cell"], whole.alphas()["cell"])
    assert space.key(outcome.archs[0]) == space.key(full.archs[0])
    assert _strip(outcome.history) == _strip(full.history)


def test_fbnet_derives_within_a_budget_the_argmax_breaks(tmp_path):
    space = get_space("nb201")
    budget = 2.0  # at most two live edges
    search, before, outcome = _run("fbnet", "nb201", tmp_path, epochs=2, top=2,
                                   latency_table=UNIT_TABLE, max_latency_ms=budget,
                                   latency_weight=0.0)
    argmax = search.current_arch()
    assert search.table_latency(argmax) > budget  # the unconstrained answer breaks it
    assert outcome.history[-1]["argmax_table_latency_ms"] == search.table_latency(argmax)
    assert len(outcome.archs) == 2
    for arch, metrics in zip(outcome.archs, outcome.metrics, strict=True):
        live = sum(op != "none" for op in arch["ops"])
        assert metrics["table_latency_ms"] == pytest.approx(live) and live <= budget
        assert metrics["meets_budget"] == 1.0
    # the first is the best cell by alpha-product among those that fit
    probs = torch.softmax(torch.from_numpy(search.alphas()["cell"]), -1).numpy()
    grid, scores = nb201_ranked(probs)
    fits = (grid != 0).sum(axis=1) <= budget
    assert outcome.metrics[0]["alpha_log_prob"] == pytest.approx(scores[fits][0])
    assert space.from_dna([int(i) for i in grid[fits][0]]) == outcome.archs[0]
    assert outcome.history[0]["temperature"] == 5.0
    assert outcome.history[1]["temperature"] == pytest.approx(5.0 * 0.956)


def test_fbnet_unreachable_budget_gives_the_fastest_cell_flagged(tmp_path):
    table = {**UNIT_TABLE, "skeleton_ms": 2.0}
    _, _, outcome = _run("fbnet", "nb201", tmp_path, epochs=1, latency_table=table,
                         max_latency_ms=1.0)
    assert outcome.archs == [{"ops": ["none"] * 6}]
    assert outcome.metrics[0]["meets_budget"] == 0.0
    assert outcome.metrics[0]["table_latency_ms"] == 2.0


def test_fbnet_latency_penalty_lowers_expected_latency(tmp_path):
    common = {"latency_table": UNIT_TABLE, "max_latency_ms": 3.0, "arch_lr": 0.05}
    free, _, _ = _run("fbnet", "nb201", tmp_path / "free", epochs=1, latency_weight=0.0,
                      **common)
    paid, _, _ = _run("fbnet", "nb201", tmp_path / "paid", epochs=1, latency_weight=5.0,
                      **common)
    assert float(paid.expected_latency().detach()) < float(free.expected_latency().detach()) - 0.1


def test_fbnet_measures_the_table_on_this_cpu():
    search = get_search("fbnet", get_space("nb201", channels=4, cells_per_stage=1),
                        epochs=1, max_latency_ms=50.0, **TINY)
    lut = search._ensure_lut()
    assert lut["cells_per_stage"] == 1 and len(lut["ops_ms"]) == 3
    assert lut["skeleton_ms"] > 0 and all(row[0] == 0.0 for row in lut["ops_ms"])
    arch = {"ops": ["nor_conv_3x3"] * 6}
    assert search.table_latency(arch) > search.table_latency({"ops": ["none"] * 6})
    assert lut["scale"] > 0 and lut["calibration_samples"] == 8  # fitted to whole networks


def test_fbnet_with_a_measured_table_checks_the_derived_cell_on_this_cpu(tmp_path):
    """Under a table measured here, the derived cell is also measured as a whole network and
    kept only if that measurement meets the budget."""
    space = get_space("nb201", channels=4, cells_per_stage=1)
    probe = get_search("fbnet", space, epochs=1, max_latency_ms=50.0, **TINY)
    lut = probe._ensure_lut()
    budget = lut["skeleton_ms"] + 0.5 * (probe.table_latency({"ops": ["nor_conv_3x3"] * 6})
                                         - lut["skeleton_ms"])
    search = get_search("fbnet", space, epochs=1, max_latency_ms=budget, **TINY)
    outcome = search.run(tmp_path)
    metrics = outcome.metrics[0]
    assert metrics["table_latency_ms"] <= budget
    assert "measured_latency_ms" in metrics and search.measured_ms
    assert metrics["meets_budget"] == float(metrics["measured_latency_ms"] <= budget)


@pytest.mark.parametrize("name,kwargs,field", [
    ("darts", {"channels": 0}, "channels"),
    ("darts", {"cells": 0}, "cells"),
    ("darts", {"lr": -0.1}, "lr"),
    ("darts", {"arch_lr": "fast"}, "arch_lr"),
    ("darts", {"order": 3}, "order"),
    ("darts", {"top": 0}, "top"),
    ("darts", {"epochs": 0}, "epochs"),
    ("pc-darts", {"k": 3}, "k"),
    ("pc-darts", {"k": 0}, "k"),
    ("rarts", {"penalty": -1.0}, "penalty"),
    ("fbnet", {}, "max_latency_ms"),
    ("fbnet", {"max_latency_ms": 0.0}, "max_latency_ms"),
    ("fbnet", {"max_latency_ms": 5.0, "latency_table": {"skip_connect": 1.0}},
     "latency_table"),
    ("fbnet", {"max_latency_ms": 5.0, "temperature": 0}, "temperature"),
])
def test_bad_arguments_name_the_field(name, kwargs, field):
    with pytest.raises(ArgumentError, match=rf"^{field}\b") as info:  # the spec adds the section
        get_search(name, get_space("nb201"), **kwargs)
    assert info.value.field.split(".")[0] == field


def test_bad_space_arguments():
    with pytest.raises(ArgumentError, match=r"^cells must be an integer >= 3"):
        get_search("darts", get_space("darts"), cells=2)  # a darts network has >= 3 layers
    with pytest.raises(ArgumentError, match=r"^k must leave an even number"):
        get_search("pc-darts", get_space("darts"), channels=12, k=4)  # 3 channels per edge
    with pytest.raises(UnsupportedSpaceError, match="supports the spaces"):
        get_search("fbnet", get_space("darts"), max_latency_ms=5.0)
    with pytest.raises(UnsupportedSpaceError, match="supports the spaces"):
        get_search("darts", get_space("mbconv"))


def test_resume_with_another_config_is_refused(tmp_path):
    space = get_space("nb201")
    get_search("darts", space, epochs=2, **TINY).run(tmp_path, stop=lambda: True)
    with pytest.raises(ValueError, match="another search"):
        get_search("darts", space, epochs=2, lr=0.05, **TINY).run(tmp_path)
    with pytest.raises(ValueError, match="another search"):
        get_search("darts", space, epochs=2, order=2, **TINY).run(tmp_path)
    with pytest.raises(ValueError, match="another search"):  # another subset of the data
        get_search("darts", space, epochs=2, **{**TINY, "dataset": {**DATA, "limit": 96}}) \
            .run(tmp_path)


def _smooth(module: torch.nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, torch.nn.ReLU):
            setattr(module, name, torch.nn.Tanh())
        else:
            _smooth(child)


def test_second_order_gradient_matches_exact_unrolled_gradient():
    """The finite-difference Hessian-vector product against autograd's exact one. The
    ReLUs are swapped for tanh: across ReLU kinks a finite difference measures jumps that
    the exact (almost everywhere) Hessian does not see, so only a smooth net can agree."""
    from torch.func import functional_call

    search = get_search("darts", get_space("nb201"), epochs=1, order=2, **TINY)
    search.prepare()
    _smooth(search.net)
    x, y = search.split_w[0][:16], search.split_w[1][:16]
    xa, ya = search.split_a[0][:16], search.split_a[1][:16]
    search._weight_step(search.net, search.w_opt, x, y)  # momentum buffers exist now
    search.net.train()
    approx = search._unrolled_grads(x, y, xa, ya)

    names = [n for n, _ in search.net.named_parameters()]
    params = [p for _, p in search.net.named_parameters()]
    buffers = {n: b.clone() for n, b in search.net.named_buffers()}
    lr = search.w_opt.param_groups[0]["lr"]
    arch = list(search.arch.parameters())

    def loss(values, inputs, targets):
        state = {**dict(zip(names, values, strict=True)), **buffers}
        logits = functional_call(search.net, state, (inputs, search.arch.op_weights()))
        return search.criterion(logits, targets)

    grads = torch.autograd.grad(loss(params, x, y), params, create_graph=True)
    unrolled = [p - lr * (g + search.weight_decay * p
                          + 0.9 * search.w_opt.state[p]["momentum_buffer"])
                for p, g in zip(params, grads, strict=True)]
    exact = torch.autograd.grad(loss(unrolled, xa, ya), arch)
    first_order = torch.autograd.grad(loss(params, xa, ya), arch)
    for a, e, f in zip(approx, exact, first_order, strict=True):
        assert torch.allclose(a, e, rtol=1e-2, atol=1e-3 * float(e.abs().max()))
        assert not torch.allclose(e, f, rtol=1e-3)  # the implicit term is not negligible
