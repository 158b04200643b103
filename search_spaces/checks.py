"""`check_space`: the conformance suite every registered search space must pass.

In the spirit of scikit-learn's `check_estimator`: each check exercises one promise of the
`SearchSpace` contract on a sample of architectures (plus the all-first and all-last
candidate DNAs, the usual corner cases) and raises AssertionError naming the space, the
check and the offending architecture. The fast DNA paths (`from_dna`, `choice_counts`) are
compared with PyGlove's own decode of `template()`; `params()` and `flops()` with the model
that `build()` returns, measured by torch. A conditional space (`conditional = True`) is held
to the conditional contract as well: canonical DNAs, mutations and encodings that respect
which decisions are active, and an exact `size()`. Float decisions (`float_decisions()`) are
held to theirs: values within bounds, one encoding feature (the value scaled to [0, 1]), an
infinite `size()`. A space that cannot build a model (`buildable` False) skips the torch checks.

torch and pyglove are imported inside the checks, so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ._base import Arch, SearchSpace, get_space
from ._conformance import check_runner

_NOT_A_CANDIDATE = "__not_a_candidate__"
# a conditional space's size() is compared with a count of its canonical DNAs up to this many
# DNAs (the product of its choice counts)
_ENUMERATE_LIMIT = 200_000


def check_space(
    space: SearchSpace | str,
    n: int = 20,
    *,
    seed: int = 0,
    build_n: int = 3,
    batch_size: int = 2,
) -> None:
    """Run every conformance check on `space` (an instance or a registered name).

    `n` architectures are sampled (plus two corner cases) for the DNA-level checks; the
    first `build_n` of them (the corner cases first) are built and run through torch.
    Raises AssertionError with a message naming the failed check.
    """
    if isinstance(space, str):
        space = get_space(space)
    if not isinstance(space, SearchSpace):
        raise AssertionError(f"check_space needs a SearchSpace, got {type(space).__name__}")
    if n < 2:
        raise ValueError(f"check_space: n must be at least 2, got {n}")
    name = space.name or type(space).__name__

    run = check_runner("space", name, space)

    run(_check_choice_counts)
    archs = _corner_archs(space) + [space.sample(np.random.default_rng(seed + i))
                                    for i in range(n)]
    run(_check_json_archs, archs)
    run(_check_key_round_trip, archs)
    run(_check_dna_round_trip, archs)
    run(_check_conditional_decisions, archs, seed)
    run(_check_pyglove_decode, archs)
    run(_check_encoding, archs)
    run(_check_mutate, archs, seed)
    run(_check_seeded_sampling, n, seed)
    run(_check_validate_accepts, archs)
    run(_check_validate_rejects, archs)
    if not space.buildable:
        return
    with _one_torch_thread():
        for arch in archs[:build_n]:
            run(_check_build_forward_backward, arch, batch_size)
            run(_check_params, arch)
            run(_check_flops, arch)


# ---- helpers -------------------------------------------------------------------------------
@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Tiny batches run fastest on one thread (and immune to a busy machine's contention)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _corner_archs(space: SearchSpace) -> list[Arch]:
    counts = space.choice_counts()
    floats = space.float_decisions()
    first = [floats[i].low if i in floats else 0 for i in range(len(counts))]
    last = [floats[i].high if i in floats else c - 1 for i, c in enumerate(counts)]
    return [space.from_dna(space.canonical_dna(first)), space.from_dna(space.canonical_dna(last))]


def _random_dna(space: SearchSpace, rng: np.random.Generator) -> list[Any]:
    """Any DNA (not canonicalised): uniform candidates, float decisions within bounds."""
    floats = space.float_decisions()
    return [floats[i].sample(rng) if i in floats else int(rng.integers(c))
            for i, c in enumerate(space.choice_counts())]


def _inactive_value(space: SearchSpace, i: int) -> Any:
    floats = space.float_decisions()
    return floats[i].low if i in floats else 0


def _dna_spec(space: SearchSpace) -> Any:
    import pyglove as pg

    return pg.dna_spec(space.template())


def _leaf_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths (dict keys / list indices) of the scalar leaves of a JSON value."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaf_paths(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaf_paths(v, (*path, i))]
    return [path]


def _list_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path] if isinstance(value, list) else []
    if isinstance(value, dict):
        found += [p for k, v in value.items() for p in _list_paths(v, (*path, k))]
    elif isinstance(value, list):
        found += [p for i, v in enumerate(value) for p in _list_paths(v, (*path, i))]
    return found


def _replaced(value: Any, path: tuple[Any, ...], new: Callable[[Any], Any]) -> Any:
    """A deep copy of `value` with the node at `path` replaced by `new(node)`."""
    copy = json.loads(json.dumps(value))
    if not path:
        return new(copy)
    parent = copy
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = new(parent[path[-1]])
    return copy


def _active(space: SearchSpace, dna: list[int]) -> list[bool]:
    active = space.active(list(dna))
    assert len(active) == len(dna) and all(isinstance(a, bool) for a in active), \
        f"active({list(dna)}) must be one bool per decision, got {active!r}"
    return list(active)


def _expect_value_error(space: SearchSpace, bad: Any, what: str) -> None:
    try:
        space.validate(bad)
    except ValueError:
        return
    except Exception as exc:
        raise AssertionError(f"validate() of {what} ({bad!r}) raised {type(exc).__name__}: "
                             f"{exc}, expected ValueError") from None
    raise AssertionError(f"validate() accepted {what}: {bad!r}")


# ---- the checks ----------------------------------------------------------------------------
def _check_choice_counts(space: SearchSpace) -> None:
    counts = space.choice_counts()
    assert counts, "choice_counts() is empty: a space needs at least one decision"
    assert all(isinstance(c, int | np.integer) and c >= 1 for c in counts), \
        f"choice_counts() must be positive integers, got {counts}"
    floats = space.float_decisions()
    if floats or type(space).pyglove_dna is not SearchSpace.pyglove_dna:
        _check_general_decisions(space, counts, floats)
        return
    assert any(c > 1 for c in counts), f"no decision has two candidates: {counts}"
    spec = _dna_spec(space)
    points = spec.decision_points
    kinds = {type(p).__name__ for p in points}
    assert all(getattr(p, "num_choices", None) == 1 for p in points), \
        f"the template has decision points other than single choices ({kinds}); the flat " \
        "DNA of SearchSpace cannot express them"
    pg_counts = [len(p.candidates) for p in points]
    assert [int(c) for c in counts] == pg_counts, \
        f"choice_counts() {counts} differs from pg.dna_spec(template()) {pg_counts}"
    expected = int(np.prod([int(c) for c in counts], dtype=object))
    assert expected == spec.space_size, \
        f"product of choice counts {expected} != PyGlove's space_size {spec.space_size}"
    if not space.conditional:
        assert space.size() == expected, f"size() {space.size()} != product of choice counts " \
                                         f"{expected}"
        assert space.size() == spec.space_size, \
            f"size() {space.size()} != PyGlove's space_size {spec.space_size}"
        return
    size = space.size()
    assert isinstance(size, int | np.integer) and 1 <= size <= expected, \
        f"size() of a conditional space must be an int in [1, {expected}] (the product of " \
        f"choice counts), got {size!r}"
    if expected <= _ENUMERATE_LIMIT:
        ranges = [range(int(c)) for c in counts]
        canonical = {tuple(space.canonical_dna(list(d))) for d in itertools.product(*ranges)}
        assert size == len(canonical), \
            f"size() {size} != {len(canonical)}, the number of distinct canonical DNAs"
        keys = [space.key(arch) for arch in space.enumerate()]
        assert len(keys) == size == len(set(keys)), \
            f"enumerate() gave {len(keys)} architectures ({len(set(keys))} distinct keys), " \
            f"size() is {size}"


def _check_general_decisions(space: SearchSpace, counts: list[int], floats: dict) -> None:
    """Decisions that are not PyGlove's one to one (float decisions, nested conditional
    choices, a manyof taken whole): the float decisions are PyGlove's, and the sizes agree."""
    spec = _dna_spec(space)
    assert all(0 <= i < len(counts) and counts[i] == 1 for i in floats), \
        f"float decisions {sorted(floats)} must be decisions of count 1 in {counts}"
    assert any(c > 1 for c in counts) or floats, f"no decision has two candidates: {counts}"
    kinds = space.decision_kinds()
    assert kinds == ["float" if i in floats else "choice" for i in range(len(counts))], \
        f"decision_kinds() {kinds} disagrees with float_decisions() {sorted(floats)}"
    pg_floats = sorted((p.min_value, p.max_value) for p in spec.decision_points
                       if type(p).__name__ == "Float")
    ours = sorted((f.low, f.high) for f in floats.values())
    assert ours == pg_floats, f"float decisions {ours} differ from PyGlove's {pg_floats}"
    size = space.size()
    if floats:
        assert size == float("inf"), f"size() of a space with float decisions is {size!r}, " \
                                     "expected math.inf"
        return
    assert size == spec.space_size, f"size() {size} != PyGlove's space_size {spec.space_size}"
    if int(np.prod([int(c) for c in counts], dtype=object)) <= _ENUMERATE_LIMIT:
        keys = [space.key(arch) for arch in space.enumerate()]
        assert len(keys) == size == len(set(keys)), \
            f"enumerate() gave {len(keys)} architectures ({len(set(keys))} distinct keys), " \
            f"size() is {size}"


def _check_json_archs(space: SearchSpace, archs: list[Arch]) -> None:
    for arch in archs:
        assert isinstance(arch, dict), f"an architecture must be a dict, got {arch!r}"
        assert json.loads(json.dumps(arch)) == arch, \
            f"architecture is not a plain JSON value: {arch!r}"


def _check_key_round_trip(space: SearchSpace, archs: list[Arch]) -> None:
    keys: dict[str, tuple[int, ...]] = {}
    for arch in archs:
        key = space.key(arch)
        assert isinstance(key, str) and key, f"key() must be a non-empty string, got {key!r}"
        assert space.key(json.loads(json.dumps(arch))) == key, \
            f"key() is not stable (a copy of {arch!r} has another key)"
        back = space.from_key(key)
        assert back == arch, f"from_key(key(a)) != a: key {key!r} gives {back!r}, a = {arch!r}"
        assert space.key(back) == key, f"key(from_key(k)) != k for k = {key!r}"
        dna = tuple(space.to_dna(arch))
        assert keys.setdefault(key, dna) == dna, \
            f"two different DNAs {keys[key]} and {dna} share the key {key!r}"


def _check_dna_round_trip(space: SearchSpace, archs: list[Arch]) -> None:
    counts = space.choice_counts()
    floats = space.float_decisions()
    for arch in archs:
        dna = space.to_dna(arch)
        assert len(dna) == len(counts), \
            f"to_dna() has {len(dna)} decisions, choice_counts() {len(counts)}: {arch!r}"
        in_range = all(
            (isinstance(v, float) and floats[i].contains(v)) if i in floats
            else (isinstance(v, int | np.integer) and 0 <= v < c)
            for i, (v, c) in enumerate(zip(dna, counts, strict=True)))
        assert in_range, f"to_dna() {dna} is out of range of choice_counts() {counts}"
        back = space.from_dna(list(dna))
        assert back == arch, f"from_dna(to_dna(a)) != a: {back!r} vs {arch!r}"
        assert list(space.to_dna(back)) == list(dna), f"to_dna(from_dna(d)) != d for d = {dna}"
        canonical = space.canonical_dna(list(dna))
        assert canonical == list(dna), \
            f"{arch!r} is not canonical: its DNA {list(dna)} canonicalises to {canonical}"


def _check_conditional_decisions(space: SearchSpace, archs: list[Arch], seed: int) -> None:
    """`active` and `canonical_dna` agree; `from_dna` canonicalises any DNA. An ordinary
    space must report every decision active."""
    counts = space.choice_counts()
    if not space.conditional:
        for arch in archs[:3]:
            dna = list(space.to_dna(arch))
            assert all(_active(space, dna)), \
                f"space is not conditional but active({dna}) reports inactive decisions"
        return
    rng = np.random.default_rng(seed)
    dnas = [_random_dna(space, rng) for _ in range(len(archs))]
    floats = space.float_decisions()
    dnas.append([floats[i].high if i in floats else int(c) - 1 for i, c in enumerate(counts)])
    for dna in dnas:
        active = _active(space, dna)
        canonical = space.canonical_dna(list(dna))
        expected = [v if on else _inactive_value(space, i)
                    for i, (v, on) in enumerate(zip(dna, active, strict=True))]
        assert canonical == expected, \
            f"canonical_dna({dna}) = {canonical}, but active() says {expected}"
        assert _active(space, canonical) == active, \
            f"activity changes under canonical_dna: active({dna}) = {active}, " \
            f"active({canonical}) = {_active(space, canonical)}"
        arch = space.from_dna(list(dna))
        assert arch == space.from_dna(canonical), \
            f"from_dna({dna}) = {arch!r} differs from from_dna(canonical_dna) = " \
            f"{space.from_dna(canonical)!r}"
        assert list(space.to_dna(arch)) == canonical, \
            f"to_dna(from_dna({dna})) = {list(space.to_dna(arch))}, expected the canonical " \
            f"{canonical}"


def _check_pyglove_decode(space: SearchSpace, archs: list[Arch]) -> None:
    """Our DNA paths against PyGlove's own decode and encode of `template()`, through the
    space's PyGlove hooks (for most spaces PyGlove's DNA is ours and the arch is the JSON of
    the decoded value)."""
    import pyglove as pg

    template = pg.template(space.template())
    for arch in archs:
        dna = list(space.to_dna(arch))
        pg_dna = space.pyglove_dna(dna)
        expected = space.from_pyglove(template.decode(pg_dna))
        assert space.from_dna(dna) == expected, \
            f"from_dna({dna}) = {space.from_dna(dna)!r} but PyGlove decodes {expected!r}"
        encoded = template.encode(space.to_pyglove(expected))
        assert encoded.to_numbers() == pg_dna.to_numbers(), \
            f"PyGlove encodes {expected!r} as {encoded.to_numbers()}, to_dna() says " \
            f"{pg_dna.to_numbers()} ({dna})"


def _check_encoding(space: SearchSpace, archs: list[Arch]) -> None:
    counts = space.choice_counts()
    floats = space.float_decisions()
    length = int(sum(counts))
    seen: dict[bytes, str] = {}
    for arch in archs:
        vec = space.encode(arch)
        assert isinstance(vec, np.ndarray) and vec.ndim == 1, \
            f"encode() must return a 1-d numpy array, got {type(vec).__name__}"
        assert vec.shape == (length,), f"encode() length {vec.shape[0]} != sum of choice " \
                                       f"counts {length}"
        assert np.array_equal(vec, space.encode(json.loads(json.dumps(arch)))), \
            f"encode() is not deterministic for {arch!r}"
        choice = np.ones(length, dtype=bool)
        choice[[sum(counts[:i]) for i in floats]] = False
        assert np.isin(vec[choice], (0.0, 1.0)).all(), f"encode() is not 0/1: {vec}"
        dna = list(space.to_dna(arch))
        active = _active(space, dna)
        offset = 0
        for i, (value, count, on) in enumerate(zip(dna, counts, active, strict=True)):
            block = vec[offset:offset + count]
            if i in floats:
                unit = floats[i].unit(float(value)) if on else 0.0
                assert np.isclose(block[0], unit) and 0.0 <= block[0] <= 1.0, \
                    f"float decision {i} of {arch!r}: feature {block[0]} is not {unit} (the " \
                    "value scaled to [0, 1]; 0 when inactive)"
            elif on:
                assert block.sum() == 1 and block[value] == 1, \
                    f"decision {i} of {arch!r}: one-hot block {block} does not mark choice " \
                    f"{value}"
            else:
                assert block.sum() == 0, \
                    f"decision {i} of {arch!r} is inactive but its block {block} is not all zero"
            offset += count
        key = space.key(arch)
        assert seen.setdefault(vec.tobytes(), key) == key, \
            f"architectures {seen[vec.tobytes()]!r} and {key!r} share one encoding"


def _check_mutate(space: SearchSpace, archs: list[Arch], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for arch in archs:
        before = json.dumps(arch, sort_keys=True)
        for _ in range(5):
            child = space.mutate(arch, rng)
            assert json.dumps(arch, sort_keys=True) == before, \
                f"mutate() modified its argument {before}"
            parent_dna, child_dna = list(space.to_dna(arch)), list(space.to_dna(child))
            both = [a and b for a, b in zip(_active(space, parent_dna),
                                            _active(space, child_dna), strict=True)]
            pairs = enumerate(zip(parent_dna, child_dna, both, strict=True))
            changed = [i for i, (a, b, on) in pairs if on and a != b]
            assert len(changed) == 1, \
                f"mutate() changed decisions {changed} of {parent_dna} (got {child_dna}); " \
                "it must change exactly one (active in parent and child)"
            idle = [i for i, (v, on) in enumerate(zip(child_dna, _active(space, child_dna),
                                                      strict=True))
                    if not on and v != _inactive_value(space, i)]
            assert not idle, f"mutate() gave {child_dna}, whose inactive decisions {idle} " \
                             "are not 0"
            assert space.validate(child) == child, f"mutate() gave a non-canonical {child!r}"
            assert space.key(child) != space.key(arch), "mutate() kept the key"
    a = space.mutate(archs[0], np.random.default_rng(seed))
    b = space.mutate(archs[0], np.random.default_rng(seed))
    assert a == b, "mutate() with equally seeded generators differs"


def _check_seeded_sampling(space: SearchSpace, n: int, seed: int) -> None:
    def draw(s: int) -> list[str]:
        rng = np.random.default_rng(s)
        return [space.key(space.sample(rng)) for _ in range(n)]

    first, again, other = draw(seed), draw(seed), draw(seed + 1)
    assert first == again, "sample() with the same seed gave different architectures"
    if space.size() > 1:
        assert first != other, f"sample() with seeds {seed} and {seed + 1} gave the same " \
                               f"{n} architectures"
    for key in first:
        arch = space.from_key(key)
        assert space.validate(arch) == arch, f"sample() gave an invalid {arch!r}"


def _check_validate_accepts(space: SearchSpace, archs: list[Arch]) -> None:
    for arch in archs:
        assert space.validate(arch) == arch, f"validate() changed a canonical {arch!r}"
        assert space.validate(space.key(arch)) == arch, \
            f"validate() of the key of {arch!r} differs from it"


def _check_validate_rejects(space: SearchSpace, archs: list[Arch]) -> None:
    for bad in (None, 42, 1.5, True, [], ["x"], {}, {"__not_a_decision__": 1}):
        _expect_value_error(space, bad, f"a {type(bad).__name__}")
    for text in ("", "not a key", "|||", "+"):
        _expect_value_error(space, text, "a malformed key string")
    arch = archs[-1]
    key = space.key(arch)
    _expect_value_error(space, key + "\x00trailing", "a key with trailing garbage")
    _expect_value_error(space, key[:-1] if len(key) > 1 else "", "a truncated key")
    for path in _leaf_paths(arch):
        bad = _replaced(arch, path, lambda _old: _NOT_A_CANDIDATE)
        _expect_value_error(space, bad, f"an architecture with a bogus value at {list(path)}")
    for path in _list_paths(arch):
        shorter = _replaced(arch, path, lambda old: old[:-1])
        _expect_value_error(space, shorter, f"an architecture with list {list(path)} too short")
        longer = _replaced(arch, path, lambda old: [*old, old[-1] if old else None])
        _expect_value_error(space, longer, f"an architecture with list {list(path)} too long")


def _check_build_forward_backward(space: SearchSpace, arch: Arch, batch_size: int) -> None:
    import torch

    torch.manual_seed(0)
    model = space.build(arch)
    assert isinstance(model, torch.nn.Module), f"build() returned {type(model).__name__}"
    model.train()
    x = torch.randn(batch_size, *space.input_shape(arch))
    out = model(x)
    num_classes = getattr(space, "num_classes", None)
    expected = (batch_size, num_classes) if num_classes else (batch_size, out.shape[-1])
    assert tuple(out.shape) == expected, \
        f"forward of {arch!r} gave shape {tuple(out.shape)}, expected {expected}"
    assert torch.isfinite(out).all(), f"forward of {arch!r} gave non-finite outputs"
    target = torch.arange(batch_size) % out.shape[-1]
    loss = torch.nn.functional.cross_entropy(out, target)
    loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params, f"the model of {arch!r} has no trainable parameters"
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"backward of {arch!r} left parameters without gradient: {missing[:5]}"
    bad = [n for n, p in params if not torch.isfinite(p.grad).all()]
    assert not bad, f"backward of {arch!r} gave non-finite gradients in {bad[:5]}"
    assert any(p.grad.abs().sum() > 0 for _, p in params), \
        f"backward of {arch!r} gave all-zero gradients"


def _check_params(space: SearchSpace, arch: Arch) -> None:
    model = space.build(arch)
    counted = sum(p.numel() for p in model.parameters())
    assert space.params(arch) == counted, \
        f"params() = {space.params(arch)} but the built model of {arch!r} has {counted}"


def _check_flops(space: SearchSpace, arch: Arch) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = space.build(arch).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *space.input_shape(arch)))
    counted = counter.get_total_flops()
    assert space.flops(arch) == counted, \
        f"flops() = {space.flops(arch)} but FlopCounterMode counts {counted} for {arch!r}"
