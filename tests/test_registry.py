"""One registry for every component: the same rules for names, duplicates, unknown names and
origins in each of the seven registries; `module:attr` references; entry-point plugins (real
entry points, from a `.dist-info` folder on the path); `spec_modules`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nas.spec import spec_modules
from nas.strategies import Strategy, get_strategy, strategy_class
from nas.strategies._base import STRATEGIES
from predictors import Predictor, predictor_class
from predictors._base import PREDICTORS
from predictors.latency import LATENCY_PREDICTORS, LatencyPredictor, get_latency_predictor
from predictors.proxies import get_proxy
from predictors.proxies._base import PROXIES, Proxy, load_builtin_proxies
from search_spaces import NB201Space, SearchSpace, get_space, space_class
from search_spaces._base import SPACES
from search_spaces.registry import (
    BadReferenceError,
    Registry,
    UnknownComponentError,
    resolve_reference,
)
from workers.evaluators import Evaluator, evaluator_class
from workers.evaluators._base import EVALUATORS
from workers.weight_sharing import WeightSharingSearch, search_class
from workers.weight_sharing._base import SEARCHES

load_builtin_proxies()


def _class_of(base: type) -> Callable[[str], Any]:
    return lambda name: type(f"Test_{name}", (base,), {"name": name, "__module__": __name__})


# (registry, a fresh object to register under a name, the public lookup by name)
REGISTRIES = [
    pytest.param(SPACES, _class_of(SearchSpace), space_class, id="space"),
    pytest.param(STRATEGIES, _class_of(Strategy), strategy_class, id="strategy"),
    pytest.param(EVALUATORS, _class_of(Evaluator), evaluator_class, id="evaluator"),
    pytest.param(PREDICTORS, _class_of(Predictor), predictor_class, id="predictor"),
    pytest.param(LATENCY_PREDICTORS, _class_of(LatencyPredictor),
                 lambda name: get_latency_predictor(name, NB201Space()), id="latency-predictor"),
    pytest.param(PROXIES, lambda name: Proxy(name, lambda *a: 1.0), get_proxy, id="proxy"),
    pytest.param(SEARCHES, _class_of(WeightSharingSearch), search_class,
                 id="weight-sharing-search"),
]


@pytest.fixture
def restore_registries() -> Iterator[None]:
    registries = [SPACES, STRATEGIES, EVALUATORS, PREDICTORS, LATENCY_PREDICTORS, PROXIES,
                  SEARCHES]
    saved = [r.snapshot() for r in registries]
    yield
    for registry, snapshot in zip(registries, saved, strict=True):
        registry.restore(snapshot)


@pytest.mark.usefixtures("restore_registries")
@pytest.mark.parametrize(("registry", "make", "lookup"), REGISTRIES)
def test_every_registry_follows_the_same_rules(registry: Registry, make, lookup) -> None:
    builtin = registry.names()[0]
    assert registry.origin(builtin) == "built-in"
    for bad in ("Upper", "with space", "mod:attr", "x" * 65, ""):
        with pytest.raises(ValueError, match="not valid"):
            registry.register(bad, make("ok"))
    obj = make("test-x")
    assert registry.register("test-x", obj) is obj
    assert registry.register("test-x", obj) is obj  # the same object again: nothing happens
    assert registry.origin("test-x") == f"module {__name__}"
    assert "test-x" in registry.names()
    with pytest.raises(ValueError, match=f"registered twice: by built-in and by module {__name__}"):
        registry.register(builtin, make(builtin))
    with pytest.raises(UnknownComponentError) as info:
        lookup("no-such-thing")
    assert isinstance(info.value, KeyError)
    assert str(info.value) == (f"unknown {registry.kind} 'no-such-thing'; "
                               f"known: {', '.join(registry.names())}")


def test_a_registered_class_must_be_of_the_right_kind_and_name() -> None:
    registry: Registry[type[SearchSpace]] = Registry("space", "nas.test-none",
                                                     check=SPACES._check)
    with pytest.raises(TypeError, match="not a SearchSpace subclass"):
        registry.register("thing", int)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is named 'nb201'"):
        registry.register("other", NB201Space)


# ---- module:attr references ----------------------------------------------------------------------
USER_MODULE = '''
from search_spaces import NB201Space
from nas.strategies import RandomSearch

class Small(NB201Space):
    name = "small"

small = Small(channels=4, cells_per_stage=1)

class Mine(RandomSearch):
    name = "mine"

def my_proxy(model, inputs, targets, loss_fn):
    """Parameter count."""
    return float(sum(p.numel() for p in model.parameters()))

class Holder:
    value = 42
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module `usermod_<n>` in an empty current folder that is not on sys.path (as for a
    console script): a reference finds it there, like `uvicorn main:app`."""
    name = f"usermod_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    yield name
    sys.modules.pop(name, None)


def test_references_resolve_from_the_current_folder(user_module: str) -> None:
    assert resolve_reference(f"{user_module}:Holder.value") == 42
    space = get_space(f"{user_module}:Small", channels=4, cells_per_stage=1)
    assert type(space).__name__ == "Small" and space.channels == 4
    instance = get_space(f"{user_module}:small")
    assert instance is resolve_reference(f"{user_module}:small")
    with pytest.raises(ValueError, match="takes no space_args"):
        get_space(f"{user_module}:small", channels=8)
    strategy = get_strategy(f"{user_module}:Mine", instance, seed=1)
    assert type(strategy).__name__ == "Mine" and instance.validate(strategy.ask())
    proxy = get_proxy(f"{user_module}:my_proxy")
    assert proxy.name == f"{user_module}:my_proxy" and proxy.description == "Parameter count."


@pytest.mark.parametrize(("reference", "message"), [
    ("nomodule_xyz:Thing", "cannot import module 'nomodule_xyz' of reference "
                           "'nomodule_xyz:Thing': no module named 'nomodule_xyz'"),
    ("json:Nothing", "module 'json' has no attribute 'Nothing'"),
    ("json:JSONDecoder.nothing", "module 'json' has no attribute 'JSONDecoder.nothing'"),
    ("json", "malformed reference 'json'"),
    ("json:", "malformed reference 'json:'"),
    ("a:b:c", "malformed reference 'a:b:c'"),
    ("json:__import__('os')", "malformed reference"),
])
def test_bad_references_are_one_line_errors(reference: str, message: str) -> None:
    with pytest.raises(BadReferenceError) as info:
        resolve_reference(reference)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_module_failing_to_import_is_one_line(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "brokenmod_1.py").write_text("import nonexistent_dep_xyz\n")
    (tmp_path / "brokenmod_2.py").write_text("x = 1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BadReferenceError, match="module 'brokenmod_1' failed to import: "
                                                "ModuleNotFoundError: No module named"):
        resolve_reference("brokenmod_1:x")
    with pytest.raises(BadReferenceError, match="ZeroDivisionError: division by zero"):
        resolve_reference("brokenmod_2:x")


@pytest.mark.parametrize(("lookup", "reference", "message"), [
    (space_class, "json:dumps", "'json:dumps' is a function, not a SearchSpace"),
    (strategy_class, "json:JSONDecoder", "'json:JSONDecoder' is a class, not a Strategy"),
    (evaluator_class, "json:__name__", "'json:__name__' is a str, not an Evaluator"),
    (get_proxy, "json:JSONDecoder", "proxy 'json:JSONDecoder' must be a function"),
])
def test_an_object_of_the_wrong_kind_is_refused(lookup, reference: str, message: str) -> None:
    with pytest.raises((BadReferenceError, TypeError), match=message):
        lookup(reference)


def test_a_pyglove_value_becomes_a_pyglove_space(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("search_spaces.pyglove_space")
    (tmp_path / "pgmod_1.py").write_text(
        "import pyglove as pg\nspace = pg.Dict(depth=pg.oneof([2, 3]), act=pg.oneof(['a', 'b']))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from search_spaces.pyglove_space import PyGloveSpace

    space = get_space("pgmod_1:space")
    assert isinstance(space, PyGloveSpace) and space.size() == 4


# ---- entry-point plugins, from a .dist-info folder on the path --------------------------------
PLUGIN_MODULE = '''
from search_spaces import NB201Space

class Tiny(NB201Space):
    name = "tiny"
'''


def _dist_info(folder: Path, name: str, version: str, entry_points: str) -> None:
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(entry_points)


def test_entry_points_load_lazily_and_a_broken_one_costs_one_line(tmp_path, monkeypatch,
                                                                    capsys) -> None:
    (tmp_path / "plugmod_1.py").write_text(PLUGIN_MODULE)
    (tmp_path / "plugmod_broken.py").write_text("raise RuntimeError('boom')\n")
    _dist_info(tmp_path, "plug_dist", "1.2", "[nas.test_spaces]\n"
               "tiny = plugmod_1:Tiny\nmissing = plugmod_nowhere:Space\n"
               "crashing = plugmod_broken:Space\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry: Registry[type[SearchSpace]] = Registry("space", "nas.test_spaces",
                                                     check=SPACES._check)
    registry.register("nb201", NB201Space)
    assert registry.get("nb201") is NB201Space
    assert "plugmod_1" not in sys.modules  # a known name loads no plugin
    assert registry.names() == ["nb201", "tiny"]
    assert registry.origin("tiny") == "plugin plug_dist 1.2"
    assert registry.origin("nb201") == "built-in"
    assert len(registry.errors) == 2
    assert "nas.test_spaces 'missing' (plugmod_nowhere:Space, plug_dist 1.2) failed to load: " \
           "ModuleNotFoundError" in registry.errors[0]
    assert "'crashing'" in registry.errors[1] and "RuntimeError: boom" in registry.errors[1]
    err = capsys.readouterr().err.splitlines()
    assert err == [f"warning: {line}" for line in registry.errors]  # one line each
    sys.modules.pop("plugmod_1", None)


# ---- the modules a spec references ------------------------------------------------------------
def test_spec_modules_lists_every_referenced_module_without_importing() -> None:
    spec = {"space": "pkg.spaces:Mine", "strategy": "evolution", "evaluator": "function",
            "evaluator_args": {"function": "pkg.train:evaluate", "proxies": ["synflow", "px:p"],
                               "dataset": "py:dat.load:fn"},
            "strategy_args": {"dataset": {"kind": "function", "function": "other:load"}}}
    assert spec_modules(spec) == ["dat.load", "other", "pkg.spaces", "pkg.train", "px"]
    assert spec_modules({"space": "nb201", "strategy": "random", "evaluator": "benchmark",
                         "evaluator_args": {"dataset": "digits"}}) == []
    assert "pkg" not in sys.modules
