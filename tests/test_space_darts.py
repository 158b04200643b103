"""The DARTS cell space: conformance, keys and genotypes, exact costs, shapes, ONNX export."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings
from collections import namedtuple

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from search_spaces import check_space, get_space
from search_spaces.darts import OPS, PAIRS, DartsSpace, Genotype, network_plan
from search_spaces.validation import ArgumentError

torch.set_num_threads(1)

DIGITS = {"input_channels": 1, "input_size": 8, "num_classes": 10}

# The DARTS (second order) cells of the paper, in the original repository's namedtuple form.
DartsGenotype = namedtuple("DartsGenotype", "normal normal_concat reduce reduce_concat")
DARTS_V2 = DartsGenotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=[2, 3, 4, 5],
)
DARTS_V2_KEY = (
    "normal:sep_conv_3x3~0,sep_conv_3x3~1|sep_conv_3x3~0,sep_conv_3x3~1|"
    "skip_connect~0,sep_conv_3x3~1|skip_connect~0,dil_conv_3x3~2;"
    "reduce:max_pool_3x3~0,max_pool_3x3~1|max_pool_3x3~1,skip_connect~2|"
    "max_pool_3x3~0,skip_connect~2|max_pool_3x3~1,skip_connect~2"
)


def _archs(space: DartsSpace, n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(n)]


def _uniform(space: DartsSpace, op: str) -> dict:
    """Every edge runs `op`; node i takes its two highest-numbered inputs (i, i + 1)."""
    dna = []
    for _ in range(2):
        for i in range(4):
            dna += [len(PAIRS[i]) - 1, OPS.index(op), OPS.index(op)]
    return space.from_dna(dna)


def _measured(space: DartsSpace, arch: dict) -> tuple[int, int]:
    model = space.build(arch).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *space.input_shape()))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops()


# ---- conformance -------------------------------------------------------------------------
@pytest.mark.integration
def test_check_space_default_args():
    check_space(DartsSpace())


@pytest.mark.integration
def test_check_space_digits_args():
    check_space(get_space("darts", **DIGITS), seed=1)


@pytest.mark.integration
def test_check_space_odd_channels_and_deeper_network():
    check_space(DartsSpace(channels=5, layers=7, num_classes=3, input_size=12), n=4, seed=2)


@pytest.mark.integration
def test_import_does_not_import_torch():
    code = "import sys, search_spaces.darts; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- decisions, keys, genotypes ------------------------------------------------------------
def test_decisions_are_the_input_pair_then_one_op_per_edge():
    space = DartsSpace()
    assert space.choice_counts() == [1, 7, 7, 3, 7, 7, 6, 7, 7, 10, 7, 7] * 2
    assert space.size() == (1 * 3 * 6 * 10 * 7 ** 8) ** 2
    assert f"{float(space.size()):.1e}" == "1.1e+18"
    assert PAIRS[2] == ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
    arch = space.from_dna([0, 1, 0, 2, 3, 6, 5, 2, 3, 9, 5, 0] + [0] * 12)
    assert arch["normal"] == [
        {"inputs": [0, 1], "ops": ["sep_conv_3x3", "skip_connect"]},
        {"inputs": [1, 2], "ops": ["dil_conv_3x3", "avg_pool_3x3"]},
        {"inputs": [2, 3], "ops": ["sep_conv_5x5", "dil_conv_3x3"]},
        {"inputs": [3, 4], "ops": ["max_pool_3x3", "skip_connect"]},
    ]
    assert arch["reduce"] == [{"inputs": [0, 1], "ops": ["skip_connect", "skip_connect"]}] + [
        {"inputs": [0, 1], "ops": ["skip_connect", "skip_connect"]}] * 3


def test_none_is_not_an_operation_of_the_discrete_space():
    """Issue 17 item 19: DARTS genotypes never hold `none` (the derivation skips it), and a
    cell with `none` on both edges of a node computes an all-zero node."""
    space = DartsSpace()
    assert "none" not in OPS and len(OPS) == 7
    rng = np.random.default_rng(0)
    for _ in range(300):
        arch = space.sample(rng)
        arch = space.mutate(arch, rng)
        assert all("none" not in node["ops"] for cell in ("normal", "reduce")
                   for node in arch[cell])
    with pytest.raises(ValueError, match="unknown operation 'none'"):
        space.from_key(DARTS_V2_KEY.replace("dil_conv_3x3~2", "none~2"))
    with_none = space.from_genotype(DARTS_V2)
    with_none["normal"][0]["ops"] = ["none", "none"]
    with pytest.raises(ValueError, match="unknown operation 'none'"):
        space.to_dna(with_none)


def test_darts_v2_genotype_key_and_round_trip():
    space = DartsSpace()
    arch = space.from_genotype(DARTS_V2)
    # edges are put lower input first: ('sep_conv_3x3', 1), ('skip_connect', 0) is swapped
    assert arch["normal"][2] == {"inputs": [0, 1], "ops": ["skip_connect", "sep_conv_3x3"]}
    assert space.key(arch) == DARTS_V2_KEY
    assert space.from_key(DARTS_V2_KEY) == arch
    genotype = space.genotype(arch)
    assert isinstance(genotype, Genotype)
    assert genotype.normal[4:6] == [("skip_connect", 0), ("sep_conv_3x3", 1)]
    assert genotype.normal_concat == range(2, 6) and genotype.reduce_concat == range(2, 6)
    assert space.from_genotype(genotype) == arch


def test_genotype_lists_two_edges_per_node_in_node_order():
    space = DartsSpace()
    for arch in _archs(space, 10):
        genotype = space.genotype(arch)
        for cell in ("normal", "reduce"):
            edges = getattr(genotype, cell)
            assert len(edges) == 8
            for i, node in enumerate(arch[cell]):
                assert edges[2 * i:2 * i + 2] == list(zip(node["ops"], node["inputs"],
                                                          strict=True))
                assert all(state < i + 2 for _, state in edges[2 * i:2 * i + 2])
        assert space.from_genotype(genotype) == arch


@pytest.mark.parametrize(("genotype", "message"), [
    (DARTS_V2._replace(normal=DARTS_V2.normal[:7]), "genotype.normal must be 8"),
    (DARTS_V2._replace(reduce_concat=[2, 3, 4]), "reduce_concat must be range(2, 6)"),
    (DARTS_V2._replace(normal=[("sep_conv_3x3", 0)] * 8), "two distinct states"),
    (DARTS_V2._replace(normal=[*DARTS_V2.normal[:7], ("dil_conv_3x3", 5)]), "among 0..4"),
    (DARTS_V2._replace(reduce=[*DARTS_V2.reduce[:7], ("conv_7x1_1x7", 1)]),
     "unknown operation 'conv_7x1_1x7'"),
    (DARTS_V2._replace(normal=[*DARTS_V2.normal[:7], "dil_conv_3x3"]), "(op, input) pairs"),
])
def test_from_genotype_rejects(genotype, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DartsSpace().from_genotype(genotype)


@pytest.mark.parametrize(("key", "message"), [
    (DARTS_V2_KEY.replace(";", "|"), "2 cells separated by ';'"),
    (DARTS_V2_KEY.replace("reduce:", "reduction:"), "must start with 'reduce:'"),
    (DARTS_V2_KEY.replace("normal:", ""), "must start with 'normal:'"),
    (DARTS_V2_KEY.replace("|skip_connect~0,dil_conv_3x3~2", ""), "needs 4 nodes"),
    (DARTS_V2_KEY.replace("dil_conv_3x3~2", "dil_conv_3x3~2,none~3"), "needs 2 edges"),
    (DARTS_V2_KEY.replace("dil_conv_3x3~2", "dil_conv_3x3 2"), "must read 'op~state'"),
    (DARTS_V2_KEY.replace("dil_conv_3x3~2", "dil_conv_3x3~02"), "must read 'op~state'"),
    (DARTS_V2_KEY.replace("dil_conv_3x3~2", "dil_conv_3x3~-2"), "must read 'op~state'"),
    (DARTS_V2_KEY.replace("dil_conv_3x3", "dil_conv_7x7"), "unknown operation 'dil_conv_7x7'"),
    (DARTS_V2_KEY.replace("skip_connect~0,dil_conv_3x3~2", "dil_conv_3x3~2,skip_connect~0"),
     "increasing order"),
    (DARTS_V2_KEY.replace("skip_connect~0,dil_conv_3x3~2", "skip_connect~0,avg_pool_3x3~5"),
     "among 0..4"),
    (DARTS_V2_KEY[:-1], "must read 'op~state'"),
    (DARTS_V2_KEY + " ", "must read 'op~state'"),
])
def test_from_key_rejects(key, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DartsSpace().from_key(key)


@pytest.mark.parametrize("mutate", [
    lambda a: a["normal"][1].update(inputs=[2, 0]),
    lambda a: a["normal"][1].update(inputs=[1, 1]),
    lambda a: a["normal"][1].update(inputs=[True, 2]),
    lambda a: a["normal"][1].update(inputs=[0.0, 2]),
    lambda a: a["normal"][0].update(inputs=[0, 2]),
    lambda a: a["reduce"][3].update(ops=["none"]),
    lambda a: a["reduce"][3].update(ops=["none", None]),
    lambda a: a["reduce"][3].update(extra=1),
    lambda a: a.update(extra=[]),
    lambda a: a.pop("reduce"),
])
def test_to_dna_rejects_malformed_archs(mutate):
    space = DartsSpace()
    arch = space.from_genotype(DARTS_V2)
    mutate(arch)
    with pytest.raises(ValueError):
        space.to_dna(arch)
    with pytest.raises(ValueError):
        space.key(arch)


def test_from_dna_rejects_bad_dna():
    space = DartsSpace()
    for dna in ([0] * 23, [0] * 25, [1] + [0] * 23, [0, 7] + [0] * 22, [0, -1] + [0] * 22):
        with pytest.raises(ValueError, match="a darts DNA is 24 integers"):
            space.from_dna(dna)


@pytest.mark.parametrize(("args", "field"), [
    ({"channels": 0}, "channels"), ({"channels": 8.0}, "channels"),
    ({"layers": 2}, "layers"), ({"layers": True}, "layers"),
    ({"num_classes": 0}, "num_classes"), ({"input_channels": -1}, "input_channels"),
    ({"input_size": 30}, "input_size"), ({"input_size": "32"}, "input_size"),
])
def test_bad_space_args(args, field):
    with pytest.raises(ArgumentError, match=f"^{field} must be") as info:
        DartsSpace(**args)
    assert info.value.field == field  # the spec alone prefixes space_args.


# ---- the network and its exact costs -----------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("args", [{}, DIGITS, {"channels": 6, "layers": 4, "input_size": 16}])
def test_params_and_flops_match_the_built_model(args):
    space = DartsSpace(**args)
    archs = _archs(space, 2, seed=3) + [_uniform(space, op) for op in OPS]
    for arch in archs:
        assert (space.params(arch), space.flops(arch)) == _measured(space, arch), arch


def test_one_sep_conv_costs_what_the_paper_op_costs_in_every_normal_cell():
    """Independent of the cost model: max_pool_3x3 -> sep_conv_3x3 on one normal edge adds,
    in each normal cell with c channels on an s x s map, 2 x (9c + c^2 + 2c) parameters and
    2 x 2 x (9c + c^2) x s^2 FLOPs (two depthwise + pointwise convs, two BNs)."""
    space = DartsSpace()
    base = _uniform(space, "max_pool_3x3")
    changed = _uniform(space, "max_pool_3x3")
    changed["normal"][3]["ops"][1] = "sep_conv_3x3"
    normal = [(c, s) for c, s in ((8, 32), (16, 16), (32, 8))]  # layers 0, 2, 4
    params = sum(2 * (9 * c + c * c + 2 * c) for c, _ in normal)
    flops = sum(4 * (9 * c + c * c) * s * s for c, s in normal)
    assert space.params(changed) - space.params(base) == params
    assert space.flops(changed) - space.flops(base) == flops


def test_network_plan_places_reductions_at_thirds():
    plan = network_plan(8, 5)
    assert [p.reduction for p in plan] == [False, True, False, True, False]
    assert [p.reduction_prev for p in plan] == [False, False, True, False, True]
    assert [p.c for p in plan] == [8, 16, 16, 32, 32]
    assert [(p.c_prev_prev, p.c_prev) for p in plan] == [
        (24, 24), (24, 32), (32, 64), (64, 64), (64, 128)]
    assert [p.reduction for p in network_plan(8, 8)] == [False, False, True, False, False,
                                                         True, False, False]


@pytest.mark.parametrize(("args", "sides"), [({}, [32, 16, 16, 8, 8]), (DIGITS, [8, 4, 4, 2, 2])])
def test_cell_outputs_follow_the_plan(args, sides):
    space = DartsSpace(**args)
    model = space.build(space.from_genotype(DARTS_V2))
    shapes = []
    for cell in model.cells:
        cell.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
    out = model(torch.randn(2, *space.input_shape()))
    assert tuple(out.shape) == (2, 10)
    channels = [4 * p.c for p in network_plan(8, 5)]
    assert shapes == [(2, c, s, s) for c, s in zip(channels, sides, strict=True)]


def test_reduction_skip_is_factorized_reduce_and_pools_have_no_batchnorm():
    from search_spaces.layers.darts_net import FactorizedReduce

    space = DartsSpace()
    arch = space.from_genotype(DARTS_V2)
    model = space.build(arch)
    reduce_cell = model.cells[1]
    # reduce node 1 is max_pool_3x3~1, skip_connect~2: the skip reads a node (stride 1)
    assert isinstance(reduce_cell.edges[3], torch.nn.Identity)
    assert isinstance(reduce_cell.edges[2], torch.nn.MaxPool2d)
    assert reduce_cell.edges[2].stride == 2
    assert isinstance(model.cells[2].preprocess0, FactorizedReduce)
    skip = _uniform(space, "skip_connect")
    skip["reduce"][0]["ops"] = ["skip_connect", "avg_pool_3x3"]
    cell = space.build(skip).cells[1]
    assert isinstance(cell.edges[0], FactorizedReduce)
    assert isinstance(cell.edges[1], torch.nn.AvgPool2d)


def test_build_overrides_change_the_model():
    space = DartsSpace()
    arch = space.from_genotype(DARTS_V2)
    wide = space.build(arch, channels=16, num_classes=5)
    assert sum(p.numel() for p in wide.parameters()) > space.params(arch)
    assert tuple(wide(torch.randn(1, 3, 32, 32)).shape) == (1, 5)


@pytest.mark.integration
@pytest.mark.parametrize("args", [{}, DIGITS])
def test_onnx_export_agrees_with_torch(args):
    ort = pytest.importorskip("onnxruntime")
    space = DartsSpace(**args)
    archs = _archs(space, 1, seed=7) + [space.from_genotype(DARTS_V2)]
    x = torch.randn(2, *space.input_shape())
    for arch in archs:
        torch.manual_seed(0)
        model = space.build(arch).eval()
        with torch.no_grad():
            expected = model(x).numpy()
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["input"])
        session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": x.numpy()})[0]
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
