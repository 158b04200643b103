"""Mixed precision that matters: per-block weight and activation bit-widths of the quant
space, the exact `bitops` / `model_size_kb` metrics (objectives and constraints), the packed
low-bit export, and the EMQ proxy machinery (`predictors/emq.py`, proxy `emq`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from search_spaces.layers.quant_net import (
    ActFakeQuant,
    bitops_of_model,
    pack_codes,
    pack_model,
    unpack_codes,
)
from search_spaces.quant import QuantSpace

DIGITS = {"num_classes": 10, "input_channels": 1, "input_size": 8}
#: One block on a 1 x 4 x 4 input, 8 stem channels, 2 classes: small enough to count by hand.
TINY = {"num_classes": 2, "input_channels": 1, "input_size": 4, "stages": 1,
        "layers_per_stage": 1, "stem_width": 8, "widths": [8]}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- bitops and model size, by hand ------------------------------------------------------------
# stem: 1 -> 8, 3x3 on 4x4: 72 weights, 72 * 16 = 1152 MACs, 8-bit weights, 8-bit input.
# classifier: 8 -> 2: 16 weights and MACs, 8 x 8 bits. Size: bits per weight + 64 (a float32
# scale and a float32 bias) per output channel.
STEM_BITOPS, STEM_BITS = 1152 * 8 * 8, 72 * 8 + 64 * 8
HEAD_BITOPS, HEAD_BITS = 16 * 8 * 8, 16 * 8 + 64 * 2


@pytest.mark.parametrize(("token", "bitops", "size_bits"), [
    # conv 8 -> 8, 3x3: 576 weights, 576 * 16 MACs; 4-bit weights reading the 8-bit stem
    ("conv-k3-relu-w8-b4-a2", 9216 * 4 * 8, 576 * 4 + 64 * 8),
    # ir3: expand 8 -> 24 (192 w, 3072 MACs, reads 8 bits), dw 3x3 on 24 (216 w, 3456 MACs,
    # reads its own 4-bit activations), project 24 -> 8 (192 w, 3072 MACs, reads 4 bits)
    ("ir3-k3-relu-w8-b2-a4", 3072 * 2 * 8 + 3456 * 2 * 4 + 3072 * 2 * 4,
     192 * 2 + 64 * 24 + 216 * 2 + 64 * 24 + 192 * 2 + 64 * 8),
    # dwsep: dw 3x3 on 8 (72 w, 1152 MACs, reads 8 bits), pw 8 -> 8 (64 w, 1024 MACs, 2 bits)
    ("dwsep-k3-relu6-w8-b8-a2", 1152 * 8 * 8 + 1024 * 8 * 2, 72 * 8 + 64 * 8 + 64 * 8 + 64 * 8),
])
def test_bitops_and_model_size_are_exact_on_hand_counted_networks(token, bitops, size_bits):
    space = QuantSpace(**TINY)
    arch = space.from_key(token)
    assert space.bitops(arch) == STEM_BITOPS + bitops + HEAD_BITOPS
    assert space.model_size_bits(arch) == STEM_BITS + size_bits + HEAD_BITS
    assert space.model_size_kb(arch) == (STEM_BITS + size_bits + HEAD_BITS) / 8192
    assert space.costs(arch) == {"bitops": float(space.bitops(arch)),
                                 "model_size_kb": space.model_size_kb(arch)}
    assert bitops_of_model(space.build(arch), space.input_shape()) == space.bitops(arch)


@pytest.mark.parametrize("args", [{}, DIGITS])
def test_bitops_match_the_built_networks_and_fall_with_the_bits(args):
    space = QuantSpace(**args)
    rng = np.random.default_rng(5)
    for arch in (space.sample(rng) for _ in range(3)):
        model = space.build(arch)
        assert bitops_of_model(model, space.input_shape()) == space.bitops(arch)
        n_weights = sum(m.weight.numel() for m in model.modules()
                        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear))
        channels = sum(m.weight.shape[0] for m in model.modules()
                       if isinstance(m, torch.nn.Conv2d | torch.nn.Linear))
        bits = sum(m.weight.numel() * m.w_bits for m in model.modules()
                   if isinstance(m, torch.nn.Conv2d | torch.nn.Linear))
        assert space.model_size_bits(arch) == bits + 64 * channels
        assert n_weights * 2 + 64 * channels <= space.model_size_bits(arch)
        lower = {"layers": [{**layer, "bits": 2, "abits": 2} for layer in arch["layers"]]}
        assert space.bitops(lower) < space.bitops(arch) or arch == lower
        assert space.flops(lower) == space.flops(arch)  # bits change no MAC


def test_activation_bits_set_the_quantizers_of_each_block():
    space = QuantSpace(**DIGITS)
    arch = space.from_key("ir3-k3-relu6-w8-b8-a2|dwsep-k3-relu-w16-b4-a4|"
                          "conv-k3-relu-w16-b2-a8|ir6-k5-relu-w32-b8-a4|"
                          "conv-k3-relu-w32-b4-a2|dwsep-k5-relu6-w64-b2-a8")
    model = space.build(arch)
    for block, layer in zip(model.blocks, arch["layers"], strict=True):
        bits = {m.bits for m in block.modules() if isinstance(m, ActFakeQuant)}
        assert bits == {layer["abits"]}
    assert model.input_fq.bits == 8 and model.stem.fq.bits == 8
    # 2-bit unsigned activations take at most 4 values
    x = torch.randn(16, *space.input_shape())
    seen = []
    model.blocks[0].dw.fq.register_forward_hook(lambda _m, _i, out: seen.append(out))
    model.eval()(x)
    assert len(torch.unique(seen[0])) <= 4


# ---- metrics as objectives and constraints ---------------------------------------------------
@pytest.mark.integration
def test_a_job_minimises_bitops_under_a_model_size_budget(sqlite_url):
    """Both metrics are known before evaluation: no trial is spent over the size budget,
    and the best trial has the fewest BitOPs of those evaluated."""
    from nas import api
    from nas.load_probe import load_spec
    from nas.storage import Storage, best_trials

    storage = Storage(sqlite_url)
    space, budget = QuantSpace(), 60.0
    rng = np.random.default_rng(2)
    assert 0.2 < np.mean([space.model_size_kb(space.sample(rng)) > budget
                          for _ in range(200)]) < 0.9
    spec = {**load_spec(60, space="quant", batch_size=8), "name": "fewest-bitops",
            "objectives": [{"metric": "bitops", "mode": "min"}],
            "constraints": [{"metric": "model_size_kb", "max": budget}]}
    job = api.submit(storage, spec)
    assert api.run(storage, job) == "completed"
    rows = storage.trials.load(job)
    assert len(rows) == 60 and all(r.feasible for r in rows)
    for row in rows:
        arch = space.from_key(row.key)
        assert row.metrics["model_size_kb"] == space.model_size_kb(arch) <= budget
        assert row.metrics["bitops"] == space.bitops(arch)
    best = best_trials(storage, job, top=1)[0]
    assert best["metrics"]["bitops"] == min(r.metrics["bitops"] for r in rows)
    storage.close()


def test_spec_names_a_cost_metric_the_space_lacks():
    from nas.spec import SpecError, parse_spec
    from tests.conftest import nb201_spec

    spec = nb201_spec(evaluator="analytic", evaluator_args={},
                      objectives=[{"metric": "params", "mode": "min"}],
                      constraints=[{"metric": "model_size_kb", "max": 10}])
    with pytest.raises(SpecError, match=r"constraints\[0\]\.metric"):
        parse_spec(spec)
    quant = {**spec, "space": "quant"}
    assert parse_spec(quant).constraints[0].metric == "model_size_kb"


#: Two one-block stages on digits: ~80% of its architectures are over `SIZE_BUDGET_KB`.
SMALL_QUANT = {**DIGITS, "stages": 2, "layers_per_stage": 1}
SIZE_BUDGET_KB = 3.0


@pytest.mark.integration
@pytest.mark.parametrize("strategy", ["auto", "gbdt", "proxy"])
def test_the_proxy_evaluator_reports_exact_costs_under_a_size_budget(sqlite_url, strategy):
    """A quant job scored by the `proxy` evaluator (the strategies that score a pool
    training-free use it too) objects on `bitops` and constrains `model_size_kb`: every
    stored trial carries the space's exact `costs()`, none is over the budget, and `nas best`
    and `nas trials --sort model_size_kb` show them."""
    import json

    from typer.testing import CliRunner

    from nas import api
    from nas.cli import app
    from nas.storage import Storage

    space = QuantSpace(**SMALL_QUANT)
    rng = np.random.default_rng(0)
    assert np.mean([space.model_size_kb(space.sample(rng)) > SIZE_BUDGET_KB
                    for _ in range(200)]) > 0.5
    spec = {"name": f"quant-{strategy}", "space": "quant", "space_args": SMALL_QUANT,
            "strategy": strategy, "evaluator": "proxy",
            "evaluator_args": {"proxies": ["synflow"]},
            "objectives": [{"metric": "score", "mode": "max"},
                           {"metric": "bitops", "mode": "min"}],
            "constraints": [{"metric": "model_size_kb", "max": SIZE_BUDGET_KB}],
            "budget": {"trials": 5}, "executor": "local", "parallelism": 1, "seed": 0}
    if strategy != "gbdt":
        spec["strategy_args"] = {"pool": 16}
    storage = Storage(sqlite_url)
    job = api.submit(storage, spec)
    assert api.run(storage, job) == "completed"
    rows = storage.trials.load(job)
    storage.close()
    assert len(rows) == 5 and all(r.status == "completed" and r.feasible for r in rows)
    for row in rows:
        arch = space.from_key(row.key)
        costs = space.costs(arch)
        assert {m: row.metrics[m] for m in costs} == costs
        assert costs["model_size_kb"] <= SIZE_BUDGET_KB
        assert (row.metrics["params"], row.metrics["flops"]) == (space.params(arch),
                                                                 space.flops(arch))

    runner = CliRunner()
    best = runner.invoke(app, ["--db", sqlite_url, "best", str(job), "--top", "5", "--json"])
    assert best.exit_code == 0, best.stderr
    shown = {r["key"]: r for r in json.loads(best.stdout)["results"]}
    by_key = {r.key: r for r in rows}
    assert shown and all(r["objectives"]["bitops"] == r["metrics"]["bitops"]
                         == by_key[key].metrics["bitops"]
                         and r["metrics"]["model_size_kb"] == by_key[key].metrics["model_size_kb"]
                         for key, r in shown.items())
    shown_text = runner.invoke(app, ["--db", sqlite_url, "best", str(job)], terminal_width=200)
    assert shown_text.exit_code == 0, shown_text.stderr
    assert "bitops" in shown_text.stdout and "model_size_kb" in shown_text.stdout  # constrained
    table = runner.invoke(app, ["--db", sqlite_url, "trials", str(job), "--sort",
                                "model_size_kb", "--asc", "--json"])
    assert table.exit_code == 0, table.stderr
    sizes = [r["metrics"]["model_size_kb"] for r in json.loads(table.stdout)["rows"]]
    assert sizes == sorted(r.metrics["model_size_kb"] for r in rows)
    text = runner.invoke(app, ["--db", sqlite_url, "trials", str(job), "--sort",
                               "model_size_kb"], terminal_width=200)
    assert text.exit_code == 0, text.stderr
    assert "model_size_kb" in text.stdout and f"{max(sizes):.4g}" in text.stdout


# ---- packed export ---------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_codes_pack_several_per_byte_and_unpack(bits):
    qmax = 2 ** (bits - 1) - 1
    codes = torch.randint(-qmax, qmax + 1, (37,), generator=torch.Generator().manual_seed(bits))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-37 * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, 37), codes.to(torch.int16))
    if bits == 4:  # low nibble first
        assert packed[0].item() == (codes[0] + 8) | ((codes[1] + 8) << 4)


def test_packed_export_reloads_to_the_same_outputs(tmp_path):
    from nas.export import _export_model, load_packed

    space = QuantSpace(**DIGITS)
    arch = space.from_key("ir3-k3-relu6-w8-b2-a4|dwsep-k3-relu-w16-b4-a8|"
                          "conv-k3-relu-w16-b8-a2|ir6-k5-relu-w32-b2-a8|"
                          "conv-k3-relu-w32-b4-a4|dwsep-k5-relu6-w64-b2-a2")
    torch.manual_seed(0)
    trained = space.build(arch).train()
    with torch.no_grad():  # move BN statistics and activation ranges off their init
        for _ in range(3):
            trained(torch.randn(16, *space.input_shape()))
    state = trained.state_dict()
    normalisation = {"mean": [0.5], "std": [2.0]}
    path = tmp_path / "model.packed"
    _export_model(space, arch, "packed", path, seed=3, state=state, normalisation=normalisation)
    reloaded = load_packed(path)
    x = torch.randn(8, *space.input_shape())
    trained.eval()
    with torch.no_grad():
        expected = trained((x - 0.5) / 2.0)
        got = reloaded(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    packed = torch.load(path, weights_only=True)
    payload = sum(entry["data"].numel() for entry in packed["weights"].values())
    weight_bits = sum(int(np.prod(e["shape"])) * e["bits"] for e in packed["weights"].values())
    assert payload * 8 - weight_bits < 8 * len(packed["weights"])  # only per-tensor padding
    assert payload < sum(int(np.prod(e["shape"])) for e in packed["weights"].values())


def test_pack_model_refuses_a_model_without_fake_quantization():
    space = QuantSpace(**DIGITS)
    arch = space.sample(np.random.default_rng(0))
    with pytest.raises(ValueError, match="fake-quantized"):
        pack_model(space.build(arch, fake_quant=False))


# ---- EMQ ---------------------------------------------------------------------------------------
def test_emq_allocation_respects_budgets_and_follows_the_gains():
    from predictors import emq

    space = QuantSpace(**emq.SPACE_ARGS)
    base = space.from_key(emq.BASE_KEY)
    pairs = emq.bit_pairs()
    gains = np.zeros((4, len(pairs)))
    gains[:, pairs.index((2, 8))] = 1.0  # 2-bit weights with 8-bit activations preferred
    uniform4 = emq.with_bits(base, [(4, 4)] * 4)
    size, bitops = space.model_size_kb(uniform4), space.bitops(uniform4)
    plain = {"edge_min_bits": 2, "avoid_2bit_activations": False, "maximal": False}
    chosen = emq.allocate_bits(space, base, gains, max_size_kb=size, max_bitops=bitops,
                               **plain)
    assert space.model_size_kb(chosen) <= size and space.bitops(chosen) <= bitops
    brute = max((emq.with_bits(base, [pairs[j] for j in c]) for c in
                 np.ndindex(*(len(pairs),) * 4)),
                key=lambda a: (space.model_size_kb(a) <= size and space.bitops(a) <= bitops,
                               sum(gains[i, pairs.index((la["bits"], la["abits"]))]
                                   for i, la in enumerate(a["layers"]))))
    score = [sum(gains[i, pairs.index((la["bits"], la["abits"]))]
                 for i, la in enumerate(a["layers"])) for a in (chosen, brute)]
    assert score[0] == score[1]
    with pytest.raises(ValueError, match="no bit configuration"):
        emq.allocate_bits(space, base, gains, max_size_kb=0.1, **plain)


@pytest.mark.parametrize(("field", "value"), [
    ("edge_min_bits", 3), ("edge_min_bits", "4"), ("edge_min_bits", True),
    ("edge_min_bits", None), ("avoid_2bit_activations", "yes"), ("maximal", 1)])
def test_emq_allocator_refuses_bad_options_naming_the_field(field, value):
    from predictors import emq
    from search_spaces.validation import ArgumentError

    space = QuantSpace(**emq.SPACE_ARGS)
    base = space.from_key(emq.BASE_KEY)
    with pytest.raises(ArgumentError, match=f"^{field} must be") as err:
        emq.allocate_bits(space, base, np.zeros((4, 9)), max_size_kb=10.0, **{field: value})
    assert err.value.field == field


def test_emq_allocation_keeps_edge_blocks_and_activations_up_and_uses_the_budget():
    """Gains that reward 2 bits everywhere: by default the first and last blocks still keep
    >= 4 bits, no activation drops to 2 bits while the budget allows, and no block could
    take more bits within the budget; 2-bit activations come only when the budget forces
    them, and an impossible edge floor is refused."""
    from predictors import emq, evolved

    space = QuantSpace(**emq.SPACE_ARGS)
    base = space.from_key(emq.BASE_KEY)
    pairs = emq.bit_pairs()
    gains = np.zeros((4, len(pairs)))
    gains[:, pairs.index((2, 2))] = 1.0
    uniform4 = emq.with_bits(base, [(4, 4)] * 4)
    size, bitops = space.model_size_kb(uniform4), space.bitops(uniform4)
    plain = emq.allocate_bits(space, base, gains, max_size_kb=size, max_bitops=bitops,
                              edge_min_bits=2, avoid_2bit_activations=False, maximal=False)
    assert all((la["bits"], la["abits"]) == (2, 2) for la in plain["layers"])
    found = emq.allocate_bits(space, base, gains, max_size_kb=size, max_bitops=bitops, top=5)
    assert found
    for arch in found:
        layers = arch["layers"]
        assert min(layers[0]["bits"], layers[0]["abits"], layers[-1]["bits"],
                   layers[-1]["abits"]) >= emq.EDGE_MIN_BITS == 4
        assert all(la["abits"] > 2 for la in layers)
        assert space.model_size_kb(arch) <= size and space.bitops(arch) <= bitops
        for i, la in enumerate(layers):  # maximal: one more step on any block overflows
            for field in ("bits", "abits"):
                if la[field] < 8:
                    up = {"layers": [dict(x) for x in layers]}
                    up["layers"][i][field] *= 2
                    assert (space.model_size_kb(up) > size or space.bitops(up) > bitops)
    assert uniform4 not in found  # its last block's 8-bit activations cost nothing here
    # the uniform 2-bit budget: only 2-bit activations fit, so they are taken
    uniform2 = emq.with_bits(base, [(2, 2)] * 4)
    forced = emq.allocate_bits(space, base, gains, max_size_kb=space.model_size_kb(uniform2),
                               max_bitops=space.bitops(uniform2), edge_min_bits=2)
    assert any(la["abits"] == 2 for la in forced["layers"])
    with pytest.raises(ValueError, match="first and last blocks at >= 8 bits"):
        emq.allocate_bits(space, base, gains, max_size_kb=size, max_bitops=bitops,
                          edge_min_bits=8)
    # allocate(): the uniform network joins the shortlist and the proxy ranks them all
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g))
    result = emq.allocate(evolved.SEED_FORMULAS["params"], space, base, gains, batch,
                          max_size_kb=size, max_bitops=bitops, shortlist=3, seeds=[0],
                          include=[uniform4])
    keys = [key for key, _ in result["ranking"]]
    assert result["candidates"] == len(keys) == 4 and space.key(uniform4) in keys
    assert space.key(result["arch"]) == keys[0]
    assert [s for _, s in result["ranking"]] == sorted((s for _, s in result["ranking"]),
                                                       reverse=True)


def test_emq_statistics_see_the_bits():
    from predictors import emq, evolved

    space = QuantSpace(**emq.SPACE_ARGS)
    base = space.from_key(emq.BASE_KEY)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g))
    high = emq.quantized_stats(space, emq.with_bits(base, [(8, 8)] * 4), batch)
    low = emq.quantized_stats(space, emq.with_bits(base, [(2, 2)] * 4), batch)
    nonzero = evolved.STAT_COLUMNS.index("W.nz")
    # ternary weights have zeros where 8-bit ones have none (stem and classifier stay 8-bit)
    assert (low[1:-1, nonzero] < high[1:-1, nonzero]).all()
    # the stem's weights and outputs come before any searched bit (its gradients do not)
    same = [i for i, c in enumerate(evolved.STAT_COLUMNS) if c.split(".")[0] in ("W", "A")]
    assert np.allclose(low[0, same], high[0, same])
    assert not np.allclose(low[-2], high[-2])


# ---- SpaceEvo ----------------------------------------------------------------------------------
def test_found_space_args_make_a_conforming_quant_space():
    from search_spaces import spaceevo

    genome = ((0, 0), (2, 3), (1, 1))
    args = spaceevo.space_args(genome, DIGITS)
    assert args["stage_ops"] == [["conv"], ["ir3"], ["dwsep"]]
    assert args["stage_widths"] == [[8, 16, 24], [64, 80, 96], [64, 96, 128]]
    space = QuantSpace(**args)
    arch = space.sample(np.random.default_rng(0))
    assert [layer["op"] for layer in arch["layers"]] == ["conv", "conv", "ir3", "ir3",
                                                        "dwsep", "dwsep"]
    hyper = spaceevo.hyperspace(DIGITS)
    assert hyper.key(arch) == space.key(arch)  # every found network is a hyperspace one
    assert space.from_key(space.key(arch)) == arch
    assert space.from_dna(space.to_dna(arch)) == arch
    assert space.size() == (2 * 2 * 3 * 3 * 3) ** 6  # one op per stage, 3 widths
    assert space.build(arch).eval()(torch.zeros(2, *space.input_shape())).shape == (2, 10)


@pytest.mark.parametrize(("args", "field"), [
    ({"stage_ops": [["conv"], ["ir3"]]}, "stage_ops"),
    ({"stage_ops": [["conv"], [], ["ir3"]]}, "stage_ops"),
    ({"stage_ops": [["conv"], ["ir4"], ["ir3"]]}, "stage_ops"),
    ({"stage_widths": [[8], [16]]}, "stage_widths"),
    ({"stage_widths": [[8], [20], [32]]}, "stage_widths"),
])
def test_bad_stage_args_are_named(args, field):
    from search_spaces.validation import ArgumentError

    with pytest.raises(ArgumentError) as info:
        QuantSpace(**args)
    assert info.value.field == field


def test_space_evolution_is_deterministic_and_finds_the_best_space_of_a_known_score():
    """Latency = FLOPs (exact, analytic), quality = parameter count: within a FLOPs budget
    the best space is the one whose sampled networks have the most parameters."""
    from search_spaces import spaceevo

    hyper = spaceevo.hyperspace(DIGITS)
    budget = float(np.quantile([hyper.flops(hyper.sample(np.random.default_rng(i)))
                                for i in range(40)], 0.5))

    def scorer() -> spaceevo.SpaceScorer:
        return spaceevo.SpaceScorer(
            DIGITS, lambda archs: np.array([hyper.flops(a) for a in archs], dtype=float),
            lambda archs: np.array([1e4 / hyper.params(a) for a in archs]), [budget],
            samples=6, top=2)

    first = spaceevo.evolve_space(scorer(), 3, population=4, steps=12, seed=3)
    again = spaceevo.evolve_space(scorer(), 3, population=4, steps=12, seed=3)
    assert (first.best, first.history) == (again.best, again.history)
    assert first.history == sorted(first.history)  # the best so far never gets worse
    assert first.best_score == scorer().score(first.best) > 1.0 / spaceevo.NO_NETWORK_LOSS


def test_qt_score_is_the_reference_formula():
    """Per target: 1 / (max(1, (0.1 / p)^0.01) * mean loss of the `top` best within), p the
    share within; a target no sampled network meets counts the reference's loss 1e5."""
    from search_spaces import spaceevo

    latency = lambda archs: np.arange(1, len(archs) + 1, dtype=float)  # noqa: E731
    loss = lambda archs: np.linspace(2.0, 1.0, len(archs))  # noqa: E731
    scorer = spaceevo.SpaceScorer(DIGITS, latency, loss, [2.5, 100.0, 0.5], samples=20, top=3)
    tight, loose, none = scorer.details(DIGITS)
    p = 2 / 20 + 1e-5  # latencies 1 and 2 are within 2.5
    assert tight["share_within"] == pytest.approx(p)
    assert tight["top_loss"] == pytest.approx(np.mean(np.linspace(2.0, 1.0, 20)[:2]))
    assert tight["score"] == pytest.approx(1 / ((0.1 / p) ** 0.01 * tight["top_loss"]))
    assert loose["top_loss"] == pytest.approx(np.mean(np.linspace(2.0, 1.0, 20)[-3:]))
    assert loose["score"] == pytest.approx(1 / loose["top_loss"])  # p = 1: no penalty
    assert none["top_loss"] == spaceevo.NO_NETWORK_LOSS
    assert scorer.score_args(DIGITS) == pytest.approx(sum(
        d["score"] for d in (tight, loose, none)))
    sampled = scorer.sample(DIGITS)
    assert all(la["bits"] == la["abits"] == 8 for a in sampled for la in a["layers"])


@pytest.mark.parametrize(("field", "value"), [
    ("samples", 0), ("samples", 2.5), ("top", 0), ("top", True), ("min_loss", 0.0),
    ("min_loss", -1), ("seed", -1), ("budgets_ms", []), ("budgets_ms", [1.0, 0.0]),
    ("budgets_ms", 3.0), ("budgets_ms", [float("nan")])])
def test_space_scorer_refuses_bad_arguments_naming_the_field(field, value):
    from search_spaces import spaceevo
    from search_spaces.validation import ArgumentError

    args = {"budgets_ms": [1.0], field: value}
    with pytest.raises(ArgumentError, match=f"^{field} must be") as err:
        spaceevo.SpaceScorer(DIGITS, lambda archs: np.ones(len(archs)),
                             lambda archs: np.ones(len(archs)), **args)
    assert err.value.field == field


@pytest.mark.parametrize(("call", "field"), [
    (lambda se, h: se.evolve_space(None, 0), "stages"),
    (lambda se, h: se.evolve_space(None, 3, population=0), "population"),
    (lambda se, h: se.evolve_space(None, 3, tournament=0), "tournament"),
    (lambda se, h: se.evolve_space(None, 3, steps=-1), "steps"),
    (lambda se, h: se.BlockLatencyPredictor(h, trees=0), "trees"),
    (lambda se, h: se.BlockLatencyPredictor(h, seed=-2), "seed"),
    (lambda se, h: se.StageLoss(alpha=-1.0), "alpha"),
    (lambda se, h: se.StageLoss(layers_per_stage=0), "layers_per_stage"),
    (lambda se, h: se.measure_int8_latencies(h, [], repeats=0), "repeats"),
    (lambda se, h: se.measure_block_latencies([], repeats=1.5), "repeats")])
def test_spaceevo_parts_refuse_bad_arguments_naming_the_field(call, field):
    from search_spaces import spaceevo
    from search_spaces.validation import ArgumentError

    with pytest.raises(ArgumentError, match=f"^{field} must be") as err:
        call(spaceevo, spaceevo.hyperspace(DIGITS))
    assert err.value.field == field


def test_blocks_see_the_right_shapes_and_count_the_networks_macs():
    from search_spaces import spaceevo

    hyper = spaceevo.hyperspace({**DIGITS, "input_size": 16})
    arch = spaceevo.int8_arch(hyper.sample(np.random.default_rng(4)))
    blocks = spaceevo.blocks_of(hyper, arch)
    widths = [la["width"] for la in arch["layers"]]
    assert [b.cin for b in blocks] == [hyper.stem_width] + widths[:-1]
    assert [b.cout for b in blocks] == widths
    assert [b.side for b in blocks] == [16, 16, 16, 8, 8, 4]
    searched = hyper.weighted_layers(arch)[1:-1]  # without the stem and the classifier
    assert sum(b.macs() for b in blocks) == sum(u.macs for u in searched)


def test_block_latency_predictor_sums_blocks_and_fits_the_overhead_line():
    """Block latencies given (not timed): per-op forests fitted on them, then whole
    networks defined as (2 x ir6 blocks + 1 x the others, predicted) + 0.5 ms give back
    those per-operation scales and the offset."""
    from search_spaces import spaceevo

    hyper = spaceevo.hyperspace(DIGITS)
    rng = np.random.default_rng(0)
    nets = spaceevo.sample_int8(hyper, rng, 30)
    blocks = sorted({b for a in nets for b in spaceevo.blocks_of(hyper, a)}, key=repr)
    truth = [1e-5 * b.macs() + (0.05 if b.act == "relu6" else 0.0) for b in blocks]
    predictor = spaceevo.BlockLatencyPredictor(hyper, trees=20).fit_blocks(blocks, truth)
    per_op = predictor.op_sums(nets)
    assert np.allclose(per_op.sum(axis=1), predictor.block_sum(nets))
    target = per_op @ np.array([1.0, 1.0, 1.0, 2.0]) + 0.5  # OPS: conv, dwsep, ir3, ir6
    predictor.fit_overhead(nets, target)
    assert predictor.scales == {op: pytest.approx(2.0 if op == "ir6" else 1.0)
                                for op in spaceevo.OPS}
    assert predictor.offset == pytest.approx(0.5)
    assert np.allclose(predictor.predict(nets), target)
    from scipy.stats import spearmanr
    assert spearmanr(predictor.block_latency(blocks), truth).statistic > 0.9


def test_int8_block_and_network_timings_are_positive_medians():
    from search_spaces import spaceevo

    hyper = spaceevo.hyperspace(DIGITS)
    nets = spaceevo.sample_int8(hyper, np.random.default_rng(1), 2)
    blocks = spaceevo.blocks_of(hyper, nets[0])[:2]
    for values in (spaceevo.measure_int8_latencies(hyper, nets, repeats=3),
                   spaceevo.measure_block_latencies(blocks, repeats=3)):
        assert len(values) == 2 and all(0 < v < 1000 for v in values)


def test_stage_loss_recovers_a_per_stage_multiplicative_loss():
    from search_spaces import spaceevo

    hyper = spaceevo.hyperspace(DIGITS)
    nets = spaceevo.sample_int8(hyper, np.random.default_rng(2), 60)
    per_stage = [np.exp(sum(0.3 * (la["op"] == "ir6") - 0.1 * np.log2(la["width"])
                            for la in a["layers"])) for a in nets]
    model = spaceevo.StageLoss(alpha=1e-6).fit(nets[:40], per_stage[:40])
    assert np.allclose(model.predict(nets[40:]), per_stage[40:], rtol=1e-4)
    with pytest.raises(ValueError, match="positive loss"):
        spaceevo.StageLoss().fit(nets[:2], [0.1, -0.2])


def test_emq_rerank_scores_whole_configurations_with_the_proxy():
    from predictors import emq, evolved

    space = QuantSpace(**emq.SPACE_ARGS)
    base = space.from_key(emq.BASE_KEY)
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g))
    # ||sign(W)||^2 counts the non-zero quantized weights: ternary weights hold zeros
    nonzeros = evolved.SEED_FORMULAS["params"]
    low = emq.with_bits(base, [(2, 8), (8, 8), (2, 8), (8, 8)])
    high = emq.with_bits(base, [(8, 8), (4, 8), (8, 8), (4, 8)])
    assert emq.rerank(nonzeros, space, [low, high], batch, seeds=[0]) == high
    assert emq.proxy_score(nonzeros, space, low, batch) < emq.proxy_score(nonzeros, space,
                                                                          high, batch)


@pytest.mark.integration
def test_cli_exports_packed_weights_of_a_quant_job_and_refuses_other_spaces(sqlite_url, tmp_path):
    from typer.testing import CliRunner

    from nas import api
    from nas.cli import app
    from nas.export import load_packed
    from nas.load_probe import load_spec
    from nas.storage import Storage
    from tests.test_bad_input import assert_one_line_error

    storage = Storage(sqlite_url)
    quant = api.submit(storage, {**load_spec(4, space="quant", batch_size=4), "name": "q",
                                 "space_args": DIGITS})
    other = api.submit(storage, {**load_spec(4, space="nb201", batch_size=4), "name": "n"})
    assert api.run(storage, quant) == "completed" and api.run(storage, other) == "completed"
    storage.close()
    runner = CliRunner()
    path = tmp_path / "best.packed"
    done = runner.invoke(app, ["--db", sqlite_url, "export", str(quant), "--best", "--format",
                               "packed", "-o", str(path), "--json"])
    assert done.exit_code == 0, done.stderr
    assert path.is_file()
    model = load_packed(path)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    refused = runner.invoke(app, ["--db", sqlite_url, "export", str(other), "--best",
                                  "--format", "packed", "-o", str(tmp_path / "x.packed")])
    assert_one_line_error(refused, "packed", "nb201")
    assert not (tmp_path / "x.packed").exists()
