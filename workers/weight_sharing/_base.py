"""The `WeightSharingSearch` contract: one long, checkpointed supernet training on a worker.

A weight-sharing method (DARTS, PC-DARTS, RARTS, FBNet, one-shot supernets) trains one
supernet instead of many networks, then derives architectures from it. It runs as a single
task on a worker; the driver turns the derived architectures into trials that the job's
evaluator scores.

The life of a search:

    search = get_search("darts", space, seed=0, dataset="digits", epochs=10)
    outcome = search.run(checkpoint_dir)      # resumes from checkpoint_dir if it holds one
    outcome.archs                              # derived architectures, best first

Checkpoints: `run` writes `checkpoint_dir / CHECKPOINT` at the end of every epoch (and may
write more often), atomically (a temporary file, then `os.replace`), holding everything
needed to go on exactly where it stopped: model and architecture weights, every optimiser
and scheduler state, the RNG states (python, numpy, torch CPU and CUDA), the epoch/step
counters and the history so far. A `run` killed at any instant and started again on the same
folder continues from the last checkpoint and, on CPU, reaches bit-for-bit the same outcome
as a run that was never interrupted. The checkpoint also records the search's `config()`;
resuming with a different configuration raises ValueError instead of mixing two searches.

Subclasses implement `_setup`, `_train_epoch`, `_state`/`_load_state` and `_derive`; the
base class owns the epoch loop, the checkpoint files, RNG capture and the stop/progress hooks.

Data parallel (`workers: N`, see `distributed`): `run` trains on N Ray Train ranks that each
run this same epoch loop on their shard of every batch, with `self.ranks` (a `Ranks`: the
identity on one rank) averaging gradients, normalising BatchNorm over the global batch and
keeping the ranks in step. Rank 0 alone writes the checkpoint (the same file: a 1-rank and
an N-rank search resume each other; a changed rank count is noted in `outcome.notes`),
reports progress and derives. `workers` is not part of `config()`.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from search_spaces import Arch, SearchSpace
from search_spaces.registry import Registry, check_class
from search_spaces.validation import UnsupportedSpaceError, int_at_least, integer

from ..torch_device import check_deterministic, check_device, deterministic_cuda, resolve_device

CHECKPOINT = "checkpoint.pt"


@dataclass
class SearchOutcome:
    """What a finished (or stopped) search hands back to the driver."""

    #: Derived architectures, best first (valid architectures of the search's space).
    archs: list[Arch]
    #: Per derived architecture, metrics the search itself measured (e.g. `supernet_acc`,
    #: the accuracy with inherited weights); the same length as `archs`.
    metrics: list[dict[str, float]]
    #: One record per finished epoch (train/val loss and accuracy, seconds, method specifics
    #: such as the skip-connection count of the current argmax cell).
    history: list[dict[str, Any]] = field(default_factory=list)
    #: False when `stop()` ended the run before the last epoch (the archs are then derived
    #: from the supernet as it stood).
    finished: bool = True
    #: Epochs that were already done when this `run` started (0: a fresh start).
    resumed_from_epoch: int = 0
    #: Data-parallel ranks that trained (`workers`).
    workers: int = 1
    #: What the closing record should say (e.g. the rank count changed on resume).
    notes: list[str] = field(default_factory=list)


class WeightSharingSearch(abc.ABC):
    """A seeded supernet search over one `SearchSpace`.

    Constructor arguments common to every method: `seed`, `dataset` (a `workers.datasets`
    reference, default `digits`), `epochs`, `batch_size`, `device` (`auto`: CUDA when
    available, else CPU; or `cpu`, `cuda`, `cuda:N`), `threads` (torch CPU threads),
    `deterministic` (on a GPU, deterministic kernels, so that a run and a stopped and resumed
    one end bit for bit alike there too; the CPU always is), `workers` (data-parallel ranks
    on Ray Train, default 1; see `distributed`).
    Method-specific arguments follow as keywords; unknown ones raise TypeError (the strategy
    names them first: `check_init_chain`), bad values
    `ArgumentError` naming the field (`search_spaces.validation`).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: Names of the spaces (`SearchSpace.name`) the method supports.
    spaces: ClassVar[tuple[str, ...]] = ()

    def __init__(self, space: SearchSpace, *, seed: int = 0, dataset: Any = "digits",
                 epochs: int = 10, batch_size: int = 64, device: str = "auto",
                 threads: int = 1, deterministic: bool = False, workers: int = 1) -> None:
        from workers.datasets import parse_dataset

        from .distributed import Ranks, check_workers

        if self.spaces and space.name not in self.spaces:
            raise UnsupportedSpaceError(f"strategy {self.name!r} supports the spaces "
                                        f"{', '.join(self.spaces)}, not {space.name!r}")
        self.space = space
        self.seed = _int_field("seed", seed, None)
        self.dataset = parse_dataset(dataset)
        self.epochs = _int_field("epochs", epochs, 1)
        self.batch_size = _int_field("batch_size", batch_size, 1)
        self.threads = _int_field("threads", threads, 1)
        self.device_name = check_device("device", device)
        self.deterministic = check_deterministic("deterministic", deterministic)
        self.workers = check_workers(workers)
        #: This process's rank among the data-parallel ranks (the identity on one rank).
        self.ranks: Ranks = Ranks()
        self.notes: list[str] = []
        self.epoch = 0
        self.history: list[dict[str, Any]] = []

    # ---- the public API ----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Everything that defines the search (JSON-able); stored in every checkpoint."""
        split = _dataset_split(self.dataset)
        return {"name": self.name, "space": self.space.name, "seed": self.seed,
                "dataset": self.dataset.describe(), **({"dataset_split": split} if split else {}),
                "epochs": self.epochs, "batch_size": self.batch_size, **self._config()}

    def run(self, checkpoint_dir: str | Path, *, stop: Callable[[], bool] | None = None,
            progress: Callable[[dict[str, Any]], None] | None = None) -> SearchOutcome:
        """Train (resuming from `checkpoint_dir` when it holds a checkpoint), then derive.

        `stop()` is polled after every epoch; True ends the run early (checkpoint written).
        `progress(record)` receives each epoch's history record."""
        import torch

        folder = Path(checkpoint_dir)
        folder.mkdir(parents=True, exist_ok=True)
        if self.workers > 1 and self.ranks.size == 1:  # the driver side: start the ranks
            from .distributed import run_data_parallel

            return run_data_parallel(self, folder, stop, progress)
        torch.set_num_threads(self.threads)
        self.device = _resolve_device(self.device_name)
        with deterministic_cuda(self.device, self.deterministic):
            return self._run(folder, stop, progress)

    def _run(self, folder: Path, stop: Callable[[], bool] | None,
             progress: Callable[[dict[str, Any]], None] | None) -> SearchOutcome:
        self.data = self.dataset.load()
        _seed_everything(self.seed)
        self._setup()
        ranks = self.ranks
        ranks.attach(self)
        resumed = self._load_checkpoint(folder / CHECKPOINT)
        finished = True
        while self.epoch < self.epochs:
            with ranks.training():
                record = self._train_epoch(self.epoch)
            record = {"epoch": self.epoch + 1, **record, **self._rank_check()}
            self.history.append(record)
            self.epoch += 1
            if ranks.rank == 0:
                self._save_checkpoint(folder / CHECKPOINT)
                if progress is not None:
                    progress(record)
            if self.epoch < self.epochs and ranks.agree(stop is not None and stop()):
                finished = False
                break
        if ranks.rank != 0:  # rank 0 derives (and writes what deriving writes)
            return SearchOutcome([], [], list(self.history), finished, resumed, ranks.size,
                                 list(self.notes))
        with ranks.local():
            archs, metrics = self._derive()
        return SearchOutcome(archs, metrics, list(self.history), finished, resumed,
                             ranks.size, list(self.notes))

    def _rank_check(self) -> dict[str, Any]:
        """On N ranks: every rank's hash of its architecture parameters and of its whole
        state (`_arch_state`, `_state`), for the history; RuntimeError when they differ."""
        from .distributed import state_digest

        if self.ranks.size == 1:
            return {}
        mine = (state_digest(self._arch_state()), state_digest(self._state()))
        every = self.ranks.gather(mine)
        record = {"ranks": self.ranks.size, "arch_hashes": [a for a, _ in every],
                  "state_hashes": [s for _, s in every]}
        if len(set(every)) > 1:
            raise RuntimeError(f"the data-parallel ranks diverged at epoch {self.epoch + 1}: "
                               f"{record}")
        return record

    # ---- what a subclass implements -------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        """Method-specific settings that define the search (JSON-able)."""
        return {}

    @abc.abstractmethod
    def _setup(self) -> None:
        """Build the supernet, architecture parameters and optimisers on `self.device`
        (data in `self.data`, RNGs already seeded with `self.seed`)."""

    @abc.abstractmethod
    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch; returns its history record (JSON-able numbers and strings)."""

    @abc.abstractmethod
    def _state(self) -> dict[str, Any]:
        """Every tensor and state dict needed to continue (torch.save-able)."""

    @abc.abstractmethod
    def _load_state(self, state: dict[str, Any]) -> None:
        """Restore what `_state` returned (after `_setup`)."""

    @abc.abstractmethod
    def _derive(self) -> tuple[list[Arch], list[dict[str, float]]]:
        """The derived architectures (best first) and per-arch metrics."""

    def _arch_state(self) -> Any:
        """The architecture parameters, whose per-rank hash the history of an N-rank search
        records after every epoch (default: the whole `_state()`)."""
        return self._state()

    # ---- helpers for subclasses ----------------------------------------------------------------
    def _check_input_shape(self) -> None:
        """ArgumentError naming `dataset` when its inputs do not have the space's shape."""
        from search_spaces.validation import ArgumentError

        expected = tuple(self.space.input_shape())
        if tuple(self.data.input_shape) != expected:
            raise ArgumentError("dataset", f"has inputs of shape {self.data.input_shape}, the "
                                           f"space expects {expected} (set space_args."
                                           "input_channels / input_size)")

    def _resize(self, x: Any, arch: Arch) -> Any:
        """A batch at the input resolution `arch` chooses (elastic-resolution spaces)."""
        import torch.nn.functional as F

        side = self.space.input_shape(arch)[-1]
        if x.shape[-1] == side:
            return x
        return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)

    def _flops(self, arch: Arch) -> int:
        """The space's FLOPs of `arch`, computed once per architecture."""
        cache: dict[str, int] = self.__dict__.setdefault("_flops_cache", {})
        key = self.space.key(arch)
        if key not in cache:
            cache[key] = int(self.space.flops(arch))
        return cache[key]

    # ---- checkpoints ------------------------------------------------------------------------
    def _save_checkpoint(self, path: Path) -> None:
        import torch

        payload = {"config": self.config(), "epoch": self.epoch, "history": self.history,
                   "rng": _rng_state(), "state": self._state(), "workers": self.ranks.size}
        tmp = path.with_name(path.name + ".tmp")
        torch.save(payload, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def _load_checkpoint(self, path: Path) -> int:
        import torch

        if not path.exists():
            return 0
        payload = torch.load(path, map_location=self.device, weights_only=False)
        if payload["config"] != self.config():
            raise ValueError(f"the checkpoint in {path.parent} is of another search "
                             f"({payload['config']}), not {self.config()}")
        self._load_state(payload["state"])
        written = int(payload.get("workers", 1))
        if written != self.ranks.size:
            self.notes.append(f"resumed at epoch {payload['epoch']} on {self.ranks.size} "
                              f"rank(s) from a checkpoint written on {written} (each batch "
                              "split anew)")
        self.epoch = int(payload["epoch"])
        self.history = list(payload["history"])
        _set_rng_state(payload["rng"])
        return self.epoch


# ---- registry -------------------------------------------------------------------------------
#: The weight-sharing methods by name, with the plugins of `nas.weight_sharing`.
SEARCHES: Registry[type[WeightSharingSearch]] = Registry(
    "weight-sharing search", "nas.weight_sharing",
    check=check_class(WeightSharingSearch, "weight-sharing search"))


def register_search(cls: type[WeightSharingSearch]) -> type[WeightSharingSearch]:
    """Class decorator: make a weight-sharing method available by its `name`."""
    return SEARCHES.decorator()(cls)


def list_searches() -> list[str]:
    return SEARCHES.names()


def search_class(name: str) -> type[WeightSharingSearch]:
    return SEARCHES.get(name)


def get_search(name: str, space: SearchSpace, **kwargs: Any) -> WeightSharingSearch:
    return search_class(name)(space, **kwargs)


# ---- helpers --------------------------------------------------------------------------------
def _dataset_split(spec: Any) -> dict[str, Any]:
    """The dataset's `limit`, `val_fraction` and `seed` where they are not the defaults: a
    resume on another subset is then refused, and checkpoints written before these entered
    the config (all defaults) still match."""
    defaults = {f.name: f.default for f in dataclasses.fields(spec)}
    return {name: getattr(spec, name) for name in ("limit", "val_fraction", "seed")
            if getattr(spec, name) != defaults[name]}


def _int_field(name: str, value: Any, low: int | None) -> int:
    return integer(name, value) if low is None else int_at_least(name, value, low)


def _resolve_device(name: str) -> Any:
    return resolve_device("strategy_args.device", name)


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
