"""Optuna's samplers as strategies: `tpe` (TPESampler) and `nsga2` (NSGAIISampler).

Both run Optuna's ask/tell API on a private in-memory study whose parameters are the space's
decisions (one `CategoricalDistribution` over the choice indices per entry of
`space.choice_counts()`, a `FloatDistribution` over the bounds of a float decision, named d0,
d1, ...). A proposal is `space.from_dna(raw values)`; for a
conditional space that is the canonical form, but Optuna keeps the raw values it sampled. The
job's database stays the source of truth: the study is a cache that `state_dict` describes and
`load_state_dict` rebuilds.

How the driver's protocol maps onto the study:

- `ask` asks Optuna for a trial. An architecture that is not acceptable (known to the job, or
  known to break a constraint) is never handed out: the strategy finishes that Optuna trial
  itself and asks again, up to `tries` times, then falls back to a uniform acceptable draw
  (`draw_acceptable`), registered in the study with its DNA. A rejected trial is finished as

  * COMPLETE with the known value(s) when the architecture was told completed: Optuna learns
    what it would have learned by evaluating it again;
  * FAIL when it is in flight or was told failed (the original trial already stands for it;
    Optuna ignores failed trials);
  * PRUNED when it is new but known to break a constraint: TPE counts pruned trials among the
    bad ones, which steers it away from the infeasible region.
- Proposals waiting for their result stay RUNNING (TPE's `constant_liar` treats them as bad, so
  a window of proposals in flight does not collapse onto one point).
- `tell` finishes the architecture's trial: COMPLETE with the value(s), or FAIL when the
  trial failed or is infeasible (`score` None), or when a value is unknown or not finite.

Determinism and resume: a fresh sampler, seeded from `self.rng`, is installed before every
ask, so no random state lives in Optuna between asks and the proposals are a function of the
seed, the tells and the study's trials. `state_dict` stores our rng, the ask counter and the
study's trials in creation order (raw DNA, state, values and the sampler's own bookkeeping,
e.g. NSGA-II's generation of each trial and its cached parent populations), RUNNING ones
included; `load_state_dict` re-adds them to a fresh study, so it is the same study again.

Optuna is imported lazily (it costs about a second), and its per-trial INFO logging is turned
down to WARNING on first use: the rejected proposals alone would flood the job's log.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from search_spaces import Arch, SearchSpace
from search_spaces.validation import ArgumentError, flag, int_at_least

from ._base import Strategy, TrialView, register_strategy

if TYPE_CHECKING:
    import optuna

#: Optuna proposals an ask tries before it falls back to a uniform acceptable draw. Each
#: rejected proposal stays in the study (and in `state_dict`). TPE rarely needs more than 4
#: (NB201, 300 trials); NSGA-II's children often repeat their parents, and past 4 tries the
#: retries only grew the state (NB201, 30 seeds: same search quality, a third fewer trials).
TPE_TRIES = 8
NSGA2_TRIES = 4
_SEED_BOUND = 2**31 - 1
_quieted = False


def _optuna() -> Any:
    """The optuna module, imported on first use (with its per-trial logging turned down)."""
    global _quieted
    import optuna

    if not _quieted:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        _quieted = True
    return optuna


# ---- strategy_args validation -------------------------------------------------------------------
def _probability(field: str, value: Any, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not 0.0 <= float(value) <= 1.0:
        extra = " (or null)" if allow_none else ""
        raise ArgumentError(field, f"must be a number in [0, 1]{extra}, got {value!r}")
    return float(value)


def _finite(values: list[float | None] | None) -> list[float] | None:
    """The values as floats when all are known and finite, else None (the trial failed)."""
    if values is None or any(v is None or not math.isfinite(v) for v in values):
        return None
    return [float(v) for v in values]  # type: ignore[arg-type]


# ---- the shared machinery ----------------------------------------------------------------------
class _OptunaStrategy(Strategy):
    """Ask/tell over an Optuna study; subclasses pick the sampler and the objective(s)."""

    def __init__(self, space: SearchSpace, seed: int, tries: int) -> None:
        super().__init__(space, seed)
        self.tries = int_at_least("tries", tries, 1)
        counts = space.choice_counts()
        self._names = [f"d{i}" for i in range(len(counts))]
        self._choices = [tuple(range(c)) for c in counts]
        self._floats = space.float_decisions()
        self.asked = 0
        self._study: optuna.Study | None = None
        self._storage: Any = None  # the study's InMemoryStorage (holds its system attrs)
        # while no study is built: the trials of a loaded state (replayed on first use)
        self._pending_trials: list[list[Any]] = []
        self._pending_attrs: dict[str, Any] = {}
        self._sampler_classes: dict[type, type] = {}
        self._running: dict[str, int] = {}  # key -> Optuna trial number, in flight
        self._told: dict[str, list[float]] = {}  # key -> values, told completed

    # ---- what subclasses provide ----------------------------------------------------------
    def _directions(self) -> list[str]:
        """Optuna directions of the study (bound objectives are known by now)."""
        return ["maximize"]

    def _sampler(self, seed: int) -> Any:
        raise NotImplementedError

    def _values(self, trial: TrialView) -> list[float] | None:
        """What to tell Optuna for a finished trial; None tells it the trial failed."""
        return _finite([trial.score])

    def _kept_trial_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """The sampler's per-trial bookkeeping `state_dict` must keep (none for TPE)."""
        return {}

    # ---- the study ------------------------------------------------------------------------
    def _distributions(self) -> dict[str, Any]:
        distributions = _optuna().distributions
        dist = distributions.CategoricalDistribution
        out = {n: dist(c) for n, c in zip(self._names, self._choices, strict=True)}
        for i, f in self._floats.items():
            out[self._names[i]] = distributions.FloatDistribution(f.low, f.high,
                                                                  log=f.scale == "log")
        return out

    def _fixed_space(self, base: type) -> type:
        """`base` (an Optuna sampler class) with the decisions as its relative search space.

        Every trial of the study suggests every decision, so Optuna's own inference (the
        intersection of all trials' distributions, recomputed over the whole history by each
        fresh sampler) always gives this: computing it took most of an ask at 300 trials. The
        subclass keeps `base`'s name, which NSGA-II uses in its bookkeeping keys."""
        if self._sampler_classes.get(base) is None:
            relative = {n: d for n, d in self._distributions().items() if not d.single()}

            def infer_relative_search_space(sampler: Any, study: Any, trial: Any) -> dict:
                return dict(relative)

            self._sampler_classes[base] = type(base.__name__, (base,), {
                "infer_relative_search_space": infer_relative_search_space,
                "__module__": __name__})
        return self._sampler_classes[base]

    def _key_of(self, dna: list[int]) -> str:
        return self.space.key(self.space.from_dna(list(dna)))

    def _ensure_study(self) -> optuna.Study:
        if self._study is not None:
            return self._study
        optuna = _optuna()
        storage = optuna.storages.InMemoryStorage()
        study = optuna.create_study(storage=storage, sampler=self._sampler(0),
                                    directions=self._directions())
        for name, value in self._pending_attrs.items():
            storage.set_study_system_attr(self._study_id(storage, study), name, value)
        width = len(study.directions)
        distributions = self._distributions()
        state_of = optuna.trial.TrialState
        for number, (dna, state, values, attrs) in enumerate(self._pending_trials):
            if values is not None and len(values) != width:
                raise ValueError(f"the saved study has {len(values)} objective(s) per trial, "
                                 f"the job {width}")
            study.add_trial(optuna.trial.create_trial(
                state=state_of[state], params=dict(zip(self._names, dna, strict=True)),
                distributions=distributions, values=values, system_attrs=attrs))
            if state == "RUNNING":
                self._running[self._key_of(dna)] = number
            elif state == "COMPLETE":
                self._told[self._key_of(dna)] = list(values)
        self._pending_trials, self._pending_attrs = [], {}
        self._study, self._storage = study, storage
        return study

    @staticmethod
    def _study_id(storage: Any, study: optuna.Study) -> int:
        return storage.get_study_id_from_name(study.study_name)

    # ---- ask / tell -------------------------------------------------------------------------
    def ask(self) -> Arch:
        self.asked += 1
        study = self._ensure_study()
        study.sampler = self._sampler(int(self.rng.integers(_SEED_BOUND)))
        distributions = self._distributions()
        for _ in range(self.tries):
            trial = study.ask(distributions)
            dna = [trial.params[n] for n in self._names]
            arch = self.space.from_dna(dna)
            key = self.space.key(arch)
            if self.acceptable(arch, key):
                self._running[key] = trial.number
                return arch
            self._reject(study, trial.number, key)
        arch = self.draw_acceptable(lambda: self.space.sample(self.rng))
        key = self.space.key(arch)
        if self.acceptable(arch, key):  # else the driver discards it: no Optuna trial
            study.enqueue_trial(dict(zip(self._names, self.space.to_dna(arch), strict=True)))
            self._running[key] = study.ask(distributions).number
        return arch

    def _reject(self, study: optuna.Study, number: int, key: str) -> None:
        """Finish an Optuna trial whose architecture is not handed out (module docstring)."""
        state = _optuna().trial.TrialState
        if key in self._told:
            study.tell(number, self._told[key])
        elif self.context.is_known(key):
            study.tell(number, state=state.FAIL)
        else:
            study.tell(number, state=state.PRUNED)

    def tell(self, trial: TrialView) -> None:
        study = self._ensure_study()
        optuna = _optuna()
        values = self._values(trial)
        number = self._running.pop(trial.key, None)
        if number is None:  # not proposed through the study (e.g. a discarded fallback)
            dna = self.space.to_dna(trial.arch)
            study.add_trial(optuna.trial.create_trial(
                state=optuna.trial.TrialState.COMPLETE if values is not None
                else optuna.trial.TrialState.FAIL,
                params=dict(zip(self._names, dna, strict=True)),
                distributions=self._distributions(), values=values))
        elif values is None:
            study.tell(number, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(number, values)
        if values is not None:
            self._told[trial.key] = values

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Our rng and ask counter, and the study: its trials in number order as
        [raw DNA, state, values or null, kept system attrs], and the study's system attrs."""
        if self._study is None:
            trials, attrs = self._pending_trials, self._pending_attrs
        else:
            trials = [[[t.params[n] for n in self._names], t.state.name,
                       None if t.values is None else [float(v) for v in t.values],
                       self._kept_trial_attrs(t.system_attrs)]
                      for t in self._study.get_trials(deepcopy=False)]
            attrs = self._storage.get_study_system_attrs(
                self._study_id(self._storage, self._study))
        return {**super().state_dict(), "asked": self.asked,
                "trials": [list(t) for t in trials], "study_attrs": dict(attrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore our rng; the study is rebuilt from the saved trials on first use (after
        `bind`, which tells the objectives and so the study's directions)."""
        super().load_state_dict(state)
        self.asked = int(state["asked"])
        self._study = None
        self._running, self._told = {}, {}
        self._pending_trials = [list(t) for t in state["trials"]]
        self._pending_attrs = dict(state["study_attrs"])


# ---- the strategies ----------------------------------------------------------------------------
@register_strategy
class TPEStrategy(_OptunaStrategy):
    """Optuna's tree-structured Parzen estimator on the primary score (higher is better; in a
    multi-objective job the other objectives are ignored: use `nsga2` for a front).

    Arguments are TPESampler's. `group` is not offered: every trial suggests every decision, so
    the group decomposition is a single group, i.e. plain multivariate TPE.
    """

    name = "tpe"
    description = "Optuna TPE (multivariate, constant liar) over the space's decisions"

    def __init__(
        self, space: SearchSpace, seed: int = 0, n_startup_trials: int = 10,
        multivariate: bool = True, constant_liar: bool = True,
        n_ei_candidates: int = 24, tries: int = TPE_TRIES,
    ) -> None:
        super().__init__(space, seed, tries)
        self.n_startup_trials = int_at_least("n_startup_trials", n_startup_trials, 0)
        self.multivariate = flag("multivariate", multivariate)
        self.constant_liar = flag("constant_liar", constant_liar)
        self.n_ei_candidates = int_at_least("n_ei_candidates", n_ei_candidates, 1)

    def _sampler(self, seed: int) -> Any:
        base = _optuna().samplers.TPESampler
        # independent TPE has no relative search space: nothing to shortcut
        sampler_class = self._fixed_space(base) if self.multivariate else base
        return sampler_class(
            seed=seed, n_startup_trials=self.n_startup_trials, multivariate=self.multivariate,
            constant_liar=self.constant_liar, n_ei_candidates=self.n_ei_candidates)


@register_strategy
class NSGA2Strategy(_OptunaStrategy):
    """Optuna's NSGA-II over the job's objectives (raw values, directions from their modes).

    With a single objective bound it runs single-objective NSGA-II (a plain elitist GA) on the
    primary score, so it works in any job. A multi-objective trial is told failed when it has
    no score (failed or infeasible) or an objective value is unknown.
    """

    name = "nsga2"
    description = "Optuna NSGA-II: elitist multi-objective GA over the job's objectives"

    def __init__(
        self, space: SearchSpace, seed: int = 0, population_size: int = 20,
        mutation_prob: float | None = None, crossover_prob: float = 0.9,
        swapping_prob: float = 0.5, tries: int = NSGA2_TRIES,
    ) -> None:
        super().__init__(space, seed, tries)
        self.population_size = int_at_least("population_size", population_size, 2)
        self.mutation_prob = _probability("mutation_prob", mutation_prob, allow_none=True)
        self.crossover_prob = _probability("crossover_prob", crossover_prob)
        self.swapping_prob = _probability("swapping_prob", swapping_prob)

    def _multi(self) -> bool:
        return len(self.context.objectives) > 1

    def _directions(self) -> list[str]:
        if not self._multi():
            return ["maximize"]
        return ["maximize" if o.mode == "max" else "minimize" for o in self.context.objectives]

    def _values(self, trial: TrialView) -> list[float] | None:
        if not self._multi():
            return super()._values(trial)
        width = len(self.context.objectives)
        if trial.score is None or trial.objectives is None or len(trial.objectives) != width:
            return None
        return _finite(list(trial.objectives))

    def _kept_trial_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # the generation NSGA-II gave the trial when it was asked (a replayed trial must keep
        # it); "fixed_params" of an enqueued fallback is not needed once the trial exists
        return {k: v for k, v in attrs.items() if k.endswith(":generation")}

    def _sampler(self, seed: int) -> Any:
        return self._fixed_space(_optuna().samplers.NSGAIISampler)(
            seed=seed, population_size=self.population_size, mutation_prob=self.mutation_prob,
            crossover_prob=self.crossover_prob, swapping_prob=self.swapping_prob)
