"""Imports point down: a space's network (`search_spaces/layers/`) never imports a space
module, so that space and network form no import cycle; what both need (plans, constants)
lives in the torch-free `layers/*_plan.py` modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LAYERS = Path(__file__).resolve().parents[1] / "search_spaces" / "layers"
#: What a network may take from the package above it: the contract's types only.
ALLOWED_FROM_ABOVE = {"_base"}


def _imports_from_above(path: Path) -> list[str]:
    """Modules of `search_spaces` (outside `layers/`) that `path` imports, lazily or for type
    checking included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 2:  # from ..x import y
                found.append(node.module or "")
            elif node.level == 0 and (node.module or "").startswith("search_spaces."):
                rest = node.module.split(".")[1:]
                if rest and rest[0] != "layers":
                    found.append(rest[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "search_spaces" and len(parts) > 1 and parts[1] != "layers":
                    found.append(parts[1])
    return [name for name in found if name not in ALLOWED_FROM_ABOVE]


@pytest.mark.parametrize("path", sorted(LAYERS.glob("*.py")), ids=lambda p: p.name)
def test_a_network_module_imports_no_space_module(path: Path) -> None:
    assert _imports_from_above(path) == [], f"{path.name} imports a space module"


def test_the_check_sees_an_import_of_a_space(tmp_path: Path) -> None:
    bad = tmp_path / "bad_net.py"
    bad.write_text("from typing import TYPE_CHECKING\nfrom ..nb201 import EDGES\n"
                   "if TYPE_CHECKING:\n    from ..mbconv import MBConvSpace\n"
                   "from .._base import Arch\nimport search_spaces.darts\n")
    assert sorted(_imports_from_above(bad)) == ["darts", "mbconv", "nb201"]


def test_the_plans_import_no_torch() -> None:
    """The spaces import their plans at import time, and importing a space must not import
    torch (it is heavy; see test_spaces)."""
    for path in LAYERS.glob("*_plan.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] == "torch"], path.name
