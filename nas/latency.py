"""Device latency outside jobs: measure it here, import it from elsewhere, predict the rest.

Every value lands in the `measurements` table with its source (measured < imported <
benchmark < predicted, the order in which queries prefer them), so `nas best --device D`,
`nas pareto` and strategy constraints use whatever is known, and say which.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from search_spaces import Arch, SearchSpace, get_space

from .errors import NasError
from .spec import MAX_DEVICE, MAX_METRIC, short_repr
from .storage import MeasurementRow, Storage
from .storage.schema import architectures, measurements

#: Spaces up to this size can be predicted in full (`nas latency fit --all`).
ENUMERABLE = 100_000


# ---- import -------------------------------------------------------------------------------
def import_csv(storage: Storage, space_name: str, device: str, path: str | Path,
               metric: str = "latency_ms") -> dict[str, Any]:
    """Import `arch,<metric>` rows measured elsewhere (source `imported`); all or nothing."""
    space = space_by_name(space_name)
    _check_device(device)
    _check_metric(metric)
    rows = [MeasurementRow(key, arch, device, metric, value, "imported")
            for key, arch, value in _read_csv(space, Path(path), metric)]
    counts = storage.measurements.put(space.name, rows)
    return {"space": space.name, "device": device, "metric": metric, "rows": len(rows),
            **counts}


def _read_csv(space: SearchSpace, path: Path, metric: str) -> list[tuple[str, Arch, float]]:
    if not path.is_file():
        raise NasError(f"FILE: {str(path)!r} does not exist")
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            for column in ("arch", metric):
                if column not in header:
                    raise NasError(f"{path.name}: no {column!r} column (found: "
                                   f"{', '.join(header) or 'none'})")
            found: dict[str, tuple[str, Arch, float]] = {}
            for line, record in enumerate(reader, start=2):
                key, arch = _parse_arch(space, record["arch"], path.name, line)
                value = _parse_value(record[metric], metric, path.name, line)
                if key in found and found[key][2] != value:
                    raise NasError(f"{path.name} line {line}: {key} appears twice with "
                                   f"different values")
                found[key] = (key, arch, value)
    except UnicodeDecodeError:
        raise NasError(f"{path.name}: not a text CSV file") from None
    except csv.Error as exc:
        raise NasError(f"{path.name}: not a valid CSV file ({exc})") from None
    if not found:
        raise NasError(f"{path.name}: no rows")
    return list(found.values())


def _parse_arch(space: SearchSpace, text: str | None, name: str, line: int) -> tuple[str, Arch]:
    try:
        arch = space.validate((text or "").strip())
    except ValueError as exc:
        raise NasError(f"{name} line {line}: not an architecture of space {space.name!r}: "
                       f"{exc}") from None
    return space.key(arch), arch


def _parse_value(text: str | None, metric: str, name: str, line: int) -> float:
    try:
        value = float(text or "")
    except ValueError:
        raise NasError(f"{name} line {line}: {metric} must be a number, "
                       f"got {short_repr(text)}") from None
    if not math.isfinite(value) or value <= 0:
        raise NasError(f"{name} line {line}: {metric} must be a positive number, "
                       f"got {short_repr(text)}")
    return value


def space_by_name(name: str) -> SearchSpace:
    try:
        return get_space(name)
    except KeyError as exc:
        raise NasError(f"--space: {str(exc).strip(chr(39) + chr(34))}") from None


def _check_device(device: str) -> None:
    """A name `measurements.device` holds on every database (no NUL: PostgreSQL refuses it)."""
    if not device or len(device) > MAX_DEVICE or device.strip() != device \
            or not device.isprintable():
        raise NasError(f"--device: expected a device name of 1-{MAX_DEVICE} printable "
                       f"characters (no NUL or control characters) without surrounding "
                       f"spaces, got {short_repr(device)}")


def _check_metric(metric: str) -> None:
    if not metric or len(metric) > MAX_METRIC or not metric.isprintable():
        raise NasError(f"--metric: expected a metric name of 1-{MAX_METRIC} printable "
                       f"characters, got {short_repr(metric)}")


# ---- fit and predict ----------------------------------------------------------------------
def known_values(storage: Storage, space: str, device: str, metric: str
                 ) -> dict[str, float]:
    """The preferred non-predicted value of every architecture that has one."""
    query = (select(architectures.c.key, measurements.c.value)
             .join(measurements, measurements.c.architecture_id == architectures.c.id)
             .where(architectures.c.space == space, measurements.c.device == device,
                    measurements.c.metric == metric, measurements.c.source != "predicted")
             .order_by(measurements.c.source_rank.desc()))
    with storage.read() as conn:
        return {key: float(value) for key, value in conn.execute(query)}


def stored_keys(storage: Storage, space: str) -> list[str]:
    with storage.read() as conn:
        return list(conn.execute(select(architectures.c.key)
                                 .where(architectures.c.space == space)
                                 .order_by(architectures.c.key)).scalars())


def fit_and_predict(storage: Storage, space_name: str, device: str, metric: str = "latency_ms",
                    model: str = "gbdt", all_archs: bool = False, holdout: float = 0.2,
                    seed: int = 0) -> dict[str, Any]:
    """Fit a latency predictor on what is known for `device` and store predictions (source
    `predicted`, with the model version) for the stored architectures that have no known
    value, or for every architecture of an enumerable space with `all_archs`.

    The reported accuracy comes from a fit on (1 - `holdout`) of the known values scored on
    the rest; the stored predictions come from a fit on all of them.
    """
    from predictors.latency import accuracy_report, get_latency_predictor

    space = space_by_name(space_name)
    _check_device(device)
    known = known_values(storage, space.name, device, metric)
    if len(known) < 10:
        raise NasError(f"--device {device}: only {len(known)} known {metric} values for space "
                       f"{space.name!r}; measure or import at least 10 first")
    keys = sorted(known)
    archs = [space.from_key(k) for k in keys]
    values = np.array([known[k] for k in keys])
    order = np.random.default_rng(seed).permutation(len(keys))
    n_test = max(1, int(round(holdout * len(keys))))
    test, train = order[:n_test], order[n_test:]
    probe = get_latency_predictor(model, space).fit([archs[i] for i in train], values[train])
    report = accuracy_report(probe.predict([archs[i] for i in test]), values[test])
    predictor = get_latency_predictor(model, space).fit(archs, values)
    targets = _targets(storage, space, known, all_archs)
    predicted = predictor.predict([a for _, a in targets]) if targets else np.array([])
    rows = [MeasurementRow(key, arch, device, metric, float(max(value, 1e-6)), "predicted",
                           predictor.version())
            for (key, arch), value in zip(targets, predicted, strict=True)]
    counts = storage.measurements.put(space.name, rows)
    return {"space": space.name, "device": device, "metric": metric, "model": model,
            "model_version": predictor.version(), "trained_on": len(keys),
            "holdout": {**report, "fraction": holdout}, "predicted": len(rows), **counts}


def _targets(storage: Storage, space: SearchSpace, known: dict[str, float],
             all_archs: bool) -> list[tuple[str, Arch]]:
    if all_archs:
        if space.size() > ENUMERABLE:  # math.inf for a space with float decisions
            count = "infinitely many" if space.size() == math.inf else f"{space.size():,}"
            raise NasError(f"--all: space {space.name!r} has {count} architectures; "
                           f"only spaces up to {ENUMERABLE:,} can be predicted in full")
        candidates = [(space.key(a), a) for a in space.enumerate()]
    else:
        candidates = [(k, space.from_key(k)) for k in stored_keys(storage, space.name)]
    return [(k, a) for k, a in candidates if k not in known]


# ---- measure here -------------------------------------------------------------------------
def measure(storage: Storage, space: SearchSpace, archs: list[Arch], *, device: str | None,
            runtime: str = "eager", batch: int = 1, threads: int = 1, repeats: int = 20,
            seed: int = 0, int8: bool = False) -> dict[str, Any]:
    """Time each architecture on this machine and store it (source `measured`). With
    `int8`, the space's INT8 model (calibrated on Gaussian inputs) is timed instead, under
    the device key suffixed `-int8`."""
    import torch

    from workers.latency import RUNTIMES, device_key, measure_latency_ms

    if runtime not in RUNTIMES:
        raise NasError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if int8 and not callable(getattr(space, "int8_model", None)):
        raise NasError(f"--int8: space {space.name!r} cannot produce an INT8 model")
    if int8 and runtime != "eager":
        raise NasError("--int8 is measured in torch eager mode only (--runtime eager)")
    for name, value, low in (("--batch", batch, 1), ("--threads", threads, 1),
                             ("--repeats", repeats, 3)):
        if value < low:
            raise NasError(f"{name} must be at least {low}, got {value}")
    device = device or device_key(threads, batch, runtime) + ("-int8" if int8 else "")
    _check_device(device)
    rows, spreads = [], []
    for arch in archs:
        torch.manual_seed(seed)
        model = space.build(arch)
        if int8:
            calibration = torch.randn(32, *space.input_shape(arch))
            model = space.int8_model(arch, calibration, model=model.eval())
        timing = measure_latency_ms(model, space.input_shape(arch), batch=batch,
                                    threads=threads, repeats=repeats, runtime=runtime)
        rows.append(MeasurementRow(space.key(arch), arch, device, "latency_ms",
                                   timing["median_ms"], "measured"))
        spreads.append(timing["iqr_ms"] / max(timing["median_ms"], 1e-9))
    counts = storage.measurements.put(space.name, rows)
    values = [r.value for r in rows]
    return {"space": space.name, "device": device, "runtime": runtime, "int8": int8,
            "measured": len(rows),
            "median_ms": float(np.median(values)) if values else None,
            "min_ms": min(values, default=None), "max_ms": max(values, default=None),
            "median_relative_iqr": float(np.median(spreads)) if spreads else None, **counts}
