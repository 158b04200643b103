"""Quantization-friendly space with mixed-precision bit-widths (in the spirit of SpaceEvo).

Every operator is made of conv-BN-ReLU(6) units that PyTorch fuses for INT8: a plain k x k
conv, a depthwise-separable conv, or an inverted residual (expansion 3 or 6). The network
is a 3x3 stem, `stages` x `layers_per_stage` searched blocks (the first block of every stage
after the first has stride 2), global average pooling and a linear classifier.

An architecture is `{"layers": [{"op", "kernel", "act", "width", "bits"}, ...]}`, one dict
per block in network order: op in OPS, kernel in KERNELS, act in ACTIVATIONS, width (output
channels, a multiple of 8) in the stage's candidates `widths * 2**stage`, and the block's
weight bit-width in BITS (applied by fake quantization while training; activations are
fake-quantized at 8 bits, see `layers/quant_net.py`). The key joins one token per block
with '|', e.g. `ir6-k3-relu6-w16-b4|conv-k5-relu-w8-b8|...`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._base import Arch, SearchSpace, register_space
from .validation import ArgumentError, positive_int

OPS: tuple[str, ...] = ("conv", "dwsep", "ir3", "ir6")
KERNELS: tuple[int, ...] = (3, 5)
ACTIVATIONS: tuple[str, ...] = ("relu", "relu6")
BITS: tuple[int, ...] = (2, 4, 8)
FIELDS: tuple[str, ...] = ("op", "kernel", "act", "width", "bits")
_EXPAND = {"ir3": 3, "ir6": 6}


def _width_candidates(widths: Any) -> tuple[int, ...]:
    ok = isinstance(widths, list | tuple) and len(widths) > 0 and all(
        isinstance(w, int) and not isinstance(w, bool) and w > 0 and w % 8 == 0 for w in widths)
    if not ok or list(widths) != sorted(set(widths)):
        raise ArgumentError("widths", "must be a non-empty increasing list of positive "
                                      f"multiples of 8, got {widths!r}")
    return tuple(widths)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def layer_token(layer: dict[str, Any]) -> str:
    """`op-k<kernel>-<act>-w<width>-b<bits>`, the key of one block."""
    return f"{layer['op']}-k{layer['kernel']}-{layer['act']}-w{layer['width']}-b{layer['bits']}"


def parse_layer_token(token: str) -> dict[str, Any]:
    """Inverse of `layer_token` (structure only; value ranges are checked by the space)."""
    parts = token.split("-")
    if len(parts) != 5:
        raise ValueError(f"block {token!r} must read 'op-k<kernel>-act-w<width>-b<bits>'")
    op, kernel, act, width, bits = parts
    numbers = []
    for part, prefix, name in ((kernel, "k", "kernel"), (width, "w", "width"),
                               (bits, "b", "bits")):
        digits = part[1:]
        if not (part.startswith(prefix) and digits.isascii() and digits.isdigit()):
            raise ValueError(f"the {name} of block {token!r} must read '{prefix}<integer>', "
                             f"got {part!r}")
        numbers.append(int(digits))
    layer = {"op": op, "kernel": numbers[0], "act": act, "width": numbers[1],
             "bits": numbers[2]}
    if layer_token(layer) != token:
        raise ValueError(f"block {token!r} is not canonical (leading zeros?)")
    return layer


def _conv_out(side: int, stride: int) -> int:
    """Output side of a conv with odd kernel k, padding k // 2 and this stride."""
    return (side - 1) // stride + 1


@register_space
class QuantSpace(SearchSpace):
    """Fusable conv blocks with searched kernel, op, activation, width and weight bit-width."""

    name = "quant"
    description = ("INT8-friendly conv/dwsep/inverted-residual blocks, ReLU or ReLU6, widths in "
                   "multiples of 8, per-block weight bit-width {2,4,8} (fake-quantized)")

    def __init__(
        self,
        num_classes: int = 10,
        input_channels: int = 3,
        input_size: int = 32,
        stages: int = 3,
        layers_per_stage: int = 2,
        stem_width: int = 16,
        widths: Sequence[int] = (8, 16, 24),
    ) -> None:
        self.num_classes = positive_int("num_classes", num_classes)
        self.input_channels = positive_int("input_channels", input_channels)
        self.input_size = positive_int("input_size", input_size)
        self.stages = positive_int("stages", stages)
        self.layers_per_stage = positive_int("layers_per_stage", layers_per_stage)
        self.stem_width = positive_int("stem_width", stem_width)
        if stem_width % 8:
            raise ArgumentError("stem_width", f"must be a multiple of 8, got {stem_width}")
        self.widths = _width_candidates(widths)
        if input_size < 2 ** (stages - 1):
            raise ArgumentError("input_size", f"must be at least 2**(stages - 1) = "
                                              f"{2 ** (stages - 1)} for {stages} stages, "
                                              f"got {input_size}")
        self._candidates = [self._layer_candidates(i) for i in range(self.num_layers)]

    # ---- structure -------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.stages * self.layers_per_stage

    def stage_widths(self, stage: int) -> tuple[int, ...]:
        return tuple(w * 2**stage for w in self.widths)

    def strides(self) -> list[int]:
        return [2 if i % self.layers_per_stage == 0 and i > 0 else 1
                for i in range(self.num_layers)]

    def _layer_candidates(self, index: int) -> dict[str, tuple[Any, ...]]:
        return {"op": OPS, "kernel": KERNELS, "act": ACTIVATIONS,
                "width": self.stage_widths(index // self.layers_per_stage), "bits": BITS}

    # ---- decisions -------------------------------------------------------------------------
    def template(self) -> Any:
        import pyglove as pg

        return pg.Dict(layers=pg.List([
            pg.Dict(**{field: pg.oneof(list(cands[field])) for field in FIELDS})
            for cands in self._candidates]))

    def choice_counts(self) -> list[int]:
        return [len(cands[field]) for cands in self._candidates for field in FIELDS]

    def to_dna(self, arch: Arch) -> list[int]:
        layers = arch.get("layers") if isinstance(arch, dict) else None
        if not isinstance(arch, dict) or set(arch) != {"layers"} or not isinstance(layers, list):
            raise ValueError("a quant architecture is {'layers': [one dict per block]}")
        if len(layers) != self.num_layers:
            raise ValueError(f"a quant architecture needs {self.num_layers} layers, "
                             f"got {len(layers)}")
        dna = []
        for i, (layer, cands) in enumerate(zip(layers, self._candidates, strict=True)):
            if not isinstance(layer, dict) or set(layer) != set(FIELDS):
                raise ValueError(f"layer {i} must be a dict with keys {', '.join(FIELDS)}, "
                                 f"got {layer!r}")
            for field in FIELDS:
                value, options = layer[field], cands[field]
                numeric = isinstance(options[0], int)
                if (numeric and not _is_int(value)) or value not in options:
                    raise ValueError(f"layer {i}: {field} {value!r} is not one of "
                                     f"{', '.join(map(str, options))}")
                dna.append(options.index(value))
        return dna

    def from_dna(self, dna: list[int]) -> Arch:
        counts = self.choice_counts()
        if len(dna) != len(counts):
            raise ValueError(f"a quant DNA has {len(counts)} decisions, got {len(dna)}")
        if not all(_is_int(v) and 0 <= v < c for v, c in zip(dna, counts, strict=True)):
            raise ValueError(f"quant DNA {dna} is out of range of {counts}")
        values = iter(dna)
        return {"layers": [{field: cands[field][next(values)] for field in FIELDS}
                           for cands in self._candidates]}

    def key(self, arch: Arch) -> str:
        self.to_dna(arch)
        return "|".join(layer_token(layer) for layer in arch["layers"])

    def from_key(self, key: str) -> Arch:
        if not isinstance(key, str) or not key:
            raise ValueError("a quant key must be a non-empty string")
        tokens = key.split("|")
        if len(tokens) != self.num_layers:
            raise ValueError(f"a quant key needs {self.num_layers} '|'-separated blocks, "
                             f"got {len(tokens)} in {key!r}")
        arch = {"layers": [parse_layer_token(token) for token in tokens]}
        self.to_dna(arch)
        return arch

    def input_shape(self, arch: Arch | None = None) -> tuple[int, ...]:
        """The same for every architecture (the resolution is not searched)."""
        return (self.input_channels, self.input_size, self.input_size)

    # ---- torch -----------------------------------------------------------------------------
    def build(self, arch: Arch, **kwargs: Any) -> Any:
        """The trainable model; `fake_quant=False` gives the plain FP32 network (same
        parameters, same FLOPs)."""
        from .layers.quant_net import QuantNetwork

        self.to_dna(arch)
        unknown = set(kwargs) - {"fake_quant"}
        if unknown:
            raise TypeError(f"build() got unexpected keyword arguments {sorted(unknown)}")
        model = QuantNetwork(arch["layers"], self.strides(), self.input_channels,
                             self.stem_width, self.num_classes,
                             fake_quant=bool(kwargs.get("fake_quant", True)))
        model.arch_key = self.key(arch)
        return model

    def int8_model(self, arch: Arch, calibration: Any, model: Any = None) -> Any:
        """A real INT8 model (eager-mode `torch.ao.quantization`, x86/fbgemm engine) of
        `model` (default: a fresh `build(arch)`), calibrated on the batch `calibration`.

        Fake-quantized weights are baked in before BN folding, so the INT8 model computes
        what was trained (up to int8 rounding of 8-/4-bit grids).
        """
        import torch

        from .layers.quant_net import to_int8

        self.to_dna(arch)
        shape = self.input_shape()
        if (not isinstance(calibration, torch.Tensor) or not calibration.is_floating_point()
                or tuple(calibration.shape[1:]) != shape or calibration.shape[0] < 1):
            raise ValueError(f"calibration must be a float tensor of shape (N, {shape}) "
                             f"with N >= 1")
        if model is None:
            model = self.build(arch)
        elif getattr(model, "arch_key", None) != self.key(arch):
            raise ValueError("model was not built by this space from this architecture")
        return to_int8(model, calibration)

    # ---- analytic cost model (exact for the network `build` returns) ----------------------
    def _costs(self, arch: Arch) -> tuple[int, int]:
        """(parameters, multiply-accumulates of convs and the classifier) for one input."""
        self.to_dna(arch)
        side, c = self.input_size, self.stem_width
        params = self.input_channels * c * 9 + 2 * c
        macs = self.input_channels * c * 9 * side * side
        for layer, stride in zip(arch["layers"], self.strides(), strict=True):
            k, c_out, out = layer["kernel"], layer["width"], _conv_out(side, stride)
            op = layer["op"]
            if op == "conv":
                params += c * c_out * k * k + 2 * c_out
                macs += c * c_out * k * k * out * out
            elif op == "dwsep":
                params += c * k * k + 2 * c + c * c_out + 2 * c_out
                macs += c * k * k * out * out + c * c_out * out * out
            else:
                hidden = c * _EXPAND[op]
                params += c * hidden + 2 * hidden + hidden * k * k + 2 * hidden
                params += hidden * c_out + 2 * c_out
                macs += c * hidden * side * side + hidden * k * k * out * out
                macs += hidden * c_out * out * out
            side, c = out, c_out
        params += c * self.num_classes + self.num_classes
        macs += c * self.num_classes
        return params, macs

    def params(self, arch: Arch) -> int:
        return self._costs(arch)[0]

    def flops(self, arch: Arch) -> int:
        """2 x MACs of the convolutions and the classifier (the FlopCounterMode rule)."""
        return 2 * self._costs(arch)[1]
