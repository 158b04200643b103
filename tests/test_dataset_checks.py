"""What a dataset implies for the job, checked at submit and at worker start (issue 17
items 12 and 13): the input shape must match the space's `input_channels`/`input_size`
for every dataset kind (a `{kind: function}` one too), labels must fit `num_classes` (which
is inferred from the labels when not given), and an objective the evaluator cannot produce
for its arguments (`test_acc` without a test split) is refused."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from nas.errors import SpecError
from nas.spec import parse_spec
from search_spaces import get_space
from tests.conftest import nb201_spec
from workers.datasets import parse_dataset
from workers.evaluators import get_evaluator
from workers.task import EvaluatorSpec, TrialTask, evaluate_batch

MODULE = "nas_test_user_data"


@pytest.fixture
def user_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module of dataset functions (3x16x16 images, 5 classes)."""
    (tmp_path / f"{MODULE}.py").write_text(textwrap.dedent("""
        import numpy as np

        def _images(n, seed, channels=3, size=16):
            rng = np.random.default_rng(seed)
            return rng.normal(size=(n, channels, size, size)).astype(np.float32)

        def rgb16():
            # the full contract: train, val and test splits, labels 0..4
            return {"x_train": _images(40, 0), "y_train": np.arange(40) % 5,
                    "x_val": _images(10, 1), "y_val": np.arange(10) % 5,
                    "x_test": _images(10, 2), "y_test": np.arange(10) % 5}

        def rgb16_train_only():
            return _images(50, 3), np.arange(50) % 5  # validation held out

        def rgb16_four():
            return _images(40, 0), np.arange(40) % 5, _images(10, 1), np.arange(10) % 5

        def nhwc_uint8():
            x = np.random.default_rng(0).integers(0, 255, size=(30, 16, 16, 3), dtype=np.uint8)
            return x, np.arange(30) % 5

        def broken():
            raise RuntimeError("no data today")

        def wrong_lengths():
            return _images(10, 0), np.arange(9) % 5
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield MODULE
    sys.modules.pop(MODULE, None)


def _train_spec(function: str, space_args: dict | None = None, **changes) -> dict:  # noqa: ANN003
    return nb201_spec(**{
        "evaluator": "train", "space_args": space_args or {},
        "evaluator_args": {"dataset": {"kind": "function", "function": function},
                           "epochs": 1, "measure_latency": False},
        "objectives": [{"metric": "val_acc", "mode": "max"}], **changes})


RGB16 = {"input_channels": 3, "input_size": 16}


# ---- item 13: shapes and classes ------------------------------------------------------------
def test_a_function_dataset_of_another_shape_is_refused_naming_the_space_args(user_data):
    with pytest.raises(SpecError) as info:
        parse_spec(_train_spec(f"{user_data}:rgb16"))
    message = str(info.value)
    assert "\n" not in message
    assert "(3, 16, 16)" in message and "input_channels: 3, input_size: 16" in message


def test_num_classes_is_inferred_from_the_labels_when_not_given(user_data):
    spec = parse_spec(_train_spec(f"{user_data}:rgb16", RGB16))
    assert spec.space_args == {**RGB16, "num_classes": 5}
    space = get_space("nb201", **spec.space_args)
    arch = space.sample(np.random.default_rng(0))
    # stored params are those of the 5-output network (the classifier has 5 rows)
    ten = get_space("nb201", **RGB16, num_classes=10)
    assert ten.params(arch) - space.params(arch) == 5 * (64 + 1)


def test_labels_beyond_num_classes_are_refused_naming_it(user_data):
    with pytest.raises(SpecError, match="space_args.num_classes") as info:
        parse_spec(_train_spec(f"{user_data}:rgb16", {**RGB16, "num_classes": 3}))
    assert "5 classes" in str(info.value)
    # more outputs than classes is the user's choice, kept as given
    spec = parse_spec(_train_spec(f"{user_data}:rgb16", {**RGB16, "num_classes": 10}))
    assert spec.space_args["num_classes"] == 10


@pytest.mark.integration
def test_every_dataset_kind_is_shape_checked(tmp_path):
    np.savez(tmp_path / "gray12.npz", x=np.zeros((20, 12, 12), np.float32),
             y=np.arange(20) % 4)
    for dataset, shape in (("digits", "input_channels: 1, input_size: 8"),
                           (f"npz:{tmp_path / 'gray12.npz'}",
                            "input_channels: 1, input_size: 12")):
        spec = nb201_spec(evaluator="train", evaluator_args={"dataset": dataset},
                          objectives=[{"metric": "val_acc", "mode": "max"}])
        with pytest.raises(SpecError, match=shape):
            parse_spec(spec)
    spec = parse_spec(nb201_spec(
        evaluator="train", evaluator_args={"dataset": f"npz:{tmp_path / 'gray12.npz'}"},
        space_args={"input_channels": 1, "input_size": 12},
        objectives=[{"metric": "val_acc", "mode": "max"}]))
    assert spec.space_args["num_classes"] == 4


def test_the_worker_checks_the_shape_too(user_data):
    """A stored spec that skipped the submit checks (an older version, or edited) fails each
    trial with the same one line instead of training the wrong network."""
    spec = EvaluatorSpec("nb201", {}, "train", {"dataset": f"py:{user_data}:rgb16",
                                                "epochs": 1, "measure_latency": False})
    space = get_space("nb201")
    arch = space.sample(np.random.default_rng(0))
    [result] = evaluate_batch(spec, [TrialTask(1, space.key(arch), arch)])
    assert result.status == "failed"
    assert "input_channels: 3, input_size: 16" in result.error


@pytest.mark.parametrize("function, has_test, examples", [
    ("rgb16", True, 40), ("rgb16_train_only", False, 40), ("rgb16_four", False, 40),
    ("nhwc_uint8", False, 24),
])
def test_the_function_return_contract(user_data, function, has_test, examples):
    data = parse_dataset(f"py:{user_data}:{function}").load()
    assert data.input_shape == (3, 16, 16) and data.num_classes == 5
    assert (data.x_test is not None) == has_test
    assert len(data.x_train) == examples and data.x_train.dtype == np.float32


@pytest.mark.parametrize("function, message", [
    ("broken", "raised RuntimeError: no data today"),
    ("wrong_lengths", "10 images but 9 labels"),
])
def test_a_bad_function_is_one_line_at_submit(user_data, function, message):
    with pytest.raises(SpecError, match=message) as info:
        parse_spec(_train_spec(f"{user_data}:{function}", RGB16))
    assert "\n" not in str(info.value)


@pytest.mark.integration
def test_a_small_training_run_reports_on_the_inferred_network(user_data):
    spec = parse_spec(_train_spec(f"{user_data}:rgb16", RGB16))
    space = get_space("nb201", channels=4, cells_per_stage=1,
                      **{k: v for k, v in spec.space_args.items() if k != "channels"})
    evaluator = get_evaluator("train", space, **spec.evaluator_args)
    arch = space.sample(np.random.default_rng(1))
    result = evaluator.evaluate(arch, space.key(arch))
    assert set(result.metrics) == evaluator.metric_names()
    assert result.flops == space.flops(arch)


# ---- item 12: objectives the evaluator cannot produce ----------------------------------------
def _digits(objective: dict, **evaluator_args) -> dict:  # noqa: ANN003
    return nb201_spec(evaluator="train", space_args={"input_channels": 1, "input_size": 8},
                      evaluator_args={"dataset": "digits", **evaluator_args},
                      objectives=[objective])


def test_test_acc_without_a_test_split_is_refused_at_submit():
    with pytest.raises(SpecError) as info:
        parse_spec(_digits({"metric": "test_acc", "mode": "max"}))
    message = str(info.value)
    assert "objectives[0].metric" in message and "test_acc" in message
    assert "val_acc" in message and "\n" not in message
    spec = _digits({"metric": "val_acc", "mode": "max"})
    spec["constraints"] = [{"metric": "test_acc", "min": 50}]
    with pytest.raises(SpecError, match=r"constraints\[0\].metric"):
        parse_spec(spec)


def test_test_acc_with_a_test_split_is_accepted(user_data, tmp_path):
    parse_spec(_train_spec(f"{user_data}:rgb16", RGB16,
                           objectives=[{"metric": "test_acc", "mode": "max"}]))
    np.savez(tmp_path / "t.npz", x=np.zeros((20, 1, 8, 8)), y=np.arange(20) % 10,
             x_test=np.zeros((5, 1, 8, 8)), y_test=np.arange(5))
    parse_spec(nb201_spec(evaluator="train", space_args={"input_channels": 1, "input_size": 8},
                          evaluator_args={"dataset": f"npz:{tmp_path / 't.npz'}"},
                          objectives=[{"metric": "test_acc", "mode": "max"}]))


def test_each_evaluator_lists_exactly_what_it_reports(tmp_path):
    digits = get_space("nb201", input_channels=1, input_size=8)
    train = get_evaluator("train", digits, dataset="digits")
    assert train.metric_names() == {"val_acc", "val_loss", "train_loss", "train_time_s",
                                    "params", "flops"}
    quant = get_evaluator("train", get_space("quant", input_channels=1, input_size=8),
                          dataset="digits")
    assert "int8_val_acc" in quant.metric_names() and "test_acc" not in quant.metric_names()
    (tmp_path / "t.csv").write_text("arch,test_acc,params_mb\n|none~0|+|none~0|none~1|+"
                                    "|none~0|none~1|none~2|,10.0,0.1\n")
    benchmark = get_evaluator("benchmark", get_space("nb201"), table=str(tmp_path / "t.csv"))
    assert benchmark.metric_names() == {"test_acc", "params_mb", "params", "flops"}
    with pytest.raises(SpecError, match="objectives\\[0\\].metric.*params_mb"):
        parse_spec(nb201_spec(evaluator_args={"table": str(tmp_path / "t.csv")}))
    assert get_evaluator("analytic", digits).metric_names() == {"params", "flops"}
    proxy = get_evaluator("proxy", digits, proxies=["synflow", "params"])
    assert {"proxy.synflow", "proxy.params", "score"} <= proxy.metric_names()
