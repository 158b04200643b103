"""`proxy`: training-free search. Score a large candidate pool with training-free proxies
(seconds per architecture, no training), then spend the job's real evaluations on the best.

Its preparation (`preparation`, see `nas.strategies.preparation`) scores the pool
(`pool_candidates`) with the `proxy` evaluator on the job executor's workers (Ray in
parallel) before the first trial; the driver reuses every score already stored for the same
(architecture, proxy, data) and stores each new one as it arrives, so an interrupted scoring
resumes where it stopped and a second job never computes a score twice. `prepared` adds the
analytic proxies (params, FLOPs) and ranks the pool (`set_scores`); the ranking is then part
of the strategy's state.

The pool may be scored on a smaller network than the one the job evaluates
(`proxy_space_args`, overriding the job's `space_args`): on NAS-Bench-201, one cell per stage
instead of five ranks as well (rank voting of synflow, jacov and params: Spearman 0.915
against 0.924 on 150 cells) at about a third of the time.

Modes (`mode`):
- `top` (NASWOT-style, with real evaluations): propose the pool in order of the combined
  training-free score (`predictors.combine.mean_rank` of the proxies over the pool: rank
  voting), best first; the job's evaluator gives each its real score, so with N real
  evaluations the job keeps the best of the N proxy-best. Past the pool: mutations of the
  best scored trial.
- `evolution`: proxy-warm-started regularized evolution: the first `population` proposals
  are the proxy-best of the pool, then tournament selection and mutation on real scores;
  each trial told without a score (failed, infeasible) is answered by the next proxy-best
  of the pool, so the population fills with live parents (as `evolution` does with random
  samples). In both modes a parent with every neighbour known gives way to a random sample.

Isomorphic cells (`dedup: true`, where the space has a `function_key`, e.g. `nb201`: 5,260
functions among its 15,625 cells; off by default, so that every cell has its own scores): the
pool's cells that compute the same function (dead edges dropped, skips and sums unordered)
are scored once, on one member of the pool (one without dead edges when there is one, else
the first by key), and that member's proxies are given to the others; the analytic proxies
stay each cell's own. Only the scored member's values are stored in the cache. A proxy is a
random function of the initial weights, so another member would score as another draw, and
a proxy that reads every module (MeCo, NASWOT) also counts a member's dead edges; on NB201
this ranks as well (Spearman with test accuracy: docs/benchmarks.md) at a third of the cost.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from search_spaces import Arch, SearchSpace, get_space, space_class
from search_spaces.registry import is_reference
from search_spaces.validation import ArgumentError, check_call, flag, int_at_least, one_of

from ._base import Strategy, TrialView, register_strategy
from .preparation import Evaluations

MODES = ("top", "evolution")
#: Proxies the space computes itself (no network built): never stored, never sent out.
ANALYTIC = ("params", "flops")


@register_strategy
class ProxySearch(Strategy):
    """Rank a pool by training-free proxies; evaluate the best (or evolve from them)."""

    name = "proxy"
    description = ("training-free: score a candidate pool with proxies (cached in the "
                   "database), evaluate the proxy-best, or warm-start evolution with them")

    def __init__(self, space: SearchSpace, seed: int = 0, pool: int = 1000, mode: str = "top",
                 proxies: Any = None, dataset: Any = None, batch_size: Any = 20,
                 proxy_seed: Any = 0, population: int = 20, sample: int = 5,
                 proxy_space_args: Any = None, dedup: Any = False,
                 proxy_device: Any = None) -> None:
        super().__init__(space, seed)
        from workers.evaluators.proxy import ProxyEvaluator

        self.seed = int(seed)

        self.pool_size = int_at_least("pool", pool, 2)
        self.mode = one_of("mode", mode, MODES)
        self.population_size = int_at_least("population", population, 1)
        self.sample_size = int_at_least("sample", sample, 1)
        if self.sample_size > self.population_size:
            raise ArgumentError("sample", f"({sample}) must not exceed population ({population})")
        self.evaluator_args = {k: v for k, v in {
            "proxies": proxies, "dataset": dataset, "batch_size": batch_size,
            "seed": proxy_seed, "device": proxy_device}.items() if v is not None}
        try:  # the proxy evaluator checks these, under its own names (`seed`, `device`)
            evaluator = ProxyEvaluator(space, **self.evaluator_args)
        except ArgumentError as exc:
            head, dot, rest = exc.field.partition(".")
            head = {"seed": "proxy_seed", "device": "proxy_device"}.get(head, head)
            raise ArgumentError(head + dot + rest, exc.message) from None
        self.proxies = list(evaluator.proxies)
        if proxy_space_args is None:
            proxy_space_args = {}
        if not isinstance(proxy_space_args, dict):
            raise ArgumentError("proxy_space_args", "must be a mapping of space_args overrides, "
                                                    f"got {proxy_space_args!r}")
        try:
            if proxy_space_args:  # (a user's space object may have no registered name)
                if not is_reference(space.name):  # a user's space binds its own way
                    check_call(space_class(space.name), **proxy_space_args)
                get_space(space.name, **proxy_space_args)
        except ArgumentError as exc:
            raise exc.within("proxy_space_args") from None
        except ValueError as exc:
            raise ArgumentError("proxy_space_args", f"is refused by the space: {exc}") from None
        self.proxy_space_args = dict(proxy_space_args)
        self.dedup = flag("dedup", dedup) and callable(getattr(space, "function_key", None))
        # state
        self.ranking: list[str] | None = None  # pool keys, proxy-best first
        self.pool_scores: dict[str, float] = {}  # key -> combined score (for reports)
        self.cursor = 0
        self.asked = 0
        self.owed = self.population_size  # warm-start proposals still due (mode evolution)
        self.population: deque[tuple[str, float]] = deque(maxlen=self.population_size)
        self.best: tuple[float, str] | None = None

    @classmethod
    def canonical_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        from workers.datasets import pin_dataset

        return pin_dataset(args, "strategy_args")

    # ---- the pool ---------------------------------------------------------------------------
    @property
    def scored(self) -> bool:
        return self.ranking is not None

    def pool_candidates(self) -> list[tuple[str, Arch]]:
        """The pool (distinct architectures, a fixed function of the seed): the whole space
        when it has at most `pool` architectures, else `pool` uniform samples."""
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, 7])
        found: dict[str, Arch] = {}
        if self.space.size() <= self.pool_size:
            for arch in self.space.enumerate():
                found.setdefault(self.space.key(arch), arch)
        else:
            for _ in range(50 * self.pool_size):
                arch = self.space.sample(rng)
                found.setdefault(self.space.key(arch), arch)
                if len(found) >= self.pool_size:
                    break
        return list(found.items())

    def scored_for(self, candidates: list[tuple[str, Arch]]) -> dict[str, str]:
        """Pool key -> the key of the pool member whose proxies it takes: itself, or with
        `dedup` the chosen member of its isomorphism class (see the module doc)."""
        if not self.dedup:
            return {key: key for key, _ in candidates}
        from search_spaces.nb201 import effective_ops

        classes: dict[str, list[tuple[str, Arch]]] = {}
        for key, arch in candidates:
            classes.setdefault(self.space.function_key(arch), []).append((key, arch))
        chosen: dict[str, str] = {}
        for members in classes.values():
            live = [k for k, a in members
                    if "ops" not in a or effective_ops(a["ops"]) == list(a["ops"])]
            pick = min(live) if live else min(k for k, _ in members)
            chosen.update((key, pick) for key, _ in members)
        return chosen

    def preparation(self) -> Evaluations | None:
        """Score the pool with the `proxy` evaluator (its analytic proxies excepted; with
        `dedup`, one member per isomorphism class)."""
        if self.scored:
            return None
        candidates = self.pool_candidates()
        scored = set(self.scored_for(candidates).values())
        return Evaluations(
            "proxy", self.evaluator_args, [(k, a) for k, a in candidates if k in scored],
            tuple(p for p in self.proxies if p not in ANALYTIC),
            space_args=self.proxy_space_args,
            cancel_note="cancelled by the user while scoring the proxy pool; the scores so "
                        "far are stored and reused on resume")

    def prepared(self, result: dict[str, dict[str, float]]) -> None:
        """Rank the pool by its scores plus the analytic proxies of the scoring network."""
        space = get_space(self.space.name,
                          **{**self.context.space_args, **self.proxy_space_args})
        candidates = self.pool_candidates()
        archs = dict(candidates)
        scores = {}
        for key, source in self.scored_for(candidates).items():
            if source not in result:
                continue
            values = result[source]
            analytic = {p: float(space.params(archs[key]) if p == "params"
                                 else space.flops(archs[key]))
                        for p in self.proxies if p in ANALYTIC}
            scores[key] = {p: v for p, v in (analytic | values).items() if p in self.proxies}
        self.set_scores(scores)

    def set_scores(self, scores: dict[str, dict[str, float]]) -> None:
        """Rank the pool by rank voting over the proxies (architectures whose scoring failed
        are left out)."""
        from predictors.combine import mean_rank

        keys = sorted(k for k, v in scores.items() if all(p in v for p in self.proxies))
        if not keys:
            self.ranking, self.pool_scores = [], {}
            return
        combined = mean_rank({p: [scores[k][p] for k in keys] for p in self.proxies})
        order = sorted(range(len(keys)), key=lambda i: (-combined[i], keys[i]))
        self.ranking = [keys[i] for i in order]
        self.pool_scores = {keys[i]: float(combined[i]) for i in order}

    # ---- ask / tell ------------------------------------------------------------------------------
    def ask(self) -> Arch:
        if self.ranking is None:
            raise RuntimeError("proxy: ask() before the pool was scored")
        self.asked += 1
        warm = self.mode == "top" or self.owed > 0
        self.owed = max(self.owed - 1, 0)
        if warm:
            arch = self._next_ranked()
            if arch is not None:
                return arch
        if self.mode == "evolution" and self.population:
            k = min(self.sample_size, len(self.population))
            picks = self.rng.choice(len(self.population), size=k, replace=False)
            parent_key = max((self.population[int(i)] for i in picks), key=lambda m: m[1])[0]
        elif self.best is not None:
            parent_key = self.best[1]
        else:
            return self.draw_acceptable(lambda: self.space.sample(self.rng))
        return self.mutate_or_sample(self.space.from_key(parent_key))

    def _next_ranked(self) -> Arch | None:
        assert self.ranking is not None
        while self.cursor < len(self.ranking):
            key = self.ranking[self.cursor]
            self.cursor += 1
            arch = self.space.from_key(key)
            if self.acceptable(arch, key):
                return arch
        return None

    def tell(self, trial: TrialView) -> None:
        if trial.score is None:
            self.owed += 1
            return
        self.population.append((trial.key, float(trial.score)))
        if self.best is None or trial.score > self.best[0]:
            self.best = (float(trial.score), trial.key)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ranking": self.ranking, "cursor": self.cursor,
                "asked": self.asked, "owed": self.owed,
                "population": [list(m) for m in self.population],
                "best": list(self.best) if self.best else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.ranking = state["ranking"]
        self.cursor = int(state["cursor"])
        self.asked = int(state["asked"])
        self.owed = int(state.get("owed", max(self.population_size - self.asked, 0)))
        self.population.clear()
        self.population.extend((str(k), float(s)) for k, s in state["population"])
        self.best = (float(state["best"][0]), str(state["best"][1])) if state["best"] else None
