"""Weight-sharing strategies (darts, pc-darts, rarts, fbnet, oneshot) as ask/tell strategies.

The supernet training itself is `workers.weight_sharing`: one long, checkpointed task (in the
job's artifact folder, `search/`) that the strategy's preparation hands to the driver's
executor before the first trial (`preparation`, see `nas.strategies.preparation`). Its
result (the derived architectures, best first, with the search's own metrics such as the
supernet accuracy) comes back through `prepared` (`set_outcome`) and is part of the
strategy's `state_dict`, so a resumed job never trains again once the search has finished;
a job interrupted during the search runs the task again and it resumes from its last
checkpoint. Trials of derived architectures get the search's metrics as `search.<name>` and,
when the search saved them, the subnet's inherited weights (`result_metrics`,
`result_weights`).

Then the strategy is an ordinary ask/tell one: the derived architectures are proposed first
(those that are acceptable: not known, not violating a constraint), each scored by the
job's evaluator (on NB201 the benchmark table gives the derived cell's true accuracy, which
is how a DARTS collapse shows up). Budget beyond them is spent on mutations of the best
scored architecture so far, a local search around what the supernet found (random samples
once its neighbours are all known).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from search_spaces import Arch, SearchSpace

from ._base import Strategy, TrialView
from .preparation import LongTask

if TYPE_CHECKING:
    from search_spaces.registry import Registry


class WeightSharingStrategy(Strategy):
    """The derived architectures of one supernet search, then mutations of the best."""

    method: ClassVar[str] = ""

    def __init__(self, space: SearchSpace, seed: int = 0, **args: Any) -> None:
        super().__init__(space, seed)
        from search_spaces.validation import check_init_chain
        from workers.weight_sharing import get_search, search_class
        from workers.weight_sharing.distributed import check_fits, known_resources

        check_init_chain(search_class(self.method), space, seed=seed, **args)
        search = get_search(self.method, space, seed=seed, **args)  # bad arguments fail here
        if search.workers > 1:  # more ranks than the cluster holds, when it is known here
            check_fits(search.workers, search.device_name, known_resources())
        self.seed = int(seed)
        self.args = dict(args)
        self.derived: list[dict[str, Any]] | None = None  # [{key, arch, metrics}] best first
        self.search_info: dict[str, Any] = {}
        self.cursor = 0
        self.best: tuple[float, str] | None = None  # (score, key) of the best told trial

    @classmethod
    def canonical_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        from workers.datasets import pin_dataset

        return pin_dataset(args, "strategy_args")

    # ---- the search -----------------------------------------------------------------------------
    @property
    def searched(self) -> bool:
        return self.derived is not None

    def search_task(self, checkpoint_dir: str, space_args: dict[str, Any]) -> Any:
        from workers.weight_sharing.task import SearchTask

        return SearchTask(self.method, self.space.name, dict(space_args), self.args, self.seed,
                          checkpoint_dir)

    def folder(self) -> Path:
        """The search's checkpoint folder: `search/` in the job's artifact folder."""
        if self.context.artifacts is None:
            raise RuntimeError(f"{self.method}: no artifact folder bound (run it in a job)")
        return self.context.artifacts / "search"

    def preparation(self) -> LongTask | None:
        if self.searched:
            return None
        folder = str(self.folder())
        return LongTask(self.search_task(folder, self.context.space_args),
                        artifacts=(("search", folder),),
                        cancel_note="cancelled by the user during the supernet search; "
                                    "`nas resume` continues from its last checkpoint")

    def prepared(self, result: Any) -> None:
        """Take the search's result and keep its record in `history.json` beside its
        checkpoint."""
        self.set_outcome(result)
        (self.folder() / "history.json").write_text(json.dumps(
            {"device": result.device, "worker": result.worker,
             "workers": getattr(result, "workers", 1), "notes": getattr(result, "notes", []),
             "resumed_from_epoch": result.resumed_from_epoch, "history": result.history,
             "derived": [{"key": k, **m} for k, m in zip(result.keys, result.metrics,
                                                          strict=True)]}, indent=1))

    def set_outcome(self, result: Any) -> None:
        """Take the search's result (a `workers.weight_sharing.task.SearchResult`)."""
        self.derived = [{"key": key, "arch": self.space.validate(arch), "metrics": metrics}
                        for key, arch, metrics in zip(result.keys, result.archs,
                                                      result.metrics, strict=True)]
        last = result.history[-1] if result.history else {}
        self.search_info = {"epochs": len(result.history), "device": result.device,
                            "finished": result.finished, "last_epoch": last,
                            "resumed_from_epoch": result.resumed_from_epoch}
        workers, notes = getattr(result, "workers", 1), list(getattr(result, "notes", []))
        if workers > 1 or notes:  # a data-parallel search: its ranks, and a changed count
            self.search_info.update(workers=workers, notes=notes)

    def search_metrics(self, key: str) -> dict[str, float]:
        """The search's own metrics of a derived architecture (empty for the others)."""
        for item in self.derived or ():
            if item["key"] == key:
                return dict(item["metrics"])
        return {}

    def result_metrics(self, key: str) -> dict[str, float]:
        """The search's metrics of a derived architecture, as `search.<name>`."""
        return {f"search.{k}": v for k, v in self.search_metrics(key).items()}

    def result_weights(self, key: str) -> bytes | None:
        """The weights the search saved for a derived subnet (`subnet-<rank>.pt` in its
        folder), if any: `nas export` hands them over."""
        keys = [item["key"] for item in self.derived or ()]
        if key not in keys or self.context.artifacts is None:
            return None
        path = self.folder() / f"subnet-{keys.index(key) + 1}.pt"
        return path.read_bytes() if path.is_file() else None

    # ---- ask / tell ------------------------------------------------------------------------------
    def ask(self) -> Arch:
        if self.derived is None:
            raise RuntimeError(f"{self.method}: ask() before the supernet search ran")
        while self.cursor < len(self.derived):
            item = self.derived[self.cursor]
            self.cursor += 1
            if self.acceptable(item["arch"], item["key"]):
                return item["arch"]
        parent = self.space.from_key(self.best[1]) if self.best is not None else \
            self.derived[0]["arch"] if self.derived else None
        if parent is None:
            return self.draw_acceptable(lambda: self.space.sample(self.rng))
        return self.mutate_or_sample(parent)

    def tell(self, trial: TrialView) -> None:
        if trial.score is not None and (self.best is None or trial.score > self.best[0]):
            self.best = (float(trial.score), trial.key)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "derived": self.derived, "cursor": self.cursor,
                "best": list(self.best) if self.best else None, "search": self.search_info}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.derived = state["derived"]
        self.cursor = int(state["cursor"])
        self.best = (float(state["best"][0]), str(state["best"][1])) if state["best"] else None
        self.search_info = dict(state["search"])


def register_search_strategies(registry: Registry[type[Strategy]]) -> None:
    """Register a `WeightSharingStrategy` for every weight-sharing search (built-in and
    plugins, `workers.weight_sharing.SEARCHES`) whose name is not a strategy yet, with the
    search's description and origin (called by the strategy registry's lazy loading)."""
    from workers.weight_sharing._base import SEARCHES  # the package registers the built-ins

    known = registry.snapshot()[0]  # without loading (this runs inside the loading)
    for name, search in SEARCHES.items():
        if name in known:
            continue
        spaces = getattr(search, "spaces", ())
        description = search.description + (f"; {', '.join(spaces)} spaces" if spaces else "")
        cls = type(f"WeightSharing_{name.replace('-', '_').replace('.', '_')}",
                   (WeightSharingStrategy,),
                   {"name": name, "method": name, "description": description,
                    "__doc__": description, "__module__": __name__})
        registry.register(name, cls, origin=SEARCHES.origin(name))
