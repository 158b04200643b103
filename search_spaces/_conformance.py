"""Shared machinery of the conformance suites (`check_space`, `check_strategy`, ...).

It lives in the bottom package so that every package above can use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def check_runner(kind: str, name: str, subject: Any) -> Callable[..., None]:
    """A function running one check on `subject`; any failure or crash becomes an
    AssertionError naming the `kind` (space, strategy, ...), `name` and the check."""

    def run(check: Callable[..., None], *args: Any) -> None:
        label = check.__name__.removeprefix("_check_").replace("_", " ")
        try:
            check(subject, *args)
        except AssertionError as exc:
            raise AssertionError(f"{kind} {name!r} fails check '{label}': {exc}") from None
        except Exception as exc:  # a crash is a failure of the contract too
            raise AssertionError(f"{kind} {name!r} fails check '{label}': raised "
                                 f"{type(exc).__name__}: {exc}") from exc

    return run
