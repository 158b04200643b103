"""The `quant` space: conformance, keys, exact cost model, fake quantization, ONNX export and
the INT8 deployment path (eager-mode torch.ao.quantization)."""

from __future__ import annotations

import io
import statistics
import time
import warnings

import numpy as np
import pytest
import torch

from search_spaces.checks import check_space
from search_spaces.quant import BITS, QuantSpace, parse_layer_token
from search_spaces.validation import ArgumentError

DIGITS = {"num_classes": 10, "input_channels": 1, "input_size": 8}
EXAMPLE_KEY = ("ir6-k3-relu6-w16-b4-a8|conv-k5-relu-w8-b8-a4|dwsep-k3-relu-w32-b2-a8|"
               "ir3-k5-relu6-w32-b4-a2|ir6-k3-relu-w64-b8-a8|ir3-k5-relu-w64-b2-a4")
#: The same network keyed before activation bit-widths were searched (8-bit activations).
LEGACY_KEY = ("ir6-k3-relu6-w16-b4|conv-k5-relu-w8-b8|dwsep-k3-relu-w32-b2|"
              "ir3-k5-relu6-w32-b4|ir6-k3-relu-w64-b8|ir3-k5-relu-w64-b2")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _archs(space: QuantSpace, n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(n)]


def _warm_up(model: torch.nn.Module, space: QuantSpace, steps: int = 2) -> torch.nn.Module:
    """A few training-mode forwards: BN statistics and activation ranges leave their init."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(8, *space.input_shape()))
    return model.eval()


# ---- conformance -----------------------------------------------------------------------------
@pytest.mark.integration
def test_check_space_default_args():
    check_space(QuantSpace())


@pytest.mark.integration
def test_check_space_digits_shape():
    check_space(QuantSpace(**DIGITS), n=8)


# ---- arch, key, space args -------------------------------------------------------------------
def test_key_is_one_readable_token_per_block():
    space = QuantSpace()
    arch = space.from_key(EXAMPLE_KEY)
    assert arch["layers"][0] == {"op": "ir6", "kernel": 3, "act": "relu6", "width": 16,
                                 "bits": 4, "abits": 8}
    assert [layer["width"] for layer in arch["layers"]] == [16, 8, 32, 32, 64, 64]
    assert [layer["abits"] for layer in arch["layers"]] == [8, 4, 8, 2, 8, 4]
    assert space.key(arch) == EXAMPLE_KEY
    assert space.size() == (4 * 2 * 2 * 3 * 3 * 3) ** 6
    assert len(space.choice_counts()) == 6 * 6


def test_keys_stored_before_activation_bits_read_as_8_bit_activations():
    space = QuantSpace()
    arch = space.from_key(LEGACY_KEY)
    assert all(layer["abits"] == 8 for layer in arch["layers"])
    assert space.key(arch) == LEGACY_KEY.replace("|", "-a8|") + "-a8"
    with pytest.raises(ValueError, match="not canonical"):  # mixed forms stay one token each
        space.from_key(LEGACY_KEY.replace("-w16-b4", "-w016-b4"))


@pytest.mark.parametrize(("key", "message"), [
    ("ir6-k3-relu6-w16-b4-a8", "needs 6"),
    (EXAMPLE_KEY.replace("ir6-k3-relu6-w16-b4-a8", "ir6-k3-relu6-w16"), "must read"),
    (EXAMPLE_KEY.replace("-w16-b4-a8", "-w16-b4-a3"), "abits 3"),
    (EXAMPLE_KEY.replace("-w16-b4-a8", "-w16-b4-x8"), "abits"),
    (EXAMPLE_KEY.replace("-k3-relu6-w16-", "-3-relu6-w16-"), "kernel"),
    (EXAMPLE_KEY.replace("-w16-b4", "-w016-b4"), "not canonical"),
    (EXAMPLE_KEY.replace("-w16-b4", "-w16-b3"), "bits 3"),
    (EXAMPLE_KEY.replace("-w16-b4", "-w64-b4"), "width 64"),  # a stage-2 width in stage 0
    (EXAMPLE_KEY.replace("ir6-k3-relu6", "ir4-k3-relu6"), "op 'ir4'"),
    (EXAMPLE_KEY.replace("relu6-w16", "gelu-w16"), "act 'gelu'"),
    (EXAMPLE_KEY.replace("k3-relu6-w16", "k7-relu6-w16"), "kernel 7"),
    (EXAMPLE_KEY + "|", "needs 6"),
])
def test_from_key_rejects_malformed_keys_precisely(key, message):
    with pytest.raises(ValueError, match=message):
        QuantSpace().from_key(key)


def test_to_dna_rejects_lookalike_values():
    space = QuantSpace()
    arch = space.from_key(EXAMPLE_KEY)
    for field, value in (("width", 16.0), ("bits", True), ("kernel", "3"), ("abits", 8.0)):
        bad = {"layers": [dict(layer) for layer in arch["layers"]]}
        bad["layers"][0][field] = value
        with pytest.raises(ValueError, match=field):
            space.to_dna(bad)
    extra = {"layers": [dict(layer) for layer in arch["layers"]]}
    extra["layers"][1]["groups"] = 2
    with pytest.raises(ValueError, match="layer 1"):
        space.to_dna(extra)


def test_parse_layer_token_is_structural():
    assert parse_layer_token("dwsep-k5-relu-w24-b2-a4") == {
        "op": "dwsep", "kernel": 5, "act": "relu", "width": 24, "bits": 2, "abits": 4}
    assert parse_layer_token("dwsep-k5-relu-w24-b2")["abits"] == 8  # the earlier form
    with pytest.raises(ValueError, match="width"):
        parse_layer_token("dwsep-k5-relu-x24-b2-a4")


@pytest.mark.parametrize(("args", "field"), [
    ({"num_classes": 0}, "num_classes"),
    ({"input_channels": "3"}, "input_channels"),
    ({"input_size": True}, "input_size"),
    ({"input_size": 3}, "input_size"),  # 3 stages need at least 4 pixels
    ({"stages": 0}, "stages"),
    ({"layers_per_stage": -1}, "layers_per_stage"),
    ({"stem_width": 12}, "stem_width"),
    ({"widths": [8, 12]}, "widths"),
    ({"widths": [16, 8]}, "widths"),
    ({"widths": []}, "widths"),
])
def test_bad_space_args_are_named(args, field):
    with pytest.raises(ArgumentError) as info:
        QuantSpace(**args)
    assert info.value.field == field  # the spec alone prefixes space_args.


def test_widths_are_multiples_of_8_and_double_per_stage():
    space = QuantSpace(widths=[8, 24], stages=2, layers_per_stage=3)
    assert space.strides() == [1, 1, 1, 2, 1, 1]
    counts = space.choice_counts()
    assert counts == [4, 2, 2, 2, 3, 3] * 6
    archs = _archs(space, 20)
    widths = {layer["width"] for arch in archs for layer in arch["layers"]}
    assert widths <= {8, 24, 16, 48} and all(w % 8 == 0 for w in widths)


# ---- exact cost model ------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("args", [{}, DIGITS, {"input_size": 9, "stages": 2, "widths": [16]}])
def test_params_and_flops_are_exact(args):
    from torch.utils.flop_counter import FlopCounterMode

    space = QuantSpace(**args)
    archs = _archs(space, 3, seed=7) + [space.from_dna([c - 1 for c in space.choice_counts()])]
    for arch in archs:
        for fake_quant in (True, False):
            model = space.build(arch, fake_quant=fake_quant).eval()
            assert space.params(arch) == sum(p.numel() for p in model.parameters())
            counter = FlopCounterMode(display=False)
            with torch.no_grad(), counter:
                model(torch.zeros(1, *space.input_shape()))
            assert space.flops(arch) == counter.get_total_flops(), (arch, fake_quant)


@pytest.mark.parametrize(("args", "sides"), [({}, [32, 32, 16, 16, 8, 8]),
                                             (DIGITS, [8, 8, 4, 4, 2, 2])])
def test_downsampling_for_cifar_and_digits(args, sides):
    space = QuantSpace(**args)
    model = space.build(_archs(space, 1)[0]).eval()
    seen = []
    for block in model.blocks:
        block.register_forward_hook(lambda _m, _i, out: seen.append(out.shape[-1]))
    with torch.no_grad():
        out = model(torch.randn(2, *space.input_shape()))
    assert seen == sides and out.shape == (2, 10)


# ---- fake quantization -----------------------------------------------------------------------
@pytest.mark.integration
def test_weights_sit_on_the_searched_bit_grid():
    space = QuantSpace()
    for arch in _archs(space, 2, seed=3):
        model = space.build(arch)
        plain = space.build(arch, fake_quant=False)
        assert not any(hasattr(m, "parametrizations") for m in plain.modules())
        for block, layer in zip(model.blocks, arch["layers"], strict=True):
            convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
            assert convs
            for conv in convs:
                w = conv.weight.detach().flatten(1)
                levels = max(len(torch.unique(row)) for row in w)
                assert levels <= 2 ** layer["bits"] - 1, (layer, levels)
                if layer["bits"] == 2:  # ternary: {-s, 0, s} per output channel
                    assert levels <= 3
        assert set(BITS) == {2, 4, 8}


def test_fake_quant_uses_a_straight_through_gradient():
    from search_spaces.layers.quant_net import ActFakeQuant, fake_quantize

    x = torch.linspace(-1.3, 1.3, 41, requires_grad=True)
    y = fake_quantize(x, torch.tensor(0.25), -2, 2)
    assert set(torch.unique(y.detach()).tolist()) == {-0.5, -0.25, 0.0, 0.25, 0.5}
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    act = ActFakeQuant(signed=False)
    act.train()
    act(torch.tensor([0.0, 2.0]))
    act(torch.tensor([0.0, 4.0]))
    assert act.running_max.item() == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)
    act.eval()
    out = act(torch.tensor([0.0, 1.0, 10.0]))
    assert out[-1].item() == pytest.approx(2.2)  # clipped to the learned range


# ---- ONNX ------------------------------------------------------------------------------------
def _onnx_outputs(model: torch.nn.Module, x: torch.Tensor, optimize: bool) -> np.ndarray:
    import onnxruntime as ort

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, x, buffer, dynamo=False, input_names=["x"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(buffer.getvalue(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.numpy()})[0]


@pytest.mark.integration
@pytest.mark.parametrize("args", [{}, DIGITS])
def test_onnx_export_agrees_with_torch(args):
    """Fake quantization rounds, so a one-ulp change upstream can move a value by one step.
    onnxruntime's graph optimizations fold BN into the conv (other float rounding), so the
    fake-quant model is compared with the graph as exported; the plain FP32 model also with
    the optimized session."""
    space = QuantSpace(**args)
    for i, arch in enumerate(_archs(space, 2, seed=11)):
        torch.manual_seed(i)
        x = torch.randn(4, *space.input_shape())
        model = space.build(arch)
        if i:
            _warm_up(model, space)  # the first keeps its fresh state (dynamic ranges)
        model.eval()
        with torch.no_grad():
            expected = model(x).numpy()
        got = _onnx_outputs(model, x, optimize=False)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
        plain = _warm_up(space.build(arch, fake_quant=False), space)
        with torch.no_grad():
            expected = plain(x).numpy()
        np.testing.assert_allclose(_onnx_outputs(plain, x, optimize=True), expected,
                                   atol=1e-4, rtol=0)


# ---- INT8 deployment -------------------------------------------------------------------------
def _median_latency(model: torch.nn.Module, x: torch.Tensor, repeats: int = 25) -> float:
    with torch.no_grad():
        for _ in range(3):
            model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


@pytest.mark.integration
def test_int8_model_is_quantized_close_and_timed():
    import torch.ao.nn.quantized as nnq

    space = QuantSpace()
    arch = space.from_key(EXAMPLE_KEY)
    torch.manual_seed(0)
    fp32 = _warm_up(space.build(arch, fake_quant=False), space, steps=3)
    calibration = torch.randn(32, *space.input_shape())
    int8 = space.int8_model(arch, calibration, model=fp32)

    float_convs = sum(isinstance(m, torch.nn.Conv2d) for m in fp32.modules())
    qmods = [m for m in int8.modules() if isinstance(m, nnq.Conv2d | nnq.Linear)]
    assert len(qmods) == float_convs + 1
    assert all(m.weight().dtype == torch.qint8 for m in qmods)
    assert not any(type(m) in (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d)
                   for m in int8.modules())

    x = torch.randn(64, *space.input_shape())
    with torch.no_grad():
        ref, out = fp32(x), int8(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    agree = (ref.argmax(1) == out.argmax(1)).float().mean().item()
    rel_err = ((out - ref).abs().max() / ref.abs().max()).item()
    one = torch.randn(1, *space.input_shape())
    t_fp32, t_int8 = _median_latency(fp32, one), _median_latency(int8, one)
    print(f"\nINT8 vs FP32 ({EXAMPLE_KEY}): argmax agreement {agree:.3f}, max |error| "
          f"{rel_err:.4f} of max |logit|; latency batch 1, 1 thread: FP32 "
          f"{t_fp32 * 1e3:.2f} ms, INT8 {t_int8 * 1e3:.2f} ms, ratio {t_int8 / t_fp32:.2f}")
    assert agree >= 0.8
    assert rel_err < 0.1


@pytest.mark.integration
def test_int8_model_of_a_fake_quant_model_and_bad_inputs():
    space = QuantSpace(**DIGITS)
    arch = _archs(space, 1, seed=5)[0]
    calibration = torch.rand(16, *space.input_shape())
    trained = _warm_up(space.build(arch), space)
    int8 = space.int8_model(arch, calibration, model=trained)
    assert any(hasattr(m, "parametrizations") for m in trained.modules()), \
        "int8_model must not strip the caller's model"
    with torch.no_grad():
        assert int8(calibration[:3]).shape == (3, 10)
    assert space.int8_model(arch, calibration)(calibration[:1]).shape == (1, 10)
    with pytest.raises(ValueError, match="calibration"):
        space.int8_model(arch, torch.rand(4, 3, 8, 8))
    other = space.mutate(arch, np.random.default_rng(0))
    with pytest.raises(ValueError, match="architecture"):
        space.int8_model(other, calibration, model=trained)


@pytest.mark.integration
def test_int8_model_leaves_the_callers_model_intact_and_usable():
    """Issue 17 item 16: the copy that int8_model strips shared its parametrization classes
    with the caller's model, so stripping it deleted `weight` from the original."""
    space = QuantSpace(**DIGITS)
    arch = _archs(space, 1, seed=3)[0]
    calibration = torch.rand(16, *space.input_shape())
    trained = _warm_up(space.build(arch), space)
    x = torch.rand(8, *space.input_shape())
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    with torch.no_grad():
        before = trained(x)
    space.int8_model(arch, calibration, model=trained)
    space.int8_model(arch, calibration, model=trained)  # twice: the original stays usable
    with torch.no_grad():
        after = trained(x)
    assert torch.equal(before, after)
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in state.items())
    convs = [m for m in trained.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(hasattr(m, "parametrizations") for m in convs)
    # the original can still be stripped and converted itself, and trained further
    trained.train()
    trained(x).sum().backward()
    assert all(m.parametrizations.weight.original.grad is not None for m in convs)


def test_build_rejects_unknown_options():
    space = QuantSpace(**DIGITS)
    with pytest.raises(TypeError, match="widht"):
        space.build(_archs(space, 1)[0], widht=3)
