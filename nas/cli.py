"""The `nas` command line (typer + rich). Every user error: one line on stderr, exit 2."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text
from typer.core import TyperGroup

try:  # recent typer versions vendor click
    from typer._click import Context as ClickContext
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - typer on top of the click package
    from click import Context as ClickContext
    from click import exceptions as click_exceptions

from .errors import NasError

MAX_ID = 2**31 - 1  # job ids and trial numbers are 32-bit integer columns

#: C0 and C1 controls (ESC starts terminal escape sequences), line/paragraph separators and
#: the bidirectional overrides and isolates (text shown in another order than it is).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def safe_text(value: object) -> str:
    """`value` as text that shows on a terminal as what it is: every control or bidi
    character escaped (`\\x1b`), so a job name, key, note, error or server name from the
    database can neither move the cursor, retitle the window nor reorder what follows."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"),
                       str(value))


class SafeConsole(Console):
    """A console that prints strings through `safe_text` (all our output is plain text:
    markup is off, so no string carries styling of its own, and emoji codes are off, so a
    stored `:x:` prints as typed, not as an emoji)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("emoji", False)
        super().__init__(*args, **kwargs)

    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*(safe_text(o) if isinstance(o, str) else o for o in objects), **kwargs)


class Table(RichTable):
    """A rich table whose title, headers and cells go through `safe_text`."""

    def __init__(self, *headers: str, title: str | None = None, **kwargs: Any) -> None:
        super().__init__(*(safe_text(h) for h in headers),
                         title=None if title is None else safe_text(title), **kwargs)

    def add_column(self, header: str = "", *args: Any, **kwargs: Any) -> None:
        super().add_column(safe_text(header), *args, **kwargs)

    def add_row(self, *cells: Any, **kwargs: Any) -> None:
        super().add_row(*(safe_text(c) if isinstance(c, str) else c for c in cells), **kwargs)

    def add_page(self, rows: list[list[str]], console: Console) -> None:
        """Add `rows` (one string per column) for printing on `console`.

        Rich lays out and renders each cell on its own (about 50 us a cell: 20 ms of CPU
        for a 50-row page of `nas trials`). When the columns' natural widths fit the
        console, no cell wraps or folds and every row is one line, so the same output comes
        from one row whose cells are each column's lines joined: a few renderables instead
        of one per cell (a quarter of the time). Otherwise (a narrow terminal, a long
        error) row by row, so that a folded cell keeps its row together."""
        if not rows:
            return
        columns = [[safe_text(c) for c in column] for column in zip(*rows, strict=True)]
        natural = sum(max(cell_len(str(col.header)), *map(cell_len, cells)) + 2
                      for col, cells in zip(self.columns, columns, strict=True))
        if natural + len(columns) + 1 > console.width:  # + the vertical rules
            for row in rows:
                self.add_row(*row)
            return
        super().add_row(*(Text("\n".join(cells)) for cells in columns))


err = SafeConsole(stderr=True, highlight=False, soft_wrap=True, markup=False)


@contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    """Click's usage errors (missing argument, bad option value, unknown command) as one line
    on stderr with exit status 2, instead of a multi-line box."""
    try:
        yield
    except getattr(click_exceptions, "NoArgsIsHelpError", ()):
        raise  # `nas` alone prints the help
    except click_exceptions.UsageError as exc:
        message = " ".join(exc.format_message().split())
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        err.print(f"error: {message}{hint}", markup=False)
        raise typer.Exit(2) from None


class _Group(TyperGroup):
    def make_context(self, *args: Any, **kwargs: Any) -> ClickContext:
        with _one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: ClickContext) -> Any:
        with _one_line_usage_errors():
            return super().invoke(ctx)


# a traceback never shows local variables (a database URL with its password), whatever
# typer's default (True in older releases)
app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True,
                  pretty_exceptions_show_locals=False,
                  help="Neural architecture search: submit jobs, follow them, query and export "
                       "the architectures they found.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(db_app, name="db")
latency_app = typer.Typer(no_args_is_help=True,
                          help="Device latency: measure here, import, predict the rest.")
app.add_typer(latency_app, name="latency")
out = SafeConsole(highlight=False, soft_wrap=True, markup=False)
if not out.is_terminal:  # piped or logged: no terminal width to fit, keep keys on one line
    out = SafeConsole(highlight=False, soft_wrap=True, markup=False, width=220)


class Context:
    def __init__(self, db: str, ray_address: str | None) -> None:
        self.db = db
        self.ray_address = ray_address
        self._storage = None

    def storage(self, existing: bool = False):  # noqa: ANN201
        """The database; with `existing`, a SQLite file must exist already."""
        from .storage import Storage
        from .storage._retry import retry_window_s

        if self._storage is None:
            retry_window_s()  # a bad NAS_DB_RETRY_S is refused before anything is written
            self._storage = Storage(self.db, create=not existing)
        return self._storage


def handle_errors(command):  # noqa: ANN001, ANN201
    """Turn user errors into one clear line and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sqlalchemy.exc import DatabaseError, OperationalError

        from .storage._engine import damaged_sqlite

        try:
            return command(*args, **kwargs)
        except NasError as exc:
            err.print(f"error: {exc}", markup=False)
            raise typer.Exit(2) from None
        except DatabaseError as exc:
            ctx = kwargs.get("ctx")
            damaged = damaged_sqlite(ctx.obj.db, exc) if ctx is not None else None
            if damaged is not None:
                err.print(f"error: {damaged}", markup=False)
                raise typer.Exit(2) from None
            if not isinstance(exc, OperationalError):
                raise
            first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            err.print(f"error: database: {first}", markup=False)
            raise typer.Exit(1) from None

    return wrapper


@app.callback()
def _global(
    ctx: typer.Context,
    db: str = typer.Option("sqlite:///nas.db", "--db", envvar="NAS_DB_URL",
                           help="Database URL: sqlite:///FILE or postgresql://USER@HOST/DB."),
    ray_address: str | None = typer.Option(None, "--ray-address", envvar="NAS_RAY_ADDRESS",
                                           help="Ray cluster address (default: a local Ray)."),
) -> None:
    ctx.obj = Context(db, ray_address)


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _positive_job(job: int) -> int:
    from .results import check_job_id

    return check_job_id(job)


# ---- running jobs -------------------------------------------------------------------------
def _interrupt_pauses() -> None:
    """SIGINT and SIGTERM pause the job (the driver stops at a step boundary, status
    `paused`). Set explicitly: a process started in the background by a non-interactive
    shell inherits SIGINT as ignored, and a container stops its process with SIGTERM."""
    import signal

    def interrupt(signum: int, frame: Any) -> None:
        raise _Terminated

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT raises KeyboardInterrupt (the driver pauses on both);
    told apart for the exit status: 143 instead of 130, as a shell would say."""


def _drive(ctx: Context, job_id: int, show_progress: bool) -> str:
    """Run the job here; with `show_progress`, a bar per phase on stderr. SIGINT/SIGTERM
    pause the job: one line says how to resume it, exit status 130/143."""
    from . import api

    _interrupt_pauses()
    bar = _PhaseBars(job_id) if show_progress else None
    try:
        return api.run(ctx.storage(), job_id, ray_address=ctx.ray_address,
                       **({"on_phase": bar.update} if bar is not None else {}))
    except KeyboardInterrupt as exc:
        if bar is not None:
            bar.stop()
        err.print(f"job {job_id} paused; `{_nas_command(ctx)} resume {job_id}` continues it")
        raise typer.Exit(143 if isinstance(exc, _Terminated) else 130) from None
    finally:
        if bar is not None:
            bar.stop()


class _PhaseBars:
    """One rich progress bar per phase of the job (pool, supernet, trials), with its text
    (`nas.progress.phase_text`) and an ETA; started at the first update, so a refused job
    stays one line."""

    def __init__(self, job_id: int) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.job_id = job_id
        self.bars = Progress(TextColumn("job {task.fields[job]}"),
                             TextColumn("{task.description}"), BarColumn(), TextColumn("ETA"),
                             TimeRemainingColumn(), TimeElapsedColumn(), console=err,
                             transient=False)
        self.tasks: dict[str, Any] = {}

    def update(self, phase: str, done: int, total: int | None, detail: dict[str, Any]) -> None:
        from .progress import phase_text

        if not self.bars.live.is_started:
            self.bars.start()
        text = safe_text(phase_text(phase, done, total, detail))
        if phase not in self.tasks:
            self.tasks[phase] = self.bars.add_task(text, total=total, completed=done,
                                                   job=self.job_id)
        self.bars.update(self.tasks[phase], description=text, completed=done, total=total)

    def stop(self) -> None:
        if self.bars.live.is_started:
            self.bars.stop()


def _nas_command(ctx: Context) -> str:
    """`nas`, with `--db URL` (password masked) when the database is not the default one
    nor NAS_DB_URL's, for commands the user is told to run next."""
    from .storage import mask_url

    if ctx.db in ("sqlite:///nas.db", os.environ.get("NAS_DB_URL")):
        return "nas"
    return f"nas --db {mask_url(ctx.db)}"


def _spawn_driver(ctx: Context, job_id: int) -> Path:
    """Run the job in a detached `nas` process; returns its log file."""
    from .driver import artifact_dir

    log_dir = artifact_dir(ctx.storage().database_id, job_id)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "driver.log"
    # the URL goes in the environment (NAS_DB_URL), never in argv: any user can read a
    # process's command line (`ps`), only its owner its environment
    command = [sys.executable, "-m", "nas"]
    if ctx.ray_address:
        command += ["--ray-address", ctx.ray_address]
    command += ["drive", str(job_id)]
    with open(log, "ab") as handle:
        subprocess.Popen(command, stdout=handle, stderr=handle, stdin=subprocess.DEVNULL,
                         start_new_session=True, env={**os.environ, "NAS_DB_URL": ctx.db})
    return log


def _finish(ctx: Context, job_id: int, status: str, as_json: bool) -> None:
    if as_json:
        _emit_json(_status_data(ctx, job_id))
    else:
        _closing_summary(ctx, job_id)
        out.print(f"job {job_id} {status}")
    if status not in ("completed",):
        raise typer.Exit(1)


def _closing_summary(ctx: Context, job_id: int) -> None:
    """After `--wait` (stderr, beside the bars): the trials, the best, what to run next."""
    data = _status_data(ctx, job_id)
    t = data["trials"]
    pruned = f", {t['pruned']} pruned" if t["pruned"] else ""
    err.print(f"job {job_id}: {t['completed']} trials completed, {t['failed']} failed"
              f"{pruned} in {data['elapsed_s']:.1f}s")
    nas = _nas_command(ctx)
    if data["best"]:
        b = data["best"]
        objectives = " ".join(f"{m}={_number(v, '.4g')}" for m, v in b["objectives"].items())
        err.print(f"best: trial {b['trial']} {objectives} {b['key']}")
        err.print(f"next: `{nas} best {job_id}` (the top 5), `{nas} trials {job_id}` (every "
                  f"trial), `{nas} export {job_id} --best --format onnx -o model.onnx`")
    elif data["status"] != "completed":
        err.print(f"next: `{nas} status {job_id}` (why), `{nas} resume {job_id}`")


@app.command()
@handle_errors
def submit(
    ctx: typer.Context,
    spec_file: Path = typer.Argument(..., help="Job spec (YAML)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a field: KEY=VALUE."),
    wait: bool = typer.Option(False, "--wait", help="Run the job here, with a progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Validate and submit a job; prints its id. Without --wait a live `nas serve` process
    runs it, or else a background driver."""
    from .spec import load_spec_file

    spec = load_spec_file(spec_file, overrides)  # validated before the database is touched
    c: Context = ctx.obj
    from . import api

    job_id = api.submit(c.storage(), spec)
    if wait:
        status = _drive(c, job_id, show_progress=not as_json)
        _finish(c, job_id, status, as_json)
        return
    servers = _live_server_names(c)
    if servers:  # a `nas serve` process claims it
        _report_queued(job_id, servers, "runs", as_json)
        return
    log = _spawn_driver(c, job_id)
    if as_json:
        _emit_json({"job": job_id, "status": "pending", "runner": "driver", "log": str(log)})
    else:
        out.print(f"job {job_id} submitted; no `nas serve` process is running, so a detached "
                  f"driver runs it; driver log: {log}")


def _report_queued(job_id: int, servers: list[str], verb: str, as_json: bool) -> None:
    """Say that a job waits in the queue for the live `nas serve` processes."""
    if as_json:
        _emit_json({"job": job_id, "status": "pending", "runner": "serve", "servers": servers})
    else:
        out.print(f"job {job_id} queued; a `nas serve` process {verb} it "
                  f"({', '.join(servers)})")


@app.command(hidden=True)
@handle_errors
def drive(ctx: typer.Context, job: int = typer.Argument(...)) -> None:
    """Run a job in this process (used by detached drivers)."""
    status = _drive(ctx.obj, _positive_job(job), show_progress=False)
    out.print(f"job {job} {status}")


@app.command()
@handle_errors
def resume(
    ctx: typer.Context,
    job: int = typer.Argument(..., help="Job id."),
    wait: bool = typer.Option(False, "--wait", help="Run here, with a progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    allow_code_change: bool = typer.Option(
        False, "--allow-code-change",
        help="Resume even if the job's own modules differ here from the code it ran "
             "(records the code here)."),
) -> None:
    """Finish an interrupted job from the database, without losing or repeating work."""
    from . import api

    c: Context = ctx.obj
    # refused here, not in the background, when it is completed, a live driver runs it or
    # its user code differs from the code it ran; an earlier cancel is withdrawn now, so a
    # `nas cancel` from here on is a new one
    api.reopen(c.storage(existing=True), _positive_job(job),
               allow_code_change=allow_code_change)
    if wait:
        _finish(c, job, _drive(c, job, show_progress=not as_json), as_json)
        return
    servers = _live_server_names(c)
    if servers:  # back in the queue: a `nas serve` process claims it
        _report_queued(job, servers, "resumes", as_json)
        return
    log = _spawn_driver(c, job)
    if as_json:
        _emit_json({"job": job, "status": "resuming", "runner": "driver", "log": str(log)})
    else:
        out.print(f"job {job} resuming; no `nas serve` process is running, so a detached "
                  f"driver runs it; driver log: {log}")


def _live_server_names(ctx: Context) -> list[str]:
    return sorted({s.name for s in ctx.storage().servers.live()})


@app.command()
@handle_errors
def serve(
    ctx: typer.Context,
    poll_s: float = typer.Option(1.0, "--poll-s", help="Seconds between looks at the queue."),
    lease_ttl_s: float = typer.Option(30.0, "--lease-ttl-s",
                                      help="Lease of a running job: after this long without "
                                           "a heartbeat another serve process takes it over."),
    max_jobs: int = typer.Option(1, "--max-jobs", help="Jobs run at once by this process."),
    once: bool = typer.Option(False, "--once", help="Run at most one job, then exit."),
    name: str | None = typer.Option(None, "--name", help="Name in `nas servers` "
                                                         "(default HOST:PID)."),
    allow_modules: str | None = typer.Option(
        None, "--allow-modules", help="Comma-separated top-level packages whose modules jobs "
                                      "may reference (`space: mypkg.mod:MySpace`, ...); a job "
                                      "referencing any other module fails. Default: none."),
) -> None:
    """Run queued jobs: claim the oldest pending job (or a running one whose driver died),
    run it, repeat. SIGINT/SIGTERM pause the running jobs and stop. A job naming a module
    (which runs that module's code) runs only when --allow-modules lists its package."""
    from .serve import Server, check_options, parse_allow_modules

    check_options(poll_s, lease_ttl_s, max_jobs, name)
    allowed = parse_allow_modules(allow_modules)
    c: Context = ctx.obj
    _interrupt_pauses()
    Server(c.storage(), poll_s=poll_s, lease_ttl_s=lease_ttl_s, max_jobs=max_jobs, once=once,
           name=name, ray_address=c.ray_address, allow_modules=allowed).run()


@app.command()
@handle_errors
def servers(ctx: typer.Context,
            as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The registered `nas serve` processes (alive: a heartbeat within 3 poll periods)."""
    rows = [{k: getattr(s, k) for k in ("name", "owner", "host", "pid", "alive", "jobs",
                                        "poll_s", "max_jobs", "started_at", "heartbeat_at")}
            for s in ctx.obj.storage().servers.all()]
    if as_json:
        _emit_json(rows)
        return
    table = Table("name", "host", "pid", "alive", "jobs", "started", "last heartbeat")
    for r in rows:
        table.add_row(r["name"], r["host"], str(r["pid"]), "yes" if r["alive"] else "no",
                      ", ".join(map(str, r["jobs"])) or "-",
                      r["started_at"].strftime("%Y-%m-%d %H:%M:%S"),
                      r["heartbeat_at"].strftime("%Y-%m-%d %H:%M:%S"))
    out.print(table)


@app.command()
@handle_errors
def cancel(ctx: typer.Context, job: int = typer.Argument(..., help="Job id."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Cancel a job (its driver stops at its next heartbeat)."""
    job = _positive_job(job)
    state = ctx.obj.storage(existing=True).jobs.request_cancel(job)
    if as_json:
        _emit_json({"job": job, "status": state})
    else:
        out.print(f"job {job} {state}")


# ---- looking at jobs ------------------------------------------------------------------------
def _status_data(ctx: Context, job_id: int) -> dict[str, Any]:
    from . import results

    return results.status(ctx.storage(existing=True), job_id)


def _trial_counts(counts: dict[str, int]) -> dict[str, int]:
    from .results import trial_counts

    return trial_counts(counts)


@app.command()
@handle_errors
def status(ctx: typer.Context, job: int = typer.Argument(..., help="Job id."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """A job's status, trial counts and best trial so far."""
    data = _status_data(ctx.obj, _positive_job(job))
    if as_json:
        _emit_json(data)
        return
    t = data["trials"]
    state = data["status"]
    if state in ("running", "pending") and data["lease_owner"] and not data["driver_alive"]:
        state += " (its driver is gone: `nas resume` continues it)"
    out.print(f"job {data['id']} [{data['name']}]: {state}  space={data['space']} "
              f"strategy={data['strategy']} budget={_budget_text(data['budget'])}")
    pruned = f"{t['pruned']} pruned, " if t["pruned"] else ""
    out.print(f"trials: {t['completed']} completed, {t['failed']} failed, {pruned}"
              f"{t['running']} running, {t['queued']} queued  ({data['elapsed_s']:.1f}s)")
    for phase in data.get("progress", []):
        out.print(_phase_line(phase, running=data["status"] == "running"))
    if data["best"]:
        b = data["best"]
        objectives = " ".join(f"{m}={_number(v, '.4g')}" for m, v in b["objectives"].items())
        out.print(f"best: trial {b['trial']} {objectives} {b['key']}")
    for note in data.get("best_notes", []):
        out.print(f"note: {note}")
    for label in ("note", "error"):
        if data[label]:
            out.print(f"{label}: {data[label]}")
    if data.get("failures"):
        out.print(f"most common failures (`nas trials {data['id']} --status failed` lists "
                  "them):")
        for failure in data["failures"]:
            out.print(f"  {failure['count']:>6}x  {failure['error']}")


def _phase_line(phase: dict[str, Any], running: bool) -> str:
    """A phase of `status --json`'s `progress` as `nas status` shows it:
    "progress: trials 40/100 best 0.93 (40%, ETA 1m20s)"."""
    from .progress import eta_text, phase_text

    notes = []
    if phase["fraction"] is not None:
        notes.append(f"{100 * phase['fraction']:.0f}%")
    if running and phase["fraction"] != 1.0 and eta_text(phase["eta_s"]):
        notes.append(eta_text(phase["eta_s"]))
    text = phase_text(phase["phase"], phase["done"], phase["total"], phase["detail"])
    return f"progress: {text}" + (f" ({', '.join(notes)})" if notes else "")


def _budget_text(budget: dict[str, Any]) -> str:
    """{'trials': 300, 'seconds': 600} -> "300 trials, 600 s"."""
    parts = []
    if "trials" in budget:
        parts.append(f"{budget['trials']} trials")
    if "seconds" in budget:
        parts.append(f"{budget['seconds']:g} s")
    return ", ".join(parts) or "-"


@app.command("list")
@handle_errors
def list_jobs(ctx: typer.Context,
              as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """All jobs in the database."""
    jobs = ctx.obj.storage().jobs.all()
    rows = [{"id": j.id, "name": j.name, "status": j.status,
             "space": j.spec["space"], "strategy": j.spec["strategy"],
             "trials": _trial_counts(j.trials), "created_at": j.created_at}
            for j in jobs]
    if as_json:
        _emit_json(rows)
        return
    table = Table("id", "name", "status", "space", "strategy", "completed", "failed", "pruned",
                  "created")
    for r in rows:
        table.add_row(str(r["id"]), r["name"], r["status"], r["space"], r["strategy"],
                      str(r["trials"]["completed"]), str(r["trials"]["failed"]),
                      str(r["trials"]["pruned"]),
                      r["created_at"].strftime("%Y-%m-%d %H:%M"))
    out.print(table)


@app.command()
@handle_errors
def best(
    ctx: typer.Context,
    job: int = typer.Argument(..., help="Job id."),
    top: int = typer.Option(5, "--top", help="How many."),
    device: str | None = typer.Option(None, "--device", help="Device of the latency budget."),
    max_latency_ms: float | None = typer.Option(None, "--max-latency-ms",
                                                help="Latency budget on --device."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The best architectures of a job, optionally under a latency budget on a device."""
    from . import results

    results.check_device_options(device, max_latency_ms)
    if top < 1:
        raise NasError(f"--top must be at least 1, got {top}")
    storage = ctx.obj.storage(existing=True)
    data = results.best(storage, _positive_job(job), top, device, max_latency_ms)
    if as_json:
        _emit_json(data)
        return
    spec = storage.jobs.get(job).spec
    _print_trials(data["results"], spec, device, title=f"job {job}: best {top}" + (
        f" under {max_latency_ms} ms on {device}" if max_latency_ms else ""))
    unknown = data["unknown_latency"]
    if unknown:
        how = "not ranked" if max_latency_ms else "shown as -"
        out.print(f"{unknown} completed trials have no latency on {device} ({how})")


def _number(value: float | None, spec: str) -> str:
    """A value for a table cell; "-" where the trial has none (e.g. no latency row)."""
    return "-" if value is None else format(value, spec)


def _print_trials(rows: list[dict[str, Any]], spec: dict[str, Any], device: str | None,
                  title: str) -> None:
    """A table of trials given as `nas.results.trial_json` objects."""
    metrics = [o["metric"] for o in spec["objectives"]]
    # the metrics of the job's constraints (not on a device) that no objective shows
    limits = list(dict.fromkeys(c["metric"] for c in spec.get("constraints") or ()
                                if c.get("device") is None and c["metric"] not in metrics))
    columns = ["#", "trial", *metrics, *limits]
    if device:
        columns += [f"latency ms ({device})", "source"]
    table = Table(*columns, "params (M)", title=title)
    table.add_column("architecture", overflow="fold")
    cells = []
    for rank, r in enumerate(rows, 1):
        values = [_number(v, ".4g") for v in r["objectives"].values()]
        values += [_number((r["metrics"] or {}).get(m), ".4g") for m in limits]
        extra = [_number(r["device_value"], ".3f"), r["device_source"] or "unknown"] \
            if device else []
        params = f"{r['params'] / 1e6:.3f}" if r["params"] is not None else "-"
        cells.append([str(rank), str(r["trial"]), *values, *extra, params, r["key"]])
    table.add_page(cells, out)
    out.print(table)


@app.command("trials")
@handle_errors
def trials_command(
    ctx: typer.Context,
    job: int = typer.Argument(..., help="Job id."),
    status_filter: str | None = typer.Option(
        None, "--status", help="Only trials in this state: completed|failed|pruned|running|"
                               "queued."),
    sort: str = typer.Option("score", "--sort", help="number | score | duration | an "
                                                     "objective or a metric name."),
    ascending: bool | None = typer.Option(
        None, "--asc/--desc", help="Order (default: best score and best objective first, "
                                   "number ascending, longest duration and largest metric "
                                   "first); trials without a value come last."),
    limit: int = typer.Option(20, "--limit", help="How many."),
    offset: int = typer.Option(0, "--offset", help="Skip this many first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV (one column per objective, "
                                                     "metric and decision)."),
) -> None:
    """A job's trials: filtered by state, sorted by any metric, a page at a time."""
    from . import results

    if as_json and as_csv:
        raise NasError("give at most one of --json and --csv")
    data = results.trials_table(
        ctx.obj.storage(existing=True), _positive_job(job), status=status_filter, sort=sort,
        descending=None if ascending is None else not ascending, limit=limit, offset=offset)
    if as_json:
        _emit_json(data)
    elif as_csv:
        _write_trials_csv(data["rows"])
    else:
        _print_trials_page(data)


def _print_trials_page(data: dict[str, Any]) -> None:
    rows, total, offset = data["rows"], data["total"], data["offset"]
    which = f"{data['status']} " if data["status"] else ""
    if not rows:
        out.print(f"job {data['job']}: no {which}trials" + (
            f" from offset {offset} (of {total})" if total else ""))
        return
    objectives = data["objectives"]
    metric = data["sort"] if data["sort"] not in ("number", "score", "duration", *objectives) \
        else None
    order = "descending" if data["descending"] else "ascending"
    table = Table("trial", "status", "score", *objectives, *([metric] if metric else []),
                  "params (M)", "MFLOPs", "seconds", title=f"job {data['job']}: {which}trials "
                  f"{offset + 1}-{offset + len(rows)} of {total}, by {data['sort']} ({order})")
    table.add_column("architecture / error", overflow="fold")
    cells = []
    for r in rows:
        values = [_number(r["objectives"].get(m), ".4g") for m in objectives]
        if metric:
            values.append(_number((r["metrics"] or {}).get(metric), ".4g"))
        last = r["key"] if r["status"] != "failed" else \
            "error: " + ((r["error"] or "").strip().partition("\n")[0] or "(no message)")
        cells.append([str(r["trial"]), r["status"], _number(r["score"], ".4g"), *values,
                      _number(None if r["params"] is None else r["params"] / 1e6, ".3f"),
                      _number(None if r["flops"] is None else r["flops"] / 1e6, ".1f"),
                      _number(r["duration_s"], ".1f"), last])
    table.add_page(cells, out)
    out.print(table)
    if offset + len(rows) < total:
        out.print(f"{total - offset - len(rows)} more: --offset {offset + len(rows)}")


def _flat(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    """(column, value) of each leaf of nested dicts and lists: arch.ops.0, arch.ops.1, ..."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flat(f"{prefix}.{key}", item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _flat(f"{prefix}.{index}", item)
    else:
        yield prefix, value


def _write_trials_csv(rows: list[dict[str, Any]]) -> None:
    """One line per trial for a spreadsheet: the trial's fields, one column per objective
    and per metric, then one per decision of the architecture (arch.PATH, flattened)."""
    import csv

    fields = ("trial", "status", "score", "feasible", "params", "flops", "duration_s",
              "attempt", "worker", "started_at", "finished_at", "key", "error")
    records = []
    for r in rows:
        record = {f: r[f].isoformat() if isinstance(r[f], datetime) else r[f] for f in fields}
        record.update(r["objectives"])
        for name, value in (r["metrics"] or {}).items():
            record.setdefault(name, value)
        record.update(_flat("arch", r["arch"]))
        records.append(record)
    columns = list(dict.fromkeys(c for record in records for c in record)) or list(fields)
    writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)


@app.command()
@handle_errors
def pareto(
    ctx: typer.Context,
    job: int = typer.Argument(..., help="Job id."),
    device: str = typer.Option(..., "--device", help="Device whose latency is traded off."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a PNG of the front."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The Pareto front of the primary objective against latency on a device."""
    from . import results

    if plot is not None:
        if plot.suffix.lower() != ".png":
            raise NasError(f"--plot: expected a .png file name, got {str(plot)!r}")
        if not plot.parent.resolve().is_dir():
            raise NasError(f"--plot: folder {str(plot.parent)!r} does not exist")
        if plot.is_dir():
            raise NasError(f"--plot: {str(plot)!r} is a folder")
    storage = ctx.obj.storage(existing=True)
    data = results.pareto(storage, _positive_job(job), device)
    rows, front = data.pop("rows"), data.pop("front_rows")
    spec = storage.jobs.get(job).spec
    if plot is not None:
        from .charts import plot as draw

        draw(storage, job, "pareto", plot, device, option="--plot")
    if as_json:
        _emit_json(data)
        return
    _print_trials(data["front"], spec, device, title=f"job {job}: Pareto front on {device} "
                                                    f"({len(front)} of {len(rows)} trials)")
    if plot is not None:
        out.print(f"plot: {plot}")


@app.command("plot")
@handle_errors
def plot_chart(
    ctx: typer.Context,
    job: int = typer.Argument(..., help="Job id."),
    kind: str = typer.Option(..., "--kind", help="history | pareto | importance | parallel"),
    output: Path = typer.Option(..., "-o", "--output", help="File to write: .png or .html."),
    device: str | None = typer.Option(None, "--device",
                                      help="pareto: the device (default: the job's latency "
                                           "objective's)."),
    max_latency_ms: float | None = typer.Option(None, "--max-latency-ms",
                                                help="pareto: the latency budget to draw."),
) -> None:
    """Draw a job: best so far (history), the Pareto front with a latency budget (pareto),
    which decisions matter (importance) or every trial's decisions (parallel)."""
    from .charts import check_plot_target, plot

    check_plot_target(kind, output)  # before the database is opened
    plot(ctx.obj.storage(existing=True), _positive_job(job), kind, output, device,
         max_latency_ms)
    out.print(f"{kind} plot of job {job}: {output}")


@app.command()
@handle_errors
def report(
    ctx: typer.Context,
    job: int = typer.Argument(..., help="Job id."),
    output: Path = typer.Option(..., "-o", "--output", help="HTML file to write."),
) -> None:
    """Write one self-contained HTML report of a job (opens with no network): summary,
    failures, charts, the best trials, the Pareto front per device, the best architecture."""
    from .report import check_report_target, write_report

    check_report_target(output)
    write_report(ctx.obj.storage(existing=True), _positive_job(job), output)
    out.print(f"report of job {job}: {output}")


@app.command()
@handle_errors
def export(
    ctx: typer.Context,
    job: int = typer.Argument(..., help="Job id."),
    trial: int | None = typer.Option(None, "--trial", help="Trial number to export."),
    best_: bool = typer.Option(False, "--best", help="Export the best trial."),
    fmt: str = typer.Option("json", "--format",
                            help="json | torchscript | onnx | packed (quant space: the "
                                 "low-bit weights packed)"),
    output: Path = typer.Option(..., "-o", "--output", help="File to write."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Write the best (or a given) architecture as JSON, TorchScript or ONNX."""
    from .export import FORMATS, export_trial

    if fmt not in FORMATS:
        raise NasError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if (trial is None) == (not best_):
        raise NasError("give exactly one of --trial N or --best")
    if trial is not None and not 1 <= trial <= MAX_ID:
        raise NasError(f"--trial must be a positive trial number, got {trial}")
    job = _positive_job(job)
    summary = export_trial(ctx.obj.storage(existing=True), job, trial, fmt, str(output))
    if as_json:
        _emit_json(summary)
    else:
        weights = f" with {summary['weights']} weights" if "weights" in summary else ""
        out.print(f"exported trial {summary['trial']} of job {job} ({summary['key']}) "
                  f"as {fmt}{weights} to {output}")


# ---- registries and the database --------------------------------------------------------------
@app.command()
def spaces(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Registered search spaces (built-in and plugins), with where each comes from."""
    from search_spaces._base import SPACES

    rows = [{**_describe_space(name, cls), "origin": SPACES.origin(name)}
            for name, cls in SPACES.items()]
    if as_json:
        _emit_json(rows)
        return
    table = Table("space", "size", "decisions", "input", "origin", "description")
    for r in rows:
        size = "-" if r["size"] is None else \
            f"{r['size']:,}" if r["size"] < 10**9 else f"{r['size']:.2e}"
        shape = "-" if r["input_shape"] is None else "x".join(map(str, r["input_shape"]))
        table.add_row(r["name"], size, str(r["decisions"] if r["decisions"] is not None else "-"),
                      shape, r["origin"], r["description"])
    out.print(table)


def _describe_space(name: str, cls: Any) -> dict[str, Any]:
    """`describe()` of the space with its default arguments; a plugin space that cannot be
    built without `space_args` (or fails) is listed with what is known, not dropped."""
    try:
        return cls().describe()
    except Exception as exc:  # a plugin's code: one line, the listing goes on
        return {"name": name, "description": f"(not described: {type(exc).__name__}: {exc})",
                "size": None, "decisions": None, "encoding_length": None,
                "conditional": bool(getattr(cls, "conditional", False)), "input_shape": None}


def _registry_rows(registry: Any, description: Any) -> list[dict[str, Any]]:
    """name, origin and description of every entry of a registry."""
    return [{"name": name, "origin": registry.origin(name), "description": description(obj)}
            for name, obj in registry.items()]


def _first_doc_line(obj: Any) -> str:
    lines = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    return lines[0] if lines else ""


def _print_registry(rows: list[dict[str, Any]], kind: str, as_json: bool) -> None:
    if as_json:
        _emit_json(rows)
        return
    table = Table(kind, "origin", "description")
    for r in rows:
        table.add_row(r["name"], r["origin"], r["description"])
    out.print(table)


@app.command()
def strategies(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Registered search strategies (built-in and plugins), with where each comes from."""
    from .strategies._base import STRATEGIES

    rows = _registry_rows(STRATEGIES, lambda cls: cls.description or _first_doc_line(cls))
    _print_registry(rows, "strategy", as_json)


@app.command()
def evaluators(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Registered evaluators (built-in and plugins), with where each comes from."""
    from workers.evaluators._base import EVALUATORS

    rows = _registry_rows(EVALUATORS, lambda cls: cls.description or _first_doc_line(cls))
    _print_registry(rows, "evaluator", as_json)


@app.command()
def proxies(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Registered training-free proxies (built-in and plugins), with where each comes from."""
    from predictors.proxies._base import PROXIES, load_builtin_proxies

    load_builtin_proxies()
    rows = _registry_rows(PROXIES, lambda proxy: proxy.description)
    _print_registry(rows, "proxy", as_json)


@db_app.command("upgrade")
@handle_errors
def db_upgrade(ctx: typer.Context) -> None:
    """Apply the schema migrations to the database (--db)."""
    from .storage import current_revision, make_engine, upgrade

    engine = make_engine(ctx.obj.db)
    upgrade(engine)
    out.print(f"database at revision {current_revision(engine)}")


@latency_app.command("import")
@handle_errors
def latency_import(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="CSV with an `arch` column and a METRIC column."),
    device: str = typer.Option(..., "--device", help="Device the values were measured on."),
    space: str = typer.Option("nb201", "--space", help="Space the architectures belong to."),
    metric: str = typer.Option("latency_ms", "--metric", help="Column to import."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Import measurements made elsewhere (source `imported`; idempotent)."""
    from .latency import import_csv

    result = import_csv(ctx.obj.storage(), space, device, path, metric)
    if as_json:
        _emit_json(result)
        return
    out.print(f"imported {result['rows']} {metric} values for {device} ({result['new']} new, "
              f"{result['updated']} updated, {result['unchanged']} unchanged)")


@latency_app.command("fit")
@handle_errors
def latency_fit(
    ctx: typer.Context,
    device: str = typer.Option(..., "--device", help="Device to predict."),
    space: str = typer.Option("nb201", "--space", help="Space to predict in."),
    metric: str = typer.Option("latency_ms", "--metric"),
    model: str = typer.Option("gbdt", "--model", help="gbdt | lut"),
    all_archs: bool = typer.Option(False, "--all",
                                   help="Predict every architecture of an enumerable space."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Fit a latency predictor on the stored values; store predictions for the rest."""
    from predictors.latency import list_latency_predictors

    from .latency import fit_and_predict

    if model not in list_latency_predictors():
        raise NasError(f"--model must be one of {', '.join(list_latency_predictors())}, "
                       f"got {model!r}")
    result = fit_and_predict(ctx.obj.storage(existing=True), space, device, metric, model,
                             all_archs)
    if as_json:
        _emit_json(result)
        return
    held = result["holdout"]
    out.print(f"{result['model_version']}: trained on {result['trained_on']} {device} values; "
              f"held-out {100 * held['fraction']:.0f}%: {100 * held['within_10pct']:.1f}% "
              f"within 10%, Spearman {held['spearman']:.3f}; stored {result['predicted']} "
              f"predictions ({result['new']} new, {result['updated']} updated)")


@latency_app.command("measure")
@handle_errors
def latency_measure(
    ctx: typer.Context,
    job: int | None = typer.Argument(None, help="Measure this job's completed trials."),
    space: str | None = typer.Option(None, "--space", help="Or: sample from this space."),
    sample: int = typer.Option(20, "--sample", help="How many to sample with --space."),
    device_name: str | None = typer.Option(None, "--device-name",
                                           help="Device name (default: CPU model + settings)."),
    runtime: str = typer.Option("eager", "--runtime", help="eager | torchscript | onnx"),
    batch: int = typer.Option(1, "--batch"),
    threads: int = typer.Option(1, "--threads"),
    repeats: int = typer.Option(20, "--repeats"),
    seed: int = typer.Option(0, "--seed"),
    int8: bool = typer.Option(False, "--int8", help="Time the INT8 model (quant space)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Measure latency on this machine (median of repeats after warm-up; source `measured`)."""
    import numpy as np

    from search_spaces import get_space

    from .latency import measure

    if (job is None) == (space is None):
        raise NasError("give a JOB or --space S (not both)")
    storage = ctx.obj.storage(existing=job is not None)
    if job is not None:
        spec = storage.jobs.get(_positive_job(job)).spec
        target = get_space(spec["space"], **spec.get("space_args", {}))
        archs = [r.arch for r in storage.trials.load(job) if r.status == "completed"]
        if not archs:
            raise NasError(f"job {job} has no completed trial to measure")
    else:
        from .latency import space_by_name

        if sample < 1:
            raise NasError(f"--sample must be at least 1, got {sample}")
        target = space_by_name(space)
        rng = np.random.default_rng(seed)
        archs = [target.sample(rng) for _ in range(sample)]
    result = measure(storage, target, archs, device=device_name, runtime=runtime, batch=batch,
                     threads=threads, repeats=repeats, seed=seed, int8=int8)
    if as_json:
        _emit_json(result)
        return
    out.print(f"measured {result['measured']} architectures on {result['device']}: median "
              f"{result['median_ms']:.3f} ms (range {result['min_ms']:.3f}-"
              f"{result['max_ms']:.3f}; median relative IQR "
              f"{100 * result['median_relative_iqr']:.0f}%)")


@app.command()
@handle_errors
def dashboard(
    ctx: typer.Context,
    db: str | None = typer.Option(None, "--db", help="Database URL (default: nas --db)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", help="Port to listen on."),
    allow_actions: bool = typer.Option(False, "--allow-actions",
                                       help="Show cancel and resume buttons (default: "
                                            "read-only)."),
    token_file: Path | None = typer.Option(
        None, "--token-file", help="File holding a token every request must carry (or set "
                                   "NAS_DASHBOARD_TOKEN)."),
) -> None:
    """A live web dashboard of the database's jobs, trials and architectures."""
    from .dashboard.server import run

    if db is not None:
        ctx.obj.db = db
    run(ctx.obj.db, host, port, allow_actions, token_file, say=out.print)


def main() -> None:
    app(prog_name="nas")


if __name__ == "__main__":
    main()
