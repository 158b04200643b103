"""`check_proxy`: the conformance suite every registered proxy must pass.

Promises checked, one check at a time (each failure an AssertionError naming the proxy and
the check), on small real networks (NB201 cells of 4 channels, one of them all `none` edges,
a plain CNN, an MLP) and seeded random minibatches, called as `run_proxy` calls it:
- the score is a finite real number (`float()` of it is finite) on every network;
- the same seed, model initialisation and batch give exactly the same score;
- the hooks it registers are removed (forward, pre-forward and backward hooks of every
  module, as before the call);
- it does not change its inputs or targets;
- it leaves the model usable: a forward pass afterwards returns finite outputs of the shape
  and dtype it returned before (a proxy may change the weights, train/eval mode or
  `requires_grad`: callers build a fresh model for each proxy, see `predictors.proxies`);
- a data-free proxy (`Proxy.data` false) gives the same score on another batch of the same
  shape (it may use the shape only);
- a batch of one or two examples gives a finite score;
- a model without weights (no parameter at all) gives a finite score (an empty sum is 0) or
  ValueError saying why; never another error;
- a proxy of a group (`Proxy.group`: one pass computing several) gets from the group
  function the value it computes alone;
- it describes itself (`Proxy.description`, the first line of its docstring).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from search_spaces._conformance import check_runner

from ._base import Proxy, get_group, get_proxy

CHECKS = ("returns a finite float", "deterministic per seed", "removes its hooks",
          "leaves inputs unchanged", "leaves the model usable", "data free ignores the batch",
          "tiny batches", "model without weights", "group matches alone", "has a description")

CLASSES = 10  # outputs of every test network
SIDE = 8  # input side: 3 x 8 x 8 images
_CELLS = {
    "convs": ["nor_conv_3x3", "nor_conv_1x1", "skip_connect", "nor_conv_3x3", "avg_pool_3x3",
              "nor_conv_3x3"],
    "skips": ["skip_connect"] * 6,
    "none": ["none"] * 6,
}


def check_proxy(proxy: str | Proxy, *, checks: tuple[str, ...] = CHECKS, seed: int = 0) -> None:
    """Run the `checks` (default: all of `CHECKS`, in order) on the proxy named `proxy` (a
    registered name, a `module:attr` reference, or a `Proxy`); AssertionError names the proxy
    and the failed check."""
    subject = proxy if isinstance(proxy, Proxy) else get_proxy(proxy)
    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; known: {', '.join(CHECKS)}")
    run = check_runner("proxy", subject.name, subject)
    for label in checks:
        run(_BY_LABEL[label], seed)


# ---- the test networks and batches -----------------------------------------------------------
def networks() -> dict[str, Callable[[], Any]]:
    """name -> a builder of a small untrained network (3 x 8 x 8 inputs, 10 outputs)."""
    from torch import nn

    from search_spaces import get_space

    space = get_space("nb201", channels=4, cells_per_stage=1, input_size=SIDE)
    nets: dict[str, Callable[[], Any]] = {
        f"nb201-{name}": (lambda ops=ops: space.build({"ops": ops})) for name, ops in _CELLS.items()
    }
    nets["cnn"] = lambda: nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(8, CLASSES))
    nets["mlp"] = lambda: nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE * SIDE, 16), nn.ReLU(),
                                        nn.Linear(16, CLASSES))
    return nets


def batch(size: int, seed: int) -> tuple[Any, Any]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(size, 3, SIDE, SIDE, generator=gen),
            torch.randint(0, CLASSES, (size,), generator=gen))


def score(proxy: Proxy, build: Callable[[], Any], inputs: Any, targets: Any, seed: int,
          model: Any = None) -> float:
    """The proxy on a model built after seeding torch (as `compute_proxies` does) or on
    `model`, with torch seeded again before the call (as `run_proxy` does)."""
    import torch

    torch.manual_seed(seed)
    model = build() if model is None else model
    torch.manual_seed(seed)
    return proxy.fn(model, inputs, targets, torch.nn.functional.cross_entropy)


def _finite(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{where}: returned {value!r:.60}, not a number ({exc})") from None
    assert not isinstance(value, bool), f"{where}: returned a bool"
    assert math.isfinite(number), f"{where}: returned {number}"
    return number


def _hooks(model: Any) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


# ---- the checks ------------------------------------------------------------------------------
def _check_returns_a_finite_float(proxy: Proxy, seed: int) -> None:
    inputs, targets = batch(8, seed)
    for name, build in networks().items():
        _finite(score(proxy, build, inputs, targets, seed), f"on {name}")


def _check_deterministic_per_seed(proxy: Proxy, seed: int) -> None:
    inputs, targets = batch(8, seed)
    for name, build in networks().items():
        first = score(proxy, build, inputs, targets, seed)
        again = score(proxy, build, inputs, targets, seed)
        assert float(first) == float(again), \
            f"on {name}: two runs with seed {seed} give {first} and {again}"


def _check_removes_its_hooks(proxy: Proxy, seed: int) -> None:
    inputs, targets = batch(8, seed)
    for name, build in networks().items():
        model = build()
        before = _hooks(model)
        score(proxy, build, inputs, targets, seed, model=model)
        assert _hooks(model) == before, \
            f"on {name}: {_hooks(model) - before} module hook(s) left registered"


def _check_leaves_inputs_unchanged(proxy: Proxy, seed: int) -> None:
    inputs, targets = batch(8, seed)
    kept_inputs, kept_targets = inputs.clone(), targets.clone()
    for name, build in networks().items():
        score(proxy, build, inputs, targets, seed)
        assert inputs.equal(kept_inputs) and targets.equal(kept_targets), \
            f"on {name}: the minibatch was changed"
        assert not inputs.requires_grad and inputs.grad is None, \
            f"on {name}: the inputs were made to require (or hold) a gradient"


def _check_leaves_the_model_usable(proxy: Proxy, seed: int) -> None:
    import torch

    inputs, targets = batch(8, seed)
    for name, build in networks().items():
        model = build().eval()
        with torch.no_grad():
            before = model(inputs)
        score(proxy, build, inputs, targets, seed, model=model)
        model.eval()
        with torch.no_grad():
            after = model(inputs)
        assert after.shape == before.shape and after.dtype == before.dtype, \
            f"on {name}: the model now returns {tuple(after.shape)} {after.dtype}, " \
            f"not {tuple(before.shape)} {before.dtype}"
        assert torch.isfinite(after).all(), f"on {name}: the model now returns NaN or inf"


def _check_data_free_ignores_the_batch(proxy: Proxy, seed: int) -> None:
    if proxy.data:
        return
    first, other = batch(8, seed), batch(8, seed + 1)
    for name, build in networks().items():
        a = score(proxy, build, *first, seed)
        b = score(proxy, build, *other, seed)
        assert float(a) == float(b), \
            f"on {name}: a data-free proxy scores two batches of one shape {a} and {b}"


def _check_tiny_batches(proxy: Proxy, seed: int) -> None:
    for size in (1, 2):
        inputs, targets = batch(size, seed)
        for name, build in networks().items():
            _finite(score(proxy, build, inputs, targets, seed), f"on {name}, batch of {size}")


def _check_model_without_weights(proxy: Proxy, seed: int) -> None:
    import torch
    from torch import nn

    inputs, _ = batch(4, seed)
    targets = inputs.new_zeros(4, dtype=torch.long)  # class 0 of the 3 pooled channels

    def build() -> Any:
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    try:
        value = score(proxy, build, inputs, targets, seed)
    except ValueError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip(), \
            f"ValueError without a one-line reason: {exc!r}"
        return
    _finite(value, "on a model without parameters")


def _check_group_matches_alone(proxy: Proxy, seed: int) -> None:
    import torch

    if proxy.group is None:
        return
    group = get_group(proxy.group)
    inputs, targets = batch(8, seed)
    for name, build in networks().items():
        alone = score(proxy, build, inputs, targets, seed)
        torch.manual_seed(seed)
        model = build()
        torch.manual_seed(seed)
        values = group(model, inputs, targets, torch.nn.functional.cross_entropy)
        assert proxy.name in values, f"group {proxy.group!r} does not compute {proxy.name!r}"
        assert float(values[proxy.name]) == float(alone), \
            f"on {name}: group {proxy.group!r} gives {values[proxy.name]}, alone {alone}"


def _check_has_a_description(proxy: Proxy, seed: int) -> None:
    assert proxy.description.strip(), "no description (the first line of its docstring)"
    assert "\n" not in proxy.description, "the description is not one line"


_BY_LABEL: dict[str, Callable[[Proxy, int], None]] = {
    label: globals()["_check_" + label.replace(" ", "_")] for label in CHECKS
}
