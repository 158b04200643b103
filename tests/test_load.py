"""A job of 100,000 cheap trials completes, and its driver's memory stays flat; and the
`analytic` evaluator that makes such a job cheap on any space.

The driver (`nas drive`, a subprocess) runs random search on the `hybrid` space with the
`analytic` evaluator and the local executor on a SQLite file; its RSS is sampled against
the number of completed trials (`nas.load_probe`, which `bench/load.py` shares).

What may grow: the driver keeps the key of every architecture the job proposed, to never
evaluate one twice. On `hybrid` a key is a ~70-character string. tracemalloc of a
30,000-trial in-process run, growth from 10% to 100%: 205 B/trial, all of it that set (134 B
the key strings, 73 B the set's table, which grows in steps); nothing else grew by more
than 0.4 B/trial. Driver RSS over 100,000 trials, peak from 10% on less RSS at 10%: 195 B
per trial (three runs: 195, 195, 196). A leak injected into the driver (bytes kept per
result) measured 535 B/trial at 300 B, so `MAX_GROWTH_B` fails on a leak of ~200 B per
trial or more.
"""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import func, select

from nas import api
from nas.load_probe import load_spec, run_load
from nas.storage import Storage, best_trials
from nas.storage.schema import trials
from search_spaces import get_space, list_spaces
from workers.evaluators import get_evaluator

TRIALS = 100_000
#: RSS growth allowed per trial between 10% and 100% of the job (measured: 195 B).
MAX_GROWTH_B = 400


@pytest.mark.parametrize("name", list_spaces())
def test_analytic_evaluator_reports_the_space_counts(name):
    space = get_space(name)
    evaluator = get_evaluator("analytic", space)
    assert evaluator.cheap
    assert evaluator.metric_names() == {"params", "flops", *space.cost_metrics}
    rng = np.random.default_rng(0)
    for arch in (space.sample(rng) for _ in range(5)):
        result = evaluator.evaluate(arch, space.key(arch))
        assert (result.params, result.flops) == (space.params(arch), space.flops(arch))
        assert result.metrics == {"params": float(result.params), "flops": float(result.flops),
                                  **space.costs(arch)}
        assert result.measurements == []


@pytest.mark.integration
def test_smallest_model_search_under_a_flops_budget(sqlite_url):
    """What a user runs it for: the fewest parameters within a FLOPs budget. FLOPs are
    known before evaluating, so no trial is spent on an architecture over the budget
    (about half of `quant`'s random samples are); the answer matches a brute-force look."""
    storage = Storage(sqlite_url)
    space, budget = get_space("quant"), 30e6
    rng = np.random.default_rng(1)
    assert 0.2 < np.mean([space.flops(space.sample(rng)) > budget for _ in range(200)]) < 0.8
    spec = {**load_spec(300, space="quant", batch_size=8), "name": "smallest",
            "constraints": [{"metric": "flops", "max": budget}]}
    job = api.submit(storage, spec)
    assert api.run(storage, job) == "completed"
    rows = storage.trials.load(job)
    assert len(rows) == 300 and all(r.status == "completed" for r in rows)
    assert all(r.feasible and r.metrics["flops"] <= budget for r in rows)
    smallest = min(rows, key=lambda r: (r.metrics["params"], r.number))
    best = best_trials(storage, job, top=1, feasible_only=True)[0]
    assert (best["number"], best["params"]) == (smallest.number,
                                                smallest.metrics["params"])
    storage.close()


@pytest.mark.slow
def test_100k_trial_job_completes_with_flat_driver_memory(sqlite_url):
    run = run_load(sqlite_url, load_spec(TRIALS), sample_s=0.5, timeout_s=900)
    print(f"\nload: {run.report()}")

    assert run.returncode == 0, run.stderr[-3000:]
    assert run.status == "completed"
    storage = Storage(sqlite_url, create=False)
    assert storage.trials.counts(run.job) == {"completed": TRIALS}
    with storage.read() as conn:
        count, numbers, first, last, archs = conn.execute(
            select(func.count(), func.count(trials.c.number.distinct()), func.min(trials.c.number),
                   func.max(trials.c.number), func.count(trials.c.architecture_id.distinct()))
            .where(trials.c.job_id == run.job, trials.c.status == "completed")).one()
    storage.close()
    assert (count, numbers, first, last, archs) == (TRIALS, TRIALS, 1, TRIALS, TRIALS)

    assert sum(done >= 0.1 * TRIALS for _, done, _ in run.samples) >= 10, \
        "too few RSS samples past 10% to judge memory"
    growth = run.growth_per_trial(0.1, 1.0)
    assert growth < MAX_GROWTH_B, (
        f"driver RSS grew {growth:.0f} B per trial from 10% to 100% (the de-duplication set "
        f"accounts for ~195 B): a leak? {run.report()}")
