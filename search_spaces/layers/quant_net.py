"""Torch modules of the `quant` space: fusable conv-BN-act blocks with fake quantization.

Fake quantization is written in plain torch ops (round, clamp, amax, where) with the
straight-through estimator `x + (q - x).detach()`, so the trainable model exports to ONNX
and FlopCounterMode sees only its convolutions and the classifier.

- Weights: symmetric, per output channel, at the block's searched bit-width (2, 4 or 8),
  scale = max|w| / (2^(b-1) - 1). Attached as a `torch.nn.utils.parametrize`
  parametrization, so the conv stays a plain `nn.Conv2d` that eager-mode fusion recognises.
  The stem and the classifier are kept at 8 bits (the usual first/last layer rule).
- Activations: per tensor, after every activation function (unsigned) and on each block
  output (signed where the tensor can be negative), at the block's searched activation
  bit-width (2, 4 or 8); the network input and the stem output at 8 bits. The range of a
  ReLU6 output is fixed to [0, 6]; other ranges follow an exponential moving average of the
  batch maximum, kept in buffers.
- Every conv/linear records `w_bits` (its weight bit-width) and `in_bits` (the bit-width of
  the activation it reads), from which `bitops` are counted; see `bitops_of_model`.
- BN is not folded during training; `to_int8` folds it and requantizes the (already
  fake-quantized) weights to int8 per channel, so a 2-bit layer stays exactly ternary and
  4/8-bit layers are approximated within half an int8 step.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "relu6": nn.ReLU6}
ACT_BITS = 8
EDGE_BITS = 8  # weights of the stem and the classifier


# ---- fake quantization ---------------------------------------------------------------------
def fake_quantize(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Round `x / scale` onto the integer grid [qmin, qmax]; the gradient passes straight
    through (identity), as in the STE of Bengio et al. 2013."""
    q = torch.clamp(torch.round(x / scale), qmin, qmax) * scale
    return x + (q - x).detach()


class WeightFakeQuant(nn.Module):
    """Parametrization: symmetric per-output-channel fake quantization of a weight."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        qmax = 2 ** (self.bits - 1) - 1
        dims = tuple(range(1, w.dim()))
        scale = w.detach().abs().amax(dim=dims, keepdim=True).clamp_min(1e-8) / qmax
        return fake_quantize(w, scale, -qmax, qmax)


class ActFakeQuant(nn.Module):
    """Per-tensor fake quantization of an activation.

    `fixed_max` pins the range (ReLU6 -> 6); otherwise the range is a moving average of
    the batch maximum (of |x| when `signed`), updated in training. Before the first
    training batch the module falls back to the current maximum, chosen with `torch.where`
    so that tracing (ONNX export) needs no Python branch on a tensor.
    """

    def __init__(self, signed: bool, fixed_max: float | None = None, bits: int = ACT_BITS,
                 momentum: float = 0.1) -> None:
        super().__init__()
        self.signed = signed
        self.fixed_max = fixed_max
        self.bits = bits
        self.momentum = momentum
        self.register_buffer("running_max", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def _range(self, x: torch.Tensor) -> torch.Tensor:
        current = (x.detach().abs() if self.signed else x.detach()).amax()
        if self.training:
            with torch.no_grad():
                ema = (1 - self.momentum) * self.running_max + self.momentum * current
                self.running_max.copy_(torch.where(self.initialized, ema, current))
                self.initialized.fill_(True)
            return self.running_max.clone()
        return torch.where(self.initialized, self.running_max, current)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.signed:
            qmin, qmax = -(2 ** (self.bits - 1) - 1), 2 ** (self.bits - 1) - 1
        else:
            qmin, qmax = 0, 2**self.bits - 1
        top = (torch.full((), self.fixed_max, device=x.device) if self.fixed_max is not None
               else self._range(x))
        return fake_quantize(x, top.clamp_min(1e-8) / qmax, qmin, qmax)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, fixed_max={self.fixed_max}"


def act_quant(fake_quant: bool, signed: bool, act: str | None = None,
              bits: int = ACT_BITS) -> nn.Module:
    if not fake_quant:
        return nn.Identity()
    return ActFakeQuant(signed, fixed_max=6.0 if act == "relu6" else None, bits=bits)


def quantize_weight(module: nn.Module, bits: int, fake_quant: bool,
                    in_bits: int = ACT_BITS) -> nn.Module:
    """Attach the weight fake quantization; record `w_bits` and `in_bits` (the bit-width of
    the input activation) on the module for the BitOPs count."""
    if fake_quant:
        parametrize.register_parametrization(module, "weight", WeightFakeQuant(bits))
    module.w_bits, module.in_bits = bits, in_bits
    return module


# ---- blocks --------------------------------------------------------------------------------
class ConvBNAct(nn.Sequential):
    """conv -> BN [-> ReLU/ReLU6 -> activation fake quant]: the fusable unit.

    The children are named `conv`, `bn`, `act` so that `fusion_groups` can list them.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, act: str | None,
                 bits: int, fake_quant: bool, groups: int = 1, in_bits: int = ACT_BITS,
                 out_bits: int = ACT_BITS) -> None:
        conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2,
                         groups=groups, bias=False)
        parts: list[tuple[str, nn.Module]] = [
            ("conv", quantize_weight(conv, bits, fake_quant, in_bits)),
            ("bn", nn.BatchNorm2d(c_out))]
        if act is not None:
            parts += [("act", ACTIVATIONS[act]()),
                      ("fq", act_quant(fake_quant, False, act, out_bits))]
        super().__init__(OrderedDict(parts))


class DepthwiseSeparable(nn.Sequential):
    """k x k depthwise conv-BN-act, then 1 x 1 pointwise conv-BN-act."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, act: str, bits: int,
                 fake_quant: bool, in_bits: int = ACT_BITS, act_bits: int = ACT_BITS) -> None:
        super().__init__(OrderedDict([
            ("dw", ConvBNAct(c_in, c_in, kernel, stride, act, bits, fake_quant, groups=c_in,
                             in_bits=in_bits, out_bits=act_bits)),
            ("pw", ConvBNAct(c_in, c_out, 1, 1, act, bits, fake_quant, in_bits=act_bits,
                             out_bits=act_bits)),
        ]))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand-BN-act, kxk depthwise-BN-act, 1x1 project-BN, plus the
    identity when shapes allow. The add is a `FloatFunctional` so eager-mode quantization
    can observe and convert it."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, act: str, bits: int,
                 fake_quant: bool, expand: int, in_bits: int = ACT_BITS,
                 act_bits: int = ACT_BITS) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = ConvBNAct(c_in, hidden, 1, 1, act, bits, fake_quant, in_bits=in_bits,
                                out_bits=act_bits)
        self.dw = ConvBNAct(hidden, hidden, kernel, stride, act, bits, fake_quant, groups=hidden,
                            in_bits=act_bits, out_bits=act_bits)
        self.project = ConvBNAct(hidden, c_out, 1, 1, None, bits, fake_quant, in_bits=act_bits)
        self.residual = stride == 1 and c_in == c_out
        if self.residual:
            self.skip_add = torch.ao.nn.quantized.FloatFunctional()
        self.out_fq = act_quant(fake_quant, True, bits=act_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        if self.residual:
            y = self.skip_add.add(x, y)
        return self.out_fq(y)


def make_block(op: str, c_in: int, c_out: int, kernel: int, stride: int, act: str, bits: int,
               fake_quant: bool, in_bits: int = ACT_BITS, act_bits: int = ACT_BITS
               ) -> nn.Module:
    """One searched block: weights at `bits`; it reads `in_bits` activations (the previous
    block's output) and quantizes its own activations and output at `act_bits`."""
    if op == "conv":
        return ConvBNAct(c_in, c_out, kernel, stride, act, bits, fake_quant, in_bits=in_bits,
                         out_bits=act_bits)
    if op == "dwsep":
        return DepthwiseSeparable(c_in, c_out, kernel, stride, act, bits, fake_quant,
                                  in_bits=in_bits, act_bits=act_bits)
    if op.startswith("ir") and op[2:].isdigit():
        return InvertedResidual(c_in, c_out, kernel, stride, act, bits, fake_quant,
                                expand=int(op[2:]), in_bits=in_bits, act_bits=act_bits)
    raise ValueError(f"unknown quant-space operation {op!r}")


class QuantNetwork(nn.Module):
    """input fake quant -> 3x3 stem -> searched blocks -> global pool -> linear."""

    def __init__(self, layers: list[dict[str, Any]], strides: list[int], input_channels: int,
                 stem_width: int, num_classes: int, fake_quant: bool = True) -> None:
        super().__init__()
        self.fake_quant = fake_quant
        self.input_fq = act_quant(fake_quant, True)
        self.stem = ConvBNAct(input_channels, stem_width, 3, 1, "relu", EDGE_BITS, fake_quant)
        blocks = []
        c, in_bits = stem_width, ACT_BITS
        for layer, stride in zip(layers, strides, strict=True):
            act_bits = layer.get("abits", ACT_BITS)
            blocks.append(make_block(layer["op"], c, layer["width"], layer["kernel"], stride,
                                     layer["act"], layer["bits"], fake_quant, in_bits, act_bits))
            c, in_bits = layer["width"], act_bits
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        # the pooled features are counted as 8-bit input (the INT8 runtime requantizes there)
        self.classifier = quantize_weight(nn.Linear(c, num_classes), EDGE_BITS, fake_quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(self.input_fq(x)))
        return self.classifier(self.flatten(self.pool(x)))


# ---- INT8 deployment -----------------------------------------------------------------------
def quantized_engine() -> str:
    """The first of x86 / fbgemm / qnnpack that this torch build supports."""
    supported = torch.backends.quantized.supported_engines
    for engine in ("x86", "fbgemm", "qnnpack"):
        if engine in supported:
            return engine
    raise RuntimeError(f"no quantized engine among {supported}")


def strip_fake_quant(model: nn.Module) -> nn.Module:
    """In place: bake the fake-quantized weights into plain parameters and replace every
    activation fake quant with an identity. The result is the plain FP32 network."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight"):
            _own_parametrized_class(module)
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    for name, module in list(model.named_modules()):
        if isinstance(module, ActFakeQuant):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, nn.Identity())
    if isinstance(model, QuantNetwork):
        model.fake_quant = False
    return model


def _own_parametrized_class(module: nn.Module) -> None:
    """Give a parametrized module a class of its own.

    `register_parametrization` swaps a module's class for a generated `Parametrized<Cls>`
    holding the `weight` property, and `copy.deepcopy` keeps that class, so a model and its
    copies share it. `remove_parametrizations` deletes the property from the class, which
    would strip `weight` from every other module of the class (the caller's model when
    `to_int8` strips its copy). A private clone of the class makes the removal local.
    """
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


def fusion_groups(model: nn.Module, prefix: str = "") -> list[list[str]]:
    """Names to pass to `fuse_modules`: conv+bn(+relu) of every `ConvBNAct`.

    ReLU6 has no eager-mode fused kernel, so it stays a separate (quantized) module.
    """
    groups = []
    for name, module in model.named_modules(prefix=prefix.rstrip(".")):
        if isinstance(module, ConvBNAct):
            group = [f"{name}.conv", f"{name}.bn"]
            if isinstance(getattr(module, "act", None), nn.ReLU):
                group.append(f"{name}.act")
            groups.append(group)
    return groups


def to_int8(model: nn.Module, calibration: torch.Tensor) -> nn.Module:
    """A real INT8 copy of `model` with eager-mode `torch.ao.quantization`.

    Steps: copy, strip fake quantization, fuse conv-BN(-ReLU), wrap in Quant/DeQuant stubs,
    prepare with the engine's default static qconfig (per-channel int8 weights, histogram
    observers for activations), calibrate on `calibration`, convert. Sets
    `torch.backends.quantized.engine` (process-wide) to the engine used.
    """
    from torch.ao import quantization as tq

    engine = quantized_engine()
    torch.backends.quantized.engine = engine
    float_model = strip_fake_quant(copy.deepcopy(model)).eval()
    tq.fuse_modules(float_model, fusion_groups(float_model), inplace=True)
    wrapped = tq.QuantWrapper(float_model).eval()
    wrapped.qconfig = tq.get_default_qconfig(engine)
    tq.prepare(wrapped, inplace=True)
    with torch.no_grad():
        wrapped(calibration)
    tq.convert(wrapped, inplace=True)
    return wrapped.eval()


# ---- BitOPs of a built network (the analytic count's cross-check) --------------------------
def bitops_of_model(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """sum over convs/linears of MACs x weight bits x input-activation bits, counted by
    running one sample through `model` with hooks (each module's `w_bits` and `in_bits`)."""
    total = [0]

    def hook(module: nn.Module, inputs: Any, out: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            macs = out[0].numel() * (module.in_channels // module.groups) * k
        else:
            macs = module.in_features * module.out_features
        total[0] += macs * module.w_bits * module.in_bits

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return total[0]


# ---- packed low-bit weights ----------------------------------------------------------------
PACKED_FORMAT = "nas-quant-packed-1"


def weight_codes(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(integer codes in [-(2^(b-1)-1), 2^(b-1)-1], per-output-channel float32 scales) of a
    weight, exactly as `WeightFakeQuant` rounds it."""
    qmax = 2 ** (bits - 1) - 1
    dims = tuple(range(1, w.dim()))
    scale = w.detach().abs().amax(dim=dims, keepdim=True).clamp_min(1e-8) / qmax
    codes = torch.clamp(torch.round(w.detach() / scale), -qmax, qmax).to(torch.int16)
    return codes, scale.flatten().float()


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed `bits`-bit codes as bytes (uint8): each code offset by 2^(b-1) to an unsigned
    b-bit field, 8 // b fields per byte, the first in the low bits; the last byte padded
    with zeros. 8-bit codes take a byte each."""
    import numpy as np

    if bits not in (2, 4, 8):
        raise ValueError(f"bits must be 2, 4 or 8, got {bits}")
    fields = (codes.flatten().to(torch.int32) + 2 ** (bits - 1)).numpy().astype(np.uint8)
    per_byte = 8 // bits
    padded = np.zeros(-(-fields.size // per_byte) * per_byte, dtype=np.uint8)
    padded[:fields.size] = fields
    groups = padded.reshape(-1, per_byte).astype(np.uint16)
    shifts = (np.arange(per_byte, dtype=np.uint16) * bits)
    packed = (groups << shifts).sum(axis=1).astype(np.uint8)
    return torch.from_numpy(packed)


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of `pack_codes`: the first `count` signed codes (int16)."""
    import numpy as np

    per_byte = 8 // bits
    data = packed.numpy().astype(np.uint16)[:, None]
    shifts = (np.arange(per_byte, dtype=np.uint16) * bits)[None, :]
    fields = ((data >> shifts) & (2**bits - 1)).reshape(-1)[:count]
    return torch.from_numpy(fields.astype(np.int16) - 2 ** (bits - 1))


def pack_model(model: QuantNetwork) -> dict[str, Any]:
    """The low-bit weights of a fake-quantized network, packed (`pack_codes`) with their
    per-channel scales, and the rest of its state (BN, biases, activation ranges) as is.
    `load_packed_state` restores a network computing the same outputs."""
    if not model.fake_quant:
        raise ValueError("pack_model needs the fake-quantized model (build(arch))")
    weights: dict[str, Any] = {}
    skip = set()
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            original = module.parametrizations.weight.original
            codes, scale = weight_codes(original, module.w_bits)
            weights[name] = {"bits": module.w_bits, "shape": list(original.shape),
                             "scale": scale, "data": pack_codes(codes, module.w_bits)}
            skip.add(f"{name}.parametrizations.weight.original")
    state = {k: v for k, v in model.state_dict().items() if k not in skip}
    return {"format": PACKED_FORMAT, "weights": weights, "state": state}


def load_packed_state(model: QuantNetwork, packed: dict[str, Any]) -> QuantNetwork:
    """Load `pack_model`'s output into a network of the same architecture (in place)."""
    if not isinstance(packed, dict) or packed.get("format") != PACKED_FORMAT:
        raise ValueError(f"not a packed quant model (format {PACKED_FORMAT!r})")
    state = dict(packed["state"])
    for name, entry in packed["weights"].items():
        shape = tuple(entry["shape"])
        count = int(torch.Size(shape).numel())
        codes = unpack_codes(entry["data"], int(entry["bits"]), count).reshape(shape)
        scale = entry["scale"].reshape(-1, *([1] * (len(shape) - 1)))
        state[f"{name}.parametrizations.weight.original"] = codes.float() * scale
    model.load_state_dict(state)
    return model


def bake_weights(model: nn.Module) -> nn.Module:
    """A copy of `model` whose weights are their fake-quantized values as plain parameters
    (the network the bit-widths make), activation fake quantization kept. Training-free
    proxies of the quantized network (EMQ) read these weights; `model` is left intact."""
    baked = copy.deepcopy(model)
    for module in list(baked.modules()):
        if parametrize.is_parametrized(module, "weight"):
            _own_parametrized_class(module)
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return baked
