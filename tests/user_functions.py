"""User evaluate functions for the `function` evaluator's tests (as a user would write them).

`evaluate` trains a toy MLP on scikit-learn's bundled digits (no download): its width and
learning rate follow the NAS-Bench-201 cell it is given, so architectures differ in
quality, and it reports the validation accuracy every epoch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

_DATA: Any = None


def _digits() -> Any:
    global _DATA
    if _DATA is None:
        import numpy as np
        import torch
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        order = np.random.default_rng(0).permutation(len(y))[:600]
        x = torch.tensor(x[order] / 16.0, dtype=torch.float32)
        y = torch.tensor(y[order], dtype=torch.long)
        _DATA = (x[:400], y[:400], x[400:], y[400:])
    return _DATA


def evaluate(arch: dict, ctx: Any) -> dict[str, float]:
    """A one-hidden-layer MLP: width 4 + 8 per 3x3 conv of the cell, learning rate
    0.02 x 2^(skips + 1x1 convs)."""
    import torch

    torch.set_num_threads(1)
    x, y, xv, yv = _digits()
    text = str(arch)
    width = 4 + 8 * text.count("nor_conv_3x3")
    lr = 0.02 * 2.0 ** (text.count("skip_connect") + text.count("nor_conv_1x1"))
    g = torch.Generator().manual_seed(ctx.seed)
    w1 = (torch.randn(64, width, generator=g) * 0.1).requires_grad_()
    w2 = (torch.randn(width, 10, generator=g) * 0.1).requires_grad_()
    opt = torch.optim.SGD([w1, w2], lr=min(lr, 1.0), momentum=0.9)
    acc = 0.0
    for epoch in range(1, int(ctx.args.get("epochs", 9)) + 1):
        for _ in range(5):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(torch.relu(x @ w1) @ w2, y)
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = float((torch.relu(xv @ w1) @ w2).argmax(1).eq(yv).float().mean()) * 100
        ctx.report(epoch, val_acc=acc, loss=loss.item())
    return {"val_acc": acc, "loss": loss.item()}


def bad_return(arch: dict, ctx: Any) -> Any:
    """Returns something else than a dict of finite numbers, chosen by the trial number."""
    kind = ctx.trial % 4
    if kind == 1:
        return [1.0]
    if kind == 2:
        return {"val_acc": "high"}
    if kind == 3:
        return {"val_acc": math.nan}
    return {"val_acc": 1.0}


def crash_once(arch: dict, ctx: Any) -> dict[str, float]:
    """Writes a marker into its scratch folder and kills its process; the retry finds it."""
    marker = Path(ctx.scratch_dir) / "started"
    if not marker.exists():
        marker.write_text(str(ctx.attempt))
        os._exit(1)
    return {"val_acc": 1.0, "first_attempt": float(marker.read_text()),
            "attempt": float(ctx.attempt)}


def context_of(arch: dict, ctx: Any) -> dict[str, float]:
    """What the context says, as metrics."""
    return {"seed": float(ctx.seed), "trial": float(ctx.trial), "gpus": ctx.gpus,
            "cpu": float(ctx.device == "cpu"), "answer": float(ctx.args["answer"]),
            "scratch": float(Path(ctx.scratch_dir).is_dir())}
