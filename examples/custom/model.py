"""A user's own model family and training code, searched by nas (see docs/guide.md, "Bring your
own model"). Nothing here knows about nas except the `ctx` argument of `evaluate`.

- `cnn(...)`: a small CNN for 8x8 digit images (depth, width, activation, dropout and the kind
  of block are its choices). `pg.symbolize` makes it a symbolic builder, so `space` below,
  the builder with PyGlove hyper values as arguments, is a search space whose architectures
  nas can build (params, FLOPs, latency, ONNX export).
- `evaluate(arch, ctx)`: trains one architecture on scikit-learn's bundled digits (no
  download) for `ctx.args["epochs"]` epochs, reporting the validation accuracy after each
  (`ctx.report`), so the job's early-stopping rule can stop a poor trial early.
"""

from __future__ import annotations

import functools

import numpy as np
import pyglove as pg
import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class Block(nn.Module):
    """One block: `plain` (conv-BN-act), `residual` (the same plus the input) or `separable`
    (depthwise 3x3 then pointwise 1x1)."""

    def __init__(self, kind: str, channels: int, act: str) -> None:
        super().__init__()
        if kind == "separable":
            conv = [nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
                    nn.Conv2d(channels, channels, 1, bias=False)]
        else:
            conv = [nn.Conv2d(channels, channels, 3, padding=1, bias=False)]
        self.body = nn.Sequential(*conv, nn.BatchNorm2d(channels), ACTIVATIONS[act]())
        self.residual = kind == "residual"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


@pg.symbolize
def cnn(depth: int, width: int, act: str, dropout: float, block: str,
        num_classes: int = 10) -> nn.Module:
    """A stem convolution, `depth` blocks at 8x8, global mean pooling, dropout, a linear head."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), ACTIVATIONS[act](),
        *(Block(block, width, act) for _ in range(depth)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, num_classes))


#: The search space: 3 x 3 x 3 x 3 choices and a float (dropout).
space = cnn(depth=pg.oneof([1, 2, 3]), width=pg.oneof([8, 16, 24]),
            act=pg.oneof(["relu", "gelu", "silu"]), dropout=pg.floatv(0.0, 0.5),
            block=pg.oneof(["plain", "residual", "separable"]))


@functools.cache
def digits() -> tuple[torch.Tensor, ...]:
    """scikit-learn's 1,797 8x8 digits scaled to [0, 1], split 80/20 once (seed 0)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x = torch.tensor(x[order] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(y[order], dtype=torch.long)
    cut = int(0.8 * len(y))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def evaluate(arch: dict, ctx) -> dict[str, float]:  # noqa: ANN001 - nas's TrialContext
    """Train `arch` and return its final validation accuracy (%) and size."""
    torch.manual_seed(ctx.seed)
    torch.set_num_threads(1)  # trials run side by side; one core each
    epochs, lr = int(ctx.args.get("epochs", 5)), float(ctx.args.get("lr", 0.01))
    x_train, y_train, x_val, y_val = digits()
    model = cnn(**arch)()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(ctx.seed)
    val_acc = 0.0
    for epoch in range(1, epochs + 1):
        model.train()
        for batch in torch.randperm(len(y_train), generator=generator).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_acc = 100.0 * (model(x_val).argmax(1) == y_val).float().mean().item()
        ctx.report(epoch, val_acc=val_acc)  # may stop a poor trial here (early stopping)
    return {"val_acc": val_acc, "params": float(sum(p.numel() for p in model.parameters()))}
