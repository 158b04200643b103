"""Proxy scores as predictor features, shared by `auto` and `gbdt` (`proxies`).

A pool is scored training-free through the `proxy` strategy's preparation (`ProxyScorer`:
the scores are stored in the database and read back by any later job); each pool member's
feature row is its base row (`gbdt._Features`: encoding, choice counts, log params/FLOPs)
plus one column per proxy and their combined rank (`predictors.combine.mean_rank` over the
members with every proxy). A value not known (scoring failed, or an architecture outside the
pool) is `MISSING`: below every score, so that trees treat it as one more value (the
predictor refuses NaN).
"""

from __future__ import annotations

import math

import numpy as np

from search_spaces import Arch, SearchSpace

from ._base import SearchContext
from .preparation import Evaluations
from .proxy import ProxySearch

#: A proxy feature not known: below every score (see the module docstring).
MISSING = float(np.finfo(np.float32).min)


class ProxyScorer(ProxySearch):
    """The `proxy` strategy's pool, argument checks and preparation, keeping each pool
    member's raw scores (not a registered strategy)."""

    raw: dict[str, dict[str, float]]

    def set_scores(self, scores: dict[str, dict[str, float]]) -> None:
        self.raw = scores
        super().set_scores(scores)


class PoolScoring:
    """The strategy hooks of `auto` and `gbdt` around their `ProxyScorer` (`scorer`, None
    when the strategy scores no pool): `bind` binds the scorer too, `preparation` asks the
    driver to score the pool unless `pool_scored()`, and `prepared` hands the scores to the
    scorer and the scorer's raw scores to `set_scores`. Mixed in before `Strategy`."""

    scorer: ProxyScorer | None

    def bind(self, context: SearchContext) -> None:
        super().bind(context)  # type: ignore[misc]
        if self.scorer is not None:
            self.scorer.bind(context)

    def pool_scored(self) -> bool:
        """Whether this session needs no scores (already taken, or not used)."""
        raise NotImplementedError

    def set_scores(self, scores: dict[str, dict[str, float]]) -> None:
        """Take the pool's proxy scores (key -> proxy -> value; missing values allowed)."""
        raise NotImplementedError

    def preparation(self) -> Evaluations | None:
        """Score the pool (stored scores are read back, not recomputed), unless
        `pool_scored()`."""
        if self.scorer is None or self.pool_scored():
            return None
        return self.scorer.preparation()

    def prepared(self, result: dict[str, dict[str, float]]) -> None:
        assert self.scorer is not None
        self.scorer.prepared(result)
        self.set_scores(self.scorer.raw)


def scorable(space: SearchSpace) -> bool:
    """Whether the `proxy` evaluator can build and run the space's models."""
    if not space.buildable:  # a PyGlove hyper value: no torch model
        return False
    try:
        space.input_shape()
    except NotImplementedError:
        return False
    return True


def finite(value: float) -> float:
    """The value, or MISSING when it is not finite."""
    return float(value) if math.isfinite(value) else MISSING


def complete_keys(scores: dict[str, dict[str, float]], proxies: list[str]) -> list[str]:
    """The scored keys with every proxy (in the scores' order)."""
    return [k for k, v in scores.items() if all(p in v for p in proxies)]


def proxy_columns(keys: list[str], scores: dict[str, dict[str, float]],
                  proxies: list[str]) -> tuple[np.ndarray, list[int]]:
    """The pool's proxy columns (rows in `keys`' order: one per proxy, then the combined
    rank; MISSING where not every proxy is known) and the rows of the complete members,
    proxy-best first."""
    complete = complete_keys(scores, proxies)
    extra = np.full((len(keys), len(proxies) + 1), MISSING, dtype=np.float32)
    row = {k: i for i, k in enumerate(keys)}
    for k in complete:
        extra[row[k], :len(proxies)] = [finite(scores[k][p]) for p in proxies]
    order: list[int] = []
    if complete:
        from predictors.combine import mean_rank

        combined = mean_rank({p: [scores[k][p] for k in complete] for p in proxies})
        extra[[row[k] for k in complete], -1] = combined
        ranked = sorted(range(len(complete)), key=lambda i: (-combined[i], complete[i]))
        order = [row[complete[i]] for i in ranked]
    return extra, order


#: Base feature rows of recent pools (`pool_base`), oldest first.
_POOL_ROWS: dict[tuple, tuple[list[str], np.ndarray]] = {}


def pool_base(space: SearchSpace, features, pool: dict[str, Arch]  # noqa: ANN001
              ) -> tuple[list[str], np.ndarray]:
    """The pool's keys (sorted) and their base feature rows (`features`, a
    `gbdt._Features`), kept for the next job on an equal space and pool (a benchmark runs
    many; the rows cost seconds)."""
    keys = sorted(pool)
    middle = pool[keys[len(keys) // 2]]
    try:
        size = (space.params(middle), space.flops(middle))
    except NotImplementedError:
        size = (space.params(middle), None)
    tag = (type(space).__qualname__, space.name, features.kind, len(keys), keys[0], keys[-1],
           size)
    found = _POOL_ROWS.get(tag)
    if found is None or found[0] != keys:
        found = (keys, features.matrix([pool[k] for k in keys]))
        _POOL_ROWS[tag] = found
        while len(_POOL_ROWS) > 4:
            del _POOL_ROWS[next(iter(_POOL_ROWS))]
    return found
