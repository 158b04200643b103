"""Datasets the `train` evaluator trains on, loaded into memory as normalised tensors.

A dataset is named in `evaluator_args.dataset`, either as a string or as a mapping:

- `digits` (the default): scikit-learn's bundled 8x8 handwritten digits, no download.
- `{kind: cifar10, path: DIR}`: the official python-pickle CIFAR-10 folder
  (`data_batch_1..5`, optional `test_batch`); a string form is `cifar10:DIR`.
- `{kind: npz, path: FILE}`: any `.npz` with `x` and `y` arrays (and optionally `x_val`,
  `y_val`, `x_test`, `y_test`); images as NHWC, NCHW or NHW; `npz:FILE`.
- `{kind: function, function: "module:function"}` (or `py:module:function`): a function
  of no arguments, importable where the job is submitted and on every worker (as every
  `module:attr` in a spec: PYTHONPATH or the current folder),
  returning numpy arrays or torch tensors: `(x_train, y_train)`, `(x_train, y_train, x_val,
  y_val)`, `(..., x_test, y_test)`, or a dict with keys `x_train`, `y_train` and optionally
  `x_val`/`y_val`, `x_test`/`y_test`. Images `x` are [N, C, H, W] (or NHWC, NHW as for npz),
  float, or integers in 0..255 (scaled to [0, 1]); labels `y` are [N] class indices 0..K-1.
  Without a validation split, `val_fraction` of the training data is held out.

Common options: `val_fraction` (held out of the training data when no validation split is
given, default 0.2), `limit` (use at most this many training examples), `seed` (the split).
Inputs are scaled to [0, 1] when stored as integers and then standardised per channel with
the training set's statistics, so every dataset reaches the model on the same footing.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search_spaces.validation import ArgumentError, fraction, int_at_least

from .files import with_checksums

KINDS = ("digits", "cifar10", "npz", "function")
_OPTIONS = {"kind", "path", "function", "val_fraction", "limit", "seed"}


@dataclass
class Dataset:
    """In-memory splits as float32 NCHW arrays and int64 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    #: the standardisation applied to every split, {"mean": [per channel], "std": [...]}:
    #: the model sees (x - mean) / std of the images as loaded (integers scaled to [0, 1]),
    #: so a deployed model must too (`nas export` folds it into the model)
    normalisation: dict[str, list[float]] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        labels = [self.y_train, self.y_val] + ([self.y_test] if self.y_test is not None else [])
        return int(max(int(y.max()) for y in labels if len(y)) + 1)


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset implies for the network, known before training."""

    input_shape: tuple[int, ...]  # per example, NCHW
    num_classes: int  # largest label + 1 over all splits
    has_test: bool

    @classmethod
    def of(cls, data: Dataset) -> DatasetInfo:
        return cls(data.input_shape, data.num_classes, data.x_test is not None)


_INFO: dict[DatasetSpec, DatasetInfo] = {}
#: The last function dataset loaded to learn its `info()`, handed to the next `load()` of the
#: same spec, so a worker calls the user's function once.
_LOADED: dict[DatasetSpec, Dataset] = {}


@dataclass(frozen=True)
class DatasetSpec:
    """A validated dataset reference; `load()` reads the data (on the worker)."""

    kind: str
    path: str | None = None
    function: str | None = None
    val_fraction: float = 0.2
    limit: int | None = None
    seed: int = 0

    def describe(self) -> str:
        return self.kind + (f":{self.path}" if self.path else "") + \
            (f":{self.function}" if self.function else "")

    def known_input_shape(self) -> tuple[int, ...]:
        """The per-example input shape (C, H, W), for checks against the space."""
        return self.info().input_shape

    def info(self) -> DatasetInfo:
        """Input shape, classes and whether there is a test split, read from file headers
        and labels; a function dataset is loaded for it (once per process: the data is kept
        for the next `load`). ValueError naming the fault."""
        if self.kind != "function":
            return self._header_info()  # cheap, and files may change: never cached
        info = _INFO.get(self)
        if info is None:
            data = self.load()
            _LOADED.clear()
            _LOADED[self] = data
            info = _INFO[self] = DatasetInfo.of(data)
        return info

    def _header_info(self) -> DatasetInfo:
        if self.kind == "digits":
            return DatasetInfo((1, 8, 8), 10, False)
        if self.kind == "cifar10":
            return DatasetInfo((3, 32, 32), 10, (Path(str(self.path)) / "test_batch").is_file())
        with np.load(str(self.path), mmap_mode="r") as data:
            labels = [np.asarray(data[k]) for k in ("y", "y_val", "y_test") if k in data.files]
            has_test = "x_test" in data.files and "y_test" in data.files
            return DatasetInfo(_nchw_shape(data["x"].shape),
                               max((int(y.max()) for y in labels if y.size), default=-1) + 1,
                               has_test)

    def files(self) -> list[str]:
        """The files `load` reads (absolute paths), for their checksums at submit."""
        if self.kind == "npz":
            return [str(self.path)]
        if self.kind == "cifar10":
            folder = Path(str(self.path))
            found = sorted(folder.glob("data_batch_*")) + \
                ([folder / "test_batch"] if (folder / "test_batch").is_file() else [])
            return [str(p) for p in found]
        return []

    def load(self) -> Dataset:
        loaded = _LOADED.pop(self, None)
        if loaded is not None:
            return loaded
        loaders = {"digits": _load_digits, "cifar10": _load_cifar10, "npz": _load_npz,
                   "function": _load_function}
        parts = loaders[self.kind](self)
        return _finish(self, *parts)


def parse_dataset(value: Any) -> DatasetSpec:
    """A `DatasetSpec` from a component's `dataset` argument; `ArgumentError` naming the
    fault (`dataset.kind`: the spec layer adds `evaluator_args.` or `strategy_args.`)."""
    if value is None:
        value = "digits"
    if isinstance(value, str):
        value = _parse_string(value)
    if not isinstance(value, dict):
        raise ArgumentError("dataset", "must be a name (e.g. 'digits') or a mapping "
                                       f"with a 'kind', got {value!r}")
    unknown = sorted(set(value) - _OPTIONS)
    if unknown:
        raise ArgumentError(f"dataset.{unknown[0]}", "unknown field; known: "
                                                    f"{', '.join(sorted(_OPTIONS))}")
    kind = value.get("kind")
    if kind not in KINDS:
        raise ArgumentError("dataset.kind", f"must be one of {', '.join(KINDS)}, "
                                            f"got {kind!r}")
    spec = DatasetSpec(
        kind=kind,
        path=_path_option(kind, value.get("path")),
        function=_function_option(kind, value.get("function")),
        val_fraction=fraction("dataset.val_fraction", value.get("val_fraction", 0.2)),
        limit=_limit(value.get("limit")),
        seed=_int_option("seed", value.get("seed", 0)),
    )
    if kind == "npz":
        _check_npz(spec.path)
    return spec


def canonical_dataset(value: Any) -> tuple[Any, list[str]]:
    """`evaluator_args.dataset` as a job stores it -- in the form given, its path made
    absolute -- and the files it reads; ValueError as `parse_dataset`."""
    spec = parse_dataset(value)
    if spec.path is None:
        return value, []
    if isinstance(value, str):
        canonical: Any = f"{value.partition(':')[0]}:{spec.path}"
    else:
        canonical = {**value, "path": spec.path}
    return canonical, spec.files()


def pin_dataset(args: dict[str, Any], field: str = "evaluator_args") -> dict[str, Any]:
    """`args` (evaluator or strategy arguments) with `dataset` as checked here
    (`canonical_dataset`) and the digests of its files under `checksums`
    (`workers.files`): a worker in another folder reads the same data or refuses."""
    if args.get("dataset") is None:
        return dict(args)
    canonical, files = canonical_dataset(args["dataset"])  # ArgumentError naming dataset.*
    return with_checksums({**args, "dataset": canonical}, files, field)


# ---- option parsing ------------------------------------------------------------------------
def _parse_string(text: str) -> dict[str, Any]:
    kind, sep, rest = text.partition(":")
    if kind == "digits" and not sep:
        return {"kind": "digits"}
    if kind in ("cifar10", "npz") and rest:
        return {"kind": kind, "path": rest}
    if kind == "py" and rest:
        return {"kind": "function", "function": rest}
    raise ArgumentError("dataset", "must be 'digits', 'cifar10:DIR', 'npz:FILE' or "
                                   f"'py:module:function', got {text!r}")


def _path_option(kind: str, path: Any) -> str | None:
    if kind not in ("cifar10", "npz"):
        if path is not None:
            raise ArgumentError("dataset.path", f"does not apply to kind {kind!r}")
        return None
    if not isinstance(path, str) or not path:
        raise ArgumentError("dataset.path", f"is required for kind {kind!r}")
    resolved = Path(path).expanduser()
    if kind == "cifar10":
        if not (resolved / "data_batch_1").is_file():
            raise ArgumentError("dataset.path", f"{path!r} is not a CIFAR-10 python "
                                                "folder (no data_batch_1 in it)")
    elif not resolved.is_file():
        raise ArgumentError("dataset.path", f"{path!r} is not a file")
    return str(resolved.resolve())


def _function_option(kind: str, function: Any) -> str | None:
    if kind != "function":
        if function is not None:
            raise ArgumentError("dataset.function", f"does not apply to kind {kind!r}")
        return None
    if not isinstance(function, str) or function.count(":") != 1 or ":" in (function[0],
                                                                            function[-1]):
        raise ArgumentError("dataset.function", "must read 'module:function', got "
                                                f"{function!r}")
    from search_spaces.registry import BadReferenceError, a_kind_of, resolve_reference

    try:  # as every module:attr in a spec: the current folder on the path, never eval
        target = resolve_reference(function)
    except BadReferenceError as exc:
        raise ArgumentError("dataset.function", str(exc)) from None
    if not callable(target):
        raise ArgumentError("dataset.function", f"{function!r} is "
                                                f"{a_kind_of(target)}, not a function")
    return function


def _limit(value: Any) -> int | None:
    if value is None:
        return None
    return _int_option("limit", value, minimum=2)


def _int_option(name: str, value: Any, minimum: int = 0) -> int:
    return int_at_least(f"dataset.{name}", value, minimum)


def _check_npz(path: str) -> None:
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
        files = data.files
    except (OSError, EOFError, ValueError, AttributeError) as exc:
        raise ArgumentError("dataset.path", f"{path!r} is not a readable .npz "
                                            f"({exc})") from None
    with data:
        missing = [k for k in ("x", "y") if k not in files]
        if missing:
            raise ArgumentError("dataset.path", f"{path!r} has no {missing[0]!r} "
                                                f"array (found: {', '.join(files) or 'none'})")
        _nchw_shape(data["x"].shape)
        if data["y"].shape != (data["x"].shape[0],):
            raise ArgumentError("dataset.path", f"{path!r}: y has shape {data['y'].shape}, "
                                                f"expected ({data['x'].shape[0]},)")


def _nchw_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per-example NCHW shape of an image array stored as NHWC, NCHW or NHW."""
    if len(shape) == 3:
        return (1, shape[1], shape[2])
    if len(shape) == 4:
        if shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4):
            return (shape[3], shape[1], shape[2])
        return (shape[1], shape[2], shape[3])
    raise ValueError(f"dataset images must have 3 or 4 dimensions (N,H,W[,C]), got {shape}")


# ---- loaders: each returns (train, val or None, test or None) as (x, y) pairs --------------
Split = tuple[np.ndarray, np.ndarray]


def _load_digits(spec: DatasetSpec) -> tuple[Split, Split | None, Split | None]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32) / 16.0
    return (x, bunch.target), None, None


def _unpickle(path: Path) -> Split:
    with open(path, "rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
    data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return data, np.asarray(batch[b"labels"], dtype=np.int64)


def _load_cifar10(spec: DatasetSpec) -> tuple[Split, Split | None, Split | None]:
    folder = Path(spec.path)
    batches = [_unpickle(p) for p in sorted(folder.glob("data_batch_*"))]
    train = (np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))
    test_file = folder / "test_batch"
    return train, None, _unpickle(test_file) if test_file.is_file() else None


def _load_npz(spec: DatasetSpec) -> tuple[Split, Split | None, Split | None]:
    with np.load(spec.path) as data:
        def pair(x: str, y: str) -> Split | None:
            return (data[x], data[y]) if x in data.files and y in data.files else None

        return pair("x", "y"), pair("x_val", "y_val"), pair("x_test", "y_test")


_FUNCTION_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def _load_function(spec: DatasetSpec) -> tuple[Split, Split | None, Split | None]:
    """Call the user's function; its return contract is in the module docstring."""
    from search_spaces.registry import resolve_reference

    try:
        result = resolve_reference(str(spec.function))()
    except Exception as exc:  # the user's code: one line naming it, not a traceback
        raise ArgumentError("dataset.function", f"{spec.function} raised "
                                                f"{type(exc).__name__}: {exc}") from None
    if isinstance(result, dict) and "x_train" in result and "y_train" in result:
        result = tuple(result.get(k) for k in _FUNCTION_KEYS)
    if not isinstance(result, tuple | list) or len(result) not in (2, 4, 6):
        raise ArgumentError("dataset.function", f"{spec.function} must return (x_train, "
                                                "y_train[, x_val, y_val[, x_test, y_test]]) or a "
                                                f"dict with keys {', '.join(_FUNCTION_KEYS)} "
                                                "(x_train, y_train required)")
    values = list(result) + [None] * (6 - len(result))
    splits = [None if values[i] is None or values[i + 1] is None else
              (_to_numpy(values[i]), _to_numpy(values[i + 1])) for i in (0, 2, 4)]
    if splits[0] is None:
        raise ArgumentError("dataset.function", f"{spec.function} returned no "
                                                "x_train/y_train")
    return splits[0], splits[1], splits[2]


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


# ---- common finishing: layout, split, limit, normalisation ----------------------------------
def _to_nchw(x: np.ndarray) -> np.ndarray:
    shape = _nchw_shape(x.shape)
    if x.ndim == 3:
        x = x[:, None]
    elif x.shape[1:] != shape:
        x = x.transpose(0, 3, 1, 2)
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float32) / 255.0
    return np.ascontiguousarray(x, dtype=np.float32)


def _finish(spec: DatasetSpec, train: Split, val: Split | None, test: Split | None) -> Dataset:
    for name, split in (("train", train), ("val", val), ("test", test)):
        if split is not None and len(split[0]) != len(split[1]):
            raise ValueError(f"dataset {spec.describe()}: the {name} split has "
                             f"{len(split[0])} images but {len(split[1])} labels")
    x, y = _to_nchw(train[0]), np.asarray(train[1], dtype=np.int64)
    rng = np.random.default_rng(spec.seed)
    if val is None:
        order = rng.permutation(len(x))
        n_val = max(1, int(round(len(x) * spec.val_fraction)))
        if n_val >= len(x):
            raise ValueError(f"dataset {spec.describe()} has too few examples ({len(x)}) to "
                             "hold out a validation split")
        val = (x[order[:n_val]], y[order[:n_val]])
        x, y = x[order[n_val:]], y[order[n_val:]]
    else:
        val = (_to_nchw(val[0]), np.asarray(val[1], dtype=np.int64))
    if spec.limit is not None and spec.limit < len(x):
        keep = rng.permutation(len(x))[: spec.limit]
        x, y = x[keep], y[keep]
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    std = x.std(axis=(0, 2, 3), keepdims=True) + 1e-6

    def norm(a: np.ndarray) -> np.ndarray:
        return ((a - mean) / std).astype(np.float32)

    test_pair = None
    if test is not None:
        test_pair = (norm(_to_nchw(test[0])), np.asarray(test[1], dtype=np.int64))
    dataset = Dataset(spec.describe(), norm(x), y, norm(val[0]), val[1],
                      *(test_pair or (None, None)),
                      normalisation={"mean": [float(v) for v in mean.ravel()],
                                     "std": [float(v) for v in std.ravel()]})
    _check_labels(dataset)
    return dataset


def _check_labels(data: Dataset) -> None:
    for name, labels in (("train", data.y_train), ("val", data.y_val)):
        if labels.ndim != 1 or (len(labels) and labels.min() < 0):
            raise ValueError(f"dataset {data.name}: {name} labels must be class indices >= 0")
    if len(data.x_val) == 0:
        raise ValueError(f"dataset {data.name}: the validation split is empty")
