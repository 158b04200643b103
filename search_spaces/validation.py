"""Checks of a component's arguments (a space's, strategy's, evaluator's, proxy's, ...): one set
shared by every package, in the spirit of scikit-learn's parameter validation.

Each check returns the value (normalised: an `int`, a `float`) or raises `ArgumentError`, a
ValueError naming the argument *relative to the component* (`population`, `dataset.kind`). A
component never writes the spec's section: only the spec layer knows whether the arguments
came from `space_args`, `strategy_args` or `evaluator_args` and prefixes it, so the same
class reports the right field whether a job, the Python API or another component built it.
`UnsupportedSpaceError` is the one error about something outside the component's arguments:
the job's space (the spec names the field `space`).

This module lives in `search_spaces`, the lowest package, so that every package may import it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from numbers import Integral
from typing import Any


class ArgumentError(ValueError):
    """A component argument is wrong. `field`: its path among the component's arguments
    (`population`, `dataset.kind`; empty for the arguments as a whole); `message`: what is
    wrong, phrased to follow the field (`must be a positive integer, got 0`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}" if field else message)
        self.field = field
        self.message = message

    def within(self, parent: str) -> ArgumentError:
        """The same error for an argument nested under `parent` (`dataset` + `kind`)."""
        field = f"{parent}.{self.field}" if self.field else parent
        return type(self)(field, self.message)

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (a Ray task's error) with its field
        return type(self), (self.field, self.message)


class UnsupportedSpaceError(ValueError):
    """The component cannot work on the job's search space (a weight-sharing method made for
    other spaces, an evaluator that needs a torch model). `field`: the spec field to blame,
    `space` unless a space argument would fix it (`space_args.input_shape`)."""

    def __init__(self, message: str, field: str = "space") -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self), self.field)


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Integral) and not isinstance(value, bool)


def int_at_least(field: str, value: Any, low: int) -> int:
    """An integer >= `low` (numpy integers too; returned as `int`)."""
    if not _is_int(value) or value < low:
        raise ArgumentError(field, f"must be an integer >= {low}, got {value!r}")
    return int(value)


def positive_int(field: str, value: Any) -> int:
    """An integer >= 1."""
    if not _is_int(value) or value < 1:
        raise ArgumentError(field, f"must be a positive integer, got {value!r}")
    return int(value)


def integer(field: str, value: Any) -> int:
    """Any integer (a seed)."""
    if not _is_int(value):
        raise ArgumentError(field, f"must be an integer, got {value!r}")
    return int(value)


def flag(field: str, value: Any) -> bool:
    """True or false (not 0 / 1 / "yes")."""
    if not isinstance(value, bool):
        raise ArgumentError(field, f"must be true or false, got {value!r}")
    return value


def number_in(field: str, value: Any, low: float, high: float) -> float:
    """A number in the closed interval [low, high]."""
    if not _is_number(value) or not (low <= value <= high):
        raise ArgumentError(field, f"must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def fraction(field: str, value: Any) -> float:
    """A number in the open interval (0, 1)."""
    if not _is_number(value) or not 0 < value < 1:
        raise ArgumentError(field, f"must be in (0, 1), got {value!r}")
    return float(value)


def non_negative(field: str, value: Any, *, strict: bool = False) -> float:
    """A finite number >= 0 (> 0 where `strict`)."""
    if not _is_number(value) or not math.isfinite(value) or value < 0 or (strict and value == 0):
        bound = "> 0" if strict else ">= 0"
        raise ArgumentError(field, f"must be a number {bound}, got {value!r}")
    return float(value)


def positive_number(field: str, value: Any, *, upper: float | None = None,
                    optional: bool = False) -> float | None:
    """A finite number > 0 (and <= `upper`), or None where `optional`."""
    if value is None and optional:
        return None
    if not _is_number(value) or not math.isfinite(value) or value <= 0 \
            or (upper is not None and value > upper):
        bound = "" if upper is None else f" and <= {upper}"
        raise ArgumentError(field, f"must be a number > 0{bound}"
                                   f"{' or null' if optional else ''}, got {value!r}")
    return float(value)


def one_of(field: str, value: Any, choices: Iterable[Any]) -> Any:
    """One of `choices` (shown comma-separated)."""
    choices = tuple(choices)
    if value not in choices:
        raise ArgumentError(field, f"must be one of {', '.join(map(str, choices))}, "
                                   f"got {value!r}")
    return value


def check_call(target: Any, *args: Any, **kwargs: Any) -> None:
    """`ArgumentError` when `target(*args, **kwargs)` would not fit `target`'s signature: a
    keyword it does not take (named as the field), or a required one missing. Binding first
    tells the user's mistake apart from a TypeError raised inside `target` (a bug of the
    component, which must keep its traceback). A target taking `**kwargs` accepts any keyword
    here (see `check_init_chain`); one without a readable signature passes."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        if not _takes_any_keyword(signature):
            _unknown_keyword(signature, len(args), kwargs)
        raise ArgumentError("", str(exc)) from None


def check_init_chain(cls: type, *args: Any, **kwargs: Any) -> None:
    """`check_call` for a class whose `__init__(..., **kwargs)` hands the keywords it does not
    take to `super().__init__`: each must be a parameter of some `__init__` up the MRO, until
    one that takes no `**kwargs`."""
    check_call(cls, *args, **kwargs)
    if _takes_any_keyword(inspect.signature(cls)):
        _check_forwarded(cls, len(args), kwargs)


def _takes_any_keyword(signature: Any) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())


def _keywords(signature: Any, skip: int = 0) -> list[str]:
    return [name for name, p in list(signature.parameters.items())[skip:]
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _unknown_keyword(signature: Any, positional: int, kwargs: dict[str, Any]) -> None:
    known = _keywords(signature, positional)
    unknown = [k for k in kwargs if k not in signature.parameters]
    if unknown:
        raise ArgumentError(str(unknown[0]), "unknown field; expected one of "
                                             f"{', '.join(known) or 'none'}") from None


def _check_forwarded(cls: type, positional: int, kwargs: dict[str, Any]) -> None:
    known: list[str] = []
    for base in cls.__mro__:
        init = base.__dict__.get("__init__")
        if init is None:
            continue
        signature = inspect.signature(init)
        known += [k for k in _keywords(signature, 1 + positional) if k not in known]
        if not _takes_any_keyword(signature):
            break
    else:
        return
    unknown = [k for k in kwargs if k not in known]
    if unknown:
        raise ArgumentError(str(unknown[0]), f"unknown field; expected one of {', '.join(known)}")
