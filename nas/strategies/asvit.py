"""As-ViT (Chen et al., ICLR 2022, "Auto-scaling Vision Transformers without Training"): a
training-free search of a seed ViT topology, then its scaling rule, on the `vit` space.

1. Topology search (the paper's sec. 3.3, `search/reinforce.py` of VITA-Group/AsViT): at the
   seed size (one block per stage, width `seed_width`), a REINFORCE policy (one categorical
   per topology decision: kernels, attention splits, MLP ratios, heads; logits from N(0,
   1e-3), Adam steps of `lr` on the policy-gradient loss, an exponential-moving-average
   baseline of momentum 0.9) samples a topology per step. Its reward is As-ViT's: the change of each
   measure since the previous sample, divided by the range of that measure over the last
   `buffer` samples, counted against the NTK condition number (trainability: smaller is
   better) and for the number of linear regions (expressivity: larger is better). The seed is
   the policy's most likely topology after `steps` steps.
2. Scaling (sec. 3.4, `search/grow.py`): from the seed, grow step by step. Each step's
   candidates add one block to one stage, or move the width up to one of the next
   `width_steps` candidates, or both; a candidate over the budget (FLOPs / params from
   `max_flops` / `max_params` or the job's constraints on `flops` / `params`, and any job
   constraint known before evaluation, e.g. a predicted latency) is dropped. The candidates
   are ranked by each measure (condition number ascending, linear regions descending) and the
   smallest sum of ranks wins (a tie goes to the measure with the larger relative range, as
   in the reference). Growing stops when no candidate fits.

Proposals: the last scaled model (the largest within the budget) first, then the seed, then
the other scaled models from the largest down; then neighbours of the last. Trials train as
any other. The measures are the registered proxies `te_ntk` (negated condition number) and
`linear_regions`, on a fixed Gaussian minibatch of `batch` examples (As-ViT uses ImageNet
images) and weights drawn with torch seeded by the strategy's seed; scores are memoised per
process (they are a deterministic function of the architecture, the seed and the batch).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from search_spaces import Arch, SearchSpace, ViTSpace
from search_spaces.validation import (
    ArgumentError,
    UnsupportedSpaceError,
    int_at_least,
    positive_int,
    positive_number,
)

from ._base import Strategy, TrialView, register_strategy

#: (space fingerprint, key, seed, batch) -> (condition number, linear regions)
_MEASURES: dict[tuple[str, str, int, int], tuple[float, float]] = {}
TOPOLOGY = ("kernels", "splits", "ratios")
EMA_MOMENTUM = 0.9


def _fingerprint(space: SearchSpace) -> str:
    return repr(sorted((k, v) for k, v in vars(space).items() if not k.startswith("_")))


@register_strategy
class AsViT(Strategy):
    """As-ViT: REINFORCE over ViT topologies rewarded by NTK condition number and linear
    regions (no training), then greedy width/depth scaling of the seed to the budget."""

    name = "asvit"
    description = ("As-ViT: training-free ViT topology search (NTK condition number, linear "
                   "regions) and scaling of width and depth to a FLOPs/params budget")

    def __init__(self, space: SearchSpace, seed: int = 0, steps: int = 60, lr: float = 0.08,
                 buffer: int = 20, batch: int = 8, seed_width: int | None = None,
                 width_steps: int = 2, max_flops: float | None = None,
                 max_params: float | None = None) -> None:
        super().__init__(space, seed)
        if not isinstance(space, ViTSpace):
            raise UnsupportedSpaceError(f"space: the asvit strategy searches the vit space, "
                                        f"not {space.name!r}")
        self.seed = int(seed)
        self.steps = int_at_least("steps", steps, 1)
        self.lr = positive_number("lr", lr)
        self.buffer = int_at_least("buffer", buffer, 2)
        self.batch = int_at_least("batch", batch, 2)
        self.width_steps = positive_int("width_steps", width_steps)
        self.max_flops = positive_number("max_flops", max_flops, optional=True)
        self.max_params = positive_number("max_params", max_params, optional=True)
        widths = space.width_options  # type: ignore[attr-defined]
        if seed_width is None:
            seed_width = min(widths)
        if seed_width not in widths or isinstance(seed_width, bool):
            raise ArgumentError("seed_width", f"must be one of the space's widths "
                                f"{list(widths)}, got {seed_width!r}")
        self.seed_width = int(seed_width)
        self.solved = False
        self.designs: list[str] = []  # proposals in order (keys)
        self.report: dict[str, Any] = {}
        self.next = 0

    # ---- the measures ----------------------------------------------------------------------
    def measures(self, arch: Arch) -> tuple[float, float]:
        """(NTK condition number, number of linear regions) of `arch` at initialisation."""
        key = self.space.key(arch)
        memo = (_fingerprint(self.space), key, self.seed, self.batch)
        if memo not in _MEASURES:
            import torch

            from predictors.proxies import compute_proxies

            gen = torch.Generator().manual_seed(self.seed)
            inputs = torch.randn(self.batch, *self.space.input_shape(arch), generator=gen)
            classes = int(getattr(self.space, "num_classes", 10))
            targets = torch.randint(0, classes, (self.batch,), generator=gen)
            scores = compute_proxies(lambda: self.space.build(arch), (inputs, targets),
                                     ["te_ntk", "linear_regions"], seed=self.seed)
            _MEASURES[memo] = (-scores["te_ntk"], scores["linear_regions"])
        return _MEASURES[memo]

    # ---- 1. topology search (REINFORCE) -------------------------------------------------------
    def _decisions(self) -> list[tuple[str, int | None, tuple[int, ...]]]:
        """(field, stage or None, candidates) of each topology decision."""
        space: Any = self.space
        options = {"kernels": space.kernel_options, "splits": space.split_options,
                   "ratios": (space.ratio_options,) * space.stages}
        out: list[tuple[str, int | None, tuple[int, ...]]] = [
            (f, s, options[f][s]) for f in TOPOLOGY for s in range(space.stages)]
        return out + [("heads", None, space.head_options)]

    def _arch(self, choice: list[int], depths: list[int], width: int) -> Arch:
        arch: Arch = {f: [] for f in TOPOLOGY}
        for (field, _stage, options), i in zip(self._decisions(), choice, strict=True):
            if field == "heads":
                arch["heads"] = options[i]
            else:
                arch[field].append(options[i])
        return {**arch, "depths": list(depths), "width": width}

    def search_topology(self) -> tuple[Arch, list[dict[str, Any]]]:
        """As-ViT's REINFORCE; returns the derived seed and the trace of rewards."""
        decisions = self._decisions()
        logits = [self.rng.normal(0.0, 1e-3, len(o)) for _, _, o in decisions]
        depths = [min(self.space.depth_options)] * self.space.stages  # type: ignore
        buffers: dict[str, list[float]] = {"ntk": [], "lr": []}
        numerator = denominator = 0.0
        adam = _Adam(logits, self.lr)
        trace = []
        for _ in range(self.steps):
            probs = [np.exp(v - v.max()) / np.exp(v - v.max()).sum() for v in logits]
            choice = [int(self.rng.choice(len(p), p=p)) for p in probs]
            arch = self._arch(choice, depths, self.seed_width)
            ntk, regions = self.measures(arch)
            reward = self._reward(buffers, ntk, regions)
            numerator = EMA_MOMENTUM * numerator + (1 - EMA_MOMENTUM) * reward
            denominator = EMA_MOMENTUM * denominator + (1 - EMA_MOMENTUM)
            advantage = reward - numerator / denominator
            grads = []
            for p, c in zip(probs, choice, strict=True):
                grad = p * advantage  # d(-log p(c) * advantage) / d logits
                grad[c] -= advantage
                grads.append(grad)
            adam.step(grads)
            trace.append({"key": self.space.key(arch), "ntk": ntk, "linear_regions": regions,
                          "reward": reward})
        best = [int(np.argmax(v)) for v in logits]
        return self._arch(best, depths, self.seed_width), trace

    def _reward(self, buffers: dict[str, list[float]], ntk: float, regions: float) -> float:
        """As-ViT's reward: -(relative change of the condition number) + (relative change of
        the linear regions); a singular kernel counts as the worst condition number seen."""
        if buffers["ntk"] and not math.isfinite(ntk):
            ntk = max(buffers["ntk"])
        buffers["ntk"].append(ntk)
        buffers["lr"].append(regions)
        if len(buffers["ntk"]) < 2:
            return 0.0
        reward = 0.0
        for name, sign in (("ntk", -1.0), ("lr", 1.0)):
            values = buffers[name][-self.buffer:]
            change = (values[-1] - values[-2]) / (max(values) - min(values) + 1e-6)
            reward += sign * change
        return reward

    # ---- 2. scaling ------------------------------------------------------------------------
    def budget(self) -> tuple[float | None, float | None]:
        """(max FLOPs, max params): strategy_args, tightened by the job's constraints."""
        flops, params = self.max_flops, self.max_params
        for c in self.context.constraints:
            if c.device is None and c.max is not None and c.metric == "flops":
                flops = c.max if flops is None else min(flops, c.max)
            if c.device is None and c.max is not None and c.metric == "params":
                params = c.max if params is None else min(params, c.max)
        return flops, params

    def fits(self, arch: Arch) -> bool:
        flops, params = self.budget()
        if flops is not None and self.space.flops(arch) > flops:
            return False
        if params is not None and self.space.params(arch) > params:
            return False
        return not self.violates(arch)

    def grow_candidates(self, arch: Arch) -> list[Arch]:
        """One more block in one stage, a wider embedding (next `width_steps` candidates), or
        both; only those within the space and the budget."""
        space: Any = self.space
        depth_moves = [None]
        for s, d in enumerate(arch["depths"]):
            larger = [v for v in space.depth_options if v > d]
            if larger:
                depth_moves.append((s, min(larger)))
        widths = sorted(w for w in space.width_options if w > arch["width"])
        width_moves = [None, *widths[:self.width_steps]]
        out = []
        for dm in depth_moves:
            for wm in width_moves:
                if dm is None and wm is None:
                    continue
                depths = list(arch["depths"])
                if dm is not None:
                    depths[dm[0]] = dm[1]
                child = {**arch, "depths": depths, "width": arch["width"] if wm is None else wm}
                if self.fits(child):
                    out.append(child)
        return out

    def pick(self, candidates: list[Arch]) -> Arch:
        """As-ViT's rule: smallest sum of ranks (condition number ascending, regions
        descending; equal values share a rank); a tie goes to the measure with the larger
        relative range, then to the first candidate."""
        values = [self.measures(a) for a in candidates]
        ntk = [v[0] for v in values]
        regions = [-v[1] for v in values]  # descending
        ranks = [sum(r) for r in zip(_dense_ranks(ntk), _dense_ranks(regions), strict=True)]
        best = min(ranks)
        tied = [i for i, r in enumerate(ranks) if r == best]
        if len(tied) > 1:
            spread = {name: (max(v) - min(v)) / max(abs(max(v)), 1e-12)
                      for name, v in (("ntk", ntk), ("lr", regions))}
            measure = ntk if spread["ntk"] >= spread["lr"] else regions
            tied.sort(key=lambda i: (measure[i], i))
        return candidates[tied[0]]

    def scale(self, seed_arch: Arch) -> list[Arch]:
        """The growth path from the seed (the seed excluded), smallest first."""
        path, arch = [], seed_arch
        while True:
            candidates = self.grow_candidates(arch)
            if not candidates:
                return path
            arch = self.pick(candidates)
            path.append(arch)

    # ---- ask / tell ---------------------------------------------------------------------------
    def solve(self) -> None:
        seed_arch, trace = self.search_topology()
        path = self.scale(seed_arch)
        ordered = ([path[-1]] if path else []) + [seed_arch] + path[-2::-1]
        self.designs = [self.space.key(a) for a in ordered]
        ntk, regions = self.measures(seed_arch)
        self.report = {
            "seed": self.space.key(seed_arch), "seed_ntk": ntk, "seed_linear_regions": regions,
            "path": [self.space.key(a) for a in path],
            "budget": {"flops": self.budget()[0], "params": self.budget()[1]},
            "final_reward": trace[-1]["reward"] if trace else 0.0,
        }
        self.solved = True

    def ask(self) -> Arch:
        if not self.solved:
            self.solve()
        while self.next < len(self.designs):
            key = self.designs[self.next]
            self.next += 1
            arch = self.space.from_key(key)
            if self.acceptable(arch, key):
                return arch
        return self.mutate_or_sample(self.space.from_key(self.designs[0]))

    def tell(self, trial: TrialView) -> None:
        """Training-free: the design does not depend on the trials' results."""

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "solved": self.solved, "next": self.next,
                "designs": list(self.designs), "report": self.report}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.solved = bool(state["solved"])
        self.next = int(state["next"])
        self.designs = [str(k) for k in state["designs"]]
        self.report = dict(state["report"])


class _Adam:
    """Adam (Kingma & Ba; torch's defaults: betas 0.9, 0.999, eps 1e-8) on a list of numpy
    logit vectors, updated in place: As-ViT's optimiser of the policy."""

    def __init__(self, params: list[np.ndarray], lr: float) -> None:
        self.params, self.lr, self.t = params, lr, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads: list[np.ndarray]) -> None:
        self.t += 1
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            m_hat, v_hat = m / (1 - 0.9 ** self.t), v / (1 - 0.999 ** self.t)
            p -= self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


def _dense_ranks(values: list[float]) -> list[int]:
    """0 for the smallest value, equal values the same rank, the next value one more."""
    order = sorted(set(values))
    return [order.index(v) for v in values]


__all__ = ["AsViT"]
