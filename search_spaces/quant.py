"""Quantization-friendly space with mixed-precision bit-widths (in the spirit of SpaceEvo).

Every operator is made of conv-BN-ReLU(6) units that PyTorch fuses for INT8: a plain k x k
conv, a depthwise-separable conv, or an inverted residual (expansion 3 or 6). The network
is a 3x3 stem, `stages` x `layers_per_stage` searched blocks (the first block of every stage
after the first has stride 2), global average pooling and a linear classifier.

An architecture is `{"layers": [{"op", "kernel", "act", "width", "bits", "abits"}, ...]}`,
one dict per block in network order: op in OPS, kernel in KERNELS, act in ACTIVATIONS, width
(output channels, a multiple of 8) in the stage's candidates `widths * 2**stage`, the
block's weight bit-width `bits` and activation bit-width `abits`, both in BITS (applied by
fake quantization while training, see `layers/quant_net.py`; every conv of a block shares
the block's two bit-widths). The key joins one token per block with '|', e.g.
`ir6-k3-relu6-w16-b4-a8|conv-k5-relu-w8-b8-a4|...`; a key stored before activation
bit-widths were searched (tokens without `-a<bits>`) reads as 8-bit activations, which is
what those networks ran.

Besides params and FLOPs the space counts, exactly from the bits, `bitops` (sum over convs
and the classifier of MACs x weight bits x input-activation bits, the BitOPs of HAWQ-V3 and
EMQ) and `model_size_kb` (the deployed weights: `bits` per weight, plus a float32 scale and
a float32 bias per output channel once BN is folded; KiB = 1024 bytes). Both are usable as
objectives and constraints like params and FLOPs (`COST_METRICS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._base import Arch, SearchSpace, register_space
from .validation import ArgumentError, positive_int

OPS: tuple[str, ...] = ("conv", "dwsep", "ir3", "ir6")
KERNELS: tuple[int, ...] = (3, 5)
ACTIVATIONS: tuple[str, ...] = ("relu", "relu6")
BITS: tuple[int, ...] = (2, 4, 8)
FIELDS: tuple[str, ...] = ("op", "kernel", "act", "width", "bits", "abits")
#: Exact costs counted from the bits, beside params and FLOPs.
COST_METRICS: tuple[str, ...] = ("bitops", "model_size_kb")
EDGE_BITS = 8  # the stem and the classifier, and the network input / stem output activations
_EXPAND = {"ir3": 3, "ir6": 6}


def _width_candidates(widths: Any) -> tuple[int, ...]:
    ok = isinstance(widths, list | tuple) and len(widths) > 0 and all(
        isinstance(w, int) and not isinstance(w, bool) and w > 0 and w % 8 == 0 for w in widths)
    if not ok or list(widths) != sorted(set(widths)):
        raise ArgumentError("widths", "must be a non-empty increasing list of positive "
                                      f"multiples of 8, got {widths!r}")
    return tuple(widths)


def _stage_ops(value: Any, stages: int) -> tuple[tuple[str, ...], ...]:
    """Per stage, the operations its blocks choose from (default: all of OPS). A space
    designed by SpaceEvo (`nas/spaceevo.py`) narrows them."""
    if value is None:
        return (OPS,) * stages
    ok = isinstance(value, list | tuple) and len(value) == stages and all(
        isinstance(ops, list | tuple) and ops and len(set(ops)) == len(ops)
        and all(op in OPS for op in ops) for ops in value)
    if not ok:
        raise ArgumentError("stage_ops", f"must be {stages} non-empty lists of distinct "
                                         f"operations among {', '.join(OPS)}, got {value!r}")
    return tuple(tuple(op for op in OPS if op in ops) for ops in value)


def _stage_widths(value: Any, stages: int) -> tuple[tuple[int, ...], ...]:
    """Per stage, the width candidates (overrides `widths * 2**stage`)."""
    if not (isinstance(value, list | tuple) and len(value) == stages):
        raise ArgumentError("stage_widths", f"must be {stages} lists of widths, got {value!r}")
    out = []
    for widths in value:
        try:
            out.append(_width_candidates(widths))
        except ArgumentError:
            raise ArgumentError("stage_widths", "each must be a non-empty increasing list of "
                                                f"positive multiples of 8, got {widths!r}"
                                ) from None
    return tuple(out)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def layer_token(layer: dict[str, Any]) -> str:
    """`op-k<kernel>-<act>-w<width>-b<bits>-a<abits>`, the key of one block."""
    return (f"{layer['op']}-k{layer['kernel']}-{layer['act']}-w{layer['width']}"
            f"-b{layer['bits']}-a{layer['abits']}")


def parse_layer_token(token: str) -> dict[str, Any]:
    """Inverse of `layer_token` (structure only; value ranges are checked by the space). A
    token of the earlier form, without `-a<abits>`, reads as 8-bit activations."""
    parts = token.split("-")
    legacy = len(parts) == 5
    if legacy:
        parts.append(f"a{EDGE_BITS}")
    if len(parts) != 6:
        raise ValueError(f"block {token!r} must read 'op-k<kernel>-act-w<width>-b<bits>"
                         "-a<abits>'")
    op, kernel, act, width, bits, abits = parts
    numbers = []
    for part, prefix, name in ((kernel, "k", "kernel"), (width, "w", "width"),
                               (bits, "b", "bits"), (abits, "a", "abits")):
        digits = part[1:]
        if not (part.startswith(prefix) and digits.isascii() and digits.isdigit()):
            raise ValueError(f"the {name} of block {token!r} must read '{prefix}<integer>', "
                             f"got {part!r}")
        numbers.append(int(digits))
    layer = {"op": op, "kernel": numbers[0], "act": act, "width": numbers[1],
             "bits": numbers[2], "abits": numbers[3]}
    canonical = layer_token(layer)
    if (canonical.rpartition("-")[0] if legacy else canonical) != token:
        raise ValueError(f"block {token!r} is not canonical (leading zeros?)")
    return layer


@dataclass(frozen=True)
class WeightedLayer:
    """One conv or linear layer of a built network, for the cost model: its weight count,
    output channels, MACs for one input, weight bits, input-activation bits, and whether a
    BN follows it (else it has a bias)."""

    weights: int
    channels: int
    macs: int
    w_bits: int
    in_bits: int
    bn: bool


def _conv_out(side: int, stride: int) -> int:
    """Output side of a conv with odd kernel k, padding k // 2 and this stride."""
    return (side - 1) // stride + 1


@register_space
class QuantSpace(SearchSpace):
    """Fusable conv blocks with searched kernel, op, activation, width and weight bit-width."""

    name = "quant"
    description = ("INT8-friendly conv/dwsep/inverted-residual blocks, ReLU or ReLU6, widths in "
                   "multiples of 8, per-block weight and activation bit-widths {2,4,8} "
                   "(fake-quantized); exact bitops and model_size_kb")
    cost_metrics = COST_METRICS

    def __init__(
        self,
        num_classes: int = 10,
        input_channels: int = 3,
        input_size: int = 32,
        stages: int = 3,
        layers_per_stage: int = 2,
        stem_width: int = 16,
        widths: Sequence[int] = (8, 16, 24),
        stage_ops: Sequence[Sequence[str]] | None = None,
        stage_widths: Sequence[Sequence[int]] | None = None,
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
        self.stage_ops = _stage_ops(stage_ops, self.stages)
        self.stage_width_choices = None if stage_widths is None else \
            _stage_widths(stage_widths, self.stages)
        self._candidates = [self._layer_candidates(i) for i in range(self.num_layers)]

    # ---- structure -------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.stages * self.layers_per_stage

    def stage_widths(self, stage: int) -> tuple[int, ...]:
        if self.stage_width_choices is not None:
            return self.stage_width_choices[stage]
        return tuple(w * 2**stage for w in self.widths)

    def strides(self) -> list[int]:
        return [2 if i % self.layers_per_stage == 0 and i > 0 else 1
                for i in range(self.num_layers)]

    def _layer_candidates(self, index: int) -> dict[str, tuple[Any, ...]]:
        return {"op": self.stage_ops[index // self.layers_per_stage], "kernel": KERNELS,
                "act": ACTIVATIONS,
                "width": self.stage_widths(index // self.layers_per_stage), "bits": BITS,
                "abits": BITS}

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
    def weighted_layers(self, arch: Arch) -> list[WeightedLayer]:
        """Every conv and the classifier of `build(arch)`, in network order."""
        self.to_dna(arch)
        side, c = self.input_size, self.stem_width
        units = [WeightedLayer(self.input_channels * c * 9, c, self.input_channels * c * 9
                               * side * side, EDGE_BITS, EDGE_BITS, True)]
        in_bits = EDGE_BITS
        for layer, stride in zip(arch["layers"], self.strides(), strict=True):
            k, c_out, out = layer["kernel"], layer["width"], _conv_out(side, stride)
            wb, ab, op = layer["bits"], layer["abits"], layer["op"]
            if op == "conv":
                units.append(WeightedLayer(c * c_out * k * k, c_out,
                                           c * c_out * k * k * out * out, wb, in_bits, True))
            elif op == "dwsep":
                units += [WeightedLayer(c * k * k, c, c * k * k * out * out, wb, in_bits, True),
                          WeightedLayer(c * c_out, c_out, c * c_out * out * out, wb, ab, True)]
            else:
                hidden = c * _EXPAND[op]
                units += [
                    WeightedLayer(c * hidden, hidden, c * hidden * side * side, wb, in_bits,
                                  True),
                    WeightedLayer(hidden * k * k, hidden, hidden * k * k * out * out, wb, ab,
                                  True),
                    WeightedLayer(hidden * c_out, c_out, hidden * c_out * out * out, wb, ab,
                                  True)]
            side, c, in_bits = out, c_out, ab
        units.append(WeightedLayer(c * self.num_classes, self.num_classes,
                                   c * self.num_classes, EDGE_BITS, EDGE_BITS, False))
        return units

    def params(self, arch: Arch) -> int:
        """Weights, BN's weight and bias per channel, the classifier's bias."""
        return sum(u.weights + u.channels * (2 if u.bn else 1)
                   for u in self.weighted_layers(arch))

    def flops(self, arch: Arch) -> int:
        """2 x MACs of the convolutions and the classifier (the FlopCounterMode rule)."""
        return 2 * sum(u.macs for u in self.weighted_layers(arch))

    def bitops(self, arch: Arch) -> int:
        """sum of MACs x weight bits x input-activation bits (HAWQ-V3's and EMQ's BitOPs)."""
        return sum(u.macs * u.w_bits * u.in_bits for u in self.weighted_layers(arch))

    def model_size_bits(self, arch: Arch) -> int:
        """Bits of the deployed weights: `bits` per weight, and per output channel a float32
        scale and a float32 bias (BN folded into the conv)."""
        return sum(u.weights * u.w_bits + 64 * u.channels for u in self.weighted_layers(arch))

    def model_size_kb(self, arch: Arch) -> float:
        """`model_size_bits` in KiB (1024 bytes)."""
        return self.model_size_bits(arch) / 8192

    def costs(self, arch: Arch) -> dict[str, float]:
        """The `cost_metrics` of `arch` (exact, no model built)."""
        return {"bitops": float(self.bitops(arch)),
                "model_size_kb": float(self.model_size_kb(arch))}
