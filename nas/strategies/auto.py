"""`auto`: the default strategy. It chooses per job from what the space allows.

On a space that builds models (the `proxy` evaluator can score it):

1. Preparation (as the `proxy` strategy's): a pool is scored training-free, on the job's
   executor, every score stored in the database and reused by any later job. The pool is the
   whole space when it has at most `pool` architectures (default: up to `ENUMERATE_MAX`),
   otherwise `pool` uniform samples (default `SAMPLED_POOL`).
2. The first `init` proposals are the pool's proxy-best (rank voting over the proxies,
   `predictors.combine.mean_rank`), every second one skipped for a random pool member, so
   that the first fit sees some spread.
3. Then an ensemble of `ensemble` gradient-boosted-tree predictors (`predictors.GBDTPredictor`,
   each with its own seed and a bootstrap of the told trials) is fitted on free features:
   the space's encoding, choice counts and log params/FLOPs (as `gbdt`), each proxy's score
   and their combined rank. Targets are the told scores' quantiles (failed and infeasible
   trials tied with the worst). The pool is ranked by the upper confidence bound
   `mean + kappa * std` over the ensemble (most promising and most uncertain first), and
   proposals walk down that ranking, skipping what is not `acceptable` (already in the job,
   known to break a constraint). The ensemble is refitted once `batch` more results are told.
4. When the pool has nothing acceptable left: mutations of the best told trial.

On a space it cannot score (no model builder), or when fewer than `MIN_SCORED` of the pool
got every proxy, it is regularized evolution (`population`, `sample`), the decision kept in
its state. Outside a driver (no preparation run before the first `ask`) it is evolution too.

State (`state_dict`): the mode, the rng, counters, the told (key, score) list and the trial
count of the last fit (and the evolution's state in that mode). The pool's scores are not in
the snapshot: a resumed job's preparation reads them back from the database (nothing is
computed again), and the refit is the same model: every fit is seeded from (seed, trial
count).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from predictors.gbdt import GBDTPredictor
from search_spaces import Arch, SearchSpace
from search_spaces.validation import (
    ArgumentError,
    int_at_least,
    non_negative,
    number_in,
)

from ._base import SearchContext, Strategy, TrialView, register_strategy
from .evolution import RegularizedEvolution
from .gbdt import ENUMERATE_MAX, _Features, _quantiles, _seed
from .proxy import ProxySearch
from .proxy_features import (
    MISSING,
    PoolScoring,
    ProxyScorer,
    complete_keys,
    pool_base,
    proxy_columns,
    scorable,
)

#: The pool when the space is larger than ENUMERATE_MAX and `pool` is not given.
SAMPLED_POOL = 2000
#: Fewest pool members with every proxy for the predictor mode (else evolution).
MIN_SCORED = 10
MODES = ("predictor", "evolution")
@register_strategy
class AutoSearch(PoolScoring, Strategy):
    """Proxy-scored pool + an uncertainty-aware GBDT ensemble; evolution where it cannot
    score."""

    name = "auto"
    description = ("the default: scores a pool training-free (cached in the database), "
                   "evaluates where a GBDT ensemble on encoding + proxies is most promising "
                   "and uncertain; evolution on spaces without a model builder")

    def __init__(self, space: SearchSpace, seed: int = 0, pool: Any = None,
                 proxies: Any = None, dataset: Any = None, batch_size: Any = 20,
                 proxy_seed: Any = 0, proxy_space_args: Any = None, init: int = 10,
                 batch: int = 5, ensemble: int = 5, kappa: float = 1.0,
                 population: int = 20, sample: int = 5, trees: int = 100, depth: int = 4,
                 learning_rate: float = 0.1) -> None:
        super().__init__(space, seed)
        self.seed = int(seed)
        if pool is None:
            pool = space.size() if space.size() <= ENUMERATE_MAX else SAMPLED_POOL
        pool = int_at_least("pool", pool, 2)
        self.init = int_at_least("init", init, 1)
        self.batch = int_at_least("batch", batch, 1)
        self.ensemble = int_at_least("ensemble", ensemble, 1)
        self.kappa = non_negative("kappa", kappa)
        if depth is not None and isinstance(depth, int) and depth > 16:
            raise ArgumentError("depth", f"must be an integer in [1, 16], got {depth!r}")
        self.model_args = {"n_estimators": int_at_least("trees", trees, 1),
                           "max_depth": int_at_least("depth", depth, 1),
                           "learning_rate": number_in("learning_rate", learning_rate,
                                                       1e-4, 1.0)}
        self.evolution = RegularizedEvolution(space, seed, population, sample)
        self.scorer: ProxyScorer | None = None
        if scorable(space):  # else evolution (the proxy arguments are not used)
            self.scorer = ProxyScorer(space, seed=seed, pool=pool, proxies=proxies,
                                  dataset=dataset, batch_size=batch_size,
                                  proxy_seed=proxy_seed, proxy_space_args=proxy_space_args)
        self.features = _Features(space, cost=True, counts=True)
        # persistent state
        self.mode: str | None = None if self.scorer is not None else "evolution"
        self.asked = 0
        self.told: list[tuple[str, float | None]] = []
        self.fit_at = 0
        # recomputed state
        self._keys: list[str] | None = None  # pool keys, row order of _X
        self._X: np.ndarray | None = None
        self._row: dict[str, int] = {}
        self._init_order: list[int] = []
        self._archs: dict[str, Arch] = {}
        self._ranking: np.ndarray | None = None
        self._cursor = 0
        self._exhausted = False

    @classmethod
    def canonical_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        return ProxySearch.canonical_args(args)

    def bind(self, context: SearchContext) -> None:
        super().bind(context)  # and the scorer's (`PoolScoring`)
        self.evolution.bind(context)

    # ---- preparation: the pool's scores (`PoolScoring`) --------------------------------------
    def pool_scored(self) -> bool:
        """In evolution mode, or scored already in this session."""
        return self.mode == "evolution" or self._X is not None

    def set_scores(self, scores: dict[str, dict[str, float]]) -> None:
        """Take the pool's proxy scores (key -> proxy -> value; missing values allowed) and
        decide the mode, unless a restored state decided it already."""
        assert self.scorer is not None
        proxies = self.scorer.proxies
        if self.mode is None:
            enough = len(complete_keys(scores, proxies)) >= MIN_SCORED
            self.mode = "predictor" if enough else "evolution"
        if self.mode == "evolution":
            return
        pool = dict(self.scorer.pool_candidates())
        keys, base = pool_base(self.space, self.features, pool)
        self._archs.update(pool)
        extra, self._init_order = proxy_columns(keys, scores, proxies)
        self._keys, self._row = keys, {k: i for i, k in enumerate(keys)}
        self._X = np.concatenate([base, extra], axis=1)

    # ---- ask / tell --------------------------------------------------------------------------
    def ask(self) -> Arch:
        if self.mode is None:  # nothing prepared (outside a driver): evolution
            self.mode = "evolution"
        if self.mode == "evolution":
            return self.evolution.ask()
        if self._X is None:
            raise RuntimeError("auto: ask() before the pool's scores were restored")
        self.asked += 1
        if self.asked <= self.init or self._scored() < 2:
            arch = self._initial()
            if arch is not None:
                return arch
        elif not self._exhausted:
            self._ensure_ranking()
            arch = self._next_ranked()
            if arch is not None:
                return arch
            self._exhausted = True  # nothing in the pool is acceptable, now or later
        best = self._best_told()
        if best is None:
            return self.draw_acceptable(lambda: self.space.sample(self.rng))
        return self.mutate_or_sample(best)

    def tell(self, trial: TrialView) -> None:
        if self.mode == "evolution":
            self.evolution.tell(trial)
            return
        score = trial.score
        if score is not None and not math.isfinite(score):
            score = None
        self.told.append((trial.key, score))
        self._archs[trial.key] = trial.arch

    def _scored(self) -> int:
        return sum(s is not None for _, s in self.told)

    def _initial(self) -> Arch | None:
        """The proxy-best acceptable pool member, or (every second ask) a random one."""
        assert self._keys is not None
        if self.asked % 2 == 0 or not self._init_order:
            for _ in range(50):
                key = self._keys[int(self.rng.integers(len(self._keys)))]
                arch = self._arch(key)
                if self.acceptable(arch, key):
                    return arch
        for i in self._init_order:
            key = self._keys[i]
            arch = self._arch(key)
            if self.acceptable(arch, key):
                return arch
        return None

    def _next_ranked(self) -> Arch | None:
        assert self._ranking is not None and self._keys is not None
        while self._cursor < len(self._ranking):
            key = self._keys[int(self._ranking[self._cursor])]
            self._cursor += 1
            arch = self._arch(key)
            if self.acceptable(arch, key):
                return arch
        return None

    def _best_told(self) -> Arch | None:
        scored = [(s, i) for i, (_, s) in enumerate(self.told) if s is not None]
        if not scored:
            return None
        _, i = max(scored, key=lambda t: (t[0], -t[1]))
        return self._arch(self.told[i][0])

    def _arch(self, key: str) -> Arch:
        arch = self._archs.get(key)
        if arch is None:
            arch = self.space.from_key(key)
            self._archs[key] = arch
        return arch

    # ---- the ensemble --------------------------------------------------------------------------
    def _ensure_ranking(self) -> None:
        due = self.fit_at == 0 or len(self.told) - self.fit_at >= self.batch
        if self._ranking is not None and not due:
            return
        if due:
            self.fit_at = len(self.told)
        self._rank(self.fit_at)

    def _features_of(self, key: str) -> np.ndarray:
        assert self._X is not None
        i = self._row.get(key)
        if i is not None:
            return self._X[i]
        base = self.features.row(self._arch(key), key)  # outside the pool: no proxies
        return np.concatenate([base, np.full(self._X.shape[1] - len(base), MISSING,
                                             dtype=np.float32)])

    def _rank(self, n: int) -> None:
        """Fit the ensemble on the first `n` told trials; rank the pool by its UCB."""
        assert self._X is not None
        keys = [k for k, _ in self.told[:n]]
        X = np.stack([self._features_of(k) for k in keys])
        y = _labels([s for _, s in self.told[:n]])
        preds = []
        for m in range(self.ensemble):
            rng = np.random.default_rng(_seed(self.seed, 20 + m, n))
            rows = rng.integers(0, n, size=n) if self.ensemble > 1 else np.arange(n)
            model = GBDTPredictor(seed=_seed(self.seed, 40 + m, n), **self.model_args)
            preds.append(model.fit(X[rows], y[rows]).predict(self._X))
        stack = np.stack(preds)
        ucb = stack.mean(axis=0) + self.kappa * stack.std(axis=0)
        self._ranking = np.argsort(-ucb, kind="stable")
        self._cursor = 0

    # ---- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "mode": self.mode, "asked": self.asked,
                 "told": [[k, s] for k, s in self.told], "fit_at": self.fit_at}
        if self.mode == "evolution":
            state["evolution"] = self.evolution.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.mode = state["mode"]
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"auto: unknown mode {self.mode!r} in the state")
        self.asked = int(state["asked"])
        self.told = [(str(k), None if s is None else float(s)) for k, s in state["told"]]
        self.fit_at = int(state["fit_at"])
        if "evolution" in state:
            self.evolution.load_state_dict(state["evolution"])
        self._ranking = None
        self._cursor = 0
        self._exhausted = False


def _labels(scores: list[float | None]) -> np.ndarray:
    """The scores' quantiles in [0, 1], failed/infeasible (None) tied with the worst."""
    values = [s for s in scores if s is not None]
    worst = min(values) if values else 0.0
    return _quantiles(np.asarray([worst if s is None else s for s in scores],
                                 dtype=np.float64))
