"""FBNet as published (Wu et al., CVPR 2019) on the layer-wise `mbconv` space.

The FBNet search space is a fixed macro-architecture whose every layer picks one block from a
candidate set (kernel, expansion ratio, or skip). On `mbconv` each block position of each
stage (`max(depths)` per stage) is such a layer: its candidates are every (kernel, expand)
MBConv block, plus `skip` (identity) where the space lets the stage be shallower, i.e. at
block index >= min(depths). Width and resolution are held at the space's largest width and
its `input_size` (FBNet searches only the per-layer blocks).

- **Supernet:** per layer one MBConv block per candidate (its own weights, as in FBNet's
  supernet), the layer's output the Gumbel-softmax weighted sum of the candidates' outputs
  (a candidate whose weight is exactly 0, a masked `skip`, is not run).
- **Loss:** `CE * latency_alpha * log(LAT)^latency_beta` (the paper's; alpha 0.2, beta 0.6
  by default), LAT the expected latency in microseconds: skeleton + sum over layers of
  sum over candidates of p(candidate) * table latency (microseconds keep log(LAT) > 0 for
  the sub-millisecond networks of this CPU; the paper's are milliseconds on a phone).
- **Table:** `measure_mbconv_lut` times each candidate block at its layer's shape on this
  worker (FBNet's per-operator look-up table), the skeleton (stem, first block, head,
  classifier) once, and `calibrate_mbconv_lut` scales the operators' sum to whole networks
  measured here; or the user's `latency_table` (`{"skeleton_ms", "layers_ms": [[ms per
  candidate] per layer]}`, candidates in `layer_choices` order, `skip` included where a
  layer has it).
- **Derivation:** as the paper, architectures are sampled from the final distribution
  (`samples` draws per layer categorical, plus its mode), deduplicated, ranked by
  log-probability; those whose table latency fits `max_latency_ms` (and, with a table
  measured here, whose whole network measures within it on this worker) are the derived
  archs, best first (`top` of them). When no sample fits (a distribution concentrated on
  slow blocks), the greedy most probable architectures under 1.0, 0.9 and 0.8 x the budget
  by the table join the candidates (`within_budget`, our addition). The paper then trains
  the samples from scratch and keeps the best; here that is left to the job's evaluation of
  the derived archs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from search_spaces import Arch
from search_spaces.validation import ArgumentError, int_at_least

from ._base import WeightSharingSearch
from .darts import _float_arg
from .fbnet import VERIFY_MAX, FBNetSearch
from .mixed import ArchParameters, Layout, Weights

SKIP = "skip"


# ---- the layer-wise view of the space -----------------------------------------------------
def layer_choices(space: Any) -> list[list[str]]:
    """Per layer (stage-major, `max(depths)` per stage) its candidate names: `k<k>e<e>` for
    every kernel and expand ratio, then `skip` where the block index >= min(depths)."""
    blocks = [f"k{k}e{e}" for k in space.kernel_sizes for e in space.expand_ratios]
    out = []
    for _ in space.stage_channels:
        for j in range(space.max_depth):
            out.append(blocks + ([SKIP] if j >= min(space.depths) else []))
    return out


def all_ops(space: Any) -> tuple[str, ...]:
    return (*[f"k{k}e{e}" for k in space.kernel_sizes for e in space.expand_ratios], SKIP)


def fixed_macro(space: Any) -> tuple[int, float]:
    """(resolution, width) the search holds fixed: the space's input size and largest width."""
    if space.input_size not in space.resolutions:
        raise ArgumentError("space_args.resolutions", f"must include input_size "
                                                      f"{space.input_size} for fbnet")
    return space.input_size, max(space.width_mults)


def layer_specs(space: Any) -> list[Any]:
    """The BlockSpec of every layer at the fixed macro (all blocks active; `mid` unused)."""
    resolution, width = fixed_macro(space)
    arch = space.max_arch()
    arch = {**arch, "resolution": resolution, "width": width}
    return list(space.net_spec(arch).blocks)


def arch_of(space: Any, picks: list[int]) -> Arch:
    """The space's architecture of one candidate index per layer: the non-skip blocks of a
    stage in order (a skip in the middle is the identity, so dropping it keeps the network),
    the depth their count."""
    resolution, width = fixed_macro(space)
    ops = all_ops(space)
    n_ke = len(ops) - 1
    stages, layer = [], 0
    filler = {"kernel": space.kernel_sizes[0], "expand": space.expand_ratios[0]}
    for _ in space.stage_channels:
        blocks = []
        for _ in range(space.max_depth):
            i = picks[layer]
            layer += 1
            if i < n_ke:
                blocks.append({"kernel": space.kernel_sizes[i // len(space.expand_ratios)],
                               "expand": space.expand_ratios[i % len(space.expand_ratios)]})
        depth = len(blocks)
        stages.append({"depth": depth, "blocks": blocks + [filler] * (space.max_depth - depth)})
    return space.validate({"resolution": resolution, "width": width, "stages": stages})


def mbconv_layout(space: Any) -> Layout:
    return Layout("mbconv", all_ops(space), {"layers": len(layer_choices(space))}, ())


def choice_mask(space: Any) -> torch.Tensor:
    """[layers, ops] True where the layer has that candidate."""
    ops = all_ops(space)
    return torch.tensor([[op in layer for op in ops] for layer in layer_choices(space)])


class MaskedArchParameters(ArchParameters):
    """alpha over `all_ops` per layer; a layer without `skip` gives it probability 0."""

    def __init__(self, layout: Layout, mask: torch.Tensor) -> None:
        super().__init__(layout)
        self.register_buffer("mask", mask)

    def masked(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.masked_fill(~self.mask, float("-inf"))

    def op_weights(self) -> Weights:
        return {"layers": torch.softmax(self.masked(self.alpha["layers"]), dim=-1)}


# ---- the supernet ----------------------------------------------------------------------------
class MixedLayer(nn.Module):
    def __init__(self, spec: Any, ops: tuple[str, ...], allowed: list[str]) -> None:
        from search_spaces.layers.mbconv_net import MBConvBlock

        super().__init__()
        self.index = [ops.index(op) for op in allowed]
        self.blocks = nn.ModuleList()
        for op in allowed:
            if op == SKIP:
                self.blocks.append(nn.Identity())
            else:
                k, e = (int(v) for v in op[1:].split("e"))
                self.blocks.append(MBConvBlock(spec.c_in, spec.c_in * e, spec.c_out, k,
                                               spec.stride))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        total = None
        for i, block in zip(self.index, self.blocks, strict=True):
            if float(w[i].detach()) == 0.0:  # a masked candidate
                continue
            term = w[i] * block(x)
            total = term if total is None else total + term
        return total if total is not None else x


class MBConvMixedSupernet(nn.Module):
    """Stem, the fixed first block, one `MixedLayer` per layer, head and classifier."""

    def __init__(self, space: Any, num_classes: int, input_channels: int) -> None:
        from search_spaces.layers.mbconv_net import ConvBN, SeparableBlock
        from search_spaces.layers.pooling import GlobalAvgPool
        from search_spaces.mbconv import scale_channels

        super().__init__()
        specs = layer_specs(space)
        _, width = fixed_macro(space)
        stem = scale_channels(space.stem_channels, width)
        ops = all_ops(space)
        self.stem = ConvBN(input_channels, stem, 3)
        self.first = SeparableBlock(stem, stem)
        self.layers = nn.ModuleList(MixedLayer(s, ops, c)
                                    for s, c in zip(specs, layer_choices(space), strict=True))
        head = scale_channels(space.head_channels, width)
        self.head = ConvBN(specs[-1].c_out, head, 1)
        self.pool = GlobalAvgPool()
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor, weights: Weights, edge: Any = None) -> torch.Tensor:
        x = self.first(self.stem(x))
        w = weights["layers"]
        for i, layer in enumerate(self.layers):
            x = layer(x, w[i])
        return self.classifier(torch.flatten(self.pool(self.head(x)), 1))


# ---- the latency table --------------------------------------------------------------------------
class _Skeleton(nn.Module):
    def __init__(self, net: MBConvMixedSupernet, side_out: int) -> None:
        super().__init__()
        self.front = nn.Sequential(net.stem, net.first)
        self.back = nn.Sequential(net.head, net.pool, nn.Flatten(), net.classifier)
        self.c_last = net.head.conv.in_channels
        self.side_out = side_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.front(x)
        z = torch.zeros(x.shape[0], self.c_last, self.side_out, self.side_out)
        return self.back(z + y.mean())


def measure_mbconv_lut(space: Any, *, threads: int = 1, repeats: int = 30,
                       warmup: int = 10) -> dict[str, Any]:
    """{"skeleton_ms", "layers_ms": [[ms per candidate of `layer_choices`] per layer]} timed
    on this CPU, each candidate block alone at its layer's input shape (skip: 0)."""
    from workers.latency import measure_latency_ms

    net = MBConvMixedSupernet(space, space.num_classes, space.input_channels).eval()
    specs = layer_specs(space)

    def timed(module: nn.Module, shape: tuple[int, ...]) -> float:
        return float(measure_latency_ms(module, shape, threads=threads, repeats=repeats,
                                        warmup=warmup)["median_ms"])

    skeleton = timed(_Skeleton(net, specs[-1].side_out), tuple(space.input_shape()))
    rows = []
    for spec, layer in zip(specs, net.layers, strict=True):
        shape = (spec.c_in, spec.side_in, spec.side_in)
        rows.append([0.0 if isinstance(b, nn.Identity) else timed(b, shape)
                     for b in layer.blocks])
    return {"skeleton_ms": skeleton, "layers_ms": rows, "scale": 1.0}


def predict_mbconv(lut: dict[str, Any], space: Any, arch: Arch) -> float:
    """The table's latency (ms) of an architecture (its width / resolution the fixed ones)."""
    return lut["skeleton_ms"] + lut.get("scale", 1.0) * float(
        sum(lut["layers_ms"][i][j] for i, j in enumerate(picks_of(space, arch))))


def picks_of(space: Any, arch: Arch) -> list[int]:
    """The inverse of `arch_of`: per layer the index in its `layer_choices` list."""
    picks = []
    for stage in arch["stages"]:
        for j, block in enumerate(stage["blocks"]):
            if j < stage["depth"]:
                picks.append(space.kernel_sizes.index(block["kernel"]) * len(space.expand_ratios)
                             + space.expand_ratios.index(block["expand"]))
            else:
                picks.append(len(space.kernel_sizes) * len(space.expand_ratios))  # skip
    return picks


def calibrate_mbconv_lut(lut: dict[str, Any], space: Any, *, samples: int = 6, seed: int = 0,
                         threads: int = 1, repeats: int = 20,
                         warmup: int = 5) -> dict[str, Any]:
    """The table with a `scale` on the operators' sum: the median over `samples` random whole
    networks measured here of (measured - skeleton) / (operators' sum). Blocks timed alone
    run faster than inside a network; the median, not a least-squares fit, because one
    timing taken while another process holds the core would set a least-squares scale."""
    from workers.latency import measure_latency_ms

    rng = np.random.default_rng(seed)
    plain = {**lut, "scale": 1.0}
    choices = layer_choices(space)
    xs, ys = [], []
    for _ in range(samples):
        arch = arch_of(space, [int(rng.integers(len(c))) for c in choices])
        xs.append(predict_mbconv(plain, space, arch) - lut["skeleton_ms"])
        t = measure_latency_ms(space.build(arch), space.input_shape(arch), threads=threads,
                               repeats=repeats, warmup=warmup)["median_ms"]
        ys.append(t - lut["skeleton_ms"])
    ratios = [y / x for x, y in zip(xs, ys, strict=True) if x > 0]
    scale = float(np.median(ratios)) if ratios else 0.0
    return {**lut, "scale": scale if scale > 0 else 1.0, "calibration_samples": samples}


def normalise_mbconv_table(table: Any, space: Any) -> dict[str, Any]:
    """A user's table for mbconv; `ArgumentError` naming `latency_table` otherwise."""
    choices = layer_choices(space)
    ok = isinstance(table, dict) and _ms(table.get("skeleton_ms", 0.0)) and isinstance(
        table.get("layers_ms"), list) and len(table["layers_ms"]) == len(choices) and all(
        isinstance(r, list) and len(r) == len(c) and all(map(_ms, r))
        for r, c in zip(table["layers_ms"], choices, strict=True))
    if not ok:
        raise ArgumentError("latency_table", f"on mbconv must be {{'skeleton_ms': ms, "
                            f"'layers_ms': [{len(choices)} lists, one latency (ms) per candidate "
                            f"of each layer: {choices[-1]}...]}}")
    return {"skeleton_ms": float(table.get("skeleton_ms", 0.0)),
            "layers_ms": [[float(v) for v in r] for r in table["layers_ms"]], "scale": 1.0}


def _ms(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value) and value >= 0


def dense_costs(lut: dict[str, Any], space: Any) -> torch.Tensor:
    """[layers, ops] scaled table latency (ms), 0 where a layer lacks the candidate."""
    ops = all_ops(space)
    out = torch.zeros(len(lut["layers_ms"]), len(ops), dtype=torch.float32)
    for i, (row, names) in enumerate(zip(lut["layers_ms"], layer_choices(space), strict=True)):
        for ms, name in zip(row, names, strict=True):
            out[i, ops.index(name)] = ms * lut.get("scale", 1.0)
    return out


def sample_archs(probs: np.ndarray, mask: np.ndarray, n: int,
                 rng: np.random.Generator) -> list[tuple[list[int], float]]:
    """The mode and `n` draws from the per-layer categoricals (probs `[layers, ops]`), as
    (per-layer op index into `all_ops`, log-probability), unique, best first."""
    logp = np.log(np.clip(probs, 1e-30, None))
    seen: dict[tuple[int, ...], float] = {}
    mode = tuple(int(i) for i in np.where(mask, probs, -1.0).argmax(axis=1))
    draws = [mode]
    for _ in range(n):
        draws.append(tuple(int(rng.choice(len(p), p=p / p.sum())) for p in probs))
    for d in draws:
        seen.setdefault(d, float(logp[np.arange(len(d)), list(d)].sum()))
    return sorted(([list(d), s] for d, s in seen.items()), key=lambda t: -t[1])


# ---- the search ---------------------------------------------------------------------------------
class FBNetMBConvSearch(FBNetSearch):
    """FBNet on `mbconv` (see the module docstring): `max_latency_ms` (the budget),
    `latency_table`, `latency_alpha` / `latency_beta` (the loss' alpha and beta),
    `samples` (architectures drawn from the final distribution), `top`, `lr`,
    `weight_decay`, `arch_lr`, `arch_weight_decay`, `temperature`,
    `temperature_decay`."""

    def __init__(self, space: Any, *, max_latency_ms: float | None = None,
                 latency_table: dict[str, Any] | None = None, latency_alpha: float = 0.2,
                 latency_beta: float = 0.6, samples: int = 20, temperature: float = 5.0,
                 temperature_decay: float = 0.956, lr: float = 0.025,
                 weight_decay: float = 3e-4, arch_lr: float = 0.01,
                 arch_weight_decay: float = 5e-4, top: int = 1, latency_weight: Any = None,
                 channels: Any = None, cells: Any = None, **common: Any) -> None:
        WeightSharingSearch.__init__(self, space, **common)
        if latency_weight is not None:
            raise ArgumentError("latency_weight", "is for nb201's additive loss; on mbconv the "
                                "loss is FBNet's CE * latency_alpha * log(LAT)^latency_beta")
        for field, value in (("channels", channels), ("cells", cells)):
            if value is not None:
                raise ArgumentError(field, "is for nb201; on mbconv the space's own channels "
                                           "and depths are the supernet's")
        if max_latency_ms is None:
            raise ArgumentError("max_latency_ms", "must be given (the latency budget in ms)")
        self.max_latency_ms = _float_arg("max_latency_ms", max_latency_ms, positive=True)
        self.latency_alpha = _float_arg("latency_alpha", latency_alpha, positive=True)
        self.latency_beta = _float_arg("latency_beta", latency_beta)
        self.samples = int_at_least("samples", samples, 0)
        self.temperature = _float_arg("temperature", temperature, positive=True)
        self.temperature_decay = _float_arg("temperature_decay", temperature_decay,
                                            positive=True)
        self.lr = _float_arg("lr", lr, positive=True)
        self.weight_decay = _float_arg("weight_decay", weight_decay)
        self.arch_lr = _float_arg("arch_lr", arch_lr, positive=True)
        self.arch_weight_decay = _float_arg("arch_weight_decay", arch_weight_decay)
        self.top = int_at_least("top", top, 1)
        fixed_macro(space)  # refuses a space whose input size it cannot keep
        self.layout = mbconv_layout(space)
        self.latency_table = None if latency_table is None else \
            normalise_mbconv_table(latency_table, space)
        self.lut = self.latency_table
        self._costs: torch.Tensor | None = None
        self.measured_ms: dict[str, float] = {}

    def _config(self) -> dict[str, Any]:
        return {"lr": self.lr, "weight_decay": self.weight_decay, "arch_lr": self.arch_lr,
                "arch_weight_decay": self.arch_weight_decay, "top": self.top,
                "max_latency_ms": self.max_latency_ms, "latency_alpha": self.latency_alpha,
                "latency_beta": self.latency_beta, "samples": self.samples,
                "temperature": self.temperature,
                "temperature_decay": self.temperature_decay,
                "latency_table": self.latency_table or "measured",
                "loss": "ce*alpha*log(lat_us)^beta"}

    def _new_net(self) -> nn.Module:
        return MBConvMixedSupernet(self.space, self.data.num_classes,
                                   self.data.input_shape[0]).to(self.device)

    def _setup(self) -> None:
        self._check_input_shape()
        self._setup_data()
        self.net = self._new_net()
        self.arch = MaskedArchParameters(self.layout, choice_mask(self.space)).to(self.device)
        self.w_opt, self.w_sched = self._sgd(self.net)
        self.arch_opt = torch.optim.Adam(self.arch.parameters(), lr=self.arch_lr,
                                         betas=(0.5, 0.999),
                                         weight_decay=self.arch_weight_decay)
        self.criterion = nn.CrossEntropyLoss()
        self.tau = self.temperature
        self.lut = self.latency_table
        self._costs = None

    # ---- latency ---------------------------------------------------------------------
    def _ensure_lut(self) -> dict[str, Any]:
        if self.lut is None:
            lut = None
            if self.ranks.rank == 0:  # rank 0 measures, every rank uses it
                with self.ranks.local():
                    lut = calibrate_mbconv_lut(
                        measure_mbconv_lut(self.space, threads=self.threads), self.space,
                        seed=self.seed, threads=self.threads)
            self.lut = self.ranks.broadcast(lut)
        return self.lut

    @property
    def costs(self) -> torch.Tensor:
        if self._costs is None:
            self._costs = dense_costs(self._ensure_lut(), self.space).to(self.device)
        return self._costs

    def table_latency(self, arch: Arch) -> float:
        return predict_mbconv(self._ensure_lut(), self.space, arch)

    def expected_latency(self) -> torch.Tensor:
        probs = self.arch.op_weights()["layers"]
        return self._ensure_lut()["skeleton_ms"] + (probs * self.costs).sum()

    # ---- training --------------------------------------------------------------------
    def _weights(self) -> Weights:
        logits = self.arch.masked(self.arch.alpha["layers"])
        u = torch.rand(logits.shape, device=logits.device).clamp_(1e-10, 1.0 - 1e-7)
        return {"layers": torch.softmax((logits - torch.log(-torch.log(u))) / self.tau,
                                        dim=-1)}

    def latency_factor(self) -> torch.Tensor:
        """alpha * log(E[LAT] in microseconds)^beta (log clamped at 1e-6 above 0)."""
        lat_us = self.expected_latency() * 1000.0
        return self.latency_alpha * torch.log(lat_us).clamp_min(1e-6) ** self.latency_beta

    def _arch_step(self, xw: torch.Tensor, yw: torch.Tensor, xa: torch.Tensor,
                   ya: torch.Tensor) -> None:
        self.net.train()
        loss = self._arch_loss(self.net, xa, ya) * self.latency_factor()
        params = list(self.arch.parameters())
        for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
            p.grad = g
        self.arch_opt.step()
        self.arch_opt.zero_grad(set_to_none=True)

    def current_arch(self) -> Arch:
        probs = self.arch.op_weights()["layers"].detach().cpu().numpy()
        return arch_of(self.space, [int(i) for i in probs.argmax(axis=1)])

    # ---- derivation ------------------------------------------------------------------
    def candidates(self) -> list[tuple[Arch, float]]:
        """The mode and `samples` draws from the final distribution, unique, best
        first by log-probability (seeded: the same after a resume)."""
        probs = self.arch.op_weights()["layers"].detach().cpu().numpy().astype(np.float64)
        mask = self.arch.mask.cpu().numpy()
        rng = np.random.default_rng([self.seed % 2**63, 19])
        out, seen = [], set()
        for picks, score in sample_archs(probs, mask, self.samples, rng):
            arch = arch_of(self.space, picks)
            key = self.space.key(arch)  # two draws can give one arch (skip placement)
            if key not in seen:
                seen.add(key)
                out.append((arch, score))
        return out

    def _measured(self, arch: Arch) -> float:
        from workers.latency import measure_latency_ms

        key = self.space.key(arch)
        if key not in self.measured_ms:
            timing = measure_latency_ms(self.space.build(arch), self.space.input_shape(arch),
                                        threads=self.threads, repeats=20, warmup=5)
            self.measured_ms[key] = float(timing["median_ms"])
        return self.measured_ms[key]

    def within_budget(self, slack: tuple[float, ...] = (1.0, 0.9, 0.8)
                      ) -> list[tuple[Arch, float]]:
        """Greedy most-probable architectures under `slack` x the budget by the table: from
        the mode, repeatedly swap a layer's block for the one losing the least
        log-probability per ms saved until the table latency fits (the slack leaves room for
        the table's error on this worker)."""
        probs = self.arch.op_weights()["layers"].detach().cpu().numpy().astype(np.float64)
        logp = np.log(np.clip(probs, 1e-30, None))
        mask = self.arch.mask.cpu().numpy()
        costs = self.costs.detach().cpu().numpy().astype(np.float64)
        skeleton = self._ensure_lut()["skeleton_ms"]
        rows = np.arange(len(probs))
        out = []
        for factor in slack:
            picks = np.where(mask, probs, -1.0).argmax(axis=1)
            while skeleton + costs[rows, picks].sum() > factor * self.max_latency_ms:
                saved = costs[rows, picks][:, None] - costs
                lost = logp[rows, picks][:, None] - logp
                ratio = np.where(mask & (saved > 1e-12), lost / np.maximum(saved, 1e-12),
                                 np.inf)
                if not np.isfinite(ratio).any():
                    break
                layer, op = np.unravel_index(int(np.argmin(ratio)), ratio.shape)
                picks[layer] = op
            out.append((arch_of(self.space, [int(i) for i in picks]),
                        float(logp[rows, picks].sum())))
        return out

    def _ranked_archs(self) -> list[tuple[Arch, float]]:
        """The `top` sampled archs, best first, that fit the budget by the table (and,
        with a table measured here, by a measurement here); the fastest candidate,
        flagged, when none does."""
        cands = self.candidates()
        fits = [c for c in cands if self.table_latency(c[0]) <= self.max_latency_ms]
        if not fits:  # a distribution concentrated on slow blocks: its most probable
            known = {self.space.key(a) for a, _ in cands}  # archs under the budget
            extra = [c for c in self.within_budget() if self.space.key(c[0]) not in known]
            cands = sorted(cands + extra, key=lambda c: -c[1])
            fits = [c for c in cands if self.table_latency(c[0]) <= self.max_latency_ms]
        if self.latency_table is None:  # the device decides
            fits = [c for c in (fits or cands)[:VERIFY_MAX]
                    if self._measured(c[0]) <= self.max_latency_ms]
        if fits:
            return fits[:self.top]
        judge = self._measured if self.latency_table is None else self.table_latency
        return [min(cands[:VERIFY_MAX], key=lambda c: judge(c[0]))]

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        self._costs = None

