"""Every layer size of one MBConv architecture's network (`NetSpec`), what the network
(`mbconv_net`) builds and the space's cost model counts, without torch, so that the network
needs nothing from its space (`search_spaces.mbconv`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class BlockSpec:
    """One active MBConv block of an architecture (stage, index within the stage)."""

    stage: int
    index: int
    c_in: int
    mid: int
    c_out: int
    kernel: int
    stride: int
    side_in: int
    side_out: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.c_in == self.c_out


@dataclass(frozen=True)
class NetSpec:
    """Every layer size of one architecture's network (what `build` and the cost model use)."""

    input_channels: int
    resolution: int
    stem: int
    first: int
    blocks: tuple[BlockSpec, ...]
    head: int
    num_classes: int

    @property
    def last_side(self) -> int:
        return self.blocks[-1].side_out if self.blocks else self.resolution

    @property
    def last_channels(self) -> int:
        return self.blocks[-1].c_out if self.blocks else self.first


class ElasticSpace(Protocol):
    """What the weight-sharing supernet (`mbconv_net.MBConvSupernet`) needs of its space:
    `search_spaces.mbconv.MBConvSpace` is one."""

    stage_channels: tuple[int, ...]

    def net_spec(self, arch: dict[str, Any]) -> NetSpec: ...

    def max_arch(self) -> dict[str, Any]: ...

    def key(self, arch: dict[str, Any]) -> str: ...
