"""GBDT-NAS (Luo et al. 2020): a gradient-boosted-trees predictor ranks candidates; the top
ranked are evaluated. Options: search-space pruning by feature importance (GBDT-NAS-S) and
predictor pretraining on free statistics of unlabeled architectures (FBNetV3's idea).

The loop (ask/tell; the driver keeps a window of proposals in flight):

1. The first `init` proposals are random (acceptable) architectures.
2. Then the predictor (`predictors.GBDTPredictor`) is fitted on the told trials: features are
   `space.encode()` plus, where the space computes them analytically, log params and log
   FLOPs (trees are invariant to monotone rescaling, so no further normalisation is needed),
   plus (`count_features`) how many decisions pick each candidate, for decisions that share
   a candidate list (e.g. "3 of the 6 NB201 edges are conv3x3": a sum that trees of depth 4
   cannot build from one-hot columns); targets are the told scores turned into quantiles in
   [0, 1] (`labels`, see below).
3. It ranks a candidate pool: the whole space when `space.size() <= ENUMERATE_MAX` (its
   feature matrix is built once per space object and cached), otherwise `pool` candidates
   from a short evolution over the predictor: mutations of the best told architectures plus
   random samples, then mutations of the best predicted ones.
4. Proposals walk down that ranking, skipping what is not acceptable (already in the job,
   known to violate a constraint, or pruned). The model is refitted once `batch` more
   results have been told; proposals made while results are in flight come from the last
   ranking. A share `explore` of proposals is a random architecture or a mutation of one of
   the best told ones instead.

Failed and infeasible trials (score None) are treated as the worst result seen: the quantile
labels give them 0, so the predictor steers away from their neighbourhood.

Pruning (`prune: true`), the schedule: once `PRUNE_START` trials are scored, and then after
every `PRUNE_EVERY` more, each refit may drop one choice. The decisions are ordered by the
GBDT's total gain on their one-hot features; in the most important decision that still has
two or more choices, the choice with the worst mean predicted score over the unpruned pool is
dropped, unless one of the `PROTECT` best told architectures uses it (then the next decision
is tried). A decision keeps at least one choice, and at most half of all removable choices
are ever dropped. Pruned choices leave the ranking and the random/explore proposals (unless
nothing acceptable remains).

Proxy features (`proxies: [names]`, off by default): the candidate pool is scored training-free
before the first trial, through the `proxy` strategy's preparation as `auto` does
(`nas.strategies.proxy_features`: the scores are stored in the database and read back by any
later job; `dataset`, `batch_size`, `proxy_seed` and `proxy_space_args` as for `proxy`). The
pool is then fixed, as the `proxy` strategy's: the whole space when it has at most `pool`
architectures, else `pool` uniform samples (without `pool`: the whole space up to
`ENUMERATE_MAX`, else `POOL` samples); each feature row gains one column per proxy and their
combined rank (mean rank over the pool), unknown values (failed scoring, a told trial outside
the pool) below every score.

Pretraining (`pretrain: true`): before the first label, the predictor is fitted on
`PRETRAIN_SIZE` unlabeled architectures against `pretrain_target` (`flops` or `params`,
computed by the space, `proxy`: the combined proxy score of the pool, with `proxies`, or any
metric `SearchContext.value_of` knows); fewer than `PRETRAIN_MIN` known values means no
pretraining. The labelled fits then continue
the pretrained booster (XGBoost continued training, `pretrain_mode: continue`) or correct its
linearly calibrated prediction used as a base margin (`pretrain_mode: margin`).

State (`state_dict`): the rng state, counters, the told (key, score) list, the trial count of
the last fit and the pruned choices. Models and pools are recomputed on load: every fit is
seeded from (seed, trial count), so the refit gives the same model and ranking. The pool's
proxy scores are not in the snapshot: a resumed job's preparation reads them back from the
database.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from predictors.gbdt import GBDTPredictor
from search_spaces import Arch, SearchSpace
from search_spaces.validation import ArgumentError, flag, int_at_least, number_in, one_of

from ._base import Strategy, TrialView, register_strategy
from .proxy import ProxySearch
from .proxy_features import (
    MISSING,
    PoolScoring,
    ProxyScorer,
    pool_base,
    proxy_columns,
    scorable,
)

#: Spaces up to this size are ranked in full (their encoded matrix is cached).
ENUMERATE_MAX = 20000
#: Pruning schedule (see the module docstring).
PRUNE_START, PRUNE_EVERY, PROTECT = 30, 10, 3
#: Pretraining: unlabeled architectures and the fewest known target values it needs.
PRETRAIN_SIZE, PRETRAIN_MIN = 2000, 20
#: Candidates of a generated pool (or a proxy-scored pool's samples) when `pool` is not given.
POOL = 2000
#: Best told architectures whose mutants seed a generated pool; predicted best that breed.
POOL_PARENTS, POOL_ELITE = 10, 50

_PRETRAIN_MODES = ("continue", "margin")


# ---- features and candidate pools ---------------------------------------------------------
@dataclass
class _Pool:
    """Candidates (DNA rows) with their feature rows; archs built lazily from the DNA."""

    dna: np.ndarray  # (n, decisions) int (float when the space has float decisions)
    X: np.ndarray  # (n, features) float32

    def __len__(self) -> int:
        return len(self.dna)


class _Features:
    """Feature rows of architectures: one-hot encoding [+ choice counts] [+ log params, log
    FLOPs]."""

    def __init__(self, space: SearchSpace, cost: bool, counts: bool = False) -> None:
        self.space = space
        self.cost = cost and _analytic_costs(space)
        self.groups = _choice_groups(space) if counts else None
        self.kind = (self.cost, self.groups is not None)
        self._rows: dict[str, np.ndarray] = {}

    def row(self, arch: Arch, key: str) -> np.ndarray:
        row = self._rows.get(key)
        if row is None:
            row = self.compute(arch)
            self._rows[key] = row
        return row

    def compute(self, arch: Arch) -> np.ndarray:
        enc = np.asarray(self.space.encode(arch), dtype=np.float32)
        parts = [enc]
        if self.groups is not None:
            parts.append(enc @ self.groups)
        if self.cost:
            extra = np.log1p([float(self.space.params(arch)), float(self.space.flops(arch))])
            parts.append(extra.astype(np.float32))
        return np.concatenate(parts) if len(parts) > 1 else enc

    def matrix(self, archs: list[Arch]) -> np.ndarray:
        return np.stack([self.compute(a) for a in archs]) if archs else \
            np.zeros((0, 0), np.float32)


def _choice_groups(space: SearchSpace) -> np.ndarray | None:
    """A (one-hot length x k) matrix summing, over the decisions that share a candidate list
    (e.g. the six edges of an nb201 cell), how many pick each candidate; None when no two
    decisions share one or `encode` is not the plain one-hot."""
    import pyglove as pg

    counts = space.choice_counts()
    if len(space.encode(_first_arch(space))) != sum(counts):
        return None
    points = pg.dna_spec(space.template()).decision_points
    if len(points) != len(counts):
        return None
    # a float decision (pg.floatv) has no candidates: it shares no list
    lists = [tuple(repr(v) for v in (getattr(p, "literal_values", None) or ())) for p in points]
    shared = sorted({c for c in lists if len(c) > 1 and lists.count(c) > 1})
    if not shared:
        return None
    columns = {c: sum(len(x) for x in shared[:i]) for i, c in enumerate(shared)}
    out = np.zeros((sum(counts), sum(len(c) for c in shared)), dtype=np.float32)
    offset = 0
    for candidates, count in zip(lists, counts, strict=True):
        if candidates in columns:
            for j in range(count):
                out[offset + j, columns[candidates] + j] = 1.0
        offset += count
    return out


def _analytic_costs(space: SearchSpace) -> bool:
    """Whether params and FLOPs are cheap (overridden; the base `params` builds a model)."""
    if type(space).params is SearchSpace.params:
        return False
    try:
        arch = _first_arch(space)
        space.params(arch)
        space.flops(arch)
    except NotImplementedError:
        return False
    return True


def _first_arch(space: SearchSpace) -> Arch:
    """The architecture of every decision's first candidate (a float decision's low bound)."""
    floats = space.float_decisions()
    dna = [floats[i].low if i in floats else 0 for i in range(len(space.choice_counts()))]
    return space.from_dna(space.canonical_dna(dna))


def _dna_of_row(space: SearchSpace, row: np.ndarray) -> list[Any]:
    """A pool's DNA row as a DNA list (ints; floats for float decisions)."""
    floats = space.float_decisions()
    return [float(v) if i in floats else int(v) for i, v in enumerate(row)]


_ENUMERATED: weakref.WeakKeyDictionary[SearchSpace, dict[tuple[bool, bool], _Pool]] = \
    weakref.WeakKeyDictionary()


def _enumerated_pool(space: SearchSpace, features: _Features) -> _Pool:
    """The whole space as a pool, built once per space object."""
    per_space = _ENUMERATED.setdefault(space, {})
    pool = per_space.get(features.kind)
    if pool is None:
        archs = list(space.enumerate())
        dna = np.asarray([space.to_dna(a) for a in archs], dtype=np.int64)
        pool = _Pool(dna, features.matrix(archs))
        per_space[features.kind] = pool
    return pool


@register_strategy
class GBDTSearch(PoolScoring, Strategy):
    """GBDT-NAS: rank candidates with gradient-boosted trees fitted on the told trials."""

    name = "gbdt"
    description = ("GBDT-NAS: XGBoost predictor ranks candidates (whole space when small); "
                   "optional search-space pruning, predictor pretraining and training-free "
                   "proxy scores as features")
    enumerate_max: ClassVar[int] = ENUMERATE_MAX

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        init: int = 16,
        batch: int = 5,
        explore: float = 0.1,
        explore_random: float = 0.5,
        pool: int | None = None,
        prune: bool = False,
        pretrain: bool = False,
        pretrain_target: str = "flops",
        pretrain_mode: str = "continue",
        cost_features: bool = True,
        count_features: bool = True,
        trees: int = 100,
        depth: int = 4,
        learning_rate: float = 0.1,
        proxies: Any = None,
        dataset: Any = None,
        batch_size: Any = 20,
        proxy_seed: Any = 0,
        proxy_space_args: Any = None,
    ) -> None:
        super().__init__(space, seed)
        self.seed = seed if isinstance(seed, int) else int(seed)
        self.init = int_at_least("init", init, 1)
        self.batch = int_at_least("batch", batch, 1)
        self.explore = number_in("explore", explore, 0.0, 1.0)
        self.explore_random = number_in("explore_random", explore_random, 0.0, 1.0)
        self.pool_size = int_at_least("pool", POOL if pool is None else pool, 10)
        self.prune = flag("prune", prune)
        self.pretrain = flag("pretrain", pretrain)
        if not isinstance(pretrain_target, str) or not pretrain_target:
            raise ArgumentError("pretrain_target", "must be a metric name (e.g. flops, params), "
                                                   f"got {pretrain_target!r}")
        self.pretrain_target = pretrain_target
        self.pretrain_mode = one_of("pretrain_mode", pretrain_mode, _PRETRAIN_MODES)
        self.model_args = {"n_estimators": int_at_least("trees", trees, 1),
                           "max_depth": int_at_least("depth", depth, 1),
                           "learning_rate": number_in("learning_rate", learning_rate,
                                                       1e-4, 1.0)}
        if depth > 16:
            raise ArgumentError("depth", f"must be an integer in [1, 16], got {depth!r}")
        self.counts = list(space.choice_counts())
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(int)
        one_hot = int(sum(self.counts))
        if self.prune and len(space.encode(_first_arch(space))) != one_hot:
            raise ArgumentError("prune", "needs a space whose encode() is the one-hot of its "
                                         f"decisions; {space.name!r} encodes differently")
        self.features = _Features(space, flag("cost_features", cost_features),
                                  flag("count_features", count_features))
        self.enumerable = space.size() <= self.enumerate_max
        self.scorer = self._proxy_scorer(pool, proxies, dataset, batch_size, proxy_seed,
                                         proxy_space_args)
        if self.pretrain_target == "proxy" and self.scorer is None:
            raise ArgumentError("pretrain_target", "'proxy' needs proxies (the pool's "
                                                   "training-free scores)")
        # persistent state
        self.asked = 0
        self.told: list[tuple[str, float | None]] = []
        self.fit_at = 0  # told trials the current model was fitted on (0: none yet)
        self.pruned: list[tuple[int, int]] = []  # (decision, choice) in the order dropped
        # recomputed state
        self._archs: dict[str, Arch] = {}
        self._pool: _Pool | None = None
        self._ranking: np.ndarray | None = None
        self._cursor = 0
        self._pretrained: GBDTPredictor | None | bool = None  # False: none possible
        self._proxy_pool: _Pool | None = None  # with proxies: the scored pool
        self._proxy_row: dict[str, int] = {}

    def _proxy_scorer(self, pool: int | None, proxies: Any, dataset: Any, batch_size: Any,
                      proxy_seed: Any, proxy_space_args: Any) -> ProxyScorer | None:
        """The `proxy` strategy's scorer of the pool, or None without `proxies`."""
        # checked with or without proxies, as the evaluator would (a typo is refused at submit)
        batch_size = int_at_least("batch_size", batch_size, 2)
        proxy_seed = int_at_least("proxy_seed", proxy_seed, 0)
        if proxies is None:
            for field, value in (("dataset", dataset), ("proxy_space_args", proxy_space_args)):
                if value is not None:
                    raise ArgumentError(field, "is used only with proxies")
            return None
        if not scorable(self.space):
            raise ArgumentError("proxies", f"need a space that builds models; {self.space.name!r}"
                                           " has no model builder")
        if pool is None:
            pool = self.space.size() if self.enumerable else self.pool_size
        return ProxyScorer(self.space, seed=self.seed, pool=pool, proxies=proxies,
                           dataset=dataset, batch_size=batch_size, proxy_seed=proxy_seed,
                           proxy_space_args=proxy_space_args)

    @classmethod
    def canonical_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        return ProxySearch.canonical_args(args) if args.get("proxies") is not None \
            else dict(args)

    # ---- preparation (with proxies): the pool's scores (`PoolScoring`) ------------------------
    def pool_scored(self) -> bool:
        return self._proxy_pool is not None

    def set_scores(self, scores: dict[str, dict[str, float]]) -> None:
        """Take the pool's proxy scores (key -> proxy -> value; missing values allowed): the
        pool's feature rows gain the proxy columns."""
        assert self.scorer is not None
        pool = dict(self.scorer.pool_candidates())
        keys, base = pool_base(self.space, self.features, pool)
        self._archs.update(pool)
        extra, _ = proxy_columns(keys, scores, self.scorer.proxies)
        dtype = np.float64 if self.space.float_decisions() else np.int64
        dna = np.asarray([self.space.to_dna(pool[k]) for k in keys], dtype=dtype)
        self._proxy_pool = _Pool(dna, np.concatenate([base, extra], axis=1))
        self._proxy_row = {k: i for i, k in enumerate(keys)}

    def _row(self, key: str) -> np.ndarray:
        """A told trial's feature row (with proxies: its pool row, or MISSING proxies)."""
        if self._proxy_pool is None:
            return self.features.row(self._arch(key), key)
        i = self._proxy_row.get(key)
        if i is not None:
            return self._proxy_pool.X[i]
        base = self.features.row(self._arch(key), key)
        width = self._proxy_pool.X.shape[1] - len(base)
        return np.concatenate([base, np.full(width, MISSING, dtype=np.float32)])

    # ---- ask / tell ------------------------------------------------------------------------
    def ask(self) -> Arch:
        if self.scorer is not None and self._proxy_pool is None:
            raise RuntimeError("gbdt: ask() before the pool's proxy scores were restored")
        self.asked += 1
        if self.asked <= self.init or self._scored() < 2:
            return self._random()
        if self.explore and self.rng.random() < self.explore:
            return self._exploration()
        self._ensure_ranking()
        arch = self._next_ranked()
        return arch if arch is not None else self._random()

    def tell(self, trial: TrialView) -> None:
        score = trial.score
        if score is not None and not math.isfinite(score):
            score = None
        self.told.append((trial.key, score))
        self._archs[trial.key] = trial.arch

    # ---- proposals ---------------------------------------------------------------------------
    def _scored(self) -> int:
        return sum(s is not None for _, s in self.told)

    def _allowed_dna(self, dna: list[int]) -> bool:
        if not self.pruned:
            return True
        active = self.space.active(dna)
        return not any(active[d] and dna[d] == c for d, c in self.pruned)

    def _allowed(self, arch: Arch) -> bool:
        return self._allowed_dna(self.space.to_dna(arch))

    def _draw(self, propose: Any, fallback: Any = None) -> Arch:
        """An acceptable, unpruned proposal; when the unpruned part of the space has nothing
        acceptable left, pruning is given up for this proposal (`fallback` proposes from
        the whole space)."""
        arch = self.draw_acceptable(lambda: _retry(propose, self._allowed))
        if self.pruned and not self.acceptable(arch):
            arch = self.draw_acceptable(fallback or (lambda: self.space.sample(self.rng)))
        return arch

    def _random(self) -> Arch:
        return self._draw(lambda: self._sample(self.rng))

    def _sample(self, rng: np.random.Generator) -> Arch:
        """`space.sample`, or with pruned choices a uniform choice among those left."""
        if not self.pruned:
            return self.space.sample(rng)
        gone = set(self.pruned)
        floats = self.space.float_decisions()
        dna: list[Any] = []
        for d, count in enumerate(self.counts):
            if d in floats:  # never pruned
                dna.append(floats[d].sample(rng))
                continue
            left = [c for c in range(count) if (d, c) not in gone]
            dna.append(left[int(rng.integers(len(left)))])
        return self.space.from_dna(self.space.canonical_dna(dna))

    def _exploration(self) -> Arch:
        best = self._best_told(PROTECT)
        if not best or self.rng.random() < self.explore_random:
            return self._random()
        parent = best[int(self.rng.integers(len(best)))]
        return self._draw(lambda: self.space.mutate(parent, self.rng),
                          lambda: self.space.mutate(parent, self.rng))

    def _best_told(self, k: int, upto: int | None = None) -> list[Arch]:
        told = self.told if upto is None else self.told[:upto]
        scored = [(s, i) for i, (_, s) in enumerate(told) if s is not None]
        scored.sort(key=lambda t: (-t[0], t[1]))
        return [self._arch(told[i][0]) for _, i in scored[:k]]

    def _arch(self, key: str) -> Arch:
        arch = self._archs.get(key)
        if arch is None:
            arch = self.space.from_key(key)
            self._archs[key] = arch
        return arch

    def _next_ranked(self) -> Arch | None:
        assert self._ranking is not None and self._pool is not None
        while self._cursor < len(self._ranking):
            i = int(self._ranking[self._cursor])
            self._cursor += 1
            arch = self.space.from_dna(_dna_of_row(self.space, self._pool.dna[i]))
            if self.acceptable(arch):
                return arch
        return None

    # ---- the model ---------------------------------------------------------------------------
    def _ensure_ranking(self) -> None:
        due = len(self.told) - self.fit_at >= self.batch or self.fit_at == 0
        if self._ranking is not None and not due:
            return
        if due:
            self.fit_at = len(self.told)
            self._fit_and_rank(self.fit_at, update_pruning=self.prune)
        else:  # restored from a state_dict: the same fit again
            self._fit_and_rank(self.fit_at, update_pruning=False)

    def _fit_and_rank(self, n: int, update_pruning: bool) -> None:
        keys = [k for k, _ in self.told[:n]]
        X = np.stack([self._row(k) for k in keys])
        y = self.labels([s for _, s in self.told[:n]])
        pretrained = self._pretrained_model()
        model = GBDTPredictor(seed=_seed(self.seed, 1, n), init_model=(
            pretrained if pretrained is not None and self.pretrain_mode == "continue" else None),
            **self.model_args)
        margin = None
        if pretrained is not None and self.pretrain_mode == "margin":
            a, b = _calibrate(pretrained.predict(X), y)
            margin = (a, b)
            model.fit(X, y, base_margin=a * pretrained.predict(X) + b)
        else:
            model.fit(X, y)
        pool = self._make_pool(n, model, margin, pretrained)
        pred = self._predict(model, pool.X, margin, pretrained)
        if update_pruning:
            self._update_pruning(model, pool, pred, n)
        mask = self._pruned_mask(pool)
        order = np.argsort(-pred, kind="stable")
        self._pool = pool
        self._ranking = order[~mask[order]]
        self._cursor = 0

    @staticmethod
    def _predict(model: GBDTPredictor, X: np.ndarray, margin: tuple[float, float] | None,
                 pretrained: GBDTPredictor | None) -> np.ndarray:
        if margin is None:
            return model.predict(X)
        assert pretrained is not None
        return model.predict(X, base_margin=margin[0] * pretrained.predict(X) + margin[1])

    @staticmethod
    def labels(scores: list[float | None]) -> np.ndarray:
        """Targets: the scores' quantiles in [0, 1] (ties share their mean rank), failed or
        infeasible trials (None) tied with the worst score."""
        values = np.asarray([s for s in scores if s is not None], dtype=np.float64)
        worst = float(values.min())
        return _quantiles(np.asarray([worst if s is None else s for s in scores],
                                     dtype=np.float64))

    def _make_pool(self, n: int, model: GBDTPredictor, margin: tuple[float, float] | None,
                   pretrained: GBDTPredictor | None) -> _Pool:
        if self._proxy_pool is not None:
            return self._proxy_pool
        if self.enumerable:
            return _enumerated_pool(self.space, self.features)
        rng = np.random.default_rng(_seed(self.seed, 2, n))
        parents = self._best_told(POOL_PARENTS, upto=n)
        half = self.pool_size // 2
        archs = self._unique(
            [self.space.mutate(parents[i % len(parents)], rng) for i in range(half // 2)]
            + [self._sample(rng) for _ in range(half - half // 2)])
        pred = self._predict(model, self.features.matrix(archs), margin, pretrained)
        elite = [archs[int(i)] for i in np.argsort(-pred, kind="stable")[:POOL_ELITE]]
        children = [self.space.mutate(elite[i % len(elite)], rng)
                    for i in range(self.pool_size - len(archs))]
        archs = self._unique(archs + children)
        dtype = np.float64 if self.space.float_decisions() else np.int64
        dna = np.asarray([self.space.to_dna(a) for a in archs], dtype=dtype)
        return _Pool(dna, self.features.matrix(archs))

    def _unique(self, archs: list[Arch]) -> list[Arch]:
        seen: dict[str, Arch] = {}
        for arch in archs:
            seen.setdefault(self.space.key(arch), arch)
        return list(seen.values())

    # ---- pretraining ---------------------------------------------------------------------------
    def _pretrained_model(self) -> GBDTPredictor | None:
        if not self.pretrain or self._pretrained is False:
            return None
        if self._pretrained is None:
            self._pretrained = self._pretrain() or False
        return self._pretrained or None

    def _pretrain(self) -> GBDTPredictor | None:
        rng = np.random.default_rng(_seed(self.seed, 3, 0))
        if self._proxy_pool is not None:
            return self._pretrain_on(self._proxy_pool, rng)
        if self.enumerable:
            pool = _enumerated_pool(self.space, self.features)
            rows = rng.choice(len(pool), size=min(PRETRAIN_SIZE, len(pool)), replace=False)
            rows.sort()
            archs = [self.space.from_dna(_dna_of_row(self.space, pool.dna[i])) for i in rows]
        else:
            archs = self._unique([self.space.sample(rng) for _ in range(PRETRAIN_SIZE)])
        values = [self._free_value(a) for a in archs]
        kept = [(a, v) for a, v in zip(archs, values, strict=True) if v is not None]
        if len(kept) < PRETRAIN_MIN:
            return None
        X = np.stack([self.features.compute(a) for a, _ in kept])
        y = self.labels([v for _, v in kept])
        model = GBDTPredictor(seed=_seed(self.seed, 4, 0), **self.model_args).fit(X, y)
        return model

    def _pretrain_on(self, pool: _Pool, rng: np.random.Generator) -> GBDTPredictor | None:
        """Pretraining on `PRETRAIN_SIZE` members of the proxy-scored pool (their rows carry
        the proxy columns); `proxy` is their combined score (the last column)."""
        rows = rng.choice(len(pool), size=min(PRETRAIN_SIZE, len(pool)), replace=False)
        rows.sort()
        if self.pretrain_target == "proxy":
            values = [None if pool.X[i, -1] == MISSING else float(pool.X[i, -1]) for i in rows]
        else:
            values = [self._free_value(self.space.from_dna(_dna_of_row(self.space, pool.dna[i])))
                      for i in rows]
        kept = [(int(i), v) for i, v in zip(rows, values, strict=True) if v is not None]
        if len(kept) < PRETRAIN_MIN:
            return None
        X = pool.X[[i for i, _ in kept]]
        y = self.labels([v for _, v in kept])
        return GBDTPredictor(seed=_seed(self.seed, 4, 0), **self.model_args).fit(X, y)

    def _free_value(self, arch: Arch) -> float | None:
        target = self.pretrain_target
        if target in ("flops", "params") and _analytic_costs(self.space):
            return float(self.space.flops(arch) if target == "flops" else self.space.params(arch))
        value = self.context.value_of(self.space.key(arch), target, None)
        return None if value is None or not math.isfinite(value) else float(value)

    # ---- pruning -------------------------------------------------------------------------------
    def _pruned_mask(self, pool: _Pool) -> np.ndarray:
        mask = np.zeros(len(pool), dtype=bool)
        for d, c in self.pruned:
            mask |= pool.X[:, self.offsets[d] + c] > 0.5  # one-hot: active and chosen
        return mask

    def _update_pruning(self, model: GBDTPredictor, pool: _Pool, pred: np.ndarray,
                        n: int) -> None:
        scored = sum(s is not None for _, s in self.told[:n])
        removable = sum(c - 1 for c in self.counts)
        allowed = 0 if scored < PRUNE_START else 1 + (scored - PRUNE_START) // PRUNE_EVERY
        if len(self.pruned) >= min(allowed, removable // 2):
            return
        gain = model.feature_importance()
        importance = [gain[o:o + c].sum() for o, c in zip(self.offsets, self.counts,
                                                           strict=True)]
        protected = {(d, v) for arch in self._best_told(PROTECT, upto=n)
                     for d, v in enumerate(self.space.to_dna(arch))}
        alive = ~self._pruned_mask(pool)
        gone = set(self.pruned)
        for d in sorted(range(len(self.counts)), key=lambda i: (-importance[i], i)):
            if importance[d] <= 0:
                break
            choices = [c for c in range(self.counts[d]) if (d, c) not in gone]
            if len(choices) < 2:
                continue
            means = []
            for c in choices:
                rows = alive & (pool.X[:, self.offsets[d] + c] > 0.5)
                means.append((float(pred[rows].mean()) if rows.any() else math.inf, c))
            worst = min(means)[1]
            if (d, worst) in protected:
                continue
            self.pruned.append((d, worst))
            return

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "seed": self.seed, "asked": self.asked,
                "told": [[k, s] for k, s in self.told], "fit_at": self.fit_at,
                "pruned": [[d, c] for d, c in self.pruned]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.seed = int(state["seed"])
        self.asked = int(state["asked"])
        self.told = [(str(k), None if s is None else float(s)) for k, s in state["told"]]
        self.fit_at = int(state["fit_at"])
        self.pruned = [(int(d), int(c)) for d, c in state["pruned"]]
        self._pool = self._ranking = None
        self._cursor = 0
        self._pretrained = None


def _retry(propose: Any, ok: Any, tries: int = 50) -> Arch:
    """The first of up to `tries` proposals that `ok` accepts, else the last one."""
    arch = propose()
    for _ in range(tries - 1):
        if ok(arch):
            return arch
        arch = propose()
    return arch


def _seed(seed: int, purpose: int, n: int) -> int:
    """A seed for one model or pool, a fixed function of the job seed and the trial count."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, purpose, n]).generate_state(1)[0])


def _quantiles(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1]; ties share their mean rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    end = np.cumsum(counts)
    mean_rank = (end - counts + end - 1) / 2.0
    return mean_rank[inverse.reshape(-1)] / max(len(values) - 1, 1)


def _calibrate(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares (a, b) of y ~ a p + b (a = 0 when p is constant)."""
    spread = float(np.var(p))
    if spread <= 1e-12:
        return 0.0, float(np.mean(y))
    a = float(np.mean((p - p.mean()) * (y - y.mean())) / spread)
    return a, float(y.mean() - a * p.mean())
