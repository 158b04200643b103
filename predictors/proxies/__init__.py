"""Training-free proxies: scores of an untrained network that rank architectures.

    from predictors.proxies import compute_proxies, list_proxies
    scores = compute_proxies(lambda: space.build(arch), (x, y), ["synflow", "nwot"], seed=0)

Built-in: synflow, snip, grasp, fisher, grad_norm (gradient saliencies), jacov, nwot
(activation patterns), zen (Zen-score), params, flops, meco (MeCo), zico (ZiCo), swap and
swap_reg (SWAP-Score), az_expressivity, az_progressivity, az_trainability and their
aggregate az_nas (AZ-NAS), te_ntk (TE-NAS's NTK condition number, negated),
linear_regions (TE-NAS's number of linear regions; As-ViT's second measure). Larger is better
for all of them.
`import predictors.proxies` does not import torch; the first lookup does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from ._base import Proxy, get_group, get_proxy, list_proxies, register_proxy, run_proxy

__all__ = ["Proxy", "compute_proxies", "get_proxy", "list_proxies", "register_proxy",
           "run_proxy"]


def compute_proxies(model_factory: Callable[[], Any], batch: tuple[Any, Any],
                    names: Sequence[str], *, seed: int = 0,
                    loss_fn: Callable[..., Any] | None = None,
                    timings: dict[str, float] | None = None) -> dict[str, float]:
    """Each named proxy on a fresh model from `model_factory()` (built after seeding torch
    with `seed`, so every proxy sees the same initial weights), on `batch = (inputs, targets)`.

    Deterministic for a seed. Proxies of one group (snip, grad_norm, fisher) requested
    together share one pass, with the same values as computed alone. `timings`, when given,
    receives the seconds each proxy took (model construction included; a shared pass is
    split evenly among its proxies).
    """
    import torch

    inputs, targets = batch
    loss_fn = loss_fn or torch.nn.functional.cross_entropy
    names = list(dict.fromkeys(names))
    proxies = [get_proxy(name) for name in names]  # unknown names fail before any work
    groups: dict[str, list[str]] = {}
    for proxy in proxies:
        if proxy.group is not None:
            groups.setdefault(proxy.group, []).append(proxy.name)
    scores: dict[str, float] = {}
    for proxy in proxies:
        if proxy.name in scores:
            continue
        start = time.perf_counter()
        torch.manual_seed(seed)
        model = model_factory()
        members = groups.get(proxy.group or "", [])
        if len(members) > 1:
            torch.manual_seed(seed)  # as run_proxy does: a group's random draws match alone
            values = get_group(proxy.group)(model, inputs, targets, loss_fn)
            scores.update({name: float(values[name]) for name in members})
        else:
            members = [proxy.name]
            scores[proxy.name] = run_proxy(proxy.name, model, inputs, targets, loss_fn, seed)
        if timings is not None:
            share = (time.perf_counter() - start) / len(members)
            timings.update({name: share for name in members})
    return {name: scores[name] for name in names}
