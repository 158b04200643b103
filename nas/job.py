"""The Python face of the service: `nas.search(...)` runs a job, `nas.load(...)` reopens one,
and a `Job` handle asks what it found. Every call goes through the functions the CLI
commands use (`nas.api` to run, `nas.results` to query, `nas.export` to export): one code
path, one driver.

```python
import nas
from model import space, evaluate

job = nas.search(space=space, evaluate=evaluate, strategy="gbdt", budget=30,
                 objectives=[{"metric": "val_acc", "mode": "max"}], db="sqlite:///x.db")
print(job.best(top=3))
job.export("best.onnx")
```

Python objects (a space, an evaluate function, a strategy class) are stored in the job's
spec as `module:attr` references, so the driver, Ray workers and a later `nas resume` find
them again: they must be module-level names of an importable module (see `reference_of`).
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import NasError

#: `Job.export` formats (`nas.export.FORMATS`, not imported here: it imports torch helpers)
_DEFAULT_FORMAT = "onnx"


class Job:
    """A job in a database: run, resume, cancel, and query it like the CLI does."""

    def __init__(self, job_id: int, db: str = "sqlite:///nas.db",
                 ray_address: str | None = None, storage: Any = None) -> None:
        from .results import check_job_id
        from .storage import Storage

        self.id = check_job_id(job_id)
        self.db = db
        self.ray_address = ray_address
        self._storage = storage if storage is not None else Storage(db, create=False)
        self._storage.jobs.get(self.id)  # NasError now when there is no such job

    def __repr__(self) -> str:
        from .storage._engine import mask_url

        return f"<nas.Job {self.id} in {mask_url(self.db)}>"

    @property
    def storage(self) -> Any:
        """The job's `nas.storage.Storage`."""
        return self._storage

    def status(self) -> dict[str, Any]:
        """The `nas status --json` object: status, trial counts, best so far, ..."""
        from . import results

        return results.status(self._storage, self.id)

    def best(self, top: int = 5, device: str | None = None,
             max_latency_ms: float | None = None) -> list[dict[str, Any]]:
        """The best trials (as in `nas best --json`'s `results`), optionally under a latency
        budget on a device."""
        from . import results

        return results.best(self._storage, self.id, top, device, max_latency_ms)["results"]

    def pareto(self, device: str) -> list[dict[str, Any]]:
        """The Pareto front of the primary objective against latency on `device`."""
        from . import results

        return results.pareto(self._storage, self.id, device)["front"]

    def trials(self, status: str | None = None, sort: str = "number",
               descending: bool | None = None, limit: int | None = None) -> Any:
        """Every trial, one row each (trial, status, key, arch, score, objectives, metrics):
        a pandas DataFrame when pandas is installed, else a list of dicts. Optionally only
        those with `status`, ordered by `sort` (number, score, duration, an objective or a
        metric; `descending` None: its natural order), the first `limit`, as `nas trials`."""
        from . import results

        records = results.trials(self._storage, self.id, status=status, sort=sort,
                                 descending=descending, limit=limit)
        try:
            import pandas as pd
        except ImportError:
            return records
        return pd.DataFrame.from_records(records)

    def export(self, path: str | Path, trial: int | None = None,
               format: str = _DEFAULT_FORMAT) -> dict[str, Any]:  # noqa: A002 - as the CLI
        """Write the best (or the given) trial's architecture as json, torchscript or onnx;
        returns the `nas export --json` summary."""
        from .export import export_trial
        from .results import MAX_ID

        if trial is not None and (isinstance(trial, bool) or not isinstance(trial, int)
                                  or not 1 <= trial <= MAX_ID):
            raise NasError(f"trial must be a positive trial number, got {trial!r}")
        return export_trial(self._storage, self.id, trial, format, str(path))

    def resume(self, progress: Any = None, allow_code_change: bool = False) -> str:
        """Finish an interrupted job here (as `nas resume --wait [--allow-code-change]`);
        returns its status."""
        from . import api

        return api.resume(self._storage, self.id, ray_address=self.ray_address,
                          progress=progress, allow_code_change=allow_code_change)

    def cancel(self) -> str:
        """Ask the job to stop (`cancelled`, or `cancelling` while its driver stops)."""
        return self._storage.jobs.request_cancel(self.id)


def load(job: int, db: str = "sqlite:///nas.db", ray_address: str | None = None) -> Job:
    """Reopen job `job` of database `db` (a SQLite file must exist)."""
    return Job(job, db, ray_address)


def search(space: Any, evaluate: Any, strategy: Any = "gbdt", budget: int | dict[str, Any] = 100,
           objectives: Iterable[dict[str, Any]] | None = None,
           constraints: Iterable[dict[str, Any]] = (), db: str = "sqlite:///nas.db",
           ray_address: str | None = None, progress: Any = None, **fields: Any) -> Job:
    """Submit a job and run it here to the end of its budget (as `nas submit --wait`); returns
    its handle.

    `space`, `evaluate` and `strategy` are each a registered name, a `module:attr` reference,
    or a Python object reachable as one (a PyGlove hyper value or builder, a SearchSpace, a
    function `evaluate(arch, ctx) -> dict`, a Strategy class). `budget` is a trial count or a
    spec budget (`{"trials": 100, "seconds": 600}`); any other spec field (`space_args`,
    `evaluator_args`, `executor`, `parallelism`, `early_stopping`, `seed`, ...) goes in
    `fields`. `progress(done, total, best)` is called as results arrive. Ctrl-C pauses the
    job (and says how to resume it) before the KeyboardInterrupt goes on."""
    from . import api
    from .storage import Storage

    spec = {
        **fields,
        "space": _component("space", space),
        "evaluator": _component("evaluate", evaluate),
        "strategy": _component("strategy", strategy),
        "budget": {"trials": budget} if isinstance(budget, int) else budget,
        "constraints": list(constraints),
    }
    if objectives is not None:
        spec["objectives"] = list(objectives)
    from .spec import parse_spec

    parsed = parse_spec(spec)  # every field checked before the database is touched
    storage = Storage(db)
    job_id = api.submit(storage, parsed)
    try:
        api.run(storage, job_id, ray_address=ray_address, progress=progress)
    except KeyboardInterrupt:  # the driver paused the job: say how to go on
        from .storage._engine import mask_url

        print(f"nas: job {job_id} paused; nas.load({job_id}, db={mask_url(db)!r}).resume() "
              "continues it", file=sys.stderr)
        raise
    return Job(job_id, db, ray_address, storage=storage)


# ---- Python objects as module:attr references ----------------------------------------------
def _component(argument: str, value: Any) -> str:
    """A name or reference as given, else the `module:attr` reference of the object."""
    if isinstance(value, str):
        return value
    return reference_of(value, argument)


def reference_of(obj: Any, argument: str = "object") -> str:
    """The `module:attr` reference under which `obj` can be imported again, in another process
    too: a module-level name bound to it in its defining module (`obj.__module__` for a
    function or class), or else in any loaded module. An object of a script run as `__main__`
    is named after the script's file relative to the current folder (`search.py` ->
    `search:evaluate`), as `uvicorn main:app` does. NasError in one line for an object that
    no module holds by name (a lambda, a function defined inside another, a value made in an
    interactive session)."""
    name = getattr(obj, "__name__", None)
    qualname = getattr(obj, "__qualname__", "") or ""
    if name == "<lambda>":
        raise NasError(_unreachable(argument, "is a lambda"))
    if "<locals>" in qualname:
        raise NasError(_unreachable(argument, f"{qualname!r} is defined inside a function"))
    for module in _candidate_modules(obj):
        attr = _name_in(module, obj)
        if attr is not None:
            return f"{_importable_name(module, argument)}:{attr}"
    raise NasError(_unreachable(argument, f"{_describe(obj)} is not a module-level name of "
                                          "any module"))


def _unreachable(argument: str, why: str) -> str:
    return (f"nas.search({argument}=...): {why}; workers import it as 'module:attr', so "
            "define it at the top level of a module file (or pass 'module:attr')")


def _describe(obj: Any) -> str:
    from search_spaces.registry import a_kind_of

    return a_kind_of(obj)


def _candidate_modules(obj: Any) -> list[ModuleType]:
    """Where to look, best first: the module that defines a function or class, every other
    loaded module, and `__main__` last (an object imported into a script is named after the
    module it came from, not after the script)."""
    first = []
    defined_in = getattr(obj, "__module__", None) if (inspect.isfunction(obj)
                                                      or inspect.isclass(obj)) else None
    if isinstance(defined_in, str) and defined_in in sys.modules:
        first.append(sys.modules[defined_in])
    main = sys.modules.get("__main__")
    # the script may be in sys.modules under other names too (`__mp_main__`)
    rest = [m for _, m in sorted(sys.modules.items()) if isinstance(m, ModuleType)
            and m is not main and m.__name__ != "__main__" and m not in first]
    return first + rest + ([main] if main is not None and main not in first else [])


def _name_in(module: ModuleType, obj: Any) -> str | None:
    """A public name of `module` bound to `obj` (its own `__name__` preferred)."""
    try:
        names = vars(module)
    except TypeError:
        return None
    own = getattr(obj, "__name__", None)
    if isinstance(own, str) and names.get(own) is obj:
        return own
    found = sorted(k for k, v in list(names.items()) if v is obj and not k.startswith("_"))
    return found[0] if found else None


def _importable_name(module: ModuleType, argument: str) -> str:
    """The module's import name; for `__main__`, the script's name relative to the current
    folder (`python search.py` -> `search`, `python -m pkg.run` -> `pkg.run`), made the same
    module object in `sys.modules` so that importing it here does not run the script again."""
    if module.__name__ != "__main__":
        return module.__name__
    spec = getattr(module, "__spec__", None)
    if spec is None:  # `python search.py`: give it the spec `python -m search` would have,
        # so that importlib.util.find_spec (code shipped to workers, its hash) finds its file
        name = _script_module(module, argument)
        module.__spec__ = importlib.util.spec_from_file_location(name, module.__file__)
    else:
        name = spec.name
    sys.modules.setdefault(name, module)
    return name


def _script_module(module: ModuleType, argument: str) -> str:
    """`a/b.py` run as a script from the folder holding `a` -> `a.b`."""
    file = getattr(module, "__file__", None)
    if not file:
        raise NasError(_unreachable(argument, "it was defined in an interactive session"))
    path = Path(file).resolve()
    try:
        parts = path.with_suffix("").relative_to(Path.cwd().resolve()).parts
    except ValueError:
        raise NasError(_unreachable(argument, f"its script {file!r} is outside the current "
                                              "folder, so workers cannot import it")) from None
    if path.suffix != ".py" or not all(p.isidentifier() for p in parts):
        raise NasError(_unreachable(argument, f"its script {file!r} is not importable as a "
                                              "module from the current folder"))
    return ".".join(parts)
