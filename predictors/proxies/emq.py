"""The EMQ proxy (Dong et al., ICCV 2023), evolved for mixed-precision bit allocation on the
quant space by `bench/mixed_precision.py` (see `predictors/emq.py`).

Registered as `emq`: the stored formula computed on the network with its weights at their
fake-quantized values (activation fake quantization kept), so that the score sees the
weight and activation bit-widths. On a network without fake quantization it is the formula
on the network as is. Larger is better.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._base import register_proxy

#: The stored formula registered as `emq` (the best of `bench/mixed_precision.py`).
FORMULA_NAME = "emq"


def _formula() -> Any:
    from ..emq import DATA_PATH, load_emq_formulas

    formulas = load_emq_formulas()
    if FORMULA_NAME not in formulas:
        raise FileNotFoundError(f"{DATA_PATH} holds no formula {FORMULA_NAME!r}: this "
                                "installation lacks the predictors package's data files")
    return formulas[FORMULA_NAME]


@register_proxy("emq")
def emq(model: Any, inputs: Any, targets: Any, loss_fn: Callable[..., Any]) -> float:
    """EMQ: evolved proxy of the quantized network's accuracy (bit allocation, quant space)"""
    from search_spaces.layers.quant_net import bake_weights

    from ..evolved import evaluate_model

    return evaluate_model(_formula(), bake_weights(model), inputs, targets, loss_fn)
