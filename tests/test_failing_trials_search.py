"""Searches where most trials fail (issue 17 item 9): a table holding only 300 of NB201's
15,625 cells fails about 98% of the trials, and a population-based strategy must go on
proposing (random samples while it has few live parents; sampling when a parent's
neighbourhood is used up) instead of stalling on "proposals in a row were already evaluated".
"""

from __future__ import annotations

import numpy as np
import pytest

from nas import api
from nas.storage import Storage
from nas.strategies import SearchContext, TrialView, get_strategy
from search_spaces import NB201Space
from tests.conftest import nb201_spec, nb201_table_subset

SPACE = NB201Space()



@pytest.mark.integration
@pytest.mark.parametrize("strategy, args", [
    ("evolution", {}),  # the defaults: population 20, sample 5
    ("moevo", {}),
])
def test_population_search_over_a_small_table_spends_its_whole_budget(
        strategy, args, sqlite_url, tmp_path):
    table = nb201_table_subset(tmp_path / "small.csv", rows=300)
    storage = Storage(sqlite_url)
    job = api.submit(storage, nb201_spec(
        strategy=strategy, strategy_args=args, evaluator_args={"table": str(table)},
        budget={"trials": 300}))
    api.run(storage, job)
    counts = storage.trials.counts(job)
    note = storage.jobs.get(job).note or ""
    assert counts.get("completed", 0) + counts.get("failed", 0) == 300, (counts, note)
    assert counts["failed"] > 250  # the point of the test: nearly every trial fails
    assert "exhausted" not in note


def _neighbourhood(arch: dict) -> set[str]:
    """The keys of `arch` and of every architecture one decision away."""
    dna = SPACE.to_dna(arch)
    found = {SPACE.key(arch)}
    for d, count in enumerate(SPACE.choice_counts()):
        for c in range(count):
            found.add(SPACE.key(SPACE.from_dna(dna[:d] + [c] + dna[d + 1:])))
    return found


def _proxy_strategy(mode: str):  # noqa: ANN202
    strategy = get_strategy("proxy", SPACE, seed=0, pool=2, mode=mode, population=3,
                            sample=2)
    strategy.set_scores({})  # an empty pool: "top" mutates the best told trial at once
    return strategy


def _weight_sharing_strategy():  # noqa: ANN202
    strategy = get_strategy("darts", SPACE, seed=0)
    strategy.derived = []  # a search that derived nothing: mutations of the best at once
    return strategy


@pytest.mark.integration
@pytest.mark.parametrize("make", [
    lambda: get_strategy("evolution", SPACE, seed=0, population=3, sample=2),
    lambda: get_strategy("moevo", SPACE, seed=0, population=3, sample=2),
    lambda: _proxy_strategy("top"),
    lambda: _proxy_strategy("evolution"),
    _weight_sharing_strategy,
], ids=["evolution", "moevo", "proxy-top", "proxy-evolution", "weight-sharing"])
def test_parents_whose_neighbours_are_all_known_give_way_to_samples(make):
    """Every live parent has all its neighbours evaluated already: a mutation can only
    repeat an architecture, so the strategy must propose something new (a sample) instead
    of a duplicate the driver discards, over and over until it gives up."""
    strategy = make()
    rng = np.random.default_rng(0)
    parents = [SPACE.sample(rng) for _ in range(3)]
    known: set[str] = set()
    strategy.bind(SearchContext(is_known=known.__contains__))
    for _ in range(3):  # the random phase
        strategy.ask()
    for number, parent in enumerate(parents, 1):
        known |= _neighbourhood(parent)
        strategy.tell(TrialView(number, parent, SPACE.key(parent), "completed",
                                {"objective": float(number)}, float(number), (float(number),)))
    for _ in range(20):
        key = SPACE.key(strategy.ask())
        assert key not in known, "proposed an architecture the job already has"
        known.add(key)
