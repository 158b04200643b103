"""A user's own PyGlove space as a `SearchSpace` (issue 15, item 1): the issue's example,
nested conditional choices, symbolic builders that make torch models, `check_space` on each,
every ask/tell strategy on a space with float and conditional decisions."""

from __future__ import annotations

import json
import math

import numpy as np
import pyglove as pg
import pytest
import torch
from torch import nn

from nas.strategies import ProxySearch, check_strategy, get_strategy
from search_spaces import check_space
from search_spaces.pyglove_space import PyGloveSpace, is_pyglove_space

# ---- the spaces ----------
#: The example of issue 15.
EXAMPLE = pg.Dict(depth=pg.oneof([2, 3, 4]), width=pg.oneof([16, 32, 64]),
                  act=pg.oneof(["relu", "gelu"]), dropout=pg.floatv(0.0, 0.5),
                  blocks=pg.manyof(2, ["conv", "attn", "mlp"], distinct=True, sorted=True))

#: Nested conditional choices: each model kind has its own decisions; a manyof whose
#: candidates hold decisions too. Finite: 8 x 2 x 11 architectures.
NESTED = pg.Dict(
    model=pg.oneof([pg.Dict(kind="cnn", kernel=pg.oneof([3, 5]), channels=pg.oneof([8, 16])),
                    pg.Dict(kind="mlp", hidden=pg.oneof([32, 64, 128])),
                    "linear"]),
    lr=pg.oneof([0.1, 0.01]),
    heads=pg.manyof(2, [pg.Dict(k=pg.oneof([1, 2])), "x", pg.Dict(j=pg.oneof([3, 4, 5]))],
                    distinct=True, sorted=True))

#: Floats (one on a log scale) under conditional choices, with a manyof: what every
#: strategy must handle.
MIXED = pg.Dict(
    depth=pg.oneof([2, 3, 4]), width=pg.oneof([16, 32, 64]), act=pg.oneof(["relu", "gelu"]),
    dropout=pg.floatv(0.0, 0.5),
    blocks=pg.manyof(2, ["conv", "attn", "mlp"], distinct=True, sorted=True),
    optimizer=pg.oneof([
        pg.Dict(name="sgd", momentum=pg.oneof([0.0, 0.9]), lr=pg.floatv(1e-3, 1e-1, scale="log")),
        pg.Dict(name="adam", lr=pg.floatv(1e-4, 1e-2, scale="log")),
        "fixed"]))


@pg.symbolize
def mlp(depth: int, width: int, act: str, dropout: float, head: dict, in_features: int = 16,
        num_classes: int = 4) -> nn.Module:
    """A user's model family: an MLP whose head is a conditional choice."""
    layers: list[nn.Module] = []
    features = in_features
    for _ in range(depth):
        layers += [nn.Linear(features, width), nn.ReLU() if act == "relu" else nn.GELU(),
                   nn.Dropout(dropout)]
        features = width
    if head["kind"] == "mlp":
        layers += [nn.Linear(features, head["hidden"]), nn.ReLU(), nn.Dropout(head["dropout"])]
        features = head["hidden"]
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


@pg.symbolize
class SmallCNN(nn.Module):
    """A symbolic nn.Module class: the materialized object is the model."""

    def __init__(self, channels: int, kernel: int, act: type = nn.ReLU, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, channels, kernel, padding=kernel // 2),
                                      nn.BatchNorm2d(channels), act())
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def mlp_space(**space_args) -> PyGloveSpace:
    head = pg.oneof([pg.Dict(kind="linear"),
                     pg.Dict(kind="mlp", hidden=pg.oneof([8, 16]), dropout=pg.floatv(0.0, 0.5))])
    builder = mlp(depth=pg.oneof([1, 2, 3]), width=pg.oneof([8, 16, 32]),
                  act=pg.oneof(["relu", "gelu"]), dropout=pg.floatv(0.0, 0.3), head=head)
    return PyGloveSpace(builder, input_shape=[16], **space_args)


def cnn_space() -> PyGloveSpace:
    builder = SmallCNN(channels=pg.oneof([4, 8]), kernel=pg.oneof([3, 5]),
                       act=pg.oneof([nn.ReLU, nn.GELU]))
    return PyGloveSpace(builder, input_shape=[1, 8, 8])


# ---- the issue's example ----------
@pytest.mark.integration
def test_the_issue_example_is_a_search_space():
    space = PyGloveSpace(EXAMPLE)
    assert space.choice_counts() == [3, 3, 2, 1, 3]  # blocks: one decision, C(3, 2) selections
    assert space.decision_kinds() == ["choice", "choice", "choice", "float", "choice"]
    assert space.size() == math.inf and not space.conditional
    assert space.describe()["size"] is None
    arch = space.sample(np.random.default_rng(0))
    assert set(arch) == {"depth", "width", "act", "dropout", "blocks"}
    assert 0.0 <= arch["dropout"] <= 0.5 and len(set(arch["blocks"])) == 2
    assert arch["blocks"] == sorted(arch["blocks"], key=["conv", "attn", "mlp"].index)
    assert len(space.encode(arch)) == 12
    with pytest.raises(ValueError, match="float decisions"):
        next(space.enumerate())
    with pytest.raises(NotImplementedError, match="no model"):
        space.build(arch)
    check_space(space)


@pytest.mark.integration
def test_the_example_without_the_float_is_finite_and_enumerable():
    space = PyGloveSpace(pg.Dict(depth=pg.oneof([2, 3, 4]), act=pg.oneof(["relu", "gelu"]),
                                 blocks=pg.manyof(2, ["conv", "attn", "mlp"], distinct=True,
                                                  sorted=True)))
    assert space.size() == 3 * 2 * 3 == pg.dna_spec(space.template()).space_size
    assert len({space.key(a) for a in space.enumerate()}) == 18
    check_space(space)


# ---- nested conditional choices ----------
@pytest.mark.integration
def test_nested_conditional_choices_map_to_the_flat_conditional_dna():
    space = PyGloveSpace(NESTED)
    assert space.conditional
    assert space.size() == 8 * 2 * 11 == pg.dna_spec(NESTED).space_size
    keys = [space.key(a) for a in space.enumerate()]
    assert len(keys) == len(set(keys)) == space.size()
    arch = {"model": "linear", "lr": 0.1, "heads": [{"k": 2}, "x"]}
    dna = space.to_dna(arch)
    active = space.active(dna)
    # the cnn's and the mlp's decisions are inactive under "linear", canonically first
    assert [a for a, d in zip(active, space._decisions, strict=True)
            if d.path.startswith("model[=")] == [False, False, False]
    assert all(v == 0 for v, on in zip(dna, active, strict=True) if not on)
    assert space.from_dna(dna) == arch
    check_space(space)


@pytest.mark.integration
def test_every_mutation_changes_exactly_one_active_decision_and_sampling_is_uniform():
    space = PyGloveSpace(MIXED)
    rng = np.random.default_rng(3)
    kinds = [space.sample(rng)["optimizer"] for _ in range(600)]
    names = [k if isinstance(k, str) else k["name"] for k in kinds]
    assert {n: names.count(n) for n in ("sgd", "adam", "fixed")}.keys() == {"sgd", "adam", "fixed"}
    assert min(names.count(n) for n in ("sgd", "adam", "fixed")) > 150
    arch = space.sample(rng)
    for _ in range(50):
        child = space.mutate(arch, rng)
        assert space.key(child) != space.key(arch)
        arch = child
    check_space(space)


# ---- builders ----------
@pytest.mark.integration
def test_a_symbolic_function_builds_a_torch_mlp_with_params_and_flops():
    space = mlp_space()
    assert space.buildable and space.conditional and space.size() == math.inf
    arch = {"depth": 2, "width": 8, "act": "gelu", "dropout": 0.1,
            "head": {"kind": "mlp", "hidden": 16, "dropout": 0.25}}
    assert space.validate(arch) == arch
    model = space.build(arch)
    assert isinstance(model, nn.Sequential)
    assert space.params(arch) == (16 * 8 + 8) + (8 * 8 + 8) + (8 * 16 + 16) + (16 * 4 + 4)
    assert space.flops(arch) == 2 * (16 * 8 + 8 * 8 + 8 * 16 + 16 * 4)
    assert model(torch.zeros(3, 16)).shape == (3, 4)
    # the architecture holds the arguments with decisions; the fixed ones come from the template
    assert "in_features" not in arch
    assert mlp_space(num_classes=7).build(arch)(torch.zeros(1, 16)).shape == (1, 7)
    check_space(space)


@pytest.mark.integration
def test_a_symbolic_module_class_builds_a_cnn():
    space = cnn_space()
    assert space.size() == 8 and not space.conditional
    arch = {"channels": 8, "kernel": 5,
            "act": {"_type": "type", "name": "torch.nn.modules.activation.GELU"}}
    model = space.build(arch)
    assert isinstance(model, SmallCNN) and isinstance(model.features[2], nn.GELU)
    assert space.params(arch) == 1 * 8 * 25 + 8 + 2 * 8 + 8 * 10 + 10
    assert space.flops(arch) == 2 * (8 * 25 * 64 + 8 * 10)
    check_space(space)


# ---- architectures are JSON, keys are unique ----------
@pytest.mark.integration
@pytest.mark.parametrize("make", [lambda: PyGloveSpace(EXAMPLE), lambda: PyGloveSpace(NESTED),
                                  lambda: PyGloveSpace(MIXED), mlp_space, cnn_space])
def test_architectures_round_trip_through_json_and_keys_are_unique(make):
    space = make()
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(300)]
    by_key: dict[str, tuple] = {}
    for arch in archs:
        text = json.dumps(arch, allow_nan=False)
        back = json.loads(text)
        assert back == arch and space.validate(back) == arch
        key = space.key(back)
        assert space.from_key(key) == arch and space.validate(key) == arch
        dna = tuple(space.to_dna(arch))
        assert by_key.setdefault(key, dna) == dna
    finite = space.size() != math.inf
    assert len(by_key) == len({json.dumps(a, sort_keys=True) for a in archs})
    assert finite or len(by_key) == len(archs)  # float decisions: no repeats


def test_keys_do_not_depend_on_the_order_of_dict_entries():
    space = PyGloveSpace(NESTED)
    arch = {"model": {"kind": "cnn", "kernel": 5, "channels": 8}, "lr": 0.01,
            "heads": [{"k": 1}, {"j": 4}]}
    shuffled = {"heads": [{"k": 1}, {"j": 4}], "lr": 0.01,
                "model": {"channels": 8, "kind": "cnn", "kernel": 5}}
    assert space.key(shuffled) == space.key(arch)
    with pytest.raises(ValueError, match="not a canonical key"):
        space.from_key(json.dumps(shuffled))


# ---- every ask/tell strategy on a space with floats and conditional choices ----------
@pytest.mark.integration
@pytest.mark.parametrize("name, args", [
    ("random", {}), ("evolution", {}), ("moevo", {}), ("gbdt", {"pool": 100, "trees": 30}),
    ("gbdt", {"pool": 100, "trees": 30, "init": 6, "prune": True}),
    ("tpe", {}), ("nsga2", {})])
def test_every_ask_tell_strategy_passes_check_strategy_on_a_user_space(name, args):
    space = PyGloveSpace(MIXED)
    check_strategy(lambda seed: get_strategy(name, space, seed=seed, **args), trials=40)


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["top", "evolution"])
def test_the_proxy_strategy_passes_check_strategy_on_a_user_builder_space(mode):
    space = mlp_space()
    scores: dict[int, dict[str, dict[str, float]]] = {}  # per seed: the pool's "proxy" scores

    def factory(seed: int) -> ProxySearch:
        strategy = ProxySearch(space, seed=seed, pool=60, mode=mode, proxies=["params", "flops"])
        if seed not in scores:
            scores[seed] = {k: {"params": float(space.params(a)), "flops": float(space.flops(a))}
                            for k, a in strategy.pool_candidates()}
        strategy.set_scores(scores[seed])
        return strategy

    check_strategy(factory, trials=30)


# ---- what is refused ----------
def test_is_pyglove_space():
    assert is_pyglove_space(EXAMPLE) and is_pyglove_space(pg.oneof([1, 2]))
    assert is_pyglove_space(mlp(depth=pg.oneof([1, 2]), width=8, act="relu", dropout=0.0,
                                head={"kind": "linear"}))
    assert not is_pyglove_space(pg.Dict(a=1))
    assert not is_pyglove_space({"a": 1}) and not is_pyglove_space(mlp)


@pytest.mark.parametrize("obj, message", [
    (pg.Dict(a=1), "not a PyGlove search space"),
    ({"a": pg.oneof([1, 2])}, "not a PyGlove search space"),
    (pg.Dict(a=pg.oneof([pg.Dict(k=pg.oneof([1, 2])), pg.Dict(k=pg.oneof([2, 3]))])),
     "can materialize to the same value"),
    (pg.Dict(a=pg.oneof([1, pg.floatv(0.0, 2.0)])), "can materialize to the same value"),
    (pg.Dict(a=pg.floatv(0.1, 1.0, scale="rlog")), "scale 'rlog'"),
    (pg.Dict(a=pg.oneof([object(), 1])), "has no JSON form"),
])
def test_bad_spaces_are_refused_with_one_line(obj, message):
    with pytest.raises(ValueError, match=message):
        PyGloveSpace(obj)


def test_bad_space_args_are_refused():
    with pytest.raises(ValueError, match="input_shape"):
        PyGloveSpace(EXAMPLE, input_shape=[3, 0])
    with pytest.raises(ValueError, match="num_classes"):
        PyGloveSpace(EXAMPLE, num_classes=0)
    with pytest.raises(NotImplementedError, match="input_shape"):
        PyGloveSpace(EXAMPLE).input_shape()


# ---- evaluators that need a model ----------
@pytest.mark.integration
@pytest.mark.parametrize("name", ["train", "proxy", "analytic"])
def test_evaluators_that_need_a_model_say_so_in_one_line(name):
    from workers.evaluators import get_evaluator

    with pytest.raises(ValueError, match=f"the {name} evaluator needs a torch model") as info:
        get_evaluator(name, PyGloveSpace(EXAMPLE))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="set space_args.input_shape"):
        get_evaluator(name, PyGloveSpace(mlp_space().template()))


def test_the_analytic_evaluator_counts_a_builder_space():
    from workers.evaluators import get_evaluator

    space = mlp_space()
    arch = {"depth": 1, "width": 8, "act": "relu", "dropout": 0.0, "head": {"kind": "linear"}}
    result = get_evaluator("analytic", space).evaluate(arch, space.key(arch))
    assert result.metrics == {"params": float(16 * 8 + 8 + 8 * 4 + 4),
                              "flops": float(2 * (16 * 8 + 8 * 4))}


USER_MODULE = '''
import pyglove as pg

space = pg.Dict(depth=pg.oneof([2, 3, 4]), width=pg.oneof([16, 32, 64]),
                act=pg.oneof(["relu", "gelu"]), dropout=pg.floatv(0.0, 0.5),
                blocks=pg.manyof(2, ["conv", "attn", "mlp"], distinct=True, sorted=True))


def evaluate(arch, ctx):
    """A made-up score: deeper and wider is better, dropout costs a little."""
    return {"score": arch["depth"] * arch["width"] - 10 * arch["dropout"]}
'''


@pytest.mark.integration
@pytest.mark.parametrize("strategy", ["evolution", "gbdt", "tpe"])
def test_a_job_searches_a_user_pyglove_space_by_reference(strategy, tmp_path, monkeypatch):
    """`space: mod:space` and `evaluator: mod:evaluate` from the current folder: the
    job runs to its budget, and its architectures are stored under the reference (a space of
    its own in the database, found again by that name anywhere)."""
    from nas import api
    from nas.storage import Storage
    from search_spaces import get_space

    module = f"pgjob_{strategy}"  # a name no other test imports (sys.modules is shared)
    (tmp_path / f"{module}.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    storage = Storage(f"sqlite:///{tmp_path / 'nas.db'}")
    job = api.submit(storage, {
        "space": f"{module}:space", "strategy": strategy, "evaluator": f"{module}:evaluate",
        "objectives": [{"metric": "score", "mode": "max"}], "budget": {"trials": 24},
        "executor": "local", "seed": 0})
    assert api.run(storage, job) == "completed"
    rows = storage.trials.load(job)
    assert len(rows) == 24 and all(r.status == "completed" for r in rows)
    space = get_space(f"{module}:space")
    assert space.name == f"{module}:space"
    assert all(space.key(space.validate(r.arch)) == r.key for r in rows)
    with storage.read() as conn:
        spaces = {s for (s,) in conn.exec_driver_sql("SELECT DISTINCT space FROM architectures")}
    assert spaces == {f"{module}:space"}
