"""One stage of the hierarchical ViT network as its builder (`vit_net`) and the space's
cost model see it, without torch, so that importing the space (`search_spaces.vit`) does
not import torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageSpec:
    """One stage: `kernel` of the layer entering it (patch embedding for stage 0, token
    reduction otherwise), `split` (attention windows per side), MLP `ratio`, `depth`
    blocks, `width`, `heads`, and the token grid side it runs at."""

    kernel: int
    split: int
    ratio: int
    depth: int
    width: int
    heads: int
    side: int
