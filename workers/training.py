"""The short training loop of the `train` evaluator: seeded, cosine schedule, NaN-guarded."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from search_spaces.validation import (
    ArgumentError,
    int_at_least,
    integer,
    non_negative,
    one_of,
    positive_int,
)

from .datasets import Dataset
from .torch_device import check_deterministic, check_device, deterministic_cuda, resolve_device

OPTIMIZERS = ("sgd", "adamw")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the trial fails with this message."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    grad_clip: float | None = 5.0
    label_smoothing: float = 0.0
    seed: int = 0
    threads: int = 1
    eval_batch_size: int = 256
    #: Training examples used to re-estimate BatchNorm statistics after training (0: off).
    bn_recalibration: int = 2048
    #: auto (CUDA when this worker sees a GPU, else CPU), cpu, cuda or cuda:N.
    device: str = "auto"
    #: On a GPU, deterministic kernels: the same arch and seed give the same numbers there
    #: too, at some speed (the CPU is deterministic anyway).
    deterministic: bool = False

    def __post_init__(self) -> None:
        check_device("device", self.device)
        for name in ("epochs", "batch_size", "threads", "eval_batch_size"):
            positive_int(name, getattr(self, name))
        int_at_least("bn_recalibration", self.bn_recalibration, 0)
        one_of("optimizer", self.optimizer, OPTIMIZERS)
        non_negative("lr", self.lr, strict=True)
        for name in ("momentum", "weight_decay", "warmup_epochs", "label_smoothing"):
            non_negative(name, getattr(self, name))
        if self.label_smoothing >= 1:
            raise ArgumentError("label_smoothing", "must be below 1")
        if self.grad_clip is not None:
            non_negative("grad_clip", self.grad_clip, strict=True)
        check_deterministic("deterministic", self.deterministic)
        integer("seed", self.seed)


@dataclass
class TrainResult:
    train_loss: float
    val_loss: float
    val_acc: float  # percent
    train_time_s: float
    steps: int
    test_acc: float | None = None
    #: Where it trained (`cpu`, `cuda:0`, ...); the model is left there.
    device: str = "cpu"


def lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    """Linear warm-up then cosine decay to zero over `total` steps."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


def train_model(model: Any, data: Dataset, config: TrainConfig) -> TrainResult:
    """Train `model` on `data.train` and report the validation (and test) figures.

    The model is moved to `config.device` and left there (`TrainResult.device`). The batch
    order comes from a CPU generator, so a CPU and a GPU run see the same batches and differ
    only by floating-point rounding."""
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    device = resolve_device("evaluator_args.device", config.device)
    try:
        with deterministic_cuda(device, config.deterministic):
            return _train(model, data, config, device)
    finally:
        torch.set_num_threads(previous_threads)


def _optimizer(model: Any, config: TrainConfig) -> Any:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, nesterov=config.momentum > 0)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


#: On a GPU the loss is checked for NaN every this many steps (each check waits for the
#: GPU); on the CPU at every step, where the check is free.
GPU_FINITE_CHECK_STEPS = 25


def _train(model: Any, data: Dataset, config: TrainConfig, device: Any) -> TrainResult:
    import torch
    import torch.nn.functional as F

    model.to(device)
    check_every = 1 if device.type == "cpu" else GPU_FINITE_CHECK_STEPS
    generator = torch.Generator().manual_seed(config.seed)
    x_train = torch.from_numpy(data.x_train).to(device)
    y_train = torch.from_numpy(data.y_train).to(device)
    n = len(x_train)
    steps_per_epoch = max(1, math.ceil(n / config.batch_size))
    total = steps_per_epoch * config.epochs
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    optimizer = _optimizer(model, config)
    started = time.perf_counter()
    step = 0
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator).to(device)
        running, seen = torch.zeros((), dtype=torch.float64, device=device), 0
        for start in range(0, n, config.batch_size):
            index = order[start:start + config.batch_size]
            if len(index) < 2 and n > 1:  # BatchNorm cannot train on a batch of one
                continue
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, warmup, config.lr)
            logits = model(x_train[index])
            loss = F.cross_entropy(logits, y_train[index],
                                   label_smoothing=config.label_smoothing)
            running += loss.detach().double() * len(index)
            seen += len(index)
            step += 1
            if step % check_every == 0:
                _check_finite(running, epoch, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
        _check_finite(running, epoch, step)
    if config.bn_recalibration:
        recalibrate_batchnorm(model, x_train[: config.bn_recalibration], config.batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_time = time.perf_counter() - started
    val_loss, val_acc = evaluate_model(model, data.x_val, data.y_val, config.eval_batch_size)
    if not math.isfinite(val_loss):
        raise TrainingDiverged(f"training diverged: validation loss is {val_loss}")
    test_acc = None
    if data.x_test is not None:
        test_acc = evaluate_model(model, data.x_test, data.y_test, config.eval_batch_size)[1]
    return TrainResult(float(running) / max(seen, 1), val_loss, val_acc, train_time, step,
                       test_acc, str(device))


def _check_finite(running_loss: Any, epoch: int, step: int) -> None:
    """A NaN or infinite loss stays in the epoch's running sum, so checking the sum every
    few steps catches it without waiting for the GPU at every step."""
    import torch

    if not bool(torch.isfinite(running_loss)):
        raise TrainingDiverged(f"training diverged: the loss became {float(running_loss)} by "
                               f"epoch {epoch + 1}, step {step} (try a lower lr)")


def recalibrate_batchnorm(model: Any, x: Any, batch_size: int,
                          transform: Any = None) -> None:
    """Re-estimate BatchNorm running statistics as exact averages over `x` (a numpy array or
    a tensor already on the model's device; `transform` maps each batch before the forward
    pass) with the final weights. A short run leaves the running averages (momentum 0.1)
    behind weights that moved fast, and eval-mode accuracy of a deep net can fall to chance
    (seen: 87% in train mode, 11% in eval mode after two epochs); OFA recalibrates subnets
    the same way. Fewer than two examples leave the statistics as they are."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms or len(x) < 2:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the passes below
    model.train()
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size]
            if len(batch) > 1:
                if isinstance(batch, np.ndarray):
                    batch = torch.from_numpy(np.ascontiguousarray(batch)).to(model_device(model))
                model(batch if transform is None else transform(batch))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


def evaluate_model(model: Any, x: np.ndarray, y: np.ndarray,
                   batch_size: int = 256) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy in percent) of `model` in eval mode."""
    import torch
    import torch.nn.functional as F

    model.eval()
    device = model_device(model)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])).to(device)
            yb = torch.from_numpy(np.ascontiguousarray(y[start:start + batch_size])).to(device)
            logits = model(xb)
            total_loss += F.cross_entropy(logits, yb, reduction="sum").double()
            correct += (logits.argmax(dim=1) == yb).sum()
    return float(total_loss) / len(x), 100.0 * int(correct) / len(x)


def model_device(model: Any) -> Any:
    """The device of a model's first parameter or buffer (CPU for one that has neither)."""
    import torch

    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")
