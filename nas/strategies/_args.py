"""Checks of `strategy_args` values shared by the strategies: each returns the value or
raises ValueError naming `strategy_args.<field>` (the spec turns that into a one-line error)."""

from __future__ import annotations

from typing import Any


def int_at_least(field: str, value: Any, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"strategy_args.{field} must be an integer >= {low}, got {value!r}")
    return value


def flag(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"strategy_args.{field} must be true or false, got {value!r}")
    return value


def number_in(field: str, value: Any, low: float, high: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) \
            or not (low <= value <= high):
        raise ValueError(f"strategy_args.{field} must be a number in [{low}, {high}], "
                         f"got {value!r}")
    return float(value)


def one_of(field: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"strategy_args.{field} must be one of {', '.join(choices)}, "
                         f"got {value!r}")
    return value
