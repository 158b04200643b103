"""Riding out database outages: retry with backoff on transient errors.

A PostgreSQL restart, a failover or a dropped connection must not cost a search its results:
each `Storage` operation a driver or `nas serve` depends on is retried with exponential
backoff for up to `NAS_DB_RETRY_S` seconds (default 300). The pool pings a connection before
handing it out (`pool_pre_ping`), so a retry gets a fresh one once the server is back.

A retried write must be safe to run twice, because a connection that drops during COMMIT
leaves it unknown whether the transaction landed. The retried operations are idempotent
(the same UPDATE, an insert that ignores its duplicate), and those that are not by nature
take a `replay` argument, which is True on every attempt after the first (see
`Trials.commit_step`). Operations that cannot be made so (creating a job) are not retried.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from ..errors import DatabaseUnavailableError, NasError

log = logging.getLogger("nas.storage")

RETRY_ENV = "NAS_DB_RETRY_S"
DEFAULT_RETRY_S = 300.0
FIRST_DELAY_S = 0.2
MAX_DELAY_S = 5.0

F = TypeVar("F", bound=Callable[..., Any])


def retry_window_s() -> float:
    """`NAS_DB_RETRY_S`, or the default; 0 turns retries off."""
    text = os.environ.get(RETRY_ENV)
    if text is None:
        return DEFAULT_RETRY_S
    try:
        value = float(text)
    except ValueError:
        raise NasError(f"{RETRY_ENV} must be a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise NasError(f"{RETRY_ENV} must be a number of seconds >= 0, got {text!r}")
    return value


def is_transient(exc: BaseException, dialect: str) -> bool:
    """Errors worth waiting out: a lost or refused connection, a server shutting down or
    starting up, a deadlock or serialization failure (PostgreSQL), a lock held beyond the
    busy timeout (SQLite). A constraint violation or a syntax error is not."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, InterfaceError):
        return True
    if not isinstance(exc, OperationalError):
        return False
    if dialect == "postgresql":
        return True  # psycopg's OperationalError: connection, shutdown, rollback errors
    message = str(exc.orig).lower()
    return "locked" in message or "busy" in message


def first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def call_with_retry(work: Callable[[bool], Any], dialect: str, what: str) -> Any:
    """`work(replay)` until it returns, retrying transient errors with exponential backoff
    (with jitter) for up to `retry_window_s()`; `replay` is False on the first attempt."""
    window = retry_window_s()
    deadline = time.monotonic() + window
    delay = FIRST_DELAY_S
    replay = False
    while True:
        try:
            return work(replay)
        except DBAPIError as exc:
            if not is_transient(exc, dialect):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseUnavailableError(
                    f"database unavailable for {window:g}s ({RETRY_ENV}) during {what}: "
                    f"{first_line(exc)}") from exc
            pause = min(delay * random.uniform(0.75, 1.25), left)
            log.warning("database error during %s (%s); retrying in %.1fs", what,
                        first_line(exc), pause)
            time.sleep(pause)
            delay = min(delay * 2, MAX_DELAY_S)
            replay = True


def retried(replay_arg: bool = False) -> Callable[[F], F]:
    """Decorate a storage area's method, or a function whose first argument is a `Storage`, to
    retry transient errors. With `replay_arg`, the function takes a keyword `replay`."""

    def decorate(fn: F) -> F:
        area, _, name = fn.__qualname__.rpartition(".")
        what = f"{area.lower()}.{name}" if area else name  # as called: `jobs.get`
        @functools.wraps(fn)
        def wrapper(storage: Any, *args: Any, **kwargs: Any) -> Any:
            def work(replay: bool) -> Any:
                if replay_arg:
                    return fn(storage, *args, replay=replay, **kwargs)
                return fn(storage, *args, **kwargs)

            return call_with_retry(work, storage.dialect, what)

        return wrapper  # type: ignore[return-value]

    return decorate
