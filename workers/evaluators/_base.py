"""The `Evaluator` contract: an architecture in, metrics and measurements out, on a worker."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

from search_spaces import Arch, SearchSpace
from search_spaces.registry import (
    BadReferenceError,
    Registry,
    a_kind_of,
    check_class,
    is_reference,
    resolve_reference,
)
from search_spaces.validation import UnsupportedSpaceError

from ..files import CHECKSUMS, verify_checksums


class EvaluationError(Exception):
    """The architecture cannot be evaluated; the trial is recorded as failed with this text."""


@dataclass
class Measurement:
    device: str
    metric: str
    value: float
    source: str  # measured | benchmark | predicted | imported


@dataclass
class Evaluation:
    metrics: dict[str, float]
    measurements: list[Measurement] = field(default_factory=list)
    params: int | None = None
    flops: int | None = None
    #: The trained model's `state_dict`, serialised with `torch.save` (trained evaluators).
    weights: bytes | None = None
    #: Set (to the reason) when the job's early-stopping rule stopped the trial: it is
    #: stored as `pruned` with `metrics`, its last reported values.
    pruned: str | None = None


def cost_metric_names(space: SearchSpace) -> set[str]:
    """The metrics `exact_costs` reports for the space: `params`, `flops` and its
    `cost_metrics`."""
    return {"params", "flops", *space.cost_metrics}


@dataclass(frozen=True)
class ExactCosts:
    """What `exact_costs` counts for one architecture."""

    params: int
    flops: int
    #: `params`, `flops` and the space's `cost_metrics` (quant: `bitops`, `model_size_kb`),
    #: as floats: the trial's metrics of those names
    metrics: dict[str, float]


def exact_costs(space: SearchSpace, arch: Arch) -> ExactCosts:
    """The space's exact costs of `arch`, counted from the architecture (no training).

    Every built-in evaluator that runs or looks up a model (analytic, benchmark, proxy,
    train) reports them through this one function, so an objective or a constraint on any of
    them works whichever of those evaluators a job uses, and the stored values are the ones
    the driver knows before evaluating (`nas.driver.KnownValues`, which strategies read to
    skip a candidate over a constraint). The `function` evaluator reports what the user's
    function returns."""
    params, flops = int(space.params(arch)), int(space.flops(arch))
    metrics = {"params": float(params), "flops": float(flops)}
    metrics.update((name, float(value)) for name, value in space.costs(arch).items())
    return ExactCosts(params, flops, metrics)


class Evaluator(abc.ABC):
    """Built once per worker process from (space, evaluator_args); `evaluate` per trial."""

    name: ClassVar[str] = ""
    #: one line for `nas evaluators` (a plugin without one shows its docstring's first line)
    description: ClassVar[str] = ""
    #: Cheap evaluators (table look-ups) are sent to workers in batches of many trials.
    cheap: ClassVar[bool] = False
    #: Trials report intermediate values (`function`'s `ctx.report`), so a job may declare
    #: `early_stopping` on them.
    reports_steps: ClassVar[bool] = False
    #: The evaluator builds the space's torch model and feeds it inputs: a space without a
    #: model (`buildable` False: a PyGlove hyper value that is no builder) or without an
    #: input shape is refused in one line when the evaluator is made.
    needs_model: ClassVar[bool] = False

    def __init__(self, space: SearchSpace, **args: Any) -> None:
        self.space = space
        if self.needs_model:
            _check_model(self.name, space)

    @abc.abstractmethod
    def evaluate(self, arch: Arch, key: str) -> Evaluation:
        """Metrics of one architecture; raise `EvaluationError` for an expected failure."""

    @classmethod
    def canonical_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        """`evaluator_args` as the job stores them: every file path made absolute and the
        digest of every file read under `checksums` (`workers.files.with_checksums`), so a
        driver or worker in another folder reads what the submitter checked. The default:
        no files, unchanged."""
        return dict(args)

    @classmethod
    def uses_gpu(cls, args: dict[str, Any]) -> bool:
        """Whether trials built from these `evaluator_args` train on a GPU where there is
        one: on Ray their tasks then ask for a share of the cluster's GPUs."""
        return False

    @classmethod
    def space_args_from_data(cls, args: dict[str, Any]) -> dict[str, Any]:
        """`space_args` these `evaluator_args` imply (e.g. `num_classes` from a dataset's
        labels): the spec layer sets those the job leaves out, so the network built, its
        stored params/FLOPs and its export fit the data. Default: none."""
        return {}

    def metric_names(self) -> set[str] | None:
        """The metrics a completed trial reports with the arguments this evaluator was built
        with (e.g. `test_acc` only when the dataset has a test split); the spec layer
        refuses an objective or constraint on any other. None: not known before
        evaluating (then nothing is refused)."""
        return None

    # ---- a cache of costly values in the database (proxy scores) ---------------------------------
    def cache_device(self) -> str | None:
        """The measurement `device` under which this evaluator stores values worth never
        computing twice (its measurements with that device); None: no cache."""
        return None

    def evaluate_cached(self, arch: Arch, key: str, cached: dict[str, float]) -> Evaluation:
        """`evaluate`, given the values stored earlier under `cache_device()` for this
        architecture (metric -> value); evaluators without a cache ignore them."""
        return self.evaluate(arch, key)

    def devices(self) -> set[str]:
        """Devices whose latency this evaluator reports."""
        return set()

    def known_values(self, device: str, metric: str) -> dict[str, float] | None:
        """Values of a device metric known without evaluating (e.g. a latency table), by
        architecture key; strategies use them to skip candidates that break a constraint."""
        return None


#: The evaluators by name (spec field `evaluator`), with the plugins of `nas.evaluators`.
EVALUATORS: Registry[type[Evaluator]] = Registry("evaluator", "nas.evaluators",
                                                 check=check_class(Evaluator, "evaluator"))


def register_evaluator(cls: type[Evaluator]) -> type[Evaluator]:
    """Class decorator: make an evaluator available by its `name`."""
    return EVALUATORS.decorator()(cls)


def list_evaluators() -> list[str]:
    return EVALUATORS.names()


def evaluator_class(name: str) -> type[Evaluator]:
    """A registered evaluator, or what a `module:attr` reference names: an `Evaluator`
    subclass, or a function, run by the `function` evaluator."""
    if not is_reference(name):
        return EVALUATORS.get(name)
    obj = resolve_reference(name)
    if isinstance(obj, type) and issubclass(obj, Evaluator):
        return obj
    if not callable(obj) or isinstance(obj, type):
        raise BadReferenceError(f"{name!r} is {a_kind_of(obj)}, not an Evaluator subclass "
                                "or a function")
    try:
        from .function import FunctionEvaluator
    except ImportError as exc:
        raise BadReferenceError(f"function evaluators are not available here ({exc})") \
            from None
    return FunctionEvaluator


def get_evaluator(name: str, space: SearchSpace, **args: Any) -> Evaluator:
    """Build an evaluator; the files pinned in `checksums` must be the ones submitted. A
    reference to a function becomes `FunctionEvaluator(space, function=name, **args)`."""
    cls = evaluator_class(name)
    verify_checksums(args.pop(CHECKSUMS, None), "evaluator_args")
    if is_reference(name) and cls is not resolve_reference(name):  # a function
        return cls(space, function=name, **args)  # type: ignore[call-arg]
    return cls(space, **args)


def _check_model(evaluator: str, space: SearchSpace) -> None:
    """UnsupportedSpaceError (one line) when the evaluator cannot build and run the space's
    model."""
    if not space.buildable:
        raise UnsupportedSpaceError(
            f"the {evaluator} evaluator needs a torch model, and space {space.name!r} has none: "
            "it is a PyGlove hyper value, not a pg.symbolize'd builder (a class or function "
            "making a torch.nn.Module)")
    try:
        space.input_shape()
    except NotImplementedError as exc:
        raise UnsupportedSpaceError(f"the {evaluator} evaluator runs the model: {exc}",
                                    "space_args.input_shape") from None
