"""Per-trial overhead of cheap trials (table look-ups): nas vs Optuna+SQLite vs Ray Tune.

All three optimise the same objective, the NAS-Bench-201 CIFAR-10 `valid_acc` looked up by
the six categorical edge operations, with uniform random sampling (plus, as extra rows, nas
with regularized evolution and Optuna with its default TPE sampler). The evaluation costs
microseconds, so wall time per trial is the framework's own overhead:

* nas: `api.submit` + `api.run` end to end, RayExecutor on a local Ray and a SQLite file
  (every trial stored: row, result, metrics; every driver step one transaction). Ray's
  start-up and the first job's worker start-up are reported apart, not per trial.
  The local (in-process) executor is reported too.
* Optuna: `study.optimize` with RDBStorage on a SQLite file.
* Ray Tune: `Tuner.fit` with a function trainable on the same local Ray (few trials).

Figures are medians over repeats (the machine is small and noisy).

    python bench/overhead.py            # 2,000 nas trials x 3 repeats, 300 Optuna, 24 Tune
    python bench/overhead.py --quick    # CI smoke test (< 60 s)
    python bench/overhead.py --profile  # also cProfile one nas job (driver side)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

from nas import api  # noqa: E402
from nas.driver import CHEAP_BATCH  # noqa: E402
from nas.storage import Storage  # noqa: E402
from search_spaces.nb201 import OPS, cell_string  # noqa: E402
from workers.tables import load_table  # noqa: E402

TABLE = "nb201-cifar10"
TARGET_MS = 3.0
OURS = "nas Ray, random"


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _fmt(values: list[float]) -> str:
    spread = f" (min {min(values):.2f}, max {max(values):.2f})" if len(values) > 1 else ""
    return f"{_median(values):8.2f} ms/trial{spread}"


# ---- nas ------------------------------------------------------------------------------------
def nas_spec(trials: int, executor: str, strategy: str, parallelism: int,
             batch_size: int | None, seed: int) -> dict:
    spec = {
        "name": "bench-overhead",
        "space": "nb201",
        "strategy": strategy,
        "strategy_args": {"population": 20, "sample": 5} if strategy == "evolution" else {},
        "evaluator": "benchmark",
        "evaluator_args": {"table": TABLE},
        "objectives": [{"metric": "valid_acc", "mode": "max"}],
        "budget": {"trials": trials},
        "executor": executor,
        "parallelism": parallelism,
        "seed": seed,
    }
    if batch_size is not None:
        spec["batch_size"] = batch_size
    return spec


def run_nas(folder: Path, trials: int, executor: str, strategy: str = "random",
            parallelism: int = 1, batch_size: int | None = None, seed: int = 0,
            profile: cProfile.Profile | None = None) -> float:
    """Seconds of `submit` + `run` of one job on a fresh SQLite file (schema made before)."""
    path = folder / f"nas-{executor}-{strategy}-{parallelism}-{batch_size}-{seed}.db"
    spec = nas_spec(trials, executor, strategy, parallelism, batch_size, seed)
    return time_job(path, spec, profile)


def time_job(path: Path, spec: dict, profile: cProfile.Profile | None = None) -> float:
    """Seconds of `api.submit` + `api.run` of `spec` on a fresh SQLite file `path`; every
    trial must complete."""
    trials = spec["budget"]["trials"]
    storage = Storage(f"sqlite:///{path}")
    try:
        t0 = time.perf_counter()
        if profile is not None:
            profile.enable()
        job = api.submit(storage, spec)
        status = api.run(storage, job)
        if profile is not None:
            profile.disable()
        seconds = time.perf_counter() - t0
        counts = storage.trials.counts(job)
    finally:
        storage.close()
    if status != "completed" or counts.get("completed") != trials:
        raise RuntimeError(f"nas job ended {status} with {counts}")
    return seconds


# ---- Optuna ---------------------------------------------------------------------------------
def run_optuna(folder: Path, trials: int, sampler_name: str, seed: int) -> float:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = load_table(TABLE).rows

    def objective(trial: optuna.Trial) -> float:
        ops = [trial.suggest_categorical(f"edge{i}", list(OPS)) for i in range(6)]
        return rows[cell_string(ops)]["valid_acc"]

    return time_optuna(folder / f"optuna-{sampler_name}-{seed}.db", objective, trials,
                       sampler_name, seed)


def time_optuna(path: Path, objective: Any, trials: int, sampler_name: str, seed: int) -> float:
    """Seconds of `study.optimize(objective, n_trials=trials)` (maximize) with RDBStorage on a
    fresh SQLite file `path`, `sampler_name` random or tpe."""
    import optuna

    sampler = (optuna.samplers.RandomSampler(seed=seed) if sampler_name == "random"
               else optuna.samplers.TPESampler(seed=seed))
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    study = optuna.create_study(storage=storage, sampler=sampler, direction="maximize",
                                study_name=f"bench-{sampler_name}-{seed}")
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    seconds = time.perf_counter() - t0
    assert len(study.trials) == trials
    storage.engine.dispose()
    return seconds


# ---- Ray Tune -------------------------------------------------------------------------------
def _tune_trainable(config: dict) -> None:
    from ray import tune

    ops = [config[f"edge{i}"] for i in range(6)]
    tune.report({"valid_acc": load_table(TABLE).rows[cell_string(ops)]["valid_acc"]})


def run_tune(folder: Path, trials: int, seed: int) -> float:
    from ray import tune

    space = {f"edge{i}": tune.choice(list(OPS)) for i in range(6)}
    tuner = tune.Tuner(
        _tune_trainable,
        param_space=space,
        tune_config=tune.TuneConfig(num_samples=trials, metric="valid_acc", mode="max",
                                    search_alg=tune.search.BasicVariantGenerator(
                                        random_state=seed)),
        run_config=tune.RunConfig(name=f"bench-{seed}", storage_path=str(folder / "tune"),
                                  verbose=0),
    )
    t0 = time.perf_counter()
    results = tuner.fit()
    seconds = time.perf_counter() - t0
    if results.num_errors or len(results) != trials:
        raise RuntimeError(f"Tune: {len(results)} results, {results.num_errors} errors")
    return seconds


# ---- main -----------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke test (< 60 s)")
    parser.add_argument("--repeats", type=int, help="repeats per figure (default 3, quick 1)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile nas Ray jobs (default batch and 1; the driver process) "
                             "and print the top functions")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    n_nas = 500 if args.quick else 2000
    n_optuna = 100 if args.quick else 300
    n_tune = 6 if args.quick else 24
    n_single = 200 if args.quick else 1000
    # (label, strategy, parallelism, batch_size, trials); batch None = the driver's default
    # for table look-ups (CHEAP_BATCH trials per Ray task); batch 1 = one Ray task per trial
    ray_rows = [
        (OURS, "random", 1, None, n_nas),
        ("nas Ray, evolution", "evolution", 1, None, n_nas),
        ("nas Ray, random, parallelism 2", "random", 2, None, n_nas),
        ("nas Ray, random, batch_size 32", "random", 1, 32, n_nas),
        ("nas Ray, random, batch_size 1", "random", 1, 1, n_single),
        ("nas Ray, random, parallelism 2, batch_size 1", "random", 2, 1, n_single),
    ]
    logging.getLogger("ray").setLevel(logging.ERROR)

    load_table(TABLE)  # every framework gets the table already parsed in this process
    print(f"{os.cpu_count()} CPUs; {repeats} repeat(s); nas {n_nas} trials/job "
          f"({n_single} with batch_size 1), Optuna {n_optuna} trials/study, Ray Tune "
          f"{n_tune} trials/run; nas rows use parallelism 1 and the driver's default batch "
          f"size ({CHEAP_BATCH} trials per worker task for table look-ups) unless they say "
          "otherwise\n", flush=True)

    with tempfile.TemporaryDirectory(prefix="nas-bench-overhead-") as tmp:
        folder = Path(tmp)
        ms: dict[str, list[float]] = {}

        def record(label: str, seconds: float, trials: int) -> None:
            ms.setdefault(label, []).append(1000.0 * seconds / trials)

        # nas, local executor (no Ray at all)
        run_nas(folder, 50, "local", seed=999)  # imports, first Alembic run
        for r in range(repeats):
            record("nas local, random", run_nas(folder, n_nas, "local", seed=r), n_nas)
            record("nas local, evolution",
                   run_nas(folder, n_nas, "local", "evolution", seed=r), n_nas)
        print("nas local done", flush=True)

        # Optuna + SQLite (no Ray either)
        for r in range(repeats):
            record("Optuna RDB/SQLite, RandomSampler",
                   run_optuna(folder, n_optuna, "random", r), n_optuna)
            record("Optuna RDB/SQLite, TPESampler",
                   run_optuna(folder, n_optuna, "tpe", r), n_optuna)
        print("Optuna done", flush=True)

        # Ray: start-up, first job (worker processes start, import, load the table), then jobs
        from workers.executors import connect_ray

        t0 = time.perf_counter()
        ray = connect_ray(None)
        ray_start = time.perf_counter() - t0
        # warm-up: 8 tasks over 2 slots, so both worker processes start and load the table
        first_job = run_nas(folder, 64, "ray", parallelism=2, batch_size=8, seed=998)
        for r in range(repeats):
            for label, strategy, par, batch, trials in ray_rows:
                record(label, run_nas(folder, trials, "ray", strategy, par, batch, r), trials)
        print("nas Ray done", flush=True)

        profiles = []
        if args.profile:  # the driver process only; Ray workers run elsewhere
            for label, batch, trials in ((OURS, None, n_nas),
                                         ("nas Ray, random, batch_size 1", 1, n_single)):
                profiler = cProfile.Profile()
                run_nas(folder, trials, "ray", "random", 1, batch, 777, profile=profiler)
                out = io.StringIO()
                stats = pstats.Stats(profiler, stream=out)
                stats.sort_stats("tottime").print_stats(18)
                stats.sort_stats("cumulative").print_stats(30)
                profiles.append((f"{label}, {trials} trials", out.getvalue()))

        # Ray Tune on the same Ray instance (its start-up excluded as for nas)
        tune_repeats = 1 if args.quick else min(repeats, 2)
        for r in range(tune_repeats):
            record("Ray Tune, random (BasicVariantGenerator)",
                   run_tune(folder, n_tune, r), n_tune)
        ray.shutdown()

    print("\n=== per-trial overhead, median over repeats ===")
    for label, values in ms.items():
        print(f"{label:<46} {_fmt(values)}")
    print(f"\nRay start-up (ray.init, local): {ray_start:.2f} s (not per trial)")
    print(f"first nas Ray job, 64 trials (2 Ray workers start, import, load the table): "
          f"{first_job:.2f} s (not per trial)")

    ours = _median(ms[OURS])
    print(f"\n=== ratios: ms/trial of each row / ms/trial of '{OURS}' ===")
    for label, values in ms.items():
        if label != OURS:
            print(f"{label:<46} {_median(values) / ours:8.1f}x")
    verdict = "MET" if ours <= TARGET_MS else "MISSED"
    print(f"\ntarget nas Ray <= {TARGET_MS:.0f} ms/trial: {verdict} ({ours:.2f} ms/trial)")
    for label, text in profiles:
        print(f"\n=== cProfile of one job '{label}' (driver process) ===")
        print(text)


if __name__ == "__main__":
    main()
