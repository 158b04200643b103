"""The elastic MBConv space: conformance, keys, the exact cost model, ONNX, and the
weight-sharing supernet (sliced forward == extracted subnet; a step touches only its slices)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import search_spaces
from search_spaces import check_space
from search_spaces.layers.mbconv_net import MBConvNet, MBConvSupernet
from search_spaces.mbconv import MBConvSpace, scale_channels
from search_spaces.validation import ArgumentError

# one block per stage listed: depths 2, 3, 4, 2 (the default space has 4 stages of <= 4 blocks)
KEY = "r32|w0.75|k3e3,k5e4|k7e6,k3e4,k5e3|k3e3,k3e3,k3e3,k3e3|k5e6,k7e3"
DIGITS = {"input_channels": 1, "input_size": 8, "num_classes": 10}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _samples(space: MBConvSpace, n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [space.min_arch(), space.max_arch()] + [space.sample(rng) for _ in range(n)]


# ---- conformance ------------------------------------------------------------------------------
@pytest.mark.integration
def test_default_space_passes_check_space():
    check_space(MBConvSpace(), n=10)


@pytest.mark.integration
def test_digits_space_passes_check_space():
    check_space(MBConvSpace(**DIGITS), n=5, build_n=3)


@pytest.mark.integration
def test_small_space_size_is_exact_by_enumeration():
    """One stage and two resolutions: the product of choice counts (78,732) is small enough for
    check_space to count the canonical DNAs and enumerate() them."""
    space = MBConvSpace(stage_channels=[16], stage_strides=[2], resolutions=[24, 32])
    assert int(np.prod(space.choice_counts())) == 2 * 2 * 3 * 9 ** 4 == 78_732
    assert space.size() == 2 * 2 * (9 ** 2 + 9 ** 3 + 9 ** 4) == 29_484
    check_space(space, n=3, build_n=3)


def test_default_size_and_decisions():
    space = MBConvSpace()
    assert space.size() == 2 * (9 ** 2 + 9 ** 3 + 9 ** 4) ** 4 == 5_903_854_427_505_762
    assert len(space.choice_counts()) == 2 + 4 * 9
    assert space.describe()["size"] == space.size()


# ---- arch JSON and keys -------------------------------------------------------------------------
def test_key_round_trip_and_canonical_form():
    space = MBConvSpace()
    arch = space.from_key(KEY)
    assert arch["resolution"] == 32 and arch["width"] == 0.75
    assert [s["depth"] for s in arch["stages"]] == [2, 3, 4, 2]
    assert arch["stages"][0]["blocks"] == [{"kernel": 3, "expand": 3}, {"kernel": 5, "expand": 4},
                                           {"kernel": 3, "expand": 3}, {"kernel": 3, "expand": 3}]
    assert space.key(arch) == KEY
    # the settings of inactive blocks are irrelevant: validate() resets them, keys ignore them
    loose = space.from_key(KEY)
    loose["stages"][0]["blocks"][3] = {"kernel": 7, "expand": 6}
    assert space.key(loose) == KEY
    assert space.validate(loose) == arch
    assert space.params(loose) == space.params(arch) and space.flops(loose) == space.flops(arch)
    vec = space.encode(loose)
    assert vec.sum() == 2 + sum(1 + 2 * d for d in (2, 3, 4, 2))  # only active decisions marked
    assert space.key(space.max_arch()) == "r32|w1.0|" + "|".join([",".join(["k7e6"] * 4)] * 4)
    assert space.key(space.min_arch()) == "r32|w0.75|" + "|".join(["k3e3,k3e3"] * 4)


def test_mutating_a_depth_down_resets_the_dropped_blocks():
    space = MBConvSpace()
    parent = space.max_arch()
    rng = np.random.default_rng(1)
    shrunk = 0
    for _ in range(300):
        child = space.mutate(parent, rng)
        for stage in child["stages"]:
            if stage["depth"] < 4:
                shrunk += 1
                dropped = stage["blocks"][stage["depth"]:]
                assert all(b == {"kernel": 3, "expand": 3} for b in dropped)
    assert shrunk > 0


@pytest.mark.parametrize("key, message", [
    ("", "has 6 fields separated by '|'"),
    (KEY + "|k3e3,k3e3", "has 6 fields"),
    (KEY.replace("r32", "32"), "must be 'r<resolution>'"),
    (KEY.replace("r32", "r28"), r"resolution in \[32\]"),
    (KEY.replace("w0.75", "w.75"), "must be 'w<width>'"),
    (KEY.replace("w0.75", "0.75"), "must be 'w<width>'"),
    (KEY.replace("|k5e6,k7e3", "|k5e6"), "lists 1 blocks; its depth must be one of"),
    (KEY.replace("|k5e6,k7e3", "|k5e6,k7e3,k3e3,k3e3,k3e3"), "lists 5 blocks"),
    (KEY.replace("k5e6,k7e3", "k5e6,k9e3"), "block 1 of stage 3 .* got 'k9e3'"),
    (KEY.replace("k5e6,k7e3", "k5e6,k7e5"), "got 'k7e5'"),
    (KEY.replace("k5e6,k7e3", "k5e6,k7"), "got 'k7'"),
    (KEY.replace("k5e6,k7e3", "k5e6,7e3"), "got '7e3'"),
    (KEY.replace("k5e6,k7e3", "k5e6,k07e3"), "got 'k07e3'"),
    (KEY.replace("k5e6,k7e3", "k5e6,,k7e3"), "block 1 of stage 3 .* got ''"),
    (KEY + " ", "got 'k7e3 '"),
])
def test_malformed_keys_give_precise_errors(key, message):
    with pytest.raises(ValueError, match=message):
        MBConvSpace().from_key(key)


def _with(arch, path, value):
    import copy

    arch = copy.deepcopy(arch)
    node = arch
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return arch


@pytest.mark.parametrize("path, value, message", [
    (("resolution",), 28, r"resolution must be one of \[32\]"),
    (("width",), True, "width must be one of"),
    (("width",), "1.0", "width must be one of"),
    (("stages",), [], "list of 4 stages"),
    (("stages", 2, "depth"), 5, r"depth of stage 2 must be one of \[2, 3, 4\]"),
    (("stages", 1, "blocks"), [], "stage 1 must list 4 blocks"),
    (("stages", 1, "blocks", 3), {"kernel": 3}, "block 3 of stage 1 must be"),
    (("stages", 1, "blocks", 3, "kernel"), 4, "kernel of block 3 of stage 1 must be one of"),
    (("stages", 0, "blocks", 0, "expand"), 3.5, "expand of block 0 of stage 0"),
    (("stages", 0), {"depth": 2}, "stage 0 must be"),
])
def test_malformed_architectures_give_value_errors(path, value, message):
    space = MBConvSpace()
    with pytest.raises(ValueError, match=message):
        space.validate(_with(space.from_key(KEY), path, value))


@pytest.mark.parametrize("args, field", [
    ({"num_classes": 0}, "num_classes"),
    ({"input_channels": 2.0}, "input_channels"),
    ({"input_size": True}, "input_size"),
    ({"stem_channels": -8}, "stem_channels"),
    ({"head_channels": None}, "head_channels"),
    ({"stage_channels": []}, "stage_channels"),
    ({"stage_channels": [16, 0]}, "stage_channels"),
    ({"stage_strides": [2, 2, 2]}, "stage_strides"),
    ({"stage_strides": [2, 2, 3, 1]}, "stage_strides"),
    ({"depths": [3, 2]}, "depths"),
    ({"depths": [0, 2]}, "depths"),
    ({"kernel_sizes": [3, 4]}, "kernel_sizes"),
    ({"expand_ratios": []}, "expand_ratios"),
    ({"expand_ratios": [3, 3]}, "expand_ratios"),
    ({"width_mults": [1.0, 0.5]}, "width_mults"),
    ({"width_mults": [0, 1.0]}, "width_mults"),
    ({"resolutions": [32, 24]}, "resolutions"),
    ({"resolutions": "32"}, "resolutions"),
])
def test_space_args_are_validated(args, field):
    with pytest.raises(ArgumentError) as info:
        MBConvSpace(**args)
    assert info.value.field == field  # the spec alone prefixes space_args.


# ---- the network and its cost model -------------------------------------------------------
def _counted_flops(model: torch.nn.Module, shape: tuple[int, ...]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(torch.zeros(1, *shape))
    return counter.get_total_flops()


@pytest.mark.integration
@pytest.mark.parametrize("args, n", [
    ({}, 4),
    (DIGITS, 3),
    ({"resolutions": [16, 24, 32], "width_mults": [0.5, 1.0, 1.25]}, 3),
])
def test_params_and_flops_are_exact(args, n):
    space = MBConvSpace(**args)
    for arch in _samples(space, n, seed=5):
        model = space.build(arch)
        assert isinstance(model, MBConvNet)
        assert space.params(arch) == sum(p.numel() for p in model.parameters()), space.key(arch)
        assert space.flops(arch) == _counted_flops(model, space.input_shape(arch)), space.key(arch)


def test_width_rounding_and_cost_range():
    assert [scale_channels(c, 0.75) for c in (16, 24, 32, 48, 64, 128)] == [16, 16, 24, 40, 48, 96]
    assert scale_channels(4, 0.5) == 8
    space = MBConvSpace()
    lo, hi = space.min_arch(), space.max_arch()
    assert (space.params(lo), space.params(hi)) == (62_986, 557_962)
    assert (space.flops(lo), space.flops(hi)) == (7_701_632, 55_151_104)
    for arch in _samples(space, 20):
        assert space.params(lo) <= space.params(arch) <= space.params(hi)
        assert space.flops(lo) <= space.flops(arch) <= space.flops(hi)


@pytest.mark.parametrize("size, sides", [
    (32, [16, 8, 4, 4]), (8, [4, 2, 1, 1]), (3, [2, 1, 1, 1]), (1, [1, 1, 1, 1]),
])
def test_downsampling_never_goes_below_one_pixel(size, sides):
    space = MBConvSpace(input_size=size)
    spec = space.net_spec(space.max_arch())
    assert [b.side_out for b in spec.blocks if b.index == 3] == sides
    assert [b.stride for b in spec.blocks if b.index == 0] == \
        [2 if s < p else 1 for s, p in zip(sides, [size, *sides[:-1]], strict=True)]
    out = space.build(space.min_arch())(torch.randn(2, 3, size, size))
    assert out.shape == (2, 10)


def test_resolution_is_a_decision_with_its_own_input_shape():
    space = MBConvSpace(resolutions=[24, 32])
    arch = space.from_key(KEY.replace("r32", "r24"))
    assert space.input_shape(arch) == (3, 24, 24) and space.input_shape() == (3, 32, 32)
    assert space.flops(arch) < space.flops(space.from_key(KEY)) == MBConvSpace().flops(
        MBConvSpace().from_key(KEY))
    assert space.params(arch) == space.params(space.from_key(KEY))


@pytest.mark.integration
def test_onnx_export_agrees_with_torch():
    import onnxruntime as ort

    for args, seed in (({}, 0), ({}, 1), ({**DIGITS, "resolutions": [6, 8]}, 2)):
        space = MBConvSpace(**args)
        arch = space.sample(np.random.default_rng(seed))
        torch.manual_seed(seed)
        model = space.build(arch).eval()
        x = torch.randn(2, *space.input_shape(arch))
        buffer = io.BytesIO()
        torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
        session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
        (ours,) = session.run(None, {"x": x.numpy()})
        with torch.no_grad():
            expected = model(x).numpy()
        np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.integration
def test_importing_the_space_does_not_import_torch():
    code = "import sys, search_spaces.mbconv; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(search_spaces.__file__).parents[1]).stdout
    assert out.split() == ["False"]


def test_build_rejects_options_and_invalid_archs():
    space = MBConvSpace()
    with pytest.raises(TypeError):
        space.build(space.min_arch(), channels=3)
    with pytest.raises(ValueError):
        space.build({"resolution": 32})


# ---- the supernet ------------------------------------------------------------------------------
def _supernet(space: MBConvSpace, seed: int = 0) -> MBConvSupernet:
    """A supernet with random BN affine parameters and running statistics (non-trivial)."""
    torch.manual_seed(seed)
    net = space.supernet()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
    return net


@pytest.mark.integration
@pytest.mark.parametrize("args", [{}, {**DIGITS, "resolutions": [6, 8]}])
def test_extracted_subnet_equals_the_sliced_supernet(args):
    space = MBConvSpace(**args)
    supernet = _supernet(space)
    for arch in _samples(space, 3, seed=11):
        x = torch.randn(4, *space.input_shape(arch))
        with torch.no_grad():
            supernet.eval()
            net = supernet.extract(arch)
            assert type(net) is type(space.build(arch)) and not net.training
            assert sum(p.numel() for p in net.parameters()) == space.params(arch)
            out = supernet(x, arch)
            assert out.abs().max() > 1e-2  # the comparison is not between near-zero outputs
            torch.testing.assert_close(net(x), out, atol=1e-6, rtol=1e-5)

            supernet.train()
            net = supernet.extract(arch)
            assert net.training
            torch.testing.assert_close(net(x), supernet(x, arch), atol=1e-6, rtol=1e-5)
        # both forwards updated their running statistics the same way (the supernet: a slice)
        supernet.eval()
        again = supernet.extract(arch)
        for (name, mine), theirs in zip(net.state_dict().items(), again.state_dict().values(),
                                        strict=True):
            if "running" in name:
                torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-5, msg=name)


def _used_masks(supernet: MBConvSupernet) -> dict[str, torch.Tensor]:
    """Which entries of every parameter and BN buffer the architecture KEY uses, written out
    from its definition (width 0.75: stem 16, stages 16/24/40/48, head 96)."""
    state = supernet.state_dict()
    masks = {name: torch.zeros_like(t, dtype=torch.bool) for name, t in state.items()
             if "num_batches" not in name}

    def use(prefix: str, c_out: int, c_in: int | None = None, kernel: int | None = None) -> None:
        weight = masks[f"{prefix}.conv.weight"]
        full = weight.shape[-1]
        lo = (full - (kernel or full)) // 2
        cols = slice(None) if c_in is None else slice(0, c_in)
        weight[:c_out, cols, lo:full - lo, lo:full - lo] = True
        for name in ("weight", "bias", "running_mean", "running_var"):
            masks[f"{prefix}.bn.{name}"][:c_out] = True

    use("stem", 16, 3)
    use("first.dw", 16)
    use("first.pw", 16, 16)
    c_in = 16
    stages = [(16, [(3, 3), (5, 4)]), (24, [(7, 6), (3, 4), (5, 3)]), (40, [(3, 3)] * 4),
              (48, [(5, 6), (7, 3)])]
    for s, (c_out, blocks) in enumerate(stages):
        for j, (kernel, ratio) in enumerate(blocks):
            mid = c_in * ratio
            use(f"stages.{s}.{j}.expand", mid, c_in)
            use(f"stages.{s}.{j}.depthwise", mid, None, kernel)
            use(f"stages.{s}.{j}.project", c_out, mid)
            c_in = c_out
    use("head", 96, 48)
    masks["classifier.weight"][:, :96] = True
    masks["classifier.bias"][:] = True
    return masks


def test_a_step_through_one_arch_changes_only_its_slices():
    space = MBConvSpace()
    supernet = _supernet(space).train()
    arch = space.from_key(KEY)
    masks = _used_masks(supernet)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    optimiser = torch.optim.SGD(supernet.parameters(), lr=0.5)
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    torch.nn.functional.cross_entropy(supernet(x, arch), y).backward()
    optimiser.step()
    after = supernet.state_dict()
    used_params = 0
    for name, mask in masks.items():
        changed = after[name] != before[name]
        assert not changed[~mask].any(), f"{name} changed outside the slice the arch uses"
        if mask.any():
            used_params += 1
            # (a BN bias followed only by a conv and a train-mode BN gets no gradient: the
            # batch mean cancels it, so biases are not required to move)
            if not name.endswith("bias"):
                assert changed[mask].float().mean() > 0.9, f"{name}: its used slice stayed"
    # stem, separable block (2 layers), 11 blocks (3 layers), head: 5 tensors a layer
    assert used_params == 3 * 5 + 11 * 3 * 5 + 5 + 2
    # the unused blocks (stage 0 blocks 2-3, stage 1 block 3, stage 3 blocks 2-3) are untouched
    untouched = [n for n, m in masks.items() if not m.any()]
    assert {".".join(n.split(".")[:3]) for n in untouched} == {
        f"stages.{s}.{j}" for s, j in ((0, 2), (0, 3), (1, 3), (3, 2), (3, 3))}


def test_supernet_checks_the_input_shape():
    space = MBConvSpace(resolutions=[24, 32])
    supernet = space.supernet()
    arch = space.from_key(KEY.replace("r32", "r24"))
    with pytest.raises(ValueError, match=re.escape("takes inputs of shape (3, 24, 24)")):
        supernet(torch.randn(1, 3, 32, 32), arch)
    assert supernet(torch.randn(1, 3, 24, 24), arch).shape == (1, 10)
