"""The hybrid CNN-transformer space: conformance, keys, exact cost model, ONNX export."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import search_spaces
from search_spaces import check_space
from search_spaces.hybrid import BLOCK_TYPES, HybridSpace
from search_spaces.validation import ArgumentError

DIGITS = {"input_channels": 1, "input_size": 8}
EXAMPLE = {
    "blocks": ["basic", "transformer", "bottleneck", "transformer", "basic", "transformer",
               "transformer", "bottleneck"],
    "downsample": [2, 5],
    "widths": [24, 48, 96],
}
EXAMPLE_KEY = "24:basic,transformer/48:bottleneck,transformer,basic/96:transformer,transformer," \
              "bottleneck"


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- conformance ---------------------------------------------------------------------------
@pytest.mark.integration
def test_default_space_passes_check_space():
    check_space(HybridSpace())


@pytest.mark.integration
def test_digits_space_passes_check_space():
    check_space(HybridSpace(**DIGITS), n=10)
    check_space(HybridSpace(**DIGITS, stem_stride=1, blocks=5, num_classes=3), n=5, build_n=2)


@pytest.mark.integration
def test_importing_the_space_does_not_import_torch():
    code = "import sys, search_spaces.hybrid; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(search_spaces.__file__).parents[1]).stdout
    assert out.split() == ["False"]


# ---- decisions and keys --------------------------------------------------------------------
@pytest.mark.parametrize("blocks, stages, windows", [
    (8, 3, ((1, 2, 3), (4, 5, 6, 7))),
    (6, 3, ((1, 2), (3, 4, 5))),
    (3, 3, ((1,), (2,))),
    (10, 4, ((1, 2, 3), (4, 5, 6), (7, 8, 9))),
    (5, 2, ((1, 2, 3, 4),)),
])
def test_downsampling_windows_are_disjoint_and_cover_blocks_1_to_n_minus_1(blocks, stages,
                                                                            windows):
    widths = [[8 * (s + 1)] for s in range(stages)]
    space = HybridSpace(blocks=blocks, widths=widths)
    assert space.downsample_windows == windows
    assert space.choice_counts() == [3] * blocks + [len(w) for w in windows] + [1] * stages


def test_default_space_size_and_dna_order():
    space = HybridSpace()
    assert space.choice_counts() == [3] * 8 + [3, 4] + [3, 3, 3]
    assert space.size() == 3 ** 8 * 3 * 4 * 27 == 2_125_764
    assert space.to_dna(EXAMPLE) == [0, 2, 1, 2, 0, 2, 2, 1] + [1, 1] + [1, 1, 1]
    assert space.from_dna([0] * 13) == {"blocks": ["basic"] * 8, "downsample": [1, 4],
                                        "widths": [16, 32, 64]}


def test_example_key_round_trip():
    space = HybridSpace()
    assert space.key(EXAMPLE) == EXAMPLE_KEY
    assert space.from_key(EXAMPLE_KEY) == EXAMPLE == space.validate(EXAMPLE_KEY)


def test_plan_places_downsamplings_and_widths():
    plan = HybridSpace().plan(EXAMPLE)
    assert [(b.kind, b.c_in, b.c_out, b.stride, b.side_out) for b in plan] == [
        ("basic", 24, 24, 1, 16), ("transformer", 24, 24, 1, 16),
        ("bottleneck", 24, 48, 2, 8), ("transformer", 48, 48, 1, 8), ("basic", 48, 48, 1, 8),
        ("transformer", 48, 96, 2, 4), ("transformer", 96, 96, 1, 4),
        ("bottleneck", 96, 96, 1, 4),
    ]


STAGE0 = "24:basic,transformer"
REST = "/48:bottleneck,transformer,basic/96:transformer,transformer,bottleneck"


@pytest.mark.parametrize("key, message", [
    ("", "needs 3 stages separated by '/', got 1"),
    (STAGE0 + "/48:bottleneck,transformer,basic", "needs 3 stages separated by '/', got 2"),
    (EXAMPLE_KEY + "/96:basic", "needs 3 stages separated by '/', got 4"),
    ("24-basic,transformer" + REST, "stage 0 of .* must read 'width:type,type,...'"),
    ("25:basic,transformer" + REST, r"width '25' of stage 0 .* is not one of \[16, 24, 32\]"),
    ("024:basic,transformer" + REST, "width '024' of stage 0"),
    (" 24:basic,transformer" + REST, "width ' 24' of stage 0"),
    (STAGE0 + "/48:bottleneck,transformer,basic/96:", "unknown block type '' in stage 2"),
    (STAGE0 + "/48:bottleneck,,basic/96:transformer,transformer,bottleneck",
     "unknown block type '' in stage 1"),
    ("24:basic,conv" + REST, "unknown block type 'conv' in stage 0 .*; known: basic, "),
    ("24:basic,Transformer" + REST, "unknown block type 'Transformer'"),
    ("24:basic,transformer,basic,basic" + REST,
     r"stage 1 of .* starts at block 4; it must start at one of \[1, 2, 3\]"),
    (STAGE0 + "/48:basic/96:basic,basic,basic,basic,basic",
     r"stage 2 of .* starts at block 3; it must start at one of \[4, 5, 6, 7\]"),
    (STAGE0 + "/48:basic,basic/96:basic", "has 5 blocks, the space has 8"),
    (EXAMPLE_KEY + ",basic", "has 9 blocks, the space has 8"),
])
def test_malformed_keys_give_precise_errors(key, message):
    space = HybridSpace()
    with pytest.raises(ValueError, match=message):
        space.from_key(key)
    with pytest.raises(ValueError, match=message):
        space.validate(key)


def test_from_key_rejects_a_non_string():
    with pytest.raises(ValueError, match="must be a string"):
        HybridSpace().from_key(123)


def _with(**fields):
    return {**EXAMPLE, **fields}


@pytest.mark.parametrize("arch, message", [
    ({k: v for k, v in EXAMPLE.items() if k != "widths"}, "a hybrid architecture is"),
    ({**EXAMPLE, "extra": 1}, "a hybrid architecture is"),
    (_with(downsample=[True, 5]), r"downsample\[0\] = True is not one of \[1, 2, 3\]"),
    (_with(downsample=[2, 3]), r"downsample\[1\] = 3 is not one of \[4, 5, 6, 7\]"),
    (_with(downsample=(2, 5)), "field 'downsample' must be a list of 2 values"),
    (_with(widths=[24.0, 48, 96]), r"widths\[0\] = 24.0 is not one of"),
    (_with(widths=[24, 48, 128]), r"widths\[2\] = 128 is not one of \[64, 96\]"),
    (_with(blocks=EXAMPLE["blocks"][:7]), "field 'blocks' must be a list of 8 values"),
    (_with(blocks=[*EXAMPLE["blocks"][:7], None]), r"blocks\[7\] = None is not one of"),
    (_with(blocks=[*EXAMPLE["blocks"][:7], ["basic"]]), r"blocks\[7\] = \['basic'\]"),
])
def test_malformed_architectures_give_value_errors(arch, message):
    space = HybridSpace(widths=[[16, 24, 32], [32, 48, 64], [64, 96]])
    with pytest.raises(ValueError, match=message):
        space.validate(arch)
    with pytest.raises(ValueError):
        space.params(arch)
    with pytest.raises(ValueError):
        space.flops(arch)


@pytest.mark.parametrize("args, field", [
    ({"num_classes": 0}, "num_classes"),
    ({"input_channels": True}, "input_channels"),
    ({"input_size": -8}, "input_size"),
    ({"blocks": 2}, "blocks"),
    ({"blocks": 8.0}, "blocks"),
    ({"head_dim": 0}, "head_dim"),
    ({"mlp_ratio": 1.5}, "mlp_ratio"),
    ({"stem_stride": 3}, "stem_stride"),
    ({"stem_stride": True}, "stem_stride"),
    ({"widths": [[16, 32]]}, "widths"),
    ({"widths": "16"}, "widths"),
    ({"widths": [[16], []]}, "widths[1]"),
    ({"widths": [[16], [12]]}, "widths[1]"),
    ({"widths": [[16], [0]]}, "widths[1]"),
    ({"widths": [[16, 16], [32]]}, "widths[0]"),
    ({"widths": [[16], [24]], "head_dim": 16}, "widths[1]"),
])
def test_space_args_are_validated(args, field):
    with pytest.raises(ArgumentError) as info:
        HybridSpace(**args)
    assert info.value.field == field  # the spec alone prefixes space_args.


# ---- the cost model against the built network ----------------------------------------------
def _measured(space: HybridSpace, arch: dict) -> tuple[int, int]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = space.build(arch).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *space.input_shape()))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops()


def test_params_and_flops_of_a_tiny_network_by_hand():
    space = HybridSpace(num_classes=2, input_channels=1, input_size=4, blocks=2,
                        widths=[[8], [16]], mlp_ratio=1)
    arch = {"blocks": ["basic", "transformer"], "downsample": [1], "widths": [8, 16]}
    # stem 88, basic 1184, transformer 1184 (merge) + 160 + 32 + 1088 + 32 + 544, head 32 + 34
    assert space.params(arch) == 4378
    # MACs: stem 288 (2x2), basic 4608 (2x2), transformer 2864 (1x1, 1 token), linear 32
    assert space.flops(arch) == 2 * 7792
    assert _measured(space, arch) == (4378, 2 * 7792)


@pytest.mark.integration
@pytest.mark.parametrize("args", [
    {}, DIGITS, {**DIGITS, "stem_stride": 1, "num_classes": 7},
    {"input_size": 28, "input_channels": 1, "blocks": 6, "widths": [[16], [32], [48], [64]]},
    {"input_size": 7, "head_dim": 16, "mlp_ratio": 2, "widths": [[16, 32], [48, 64]]},
])
def test_params_and_flops_are_exact_on_sampled_architectures(args):
    space = HybridSpace(**args)
    rng = np.random.default_rng(7)
    counts = space.choice_counts()
    archs = [space.from_dna([c - 1 for c in counts])] + [space.sample(rng) for _ in range(6)]
    for arch in archs:
        assert _measured(space, arch) == (space.params(arch), space.flops(arch)), \
            space.key(arch)


def test_attention_cost_grows_with_the_square_of_the_tokens():
    """Only the attention matmuls are quadratic in the tokens: 2 x tokens^2 x width MACs."""
    small, large = HybridSpace(input_size=16), HybridSpace(input_size=32)
    conv = {"blocks": ["basic"] * 8, "downsample": [1, 4], "widths": [16, 32, 64]}
    attn = {**conv, "blocks": ["transformer"] + ["basic"] * 7}
    extra = {s: s.flops(attn) - s.flops(conv) for s in (small, large)}
    # the first block runs on 8x8 = 64 (small) or 16x16 = 256 (large) tokens of width 16
    linear_small, linear_large = (extra[s] - 2 * 2 * t * t * 16 for s, t in
                                  ((small, 64), (large, 256)))
    assert linear_large == 4 * linear_small
    assert extra[large] > 4 * extra[small]


# ---- torch behaviour -------------------------------------------------------------------------
def test_attention_matches_torch_scaled_dot_product_attention():
    import torch

    from search_spaces.layers.hybrid_net import Attention

    torch.manual_seed(0)
    attn = Attention(32, 8).eval()
    x = torch.randn(2, 10, 32)
    q, k, v = attn.qkv(x).reshape(2, 10, 3, 4, 8).permute(2, 0, 3, 1, 4)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    expected = attn.proj(expected.transpose(1, 2).reshape(2, 10, 32))
    with torch.no_grad():
        assert torch.allclose(attn(x), expected, atol=1e-5)


def test_network_runs_on_other_input_sizes():
    """The convolutional position encoding has no fixed token count."""
    import torch

    space = HybridSpace()
    model = space.build(space.from_dna([2] * 8 + [0, 0, 0, 0, 0])).eval()
    with torch.no_grad():
        for side in (20, 33, 64):
            assert model(torch.randn(1, 3, side, side)).shape == (1, 10)


@pytest.mark.integration
@pytest.mark.parametrize("args, seed", [({}, 1), ({}, 2), (DIGITS, 3)])
def test_onnx_export_agrees_with_torch(args, seed):
    import onnxruntime as ort
    import torch

    space = HybridSpace(**args)
    rng = np.random.default_rng(seed)
    arch = space.sample(rng)
    arch["blocks"][int(rng.integers(space.blocks))] = "transformer"  # at least one
    torch.manual_seed(seed)
    model = space.build(arch)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        model(torch.randn(4, *space.input_shape()))
    model.eval()
    x = torch.randn(2, *space.input_shape())
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buffer, dynamo=False)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert got.shape == expected.shape == (2, 10)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_every_block_type_is_reachable_and_built():
    from search_spaces.layers.hybrid_net import BasicBlock, Bottleneck, TransformerBlock

    space = HybridSpace()
    arch = {"blocks": ["basic", "bottleneck", "transformer"] * 2 + ["basic", "transformer"],
            "downsample": [3, 6], "widths": [16, 32, 64]}
    assert set(arch["blocks"]) == set(BLOCK_TYPES)
    kinds = [type(b) for b in space.build(arch).blocks]
    assert kinds == [BasicBlock, Bottleneck, TransformerBlock] * 2 + [BasicBlock,
                                                                      TransformerBlock]
