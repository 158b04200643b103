"""FBNet-style latency-aware differentiable search (Wu et al., CVPR 2019) on `nb201`; on
`mbconv`, FBNet as published (layer-wise blocks, the paper's loss, architectures sampled from
the final distribution): `fbnet_mbconv.FBNetMBConvSearch`, which this class gives there.

The supernet's forward passes use Gumbel-softmax samples of the op weights per edge, with a
temperature annealed as `temperature * temperature_decay ** epoch` (FBNet: 5.0 x 0.956^epoch).
Weights train on the first half of the training data, alpha (Adam) on the second, with

    loss = CE + latency_weight * E[LAT] / max_latency_ms

(the additive form, chosen over FBNet's `CE * a * log(LAT)^b` because it stays well defined
for sub-millisecond tables and its gradient does not vanish with the CE). E[LAT] is the
expected latency under the softmax of alpha: skeleton + cells_per_stage * sum over stages,
edges and ops of p(op at edge) * latency(op at that stage), from a per-operator look-up
table of the target device: `workers.latency_lut.measure_nb201_lut` of the space (the full-size
network, measured on this CPU once at the start, its operators' sum scaled to 8 whole
networks measured here by `calibrate_nb201_lut`, and kept in the checkpoint) unless
`latency_table` gives one (`{"skeleton_ms", "ops_ms": [[ms per op] per stage], "ops",
"cells_per_stage"}` as the measuring function returns, or a flat `{op: ms}` for the cost of
one edge holding that op across the whole network).

The architecture optimiser is Adam with FBNet's settings (`arch_lr` 0.01, weight decay 5e-4),
not DARTS' 3e-4: the temperature schedule assumes logits that move within a few epochs.

Derivation: the cells in order of alpha-product (sum of log softmax probabilities); the
first whose table latency fits `max_latency_ms` is the answer (the argmax cell when it fits).
With a table measured on this worker, the candidates are also measured as whole networks
(up to `VERIFY_MAX`) and the first that measures within the budget wins: the table is an
estimate, the device decides. `outcome.metrics` hold each derived cell's
`table_latency_ms` (and `measured_latency_ms`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from search_spaces import Arch, SearchSpace
from search_spaces.nb201 import OPS
from search_spaces.validation import ArgumentError

from ._base import register_search
from .darts import DifferentiableSearch, _float_arg
from .mixed import Weights, nb201_ranked

#: Cells measured as whole networks at most, when deriving under a measured table.
VERIFY_MAX = 60


@register_search
class FBNetSearch(DifferentiableSearch):
    """Gumbel-softmax DNAS with an expected-latency penalty and a latency budget."""

    name = "fbnet"
    description = ("FBNet: Gumbel-softmax DNAS with a per-op latency table and a budget "
                   "(mbconv: the paper's CE*a*log(LAT)^b loss, archs sampled from the result)")
    spaces = ("nb201", "mbconv")

    def __new__(cls, space: SearchSpace | None = None, *args: Any, **kwargs: Any) -> Any:
        """On `mbconv`, FBNet as published (`fbnet_mbconv.FBNetMBConvSearch`)."""
        if cls is FBNetSearch and getattr(space, "name", None) == "mbconv":
            from .fbnet_mbconv import FBNetMBConvSearch

            return super().__new__(FBNetMBConvSearch)
        return super().__new__(cls)

    def __init__(self, space: SearchSpace, *, max_latency_ms: float | None = None,
                 latency_table: dict[str, Any] | None = None, latency_weight: float = 0.2,
                 temperature: float = 5.0, temperature_decay: float = 0.956,
                 arch_lr: float = 0.01, arch_weight_decay: float = 5e-4,
                 latency_alpha: Any = None, latency_beta: Any = None, samples: Any = None,
                 **kwargs: Any) -> None:
        # latency_alpha, latency_beta, samples: FBNet as published, on mbconv only (the
        # subclass `__new__` gives there); named here so that argument checks know them
        for field, value in (("latency_alpha", latency_alpha), ("latency_beta", latency_beta),
                             ("samples", samples)):
            if value is not None:
                raise ArgumentError(field, "is for fbnet on mbconv (FBNet's loss and sampled "
                                           "derivation); on nb201 use latency_weight")
        super().__init__(space, arch_lr=arch_lr, arch_weight_decay=arch_weight_decay, **kwargs)
        if max_latency_ms is None:
            raise ArgumentError("max_latency_ms", "must be given (the latency budget in ms)")
        self.max_latency_ms = _float_arg("max_latency_ms", max_latency_ms, positive=True)
        self.latency_weight = _float_arg("latency_weight", latency_weight)
        self.temperature = _float_arg("temperature", temperature, positive=True)
        self.temperature_decay = _float_arg("temperature_decay", temperature_decay,
                                            positive=True)
        self.latency_table = None if latency_table is None else \
            normalise_table(latency_table)
        self.lut: dict[str, Any] | None = self.latency_table
        self._edge_cost: torch.Tensor | None = None
        self.measured_ms: dict[str, float] = {}  # whole networks measured when deriving

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "max_latency_ms": self.max_latency_ms,
                "latency_weight": self.latency_weight, "temperature": self.temperature,
                "temperature_decay": self.temperature_decay,
                "latency_table": self.latency_table or "measured"}

    # ---- latency --------------------------------------------------------------------------
    def _ensure_lut(self) -> dict[str, Any]:
        if self.lut is None:
            from workers.latency_lut import calibrate_nb201_lut, measure_nb201_lut

            lut = None
            if self.ranks.rank == 0:  # on N ranks, rank 0 measures and every rank uses it
                with self.ranks.local():
                    lut = calibrate_nb201_lut(measure_nb201_lut(self.space, threads=self.threads),
                                              self.space, seed=self.seed, threads=self.threads)
            self.lut = self.ranks.broadcast(lut)
        return self.lut

    def _setup(self) -> None:
        super()._setup()
        self.tau = self.temperature
        self.lut = self.latency_table  # a measured table is measured on first use
        self._edge_cost: torch.Tensor | None = None

    @property
    def edge_cost(self) -> torch.Tensor:
        """ms that one edge holding each op (in `OPS` order) adds to the whole network."""
        if self._edge_cost is None:
            lut = self._ensure_lut()
            index = [lut["ops"].index(op) for op in OPS]
            per_op = np.asarray(lut["ops_ms"], dtype=np.float64)[:, index].sum(axis=0)
            scale = lut.get("scale", 1.0) * lut["cells_per_stage"]
            self._edge_cost = torch.tensor(per_op * scale,
                                           dtype=torch.float32, device=self.device)
        return self._edge_cost

    def table_latency(self, arch: Arch) -> float:
        """The table's predicted latency (ms) of a cell."""
        from workers.latency_lut import predict_from_lut

        return float(predict_from_lut(self._ensure_lut(), arch["ops"]))

    def expected_latency(self) -> torch.Tensor:
        """E[LAT] under the softmax of alpha (differentiable)."""
        probs = torch.softmax(self.arch.alpha["cell"], dim=-1)
        return self._ensure_lut()["skeleton_ms"] + (probs * self.edge_cost).sum()

    # ---- training ----------------------------------------------------------------------
    def _weights(self) -> Weights:
        logits = self.arch.alpha["cell"]
        u = torch.rand(logits.shape, device=logits.device).clamp_(1e-10, 1.0 - 1e-7)
        gumbel = -torch.log(-torch.log(u))
        return {"cell": torch.softmax((logits + gumbel) / self.tau, dim=-1)}

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        self.tau = self.temperature * self.temperature_decay ** epoch
        return super()._train_epoch(epoch)

    def _arch_step(self, xw: torch.Tensor, yw: torch.Tensor, xa: torch.Tensor,
                   ya: torch.Tensor) -> None:
        self.net.train()
        loss = self._arch_loss(self.net, xa, ya) + \
            self.latency_weight * self.expected_latency() / self.max_latency_ms
        params = list(self.arch.parameters())
        for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
            p.grad = g
        self.arch_opt.step()
        self.arch_opt.zero_grad(set_to_none=True)

    def _epoch_extras(self) -> dict[str, Any]:
        argmax = self.current_arch()
        return {"temperature": self.tau,
                "expected_latency_ms": float(self.expected_latency().detach().cpu()),
                "argmax_table_latency_ms": self.table_latency(argmax)}

    # ---- derivation ------------------------------------------------------------------------
    def _ranked_archs(self) -> list[tuple[Arch, float]]:
        """The `top` best cells by alpha-product that fit the budget (the fastest cell if
        none does)."""
        probs, _ = self.arch.numpy()
        grid, scores = nb201_ranked(probs["cell"])
        per_edge = self.edge_cost.detach().cpu().numpy().astype(np.float64)
        latency = self._ensure_lut()["skeleton_ms"] + per_edge[grid].sum(axis=1)
        fits = np.flatnonzero(latency <= self.max_latency_ms)
        if self.latency_table is None and len(fits):  # the table was measured on this worker
            fits = self._verified(grid, fits)
        chosen = fits[:self.top] if len(fits) else [int(np.argmin(latency))]
        return [(self.space.from_dna([int(i) for i in grid[j]]), float(scores[j]))
                for j in chosen]

    def _verified(self, grid: np.ndarray, fits: np.ndarray) -> np.ndarray:
        """Of the cells the table says fit, in alpha order, those whose whole network also
        measures within the budget here (at most VERIFY_MAX measured; the fastest measured,
        flagged as over budget, when none is). The table is an estimate (about 20% error per
        cell on this CPU); the measurement on the device the budget is for decides."""
        from workers.latency import measure_latency_ms

        kept = []
        for j in fits[:VERIFY_MAX]:
            arch = self.space.from_dna([int(i) for i in grid[j]])
            key = self.space.key(arch)
            if key not in self.measured_ms:
                timing = measure_latency_ms(self.space.build(arch), self.space.input_shape(),
                                            threads=self.threads, repeats=20, warmup=5)
                self.measured_ms[key] = float(timing["median_ms"])
            if self.measured_ms[key] <= self.max_latency_ms:
                kept.append(int(j))
                if len(kept) >= self.top:
                    break
        if kept:
            return np.asarray(kept, dtype=np.int64)
        measured = [(self.measured_ms[self.space.key(self.space.from_dna(
            [int(i) for i in grid[j]]))], int(j)) for j in fits[:VERIFY_MAX]]
        return np.asarray([min(measured)[1]], dtype=np.int64)  # the fastest, flagged

    def _derive(self) -> tuple[list[Arch], list[dict[str, float]]]:
        archs, metrics = super()._derive()
        out = []
        for arch, entry in zip(archs, metrics, strict=True):
            latency = self.table_latency(arch)
            measured = self.measured_ms.get(self.space.key(arch))
            judged = latency if measured is None else measured
            out.append({**entry, "table_latency_ms": latency,
                        **({} if measured is None else {"measured_latency_ms": measured}),
                        "latency_budget_ms": self.max_latency_ms,
                        "meets_budget": float(judged <= self.max_latency_ms)})
        return archs, out

    # ---- checkpoint state ----------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "lut": self.lut}

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        self.lut = state["lut"]
        self._edge_cost = None


def normalise_table(table: Any) -> dict[str, Any]:
    """A user-supplied latency table in the `measure_nb201_lut` form; `ArgumentError` naming
    `latency_table` when it is neither that nor a flat `{op: ms}`."""
    field = "latency_table"
    if not isinstance(table, dict):
        raise ArgumentError(field, f"must be a mapping, got {table!r}")
    if "ops_ms" in table:
        ops = table.get("ops", list(OPS))
        rows = table["ops_ms"]
        if sorted(ops) != sorted(OPS) or not isinstance(rows, list) or not rows or any(
                not isinstance(r, list) or len(r) != len(ops) or not all(map(_ms, r))
                for r in rows):
            raise ArgumentError(f"{field}.ops_ms", "must be a list of per-stage lists of "
                                f"{len(OPS)} latencies (ms) in the order of {field}.ops")
        skeleton, cells = table.get("skeleton_ms", 0.0), table.get("cells_per_stage", 1)
        if not _ms(skeleton) or isinstance(cells, bool) or not isinstance(cells, int) \
                or cells < 1:
            raise ArgumentError(field, "needs skeleton_ms >= 0 and cells_per_stage >= 1")
        return {"skeleton_ms": float(skeleton), "ops_ms": [[float(v) for v in r] for r in rows],
                "ops": list(ops), "cells_per_stage": cells}
    unknown = sorted(set(table) - set(OPS) - {"skeleton_ms"})
    missing = [op for op in OPS if op != "none" and op not in table]
    if unknown or missing or not all(map(_ms, table.values())):
        raise ArgumentError(field, f"must map each of {', '.join(OPS[1:])} (and optionally "
                                   f"none, skeleton_ms) to a latency in ms >= 0; unknown "
                                   f"{unknown}, missing {missing}")
    return {"skeleton_ms": float(table.get("skeleton_ms", 0.0)),
            "ops_ms": [[float(table.get(op, 0.0)) for op in OPS]], "ops": list(OPS),
            "cells_per_stage": 1}


def _ms(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value) and value >= 0

