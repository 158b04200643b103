"""Per-trial overhead of a cheap user function: nas (Ray + SQLite, local executor) vs Optuna.

The user's code is this file's own `space` (a PyGlove hyper value: three categorical choices
and a float) and `evaluate(arch, ctx)` (a formula of the architecture: microseconds), named
in the spec as `plugin_overhead:space` and `plugin_overhead:evaluate` as a user's module would
be (on Ray the module travels to the workers as user code). Optuna's `study.optimize` with
RDBStorage on a SQLite file calls the same `evaluate` on the same choices, in the same run.
Wall time per trial is then each framework's own overhead. nas rows: `api.submit` +
`api.run`, every trial stored; Ray's start-up and the first job's worker start-up are
reported apart, not per trial. Helpers shared with `bench/overhead.py` (table look-ups).

    python bench/plugin_overhead.py           # nas 1,000 trials/job, Optuna 300, 5 repeats
    python bench/plugin_overhead.py --quick   # CI smoke test
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
for folder in (BENCH.parent, BENCH):  # the repository, and this file as module plugin_overhead
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import pyglove as pg  # noqa: E402

MODULE = "plugin_overhead"
GOAL = 5.0  # Optuna's per-trial time / ours
DEPTHS, WIDTHS, ACTS = [2, 3, 4], [16, 32, 64], ["relu", "gelu"]

space = pg.Dict(depth=pg.oneof(DEPTHS), width=pg.oneof(WIDTHS), act=pg.oneof(ACTS),
                dropout=pg.floatv(0.0, 0.5))


def evaluate(arch: dict[str, Any], ctx: Any) -> dict[str, float]:
    """The cheap user function: a formula of the architecture."""
    return {"score": arch["depth"] * arch["width"] - 10.0 * arch["dropout"]
            + (arch["act"] == "gelu")}


def nas_spec(trials: int, executor: str, batch_size: int | None, seed: int) -> dict[str, Any]:
    spec = {"name": "bench-plugin-overhead", "space": f"{MODULE}:space", "strategy": "random",
            "evaluator": f"{MODULE}:evaluate", "objectives": [{"metric": "score", "mode": "max"}],
            "budget": {"trials": trials}, "executor": executor, "parallelism": 1, "seed": seed}
    if batch_size is not None:
        spec["batch_size"] = batch_size
    return spec


def optuna_objective(trial: Any) -> float:
    arch = {"depth": trial.suggest_categorical("depth", DEPTHS),
            "width": trial.suggest_categorical("width", WIDTHS),
            "act": trial.suggest_categorical("act", ACTS),
            "dropout": trial.suggest_float("dropout", 0.0, 0.5)}
    return evaluate(arch, None)["score"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke test")
    parser.add_argument("--repeats", type=int, help="repeats per figure (default 5, quick 1)")
    args = parser.parse_args()
    # imported here, not at the top: a Ray worker imports this module for `evaluate` alone
    from overhead import _fmt, _median, time_job, time_optuna

    repeats = args.repeats or (1 if args.quick else 5)
    n_nas, n_optuna = (200, 60) if args.quick else (1000, 300)
    # (label, executor, batch_size): None = the driver's default (1 trial per task for a
    # function evaluator); 4 = what a spec of a cheap function may set
    rows = [("nas local, random", "local", None),
            ("nas local, random, batch_size 4", "local", 4),
            ("nas Ray + SQLite, random", "ray", None),
            ("nas Ray + SQLite, random, batch_size 4", "ray", 4)]
    optuna_rows = [("Optuna RDB/SQLite, RandomSampler", "random"),
                   ("Optuna RDB/SQLite, TPESampler", "tpe")]
    logging.getLogger("ray").setLevel(logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"{os.cpu_count()} CPUs; {repeats} repeat(s); nas {n_nas} trials/job (parallelism "
          f"1), Optuna {n_optuna} trials/study; user code: {MODULE}:space, {MODULE}:evaluate\n",
          flush=True)

    ms: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="nas-bench-plugin-") as tmp:
        folder = Path(tmp)
        count = iter(range(10**6))

        def nas_job(trials: int, executor: str, batch: int | None, seed: int) -> float:
            return time_job(folder / f"nas-{next(count)}.db",
                            nas_spec(trials, executor, batch, seed))

        nas_job(50, "local", None, 999)  # imports, the first Alembic run
        from workers.executors import connect_ray

        t0 = time.perf_counter()
        ray = connect_ray(None)
        ray_start = time.perf_counter() - t0
        first_job = nas_job(16, "ray", None, 998)  # a Ray worker starts, imports the user code
        for r in range(repeats):  # interleaved: a slow spell of the machine hits every row
            for label, executor, batch in rows:
                ms.setdefault(label, []).append(
                    1000.0 * nas_job(n_nas, executor, batch, r) / n_nas)
            for label, sampler in optuna_rows:
                seconds = time_optuna(folder / f"optuna-{next(count)}.db", optuna_objective,
                                      n_optuna, sampler, r)
                ms.setdefault(label, []).append(1000.0 * seconds / n_optuna)
            print(f"repeat {r + 1} done", flush=True)
        ray.shutdown()

    print("\n=== per-trial overhead, median over repeats ===")
    for label, values in ms.items():
        print(f"{label:<42} {_fmt(values)}")
    print(f"\nRay start-up (ray.init, local): {ray_start:.2f} s (not per trial)")
    print(f"first nas Ray job, 16 trials (a Ray worker starts, imports the user code): "
          f"{first_job:.2f} s (not per trial)")
    optuna_ms = _median(ms[optuna_rows[0][0]])
    print(f"\n=== Optuna RDB/SQLite (RandomSampler) ms/trial / each nas row "
          f"(goal >= {GOAL:g}x) ===")
    for label, _, _ in rows:
        ratio = optuna_ms / _median(ms[label])
        print(f"{label:<42} {ratio:6.1f}x  {'MET' if ratio >= GOAL else 'MISSED'}")


if __name__ == "__main__":
    main()
