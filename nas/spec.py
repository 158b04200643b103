"""Job specs: parsed from YAML, every field validated before anything touches the database."""

from __future__ import annotations

import math
import re
import reprlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError
from .strategies._base import Constraint, Objective

FIELDS = (
    "name", "space", "space_args", "strategy", "strategy_args", "evaluator", "evaluator_args",
    "objectives", "constraints", "budget", "parallelism", "batch_size", "executor",
    "max_attempts", "trial_timeout_s", "snapshot_every", "keep_weights", "seed",
    "early_stopping",
)
EXECUTORS = ("ray", "local")
#: The strategy of a spec that names none: chooses per job from what the space allows.
DEFAULT_STRATEGY = "auto"
MAX_NAME = 200  # jobs.name is VARCHAR(200)
MAX_SEED = 2**63 - 1  # jobs.seed is BIGINT
MAX_METRIC = 64  # measurements.metric is VARCHAR(64) (tests/test_spec_limits.py checks both)
MAX_DEVICE = 200  # measurements.device is VARCHAR(200)
MAX_SPEC_BYTES = 1_000_000  # a spec file larger than this is refused unread
MAX_SPEC_VALUES = 10_000  # ... and one holding more values once its YAML aliases are expanded
MAX_ECHO = 80  # characters of a user value quoted back in an error
MAX_WORD = 200  # ... and of a word (a path, a name) in a component's error message


@dataclass(frozen=True)
class JobSpec:
    name: str
    space: str
    strategy: str
    evaluator: str
    objectives: tuple[Objective, ...]
    budget_trials: int | None
    budget_seconds: float | None
    space_args: dict[str, Any] = field(default_factory=dict)
    strategy_args: dict[str, Any] = field(default_factory=dict)
    evaluator_args: dict[str, Any] = field(default_factory=dict)
    constraints: tuple[Constraint, ...] = ()
    parallelism: int = 1
    batch_size: int | None = None
    executor: str = "ray"
    max_attempts: int = 3
    trial_timeout_s: float | None = None
    snapshot_every: int = 50
    keep_weights: int = 10
    seed: int = 0
    #: {rule, metric, mode, grace_steps, reduction_factor, min_trials} or None
    early_stopping: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The canonical form stored in the database (round-trips through `parse_spec`)."""
        data = asdict(self)
        budget = {}
        if self.budget_trials is not None:
            budget["trials"] = data.pop("budget_trials")
        else:
            data.pop("budget_trials")
        if self.budget_seconds is not None:
            budget["seconds"] = data.pop("budget_seconds")
        else:
            data.pop("budget_seconds")
        data["budget"] = budget
        data["objectives"] = [
            {k: v for k, v in asdict(o).items() if v is not None} for o in self.objectives
        ]
        data["constraints"] = [
            {k: v for k, v in asdict(c).items() if v is not None} for c in self.constraints
        ]
        for optional in ("batch_size", "trial_timeout_s", "early_stopping"):
            if data[optional] is None:
                data.pop(optional)
        return data


# ---- field checks -----------------------------------------------------------------------
def short_repr(value: Any, limit: int = MAX_ECHO) -> str:
    """`repr(value)` cut to `limit` characters: an error quotes what it got, never megabytes."""
    shortener = reprlib.Repr()
    shortener.maxstring = shortener.maxother = limit
    text = shortener.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def shorten_words(text: str, limit: int = MAX_WORD) -> str:
    """`text` with every run of non-blank characters longer than `limit` cut short: a
    component's error that quotes a user value (a name, a path) stays one short line."""
    return re.sub(rf"\S{{{limit + 1},}}", lambda m: m.group()[:limit - 3] + "...", text)


def _fail(path: str, expected: str, got: Any) -> SpecError:
    return SpecError(f"spec field '{path}': expected {expected}, got {short_repr(got)}")


def _no_nul(path: str, value: Any) -> None:
    """No NUL character in any string or key of the spec: PostgreSQL cannot store one in a
    text column, so SQLite must not accept it either."""
    if isinstance(value, str):
        if "\x00" in value:
            raise SpecError(f"spec field '{path}': contains a NUL character")
    elif isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            _no_nul(path or "spec", key)
            _no_nul(child, item)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _no_nul(f"{path}[{i}]", item)


def _int(path: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _fail(path, f"an integer >= {minimum}", value)
    if maximum is not None and value > maximum:
        raise _fail(path, f"an integer <= {maximum}", value)
    return value


def _number(path: str, value: Any, positive: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0):
        raise _fail(path, "a positive number" if positive else "a finite number", value)
    return float(value)


def _optional_positive(path: str, value: Any) -> float | None:
    return None if value is None else _number(path, value, positive=True)


def _str(path: str, value: Any, max_length: int | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, "a non-empty string", value)
    if max_length is not None and len(value) > max_length:
        raise SpecError(f"spec field '{path}': expected at most {max_length} characters, "
                        f"got {len(value)}")
    return value


def _name(value: Any) -> str:
    """The job's name: printed by `nas status`/`list`, so no control characters (an escape
    sequence would reach the terminal of whoever looks at the job)."""
    name = _str("name", value, MAX_NAME)
    if not name.isprintable():
        raise _fail("name", "printable text (no control characters)", name)
    return name


def _mapping(path: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, "a mapping", value)
    return dict(value)


def _only_keys(path: str, data: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            name = shorten_words(str(key), MAX_ECHO)
            raise SpecError(f"spec field '{path}.{name}': unknown field; "
                            f"expected one of {', '.join(allowed)}")


def _objectives(value: Any) -> tuple[Objective, ...]:
    if value is None:
        raise SpecError("spec field 'objectives': required (e.g. [{metric: valid_acc, mode: max}])")
    if not isinstance(value, list) or not value:
        raise _fail("objectives", "a non-empty list of {metric, mode[, device]}", value)
    found = []
    for i, item in enumerate(value):
        path = f"objectives[{i}]"
        item = _mapping(path, item)
        _only_keys(path, item, ("metric", "mode", "device"))
        metric = _str(f"{path}.metric", item.get("metric"), MAX_METRIC)
        mode = item.get("mode", "max")
        if mode not in ("max", "min"):
            raise _fail(f"{path}.mode", "'max' or 'min'", mode)
        device = _str(f"{path}.device", item["device"], MAX_DEVICE) if "device" in item else None
        found.append(Objective(metric, mode, device))
    return tuple(found)


def _constraints(value: Any) -> tuple[Constraint, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _fail("constraints", "a list of {metric, device, max|min}", value)
    found = []
    for i, item in enumerate(value):
        path = f"constraints[{i}]"
        item = _mapping(path, item)
        _only_keys(path, item, ("metric", "device", "max", "min"))
        metric = _str(f"{path}.metric", item.get("metric"), MAX_METRIC)
        device = _str(f"{path}.device", item["device"], MAX_DEVICE) if "device" in item else None
        upper = _number(f"{path}.max", item["max"]) if "max" in item else None
        lower = _number(f"{path}.min", item["min"]) if "min" in item else None
        if upper is None and lower is None:
            raise SpecError(f"spec field '{path}': needs 'max' or 'min'")
        if upper is not None and lower is not None and lower > upper:
            raise SpecError(f"spec field '{path}': min {lower:g} is above max {upper:g}; "
                            "no value can satisfy it")
        found.append(Constraint(metric, device, upper, lower))
    return tuple(found)


def _budget(value: Any) -> tuple[int | None, float | None]:
    budget = _mapping("budget", value)
    if not budget:
        raise SpecError("spec field 'budget': required, with 'trials' and/or 'seconds'")
    _only_keys("budget", budget, ("trials", "seconds"))
    trials = _int("budget.trials", budget["trials"], 1) if "trials" in budget else None
    seconds = _number("budget.seconds", budget["seconds"], True) if "seconds" in budget else None
    return trials, seconds


#: The `early_stopping` fields: name -> (check of the value, default; None: required).
EARLY_STOPPING_FIELDS: dict[str, tuple[Any, Any]] = {
    "rule": (lambda p, v: v if v in ("median", "asha") else _fail_raise(p, "'median' or 'asha'",
                                                                        v), None),
    "metric": (lambda p, v: _str(p, v, MAX_METRIC), None),
    "mode": (lambda p, v: v if v in ("max", "min") else _fail_raise(p, "'max' or 'min'", v),
             "max"),
    "grace_steps": (lambda p, v: _int(p, v, 0), 1),
    "reduction_factor": (lambda p, v: _int(p, v, 2), 3),
    "min_trials": (lambda p, v: _int(p, v, 1), 5),
}


def _fail_raise(path: str, expected: str, got: Any) -> Any:
    raise _fail(path, expected, got)


def _early_stopping(value: Any) -> dict[str, Any] | None:
    """The `early_stopping` field with every default filled in (None: off)."""
    if value is None:
        return None
    data = _mapping("early_stopping", value)
    _only_keys("early_stopping", data, tuple(EARLY_STOPPING_FIELDS))
    checked = {}
    for name, (check, default) in EARLY_STOPPING_FIELDS.items():
        path = f"early_stopping.{name}"
        if name not in data and default is None:
            raise SpecError(f"spec field '{path}': required")
        checked[name] = check(path, data.get(name, default))
    return checked


def _build_components(spec: JobSpec) -> JobSpec:
    """Instantiate space, strategy and evaluator once, so their own argument checks run;
    returns the spec with their arguments in canonical form (`_canonical_args`)."""
    from workers.evaluators import evaluator_class, get_evaluator

    from .strategies import get_strategy, strategy_class

    _check_names(spec)
    spec = _canonical_args(spec)
    space = _make_space(spec.space, spec.space_args)
    spec, space = _space_args_from_data(spec, space)
    if "seed" in spec.strategy_args:
        raise SpecError("spec field 'strategy_args.seed': unknown field; the job's top-level "
                        "'seed' seeds the strategy")
    _bind_or_fail("strategy_args", strategy_class(spec.strategy), space, seed=spec.seed,
                  **_without_checksums(spec.strategy_args))
    _construct("strategy_args",
               lambda: get_strategy(spec.strategy, space, seed=spec.seed, **spec.strategy_args))
    _bind_evaluator(spec, space)
    evaluator = _construct(
        "evaluator_args", lambda: get_evaluator(spec.evaluator, space, **spec.evaluator_args))
    if spec.early_stopping is not None and not evaluator_class(spec.evaluator).reports_steps:
        raise SpecError(f"spec field 'early_stopping': the {spec.evaluator} evaluator reports "
                        "no intermediate values (`function` does, through ctx.report)")
    known = evaluator.metric_names()
    devices = evaluator.devices()
    for i, objective in enumerate(spec.objectives):
        if objective.device is not None:
            if objective.device not in devices:
                hint = ", ".join(sorted(devices)) or "none: set evaluator_args.latency_table"
                raise _fail(f"objectives[{i}].device",
                            f"a device the evaluator reports ({hint})", objective.device)
        elif known is not None and objective.metric not in known:
            raise _fail(f"objectives[{i}].metric",
                        f"a metric of the {spec.evaluator} evaluator "
                        f"({', '.join(sorted(known))})", objective.metric)
    for i, constraint in enumerate(spec.constraints):
        if constraint.device is None:
            if known is not None and constraint.metric not in known:
                raise _fail(f"constraints[{i}].metric", f"one of {', '.join(sorted(known))}",
                            constraint.metric)
        elif constraint.device not in devices:
            hint = ", ".join(sorted(devices)) or "none: set evaluator_args.latency_table"
            raise _fail(f"constraints[{i}].device", f"a device the evaluator reports ({hint})",
                        constraint.device)
    return spec


def _check_names(spec: JobSpec) -> None:
    """Space, strategy and evaluator each a registered name or a resolvable reference."""
    from search_spaces import list_spaces, space_class
    from workers.evaluators import evaluator_class, list_evaluators

    from .strategies import list_strategies, strategy_class

    _component("space", spec.space, list_spaces, space_class)
    _component("strategy", spec.strategy, list_strategies, strategy_class)
    _component("evaluator", spec.evaluator, list_evaluators, evaluator_class)


def _component(path: str, name: str, names: Any, lookup: Any) -> None:
    """A registered name (one of `names()`), or a `module:attr` reference that `lookup`
    resolves to the right kind of object; SpecError naming the field otherwise. Resolving a
    reference imports its module: a spec naming a module runs its code, like a Makefile."""
    from search_spaces.registry import BadReferenceError, is_reference

    if not is_reference(name):
        try:
            lookup(name)  # a registered name loads no plugin: a known name imports nothing
        except KeyError:
            raise _fail(path, f"one of {', '.join(names())} (or a module:attr reference)",
                        name) from None
        return
    try:
        lookup(name)
    except (BadReferenceError, KeyError) as exc:
        text = exc.args[0] if exc.args else str(exc)
        raise SpecError(f"spec field '{path}': {shorten_words(str(text))}") from None


def spec_modules(spec: JobSpec | dict[str, Any]) -> list[str]:
    """The modules a spec references (sorted, unique): its space, strategy and evaluator when
    they are `module:attr` references, `evaluator_args.function`, `module:attr` entries of
    `evaluator_args.proxies`, and function datasets (`{kind: function, function: mod:fn}` or
    `py:mod:fn`) in `evaluator_args` or `strategy_args`. Nothing is imported."""
    data = spec.to_dict() if isinstance(spec, JobSpec) else spec
    evaluator_args = data.get("evaluator_args") or {}
    strategy_args = data.get("strategy_args") or {}
    refs = [data.get(k) for k in ("space", "strategy", "evaluator")]
    refs.append(evaluator_args.get("function"))
    proxies = evaluator_args.get("proxies")
    if isinstance(proxies, list | tuple):
        refs.extend(proxies)
    for args in (evaluator_args, strategy_args):
        refs.append(_dataset_function(args.get("dataset")))
    return sorted({ref.partition(":")[0] for ref in refs
                   if isinstance(ref, str) and ":" in ref and ref.partition(":")[0]})


def _dataset_function(dataset: Any) -> str | None:
    """The `module:function` of a function dataset (either form), else None."""
    if isinstance(dataset, str) and dataset.startswith("py:"):
        return dataset[3:]
    if isinstance(dataset, dict) and dataset.get("kind") == "function":
        function = dataset.get("function")
        return function if isinstance(function, str) else None
    return None


def _construct(path: str, make: Any) -> Any:
    """`make()`, its argument errors turned into a SpecError naming the field: an
    `ArgumentError` names it relative to `path` (the component's arguments), an
    `UnsupportedSpaceError` names `space`. A TypeError is not caught: the arguments were bound
    to the component's signature first (`_bind_or_fail`), so one raised here is a bug of the
    component, not the user's mistake, and keeps its traceback."""
    from search_spaces.validation import ArgumentError, UnsupportedSpaceError

    try:
        return make()
    except ArgumentError as exc:
        field = f"{path}.{shorten_words(exc.field, MAX_ECHO)}" if exc.field else path
        raise SpecError(f"spec field '{field}': {shorten_words(exc.message)}") from None
    except UnsupportedSpaceError as exc:
        raise SpecError(f"spec field '{exc.field}': {shorten_words(str(exc))}") from None
    except OSError as exc:  # e.g. a file name too long for the filesystem
        raise SpecError(f"spec field '{path}': {exc.strerror or 'cannot be read'}: "
                        f"{short_repr(exc.filename)}") from None
    except (ValueError, KeyError) as exc:
        # a KeyError's str() is the repr of its message: take the message itself
        text = shorten_words(str(exc.args[0] if isinstance(exc, KeyError) and exc.args
                                 else exc))
        if text.startswith(path):  # a message that names its field itself (older plugins)
            field, rest = text.split(" ", 1)
            raise SpecError(f"spec field '{field.rstrip(':')}': {rest}") from None
        raise SpecError(f"spec field '{path}': {text}") from None


def _bind_or_fail(path: str, target: Any, *args: Any, **kwargs: Any) -> None:
    """SpecError naming the field when `target(*args, **kwargs)` does not fit its signature
    (an argument it does not take, a required one missing): bound before the call, so that a
    TypeError raised inside the constructor is never taken for the user's mistake."""
    from search_spaces.validation import check_call

    _construct(path, lambda: check_call(target, *args, **kwargs))


def _without_checksums(args: dict[str, Any]) -> dict[str, Any]:
    from workers.files import CHECKSUMS

    return {k: v for k, v in args.items() if k != CHECKSUMS}


def _make_space(name: str, space_args: dict[str, Any]) -> Any:
    """The job's space, its arguments bound to the class's signature first."""
    from search_spaces import SearchSpace, get_space, space_class
    from search_spaces.registry import is_reference, resolve_reference

    cls = space_class(name)
    target = resolve_reference(name) if is_reference(name) else cls
    if target is cls:
        _bind_or_fail("space_args", cls, **space_args)
    elif not isinstance(target, SearchSpace):  # a PyGlove value, built as cls(value, **args)
        _bind_or_fail("space_args", cls, target, **space_args)
    return _construct("space_args", lambda: get_space(name, **space_args))


def _bind_evaluator(spec: JobSpec, space: Any) -> None:
    """The evaluator's arguments bound to its signature (a function evaluator takes the
    function's reference as `function`)."""
    from search_spaces.registry import is_reference, resolve_reference
    from workers.evaluators import evaluator_class

    cls = evaluator_class(spec.evaluator)
    args = _without_checksums(spec.evaluator_args)
    if is_reference(spec.evaluator) and cls is not resolve_reference(spec.evaluator):
        args = {"function": spec.evaluator, **args}
    _bind_or_fail("evaluator_args", cls, space, **args)


def _space_args_from_data(spec: JobSpec, space: Any) -> tuple[JobSpec, Any]:
    """Set the `space_args` the evaluator's data implies and the job leaves out (e.g.
    `num_classes` from a dataset's labels), so that the stored spec builds the network that
    is trained: right params and FLOPs, right export. Returns the spec and its space."""
    from workers.evaluators import evaluator_class

    implied = _construct(
        "evaluator_args",
        lambda: evaluator_class(spec.evaluator).space_args_from_data(spec.evaluator_args))
    missing = {k: v for k, v in implied.items()
               if k not in spec.space_args and getattr(space, k, v) != v}
    if not missing:
        return spec, space
    space_args = {**spec.space_args, **missing}
    space = _make_space(spec.space, space_args)
    return replace(spec, space_args=space_args), space


def _canonical_args(spec: JobSpec) -> JobSpec:
    """The spec with strategy and evaluator arguments as they are stored: every file path
    absolute and each file's digest under `checksums`, so what was checked here is what a
    driver or worker started anywhere else reads (or it refuses, naming the file)."""
    from workers.evaluators import evaluator_class

    from .strategies import strategy_class

    strategy_args = _construct(
        "strategy_args", lambda: strategy_class(spec.strategy).canonical_args(spec.strategy_args))
    evaluator_args = _construct(
        "evaluator_args",
        lambda: evaluator_class(spec.evaluator).canonical_args(spec.evaluator_args))
    return replace(spec, strategy_args=strategy_args, evaluator_args=evaluator_args)


def parse_spec(data: Any, check_components: bool = True) -> JobSpec:
    """Validate a spec mapping; raise `SpecError` naming the first wrong field."""
    if not isinstance(data, dict):
        raise SpecError(f"a job spec must be a mapping of fields, got {type(data).__name__}")
    for key in data:
        if key not in FIELDS:
            raise SpecError(f"spec field '{shorten_words(str(key), MAX_ECHO)}': unknown field; "
                            f"expected one of {', '.join(FIELDS)}")
    _no_nul("", data)
    for required in ("space", "evaluator"):
        if required not in data:
            raise SpecError(f"spec field '{required}': required")
    trials, seconds = _budget(data.get("budget"))
    executor = data.get("executor", "ray")
    if executor not in EXECUTORS:
        raise _fail("executor", "'ray' or 'local'", executor)
    batch = data.get("batch_size")
    space = _str("space", data["space"])
    strategy = _str("strategy", data.get("strategy", DEFAULT_STRATEGY))
    spec = JobSpec(
        name=_name(data.get("name") or f"{space}-{strategy}"),
        space=space,
        strategy=strategy,
        evaluator=_str("evaluator", data["evaluator"]),
        objectives=_objectives(data.get("objectives")),
        budget_trials=trials,
        budget_seconds=seconds,
        space_args=_mapping("space_args", data.get("space_args")),
        strategy_args=_mapping("strategy_args", data.get("strategy_args")),
        evaluator_args=_mapping("evaluator_args", data.get("evaluator_args")),
        constraints=_constraints(data.get("constraints")),
        parallelism=_int("parallelism", data.get("parallelism", 1), 1),
        batch_size=None if batch is None else _int("batch_size", batch, 1),
        executor=executor,
        max_attempts=_int("max_attempts", data.get("max_attempts", 3), 1),
        trial_timeout_s=_optional_positive("trial_timeout_s", data.get("trial_timeout_s")),
        snapshot_every=_int("snapshot_every", data.get("snapshot_every", 50), 1),
        keep_weights=_int("keep_weights", data.get("keep_weights", 10), 0),
        seed=_int("seed", data.get("seed", 0), 0, MAX_SEED),
        early_stopping=_early_stopping(data.get("early_stopping")),
    )
    if check_components:
        spec = _build_components(spec)
    return spec


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`--set strategy_args.population=50`: the value is parsed as YAML."""
    data = dict(data)
    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip():
            raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. strategy_args.population=50")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise SpecError(f"--set {short_repr(item)}: the value is not valid YAML") from None
        if _expanded_size(value) > MAX_SPEC_VALUES:
            raise SpecError(f"--set {short_repr(item)}: more than {MAX_SPEC_VALUES:,} values "
                            "once its YAML aliases are expanded")
        keys = path.strip().split(".")
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise SpecError(f"--set {item!r}: '{key}' is not a mapping")
            node[key] = child = dict(child)
            node = child
        node[keys[-1]] = value
    return data


def _expanded_size(data: Any, limit: int = MAX_SPEC_VALUES) -> int:
    """How many values `data` holds with shared (aliased) parts counted every time they
    appear, counting no further than just past `limit`: PyYAML builds a "billion laughs"
    document cheaply by sharing, but anything that walks it (validation, an error quoting
    it, JSON for the database) expands it."""
    count, stack = 0, [data]
    while stack and count <= limit:
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return count


def load_spec_file(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read, override and validate a YAML spec file; SpecError on any problem."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise SpecError(f"spec file {str(path)!r} is larger than {MAX_SPEC_BYTES:,} bytes")
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"spec file {str(path)!r} does not exist") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise SpecError(f"spec file {str(path)!r} cannot be read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError(f"spec file {str(path)!r} is not valid YAML{where}") from None
    if data is None:
        raise SpecError(f"spec file {str(path)!r} is empty")
    if _expanded_size(data) > MAX_SPEC_VALUES:
        raise SpecError(f"spec file {str(path)!r} holds more than {MAX_SPEC_VALUES:,} values "
                        "once its YAML aliases are expanded (an alias bomb?)")
    if isinstance(data, dict) and overrides:
        data = apply_overrides(data, overrides)
    return parse_spec(data)
