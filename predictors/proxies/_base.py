"""The proxy registry: training-free scores of an untrained network.

A proxy is a function `(model, inputs, targets, loss_fn) -> float`, registered by name with
`@register_proxy("name")`. Larger is better for every registered proxy (the published sign
conventions are kept, e.g. GraSP's `-theta * Hg`). A proxy may change the model it is given
(hooks are removed, but gradients, dtype or weights may not be restored): callers hand each
proxy a freshly built model, as `compute_proxies` does. Randomness inside a proxy (Zen-score's
Gaussian inputs) comes from torch's global generator, which `run_proxy` seeds. A proxy leaves
its minibatch unchanged and the model usable (finite outputs of the same dtype), scores a batch
of one example, and scores a model without weights (0 for a sum over weights) or refuses it
with ValueError. `check_proxy` (`checks.py`) checks these promises.

This module does not import torch; the proxy families are imported on first use, so that
`import predictors.proxies` stays cheap for code that only lists names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from search_spaces.registry import Registry, is_reference, resolve_reference

ProxyFn = Callable[[Any, Any, Any, Callable[..., Any]], float]
#: A function computing several proxies from one pass: `(model, inputs, targets, loss_fn) ->
#: {name: score}` (snip, grad_norm and fisher share one backward pass).
GroupFn = Callable[[Any, Any, Any, Callable[..., Any]], dict[str, float]]

#: Modules holding the built-in proxies, imported by `load_builtin_proxies`.
_FAMILIES = ("gradient", "synflow", "activation", "zen", "cost", "meco", "zico", "swap", "az_nas",
             "ntk", "deepmad", "linear_regions", "emq")
_GROUPS: dict[str, GroupFn] = {}
_loaded = False


@dataclass(frozen=True)
class Proxy:
    """A registered proxy. `data`: whether it reads the minibatch (synflow and zen do not);
    `group`: a registered group function that computes it together with others in one pass
    (same values as `fn`)."""

    name: str
    fn: ProxyFn
    data: bool = True
    description: str = ""
    group: str | None = None

    @classmethod
    def of_function(cls, name: str, fn: Any) -> Proxy:
        """A proxy (reading the minibatch) from a plain function (an entry point or a
        `module:attr` reference); its docstring's first line is the description."""
        if isinstance(fn, Proxy):
            return fn
        if not callable(fn) or isinstance(fn, type):
            raise TypeError(f"proxy {name!r} must be a function (model, inputs, targets, "
                            f"loss_fn) -> float, got {fn!r:.60}")
        doc = (fn.__doc__ or "").strip().splitlines()
        return cls(name, fn, True, doc[0] if doc else "")


def _check_proxy(name: str, proxy: Any) -> None:
    if not isinstance(proxy, Proxy) or proxy.name != name:
        raise TypeError(f"proxy {name!r}: expected a Proxy named {name!r}, got {proxy!r:.60}")


#: The proxies by name (`evaluator_args.proxies`), with the plugins of `nas.proxies` (a
#: function `(model, inputs, targets, loss_fn) -> float` each).
PROXIES: Registry[Proxy] = Registry("proxy", "nas.proxies", check=_check_proxy,
                                    from_entry_point=Proxy.of_function,
                                    defined_by=lambda proxy: proxy.fn)


def register_proxy(name: str, *, data: bool = True,
                   group: str | None = None) -> Callable[[ProxyFn], ProxyFn]:
    """Register `fn` as proxy `name` (the docstring's first line becomes its description)."""

    def wrap(fn: ProxyFn) -> ProxyFn:
        doc = (fn.__doc__ or "").strip().splitlines()
        PROXIES.register(name, Proxy(name, fn, data, doc[0] if doc else "", group))
        return fn

    return wrap


def register_group(name: str, fn: GroupFn) -> GroupFn:
    """Register a function computing several proxies at once (see `Proxy.group`)."""
    _GROUPS[name] = fn
    return fn


def get_group(name: str) -> GroupFn:
    load_builtin_proxies()
    return _GROUPS[name]


def load_builtin_proxies() -> None:
    global _loaded
    if not _loaded:
        for family in _FAMILIES:
            importlib.import_module(f"{__package__}.{family}")
        _loaded = True
        from ..evolved import register_evolved_proxies

        register_evolved_proxies()  # the stored evolved formulas, as `evolved.<name>`


def list_proxies() -> list[str]:
    load_builtin_proxies()
    return PROXIES.names()


def get_proxy(name: str) -> Proxy:
    """A registered proxy, or the function a `module:attr` reference names (as proxy `name`)."""
    if is_reference(name):
        return Proxy.of_function(name, resolve_reference(name))
    load_builtin_proxies()
    return PROXIES.get(name)


def run_proxy(name: str, model: Any, inputs: Any, targets: Any,
              loss_fn: Callable[..., Any] | None = None, seed: int = 0) -> float:
    """One proxy on one model, with torch's generator seeded (deterministic for a seed)."""
    import torch

    proxy = get_proxy(name)
    torch.manual_seed(seed)
    loss_fn = loss_fn or torch.nn.functional.cross_entropy
    return float(proxy.fn(model, inputs, targets, loss_fn))
