"""Argument errors name the right field: components raise `ArgumentError` naming their own
argument, the spec alone adds `space_args.` / `strategy_args.` / `evaluator_args.`, and a
TypeError raised inside a component's constructor (a bug) is never reported as the user's
mistake. Then every registered component's arguments, given bad values, through the spec."""

from __future__ import annotations

import inspect
import pickle
import re

import pytest

from nas.errors import SpecError
from nas.spec import parse_spec
from nas.strategies import RandomSearch, list_strategies, strategy_class
from search_spaces import list_spaces, space_class
from search_spaces.validation import (
    ArgumentError,
    UnsupportedSpaceError,
    check_call,
    check_init_chain,
    fraction,
    int_at_least,
    number_in,
    one_of,
    positive_int,
    positive_number,
)
from tests.conftest import nb201_spec
from workers.evaluators import evaluator_class, list_evaluators
from workers.weight_sharing import search_class


# ---- the validators ------------------------------------------------------------------------
@pytest.mark.parametrize("check, value, message", [
    (lambda v: positive_int("population", v), 0, "population must be a positive integer, got 0"),
    (lambda v: positive_int("population", v), True, "population must be a positive integer"),
    (lambda v: int_at_least("pool", v, 2), 1.0, "pool must be an integer >= 2, got 1.0"),
    (lambda v: number_in("explore", v, 0.0, 1.0), 1.5, "explore must be a number in [0.0, 1.0]"),
    (lambda v: fraction("dataset.val_fraction", v), 1, "dataset.val_fraction must be in (0, 1)"),
    (lambda v: positive_number("lr", v, optional=True), float("nan"), "lr must be a number > 0 "
                                                                       "or null, got nan"),
    (lambda v: one_of("mode", v, ("top", "evolution")), "best",
     "mode must be one of top, evolution, got 'best'"),
])
def test_validators_name_the_argument(check, value, message):
    with pytest.raises(ArgumentError) as info:
        check(value)
    assert str(info.value).startswith(message)
    assert info.value.field == message.split()[0]
    assert isinstance(info.value, ValueError)  # every `except ValueError` still catches it


def test_validators_return_the_normalised_value():
    assert positive_int("n", 3) == 3 and type(int_at_least("n", 5, 0)) is int
    assert number_in("x", 1, 0, 2) == 1.0 and fraction("f", 0.25) == 0.25
    assert positive_number("x", None, optional=True) is None


def test_an_argument_error_nests_and_pickles_with_its_field():
    error = ArgumentError("kind", "must be one of digits, npz, got 'x'").within("dataset")
    assert (error.field, str(error)) == ("dataset.kind", "dataset.kind must be one of digits, "
                                                         "npz, got 'x'")
    again = pickle.loads(pickle.dumps(error))  # a Ray task's error keeps its field
    assert (type(again), again.field, again.message) == (ArgumentError, error.field,
                                                         error.message)
    space = pickle.loads(pickle.dumps(UnsupportedSpaceError("no model", "space_args")))
    assert (str(space), space.field) == ("no model", "space_args")


# ---- binding before the call ---------------------------------------------------------------
class _Parent:
    def __init__(self, space, *, seed=0, epochs=1):  # noqa: ANN001
        self.space, self.seed, self.epochs = space, seed, epochs


class _Child(_Parent):
    def __init__(self, space, *, order=1, **kwargs):  # noqa: ANN001, ANN003
        super().__init__(space, **kwargs)
        self.order = order


def test_check_call_names_an_unknown_keyword_and_a_missing_argument():
    check_call(_Parent, "space", seed=1, epochs=2)
    with pytest.raises(ArgumentError, match="expected one of seed, epochs") as info:
        check_call(_Parent, "space", epoch=2)
    assert info.value.field == "epoch"
    with pytest.raises(ArgumentError, match="missing a required argument") as info:
        check_call(_Parent)
    assert info.value.field == ""


def test_check_init_chain_follows_kwargs_to_the_base_classes():
    check_call(_Child, "space", nonsense=1)  # **kwargs: the top signature takes anything
    check_init_chain(_Child, "space", order=2, epochs=3)
    with pytest.raises(ArgumentError, match="order, seed, epochs") as info:
        check_init_chain(_Child, "space", nonsense=1)
    assert info.value.field == "nonsense"


class BuggyStrategy(RandomSearch):
    """A strategy with a bug: a TypeError of its own, raised inside its constructor."""

    name = "buggy-test-argument-errors"

    def __init__(self, space, seed=0, width=1):  # noqa: ANN001
        super().__init__(space, seed)
        self.width = len(width)  # TypeError for an int: the component's bug


def test_a_type_error_inside_a_constructor_is_not_the_users_mistake():
    spec = nb201_spec(strategy="tests.test_argument_errors:BuggyStrategy", strategy_args={})
    with pytest.raises(TypeError, match="has no len"):
        parse_spec(spec)  # the bug surfaces with its traceback, not as a spec field
    spec["strategy_args"] = {"widht": 2}  # the user's typo: named as the field
    with pytest.raises(SpecError, match=r"spec field 'strategy_args\.widht': unknown field; "
                                        r"expected one of seed, width"):
        parse_spec(spec)


# ---- every registered component, bad values through the spec ------------------------------
ANALYTIC = {"evaluator": "analytic", "evaluator_args": {},
            "objectives": [{"metric": "params", "mode": "min"}]}


def _evaluator_spec(name: str) -> dict:
    """The rest of a valid spec using evaluator `name`: the arguments its conformance case
    uses (tests/test_evaluator_checks.py), so a new evaluator needs no entry here."""
    from search_spaces import get_space
    from tests.test_evaluator_checks import CASES

    space_args, args, _ = CASES[name]
    metrics = evaluator_class(name)(get_space("nb201", **space_args), **args).metric_names()
    metric = sorted(metrics)[0] if metrics else "any_metric"
    return {"space_args": space_args, "evaluator_args": args,
            "objectives": [{"metric": metric, "mode": "max"}]}


#: strategy -> the rest of a valid spec using it
STRATEGY_SPECS = {"oneshot": {"space": "mbconv", **ANALYTIC},
                  "asvit": {"space": "vit", **ANALYTIC},
                  "tas": {"space": "mbconv", **ANALYTIC},
                  "bossnas": {"space": "hytra", **ANALYTIC},
                  "fbnetv5": {"space": "mbconv", **ANALYTIC},
                  "fbnet": {"strategy_args": {"max_latency_ms": 5.0}}}
BAD_VALUES = [{"not": "valid"}, -7]
#: Arguments taken as `bool(value)`, so any value passes (kept as they were).
LENIENT = {("evaluator_args", "benchmark", "measure_latency"),
           ("evaluator_args", "train", "measure_latency"),
           ("evaluator_args", "train", "save_weights")}


def _arguments(cls: type) -> list[str]:
    """The keyword arguments of `cls` (following `**kwargs` up the MRO), bar space and seed."""
    names: list[str] = []
    for base in cls.__mro__:
        init = base.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        names += [n for n, p in params.items() if n not in ("self", "space", "seed", *names)
                  and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return names


def _cases() -> list:
    cases = []
    for name in list_strategies():
        cls = strategy_class(name)
        method = getattr(cls, "method", "")
        base = {"strategy": name, "strategy_args": {}, **STRATEGY_SPECS.get(name, {})}
        for arg in _arguments(search_class(method) if method else cls):
            cases.append(pytest.param("strategy_args", base, arg, id=f"strategy-{name}-{arg}"))
    for name in list_evaluators():
        base = {"evaluator": name, **_evaluator_spec(name)}
        for arg in _arguments(evaluator_class(name)):
            cases.append(pytest.param("evaluator_args", base, arg, id=f"evaluator-{name}-{arg}"))
    for name in list_spaces():
        base = {"space": name, "space_args": {}, **ANALYTIC}
        for arg in _arguments(space_class(name)):
            cases.append(pytest.param("space_args", base, arg, id=f"space-{name}-{arg}"))
    return cases


def test_every_registered_component_has_a_base_spec():
    bases = {repr(case.values[1]): case.values[1] for case in _cases()}
    for base in bases.values():
        parse_spec(nb201_spec(**base))  # the base is valid: a refusal below is the bad value


@pytest.mark.parametrize("section, base, arg", _cases())
def test_a_bad_argument_is_refused_naming_it(section, base, arg):
    refused = 0
    for bad in BAD_VALUES:
        spec = nb201_spec(**base)
        spec[section] = {**spec[section], arg: bad}
        try:
            parse_spec(spec)
        except SpecError as exc:  # never another exception: that would be a crash
            field = re.match(r"spec field '([^']*)'", str(exc))
            assert field, str(exc)
            assert re.fullmatch(rf"{section}\.{re.escape(arg)}([.\[].*)?", field.group(1)), \
                f"{section}.{arg}={bad!r} is reported as '{field.group(1)}': {exc}"
            refused += 1
    component = base.get(section.removesuffix("_args"), "nb201")
    assert refused or (section, component, arg) in LENIENT, \
        f"{section}.{arg} accepts both {BAD_VALUES}"
