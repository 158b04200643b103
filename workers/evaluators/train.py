"""`train` evaluator: a short, seeded training run of the candidate on a real dataset."""

from __future__ import annotations

from typing import Any

from search_spaces import Arch, SearchSpace
from search_spaces.validation import ArgumentError, UnsupportedSpaceError, int_at_least

from ..datasets import Dataset, DatasetSpec, parse_dataset, pin_dataset
from ..latency import device_key, measure_latency_ms
from ..torch_device import gpu_device_key, resolve_device
from ..training import TrainConfig, TrainingDiverged, evaluate_model, train_model
from ._base import (
    Evaluation,
    EvaluationError,
    Evaluator,
    Measurement,
    cost_metric_names,
    exact_costs,
    register_evaluator,
)

_CONFIG_FIELDS = set(TrainConfig.__dataclass_fields__)
#: Training examples the INT8 conversion calibrates its activation ranges on.
CALIBRATION_EXAMPLES = 128


def arch_input_shape(space: SearchSpace, arch: Arch | None = None) -> tuple[int, ...]:
    """The input shape an architecture expects (per-arch where the resolution is searched)."""
    return tuple(space.input_shape(arch))


@register_evaluator
class TrainEvaluator(Evaluator):
    """Builds the candidate, trains it for a few epochs, reports validation figures.

    Metrics: `val_acc` (%), `val_loss`, `train_loss`, `train_time_s`, `params`, `flops`,
    `test_acc` when the dataset has a test split; for spaces that can produce an INT8 model
    (`quant`), `int8_val_acc` too. The eval-mode latency of the trained model is measured on
    this worker (batch 1, one thread, median; source `measured`) and, for INT8 models, under
    the device key suffixed `-int8`. The trained weights travel back with the result (the
    driver keeps the job's `keep_weights` best). A diverging run (NaN loss) fails the trial.
    """

    description = ("builds the candidate, trains it a few epochs, reports validation figures and "
                   "latency")

    name = "train"
    needs_model = True

    def __init__(self, space: SearchSpace, dataset: Any = None, measure_latency: bool = True,
                 latency_repeats: int = 20, int8: bool | None = None, save_weights: bool = True,
                 **train_args: Any) -> None:
        super().__init__(space)
        unknown = sorted(set(train_args) - _CONFIG_FIELDS)
        if unknown:
            known = ", ".join(sorted(_CONFIG_FIELDS | {"dataset", "measure_latency",
                                                       "latency_repeats", "int8",
                                                       "save_weights"}))
            raise ArgumentError(unknown[0], f"unknown field of the train evaluator; known: {known}")
        self.config = TrainConfig(**train_args)
        self.dataset_spec: DatasetSpec = parse_dataset(dataset)
        int_at_least("latency_repeats", latency_repeats, 3)
        self.measure_latency = bool(measure_latency)
        self.save_weights = bool(save_weights)
        self.latency_repeats = latency_repeats
        can_int8 = callable(getattr(space, "int8_model", None))
        if int8 and not can_int8:
            raise ArgumentError("int8", f"is not possible: space {space.name!r} cannot "
                                        "produce an INT8 model")
        self.int8 = can_int8 if int8 is None else bool(int8)
        self._data: Dataset | None = None
        # at submit and when a worker builds it: a mismatch is one line, not a wrong network
        self.dataset_info = self.dataset_spec.info()
        self._check_input_shape()
        check_classes(self.space, self.dataset_spec)

    def _check_input_shape(self) -> None:
        data_shape = self.dataset_info.input_shape
        space_shape = arch_input_shape(self.space)
        if tuple(space_shape) != tuple(data_shape):
            c, h, w = data_shape
            raise UnsupportedSpaceError(
                f"space {self.space.name!r} expects inputs {tuple(space_shape)} but dataset "
                f"{self.dataset_spec.describe()} has {tuple(data_shape)}: set space_args "
                f"input_channels: {c}, input_size: {h}", "space_args")

    @classmethod
    def canonical_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        return pin_dataset(args)

    @classmethod
    def space_args_from_data(cls, args: dict[str, Any]) -> dict[str, Any]:
        return {"num_classes": parse_dataset(args.get("dataset")).info().num_classes}

    def metric_names(self) -> set[str]:
        names = {"val_acc", "val_loss", "train_loss", "train_time_s",
                 *cost_metric_names(self.space)}
        return names | ({"test_acc"} if self.dataset_info.has_test else set()) | \
            ({"int8_val_acc"} if self.int8 else set())

    @classmethod
    def uses_gpu(cls, args: dict[str, Any]) -> bool:
        return args.get("device", TrainConfig.device) != "cpu"

    def devices(self) -> set[str]:
        if not self.measure_latency:
            return set()
        base = device_key()
        found = {base} | ({f"{base}-int8"} if self.int8 else set())
        gpu = self._local_gpu()
        return found | ({gpu_device_key(gpu)} if gpu is not None else set())

    def _local_gpu(self) -> Any:
        """The GPU this process would train on (None: the CPU). A driver that sees the same
        kind of GPU as its workers can then state objectives on the GPU's latency."""
        try:
            device = resolve_device("evaluator_args.device", self.config.device)
        except ValueError:
            return None
        return device if device.type == "cuda" else None

    def data(self) -> Dataset:
        """The dataset, loaded once per worker process."""
        if self._data is None:
            self._data = self.dataset_spec.load()
        return self._data

    def evaluate(self, arch: Arch, key: str) -> Evaluation:
        import torch

        try:  # a GPU this worker lacks fails the trial with one line, not a traceback
            resolve_device("evaluator_args.device", self.config.device)
        except ValueError as exc:
            raise EvaluationError(str(exc)) from None
        data = self.data()
        torch.manual_seed(self.config.seed)
        net = self.space.build(arch)
        shape = arch_input_shape(self.space, arch)
        model = _fit_input(net, data.input_shape, shape)
        try:
            result = train_model(model, data, self.config)
        except TrainingDiverged as exc:
            raise EvaluationError(str(exc)) from None
        costs = exact_costs(self.space, arch)
        metrics = {"val_acc": result.val_acc, "val_loss": result.val_loss,
                   "train_loss": result.train_loss, "train_time_s": result.train_time_s,
                   **costs.metrics}
        if result.test_acc is not None:
            metrics["test_acc"] = result.test_acc
        measurements = []
        if self.measure_latency and result.device.startswith("cuda"):
            measurements.append(self._latency(net, shape, gpu_device_key(result.device),
                                              on=result.device))
        net.cpu()
        if self.measure_latency:
            measurements.append(self._latency(net, shape, device_key()))
        if self.int8:
            metrics["int8_val_acc"], int8_latency = self._int8(arch, net, data)
            if int8_latency is not None:
                measurements.append(int8_latency)
        weights = _serialise(net, data.normalisation) if self.save_weights else None
        return Evaluation(metrics, measurements, costs.params, costs.flops, weights)

    def _latency(self, model: Any, input_shape: tuple[int, ...], device: str,
                 on: str = "cpu") -> Measurement:
        timing = measure_latency_ms(model, input_shape, threads=1, repeats=self.latency_repeats,
                                    device=on)
        return Measurement(device, "latency_ms", timing["median_ms"], "measured")

    def _int8(self, arch: Arch, net: Any, data: Dataset) -> tuple[float, Measurement | None]:
        """Convert the trained model to INT8 (calibrated on training data) and measure it."""
        import torch

        shape = arch_input_shape(self.space, arch)
        calibration = torch.from_numpy(data.x_train[:CALIBRATION_EXAMPLES])
        if tuple(shape) != data.input_shape:
            calibration = torch.nn.functional.interpolate(calibration, size=shape[1:],
                                                          mode="bilinear")
        int8 = self.space.int8_model(arch, calibration, model=net)
        accuracy = evaluate_model(_fit_input(int8, data.input_shape, shape), data.x_val,
                                  data.y_val, self.config.eval_batch_size)[1]
        latency = None
        if self.measure_latency:
            latency = self._latency(int8, shape, f"{device_key()}-int8")
        return accuracy, latency


def check_classes(space: SearchSpace, dataset: DatasetSpec) -> None:
    """`UnsupportedSpaceError` naming `space_args.num_classes` when labels reach past the
    network's outputs (fewer classes than outputs is allowed: the extra outputs are never
    targets)."""
    classes = getattr(space, "num_classes", None)
    found = dataset.info().num_classes
    if classes is not None and found > classes:
        raise UnsupportedSpaceError(
            f"dataset {dataset.describe()} has {found} classes (labels 0..{found - 1}) but "
            f"the space builds {classes} outputs: set space_args.num_classes: {found} (or "
            "leave it out: it is then taken from the labels)", "space_args.num_classes")


#: Entries of a stored state_dict that are not the model's: the input standardisation the
#: model was trained with (`nas.export.split_weights` takes them out again).
NORMALISATION_KEYS = {"mean": "_nas.input_mean", "std": "_nas.input_std"}


def _serialise(model: Any, normalisation: dict[str, list[float]] | None = None) -> bytes:
    """The model's state_dict, plus the input standardisation it was trained with, so that
    an export can take inputs as the dataset gives them."""
    import io

    import torch

    state = dict(model.state_dict())
    for name, key in NORMALISATION_KEYS.items():
        if normalisation is not None:
            state[key] = torch.tensor(normalisation[name], dtype=torch.float32)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _fit_input(model: Any, data_shape: tuple[int, ...], arch_shape: tuple[int, ...]) -> Any:
    """Wrap `model` so inputs of the dataset's size are resized to the arch's resolution
    (spaces with a searchable input resolution); the identity when they already agree."""
    if tuple(data_shape) == tuple(arch_shape):
        return model
    if data_shape[0] != arch_shape[0]:
        raise EvaluationError(f"the dataset has {data_shape[0]} input channels, the "
                              f"architecture expects {arch_shape[0]}")
    return _Resized(model, tuple(arch_shape[1:]))


def _Resized(model: Any, size: tuple[int, ...]) -> Any:  # noqa: N802 (a module factory)
    import torch
    import torch.nn.functional as F

    class Resized(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(F.interpolate(x, size=size, mode="bilinear", align_corners=False))

    return Resized()
