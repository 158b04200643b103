"""Pictures of architectures (nas.pictures, issue 16): every registered space's picture is a
standalone SVG; the NB201 cell has its 4 nodes and 6 labelled edges, the DARTS cells their
chosen edges, the networks one box per block; any other space a table of its decisions;
user text is escaped. In a real browser (chromium), no two edge labels overlap and every
text stays inside the picture; the screenshots in docs/screenshots come from that test."""

from __future__ import annotations

import os
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import numpy as np
import pytest

from nas.pictures import architecture_summary, architecture_svg, decisions
from search_spaces import get_space, list_spaces
from search_spaces.darts import genotype_arch
from search_spaces.nb201 import EDGES
from tests.conftest import ROOT, skip_or_fail

SVG = "{http://www.w3.org/2000/svg}"
#: The picture each built-in space gets (a plugin space may get any).
KINDS = {"nb201": "nb201", "darts": "darts", "mbconv": "mbconv", "hybrid": "hybrid",
         "quant": "quant"}
#: The DARTS paper's DARTS (second order) genotype.
DARTS_V2 = SimpleNamespace(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)])
NB201_CELL = {"ops": ["nor_conv_3x3", "nor_conv_3x3", "avg_pool_3x3", "skip_connect", "none",
                      "nor_conv_1x1"]}


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return root


def groups(root: ET.Element, cls: str) -> list[ET.Element]:
    """The `<g>` elements whose class list holds `cls`."""
    return [g for g in root.iter(f"{SVG}g") if cls in g.get("class", "").split()]


def texts(element: ET.Element) -> list[str]:
    return [t.text or "" for t in element.iter(f"{SVG}text")]


def assert_standalone(svg: str) -> ET.Element:
    """Parses; has a viewBox; refers to nothing outside itself; runs nothing."""
    root = parse(svg)
    box = [float(v) for v in root.get("viewBox", "").split()]
    assert len(box) == 4 and box[2] > 0 and box[3] > 0
    ids = {e.get("id") for e in root.iter() if e.get("id")}
    for element in root.iter():
        assert element.tag.split("}")[-1] not in ("script", "image", "foreignObject", "a", "use")
        for name, value in element.attrib.items():
            assert "href" not in name, (element.tag, name)
            assert not name.startswith("on"), (element.tag, name)
            for ref in re.findall(r"url\(([^)]*)\)", value):
                assert ref.startswith("#") and ref[1:] in ids, ref
    assert "http" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")
    return root


# ---- every registered space ------------------------------------------------------------------
@pytest.mark.parametrize("space_name", list_spaces())
def test_every_registered_space_gets_a_standalone_picture(space_name):
    space = get_space(space_name)
    rng = np.random.default_rng(16)
    for _ in range(3):
        arch = space.sample(rng)
        root = assert_standalone(architecture_svg(space_name, arch))
        if space_name in KINDS:
            assert root.get("data-kind") == KINDS[space_name]
        assert architecture_summary(space_name, arch)


# ---- NAS-Bench-201 ---------------------------------------------------------------------------
def test_nb201_cell_has_four_nodes_and_six_edges_labelled_with_its_ops_in_order():
    rng = np.random.default_rng(0)
    space = get_space("nb201")
    for arch in [NB201_CELL, {"ops": ["none"] * 6}, *(space.sample(rng) for _ in range(5))]:
        root = assert_standalone(architecture_svg("nb201", arch))
        nodes, edges = groups(root, "node"), groups(root, "edge")
        assert [n.get("data-node") for n in nodes] == ["0", "1", "2", "3"]
        assert len(edges) == 6
        assert [e.get("data-op") for e in edges] == arch["ops"]
        assert [texts(e) for e in edges] == [[op] for op in arch["ops"]]
        assert [(int(e.get("data-from")), int(e.get("data-to"))) for e in edges] == list(EDGES)
        for edge, op in zip(edges, arch["ops"], strict=True):
            dashed = edge.find(f"{SVG}path").get("stroke-dasharray") is not None
            assert dashed == (op == "none")


def test_an_architecture_given_by_its_key_is_drawn_as_its_json_form():
    for name, arch in [("nb201", NB201_CELL), ("darts", genotype_arch(DARTS_V2)),
                       ("mbconv", get_space("mbconv").sample(np.random.default_rng(7)))]:
        key = get_space(name).key(arch)
        assert architecture_svg(name, key) == architecture_svg(name, arch)
        assert architecture_summary(name, key) == architecture_summary(name, arch)


def test_nb201_summary_names_each_edge():
    assert architecture_summary("nb201", NB201_CELL) == [
        (f"edge {i}->{j}", op) for (i, j), op in zip(EDGES, NB201_CELL["ops"], strict=True)]


# ---- DARTS -----------------------------------------------------------------------------------
def test_darts_cells_have_two_labelled_edges_per_intermediate_node():
    rng = np.random.default_rng(1)
    space = get_space("darts")
    for arch in [genotype_arch(DARTS_V2), *(space.sample(rng) for _ in range(5))]:
        root = assert_standalone(architecture_svg("darts", arch))
        cells = groups(root, "cell")
        assert [c.get("data-cell") for c in cells] == ["normal", "reduce"]
        for cell in cells:
            nodes = arch[cell.get("data-cell")]
            chosen = [g for g in groups(cell, "edge") if "concat" not in g.get("class")]
            assert len(chosen) == 2 * len(nodes) == 8
            got = [g.get("data-op") for g in chosen]
            assert got == [op for n in nodes for op in n["ops"]]
            assert [texts(g) for g in chosen] == [[op] for n in nodes for op in n["ops"]]
            assert len(groups(cell, "concat")) == len(nodes)


def test_darts_edges_come_from_the_states_the_nodes_chose():
    arch = genotype_arch(DARTS_V2)
    root = parse(architecture_svg("darts", arch))
    state = {0: "c_{k-2}", 1: "c_{k-1}"}
    for cell in groups(root, "cell"):
        nodes = arch[cell.get("data-cell")]
        chosen = [g for g in groups(cell, "edge") if "concat" not in g.get("class")]
        assert [(g.get("data-from"), g.get("data-to")) for g in chosen] == [
            (state.get(s, str(s - 2)), str(i)) for i, n in enumerate(nodes) for s in n["inputs"]]
    summary = dict(architecture_summary("darts", arch))
    assert summary["normal node 3"] == "skip_connect <- c_{k-2}, dil_conv_3x3 <- node 0"


# ---- networks: one box per block -------------------------------------------------------------
def test_mbconv_has_one_box_per_active_block():
    space = get_space("mbconv")
    rng = np.random.default_rng(2)
    for _ in range(5):
        arch = space.sample(rng)
        root = assert_standalone(architecture_svg("mbconv", arch))
        stages = groups(root, "stage")
        assert len(stages) == len(arch["stages"])
        for stage, spec in zip(stages, arch["stages"], strict=True):
            blocks = groups(stage, "block")
            assert len(blocks) == spec["depth"]
            assert [(b.get("data-kernel"), b.get("data-expand")) for b in blocks] == [
                (str(b["kernel"]), str(b["expand"])) for b in spec["blocks"][:spec["depth"]]]
        channels = [b.c_out for b in space.net_spec(arch).blocks]
        assert [int(texts(b)[2].split()[0]) for b in groups(root, "block")] == channels


def test_hybrid_has_one_box_per_block_in_its_stage():
    space = get_space("hybrid")
    rng = np.random.default_rng(3)
    for _ in range(5):
        arch = space.sample(rng)
        root = assert_standalone(architecture_svg("hybrid", arch))
        stages = groups(root, "stage")
        bounds = [0, *arch["downsample"], len(arch["blocks"])]
        assert [len(groups(s, "block")) for s in stages] == [
            b - a for a, b in zip(bounds, bounds[1:], strict=False)]
        assert [b.get("data-type") for b in groups(root, "block")] == arch["blocks"]
        assert [texts(s)[1] for s in stages] == [f"width {w}" for w in arch["widths"]]


def test_quant_groups_blocks_by_the_jobs_stages():
    args = {"stages": 2, "layers_per_stage": 3}
    arch = get_space("quant", **args).sample(np.random.default_rng(4))
    root = assert_standalone(architecture_svg("quant", arch, space_args=args))
    assert [len(groups(s, "block")) for s in groups(root, "stage")] == [3, 3]
    assert [b.get("data-bits") for b in groups(root, "block")] == [
        str(layer["bits"]) for layer in arch["layers"]]
    # without the job's space_args the default grouping (3 x 2) does not validate: one row
    root = parse(architecture_svg("quant", arch))
    assert [len(groups(s, "block")) for s in groups(root, "stage")] == [6]


# ---- any other space: the decisions table ----------------------------------------------------
USER_SPACE = '''
import pyglove as pg

space = pg.Dict(depth=pg.oneof([2, 3, 4]), act=pg.oneof(["relu", "gelu"]),
                blocks=pg.manyof(2, ["conv", "attn", "mlp"], distinct=True, sorted=True),
                optimizer=pg.oneof([pg.Dict(name="sgd", lr=pg.floatv(1e-3, 1e-1)), "fixed"]))
'''


@pytest.mark.integration
def test_a_users_pyglove_space_by_reference_gets_its_decisions_table(tmp_path, monkeypatch):
    module = "pictures_user_space"  # unique in the suite: sys.modules is shared
    (tmp_path / f"{module}.py").write_text(USER_SPACE)
    monkeypatch.syspath_prepend(str(tmp_path))
    reference = f"{module}:space"
    space = get_space(reference)
    rng = np.random.default_rng(5)
    for _ in range(5):
        arch = space.sample(rng)
        root = assert_standalone(architecture_svg(reference, arch))
        assert root.get("data-kind") == "table"
        rows = groups(root, "decision")
        assert [(r.get("data-name"), texts(r)[1]) for r in rows] == decisions(arch)
        names = {r.get("data-name") for r in rows}
        assert {"depth", "act", "blocks"} <= names
        assert "optimizer.name" in names or "optimizer" in names
        assert architecture_summary(reference, arch) == decisions(arch)


def test_a_reference_whose_module_is_not_imported_is_drawn_without_importing_it(tmp_path,
                                                                               monkeypatch):
    module = "pictures_never_imported"
    (tmp_path / f"{module}.py").write_text("raise SystemExit('imported by a picture')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    root = assert_standalone(architecture_svg(f"{module}:space", {"width": 16}))
    assert module not in sys.modules
    assert [(r.get("data-name"), texts(r)[1]) for r in groups(root, "decision")] == [
        ("width", "16")]


@pytest.mark.parametrize("arch", [None, "a key string", 3, [], {},
                                  {"ops": ["none"] * 5}, {"stages": [{"depth": 9}]},
                                  {"normal": [], "reduce": []}, {"layers": [1, 2]}])
@pytest.mark.parametrize("space_name", ["nb201", "darts", "mbconv", "hybrid", "quant",
                                        "no-such-space"])
def test_an_architecture_that_does_not_fit_its_picture_gets_the_table(space_name, arch):
    root = assert_standalone(architecture_svg(space_name, arch))
    assert root.get("data-kind") == "table"
    assert [(r.get("data-name"), texts(r)[1]) for r in groups(root, "decision")] == \
            decisions(arch)


def deeply_nested(depth: int) -> dict:
    arch: dict = {"leaf": 1}
    for _ in range(depth):
        arch = {"x": arch}
    return arch


@pytest.mark.parametrize("arch", [{1: "int key", "b": 2}, {"nan": float("nan"), "s": {1, 2}},
                                  {"bytes": b"\x00\xff"}, {"a\x00\x1b": "b\x01\ud800"},
                                  deeply_nested(5000)])
def test_odd_values_still_give_a_picture(arch):
    root = assert_standalone(architecture_svg("nb201", arch))
    assert root.get("data-kind") == "table" and groups(root, "decision")
    assert architecture_summary("nb201", arch)


def test_decisions_flatten_nested_values_and_cut_long_ones():
    arch = {"a": {"b": [1, 2], "c": [{"d": "x"}]}, "long": "y" * 500}
    rows = dict(decisions(arch))
    assert rows["a.b"] == "[1, 2]" and rows["a.c[0].d"] == "x"
    assert len(rows["long"]) == 80 and rows["long"].endswith("…")


HOSTILE = "<script>alert('x')</script>&\"'"


@pytest.mark.parametrize("space_name, arch", [
    (HOSTILE, {HOSTILE: HOSTILE, "n": {HOSTILE: [HOSTILE]}}),
    ("nb201", {"ops": [HOSTILE] * 6}),
    ("darts", {c: [{"inputs": [0, 1], "ops": [HOSTILE, "x"]}] * 4 for c in ("normal", "reduce")}),
    ("hybrid", {"blocks": [HOSTILE, "basic"], "downsample": [1], "widths": [HOSTILE, 8]}),
])
def test_hostile_names_are_escaped(space_name, arch):
    svg = architecture_svg(space_name, arch)
    root = assert_standalone(svg)
    assert "<script" not in svg
    shown = " ".join(t for t in texts(root)) + " ".join(
        v for e in root.iter() for v in e.attrib.values())
    assert "<script>alert('x')</script>" in shown


def test_two_pictures_in_one_page_do_not_share_ids():
    a = parse(architecture_svg("nb201", NB201_CELL))
    b = parse(architecture_svg("nb201", {"ops": ["skip_connect"] * 6}))
    ids_a = {e.get("id") for e in a.iter() if e.get("id")}
    ids_b = {e.get("id") for e in b.iter() if e.get("id")}
    assert ids_a and ids_b and not ids_a & ids_b


# ---- in a real browser -----------------------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = ROOT / "docs" / "screenshots"
#: Boxes of every text, label and node of each picture on the page, in CSS pixels.
MEASURE = """() => [...document.querySelectorAll('svg.nas-arch')].map(svg => {
  const box = r => ({x0: r.left, y0: r.top, x1: r.right, y1: r.bottom});
  return {kind: svg.dataset.kind, svg: box(svg.getBoundingClientRect()),
    texts: [...svg.querySelectorAll('text')].map(t => box(t.getBoundingClientRect())),
    labels: [...svg.querySelectorAll('g.edge > text')].map(t => box(t.getBoundingClientRect())),
    nodes: [...svg.querySelectorAll('g.node')].map(n => box(n.getBoundingClientRect())),
    blocks: [...svg.querySelectorAll('g.block')].map(g => ({
      rect: box(g.querySelector('rect').getBoundingClientRect()),
      texts: [...g.querySelectorAll('text')].map(t => box(t.getBoundingClientRect()))}))};
})"""


def overlap(a: dict, b: dict, slack: float = 1.0) -> bool:
    return (min(a["x1"], b["x1"]) - max(a["x0"], b["x0"]) > slack
            and min(a["y1"], b["y1"]) - max(a["y0"], b["y0"]) > slack)


def inside(inner: dict, outer: dict, slack: float = 0.5) -> bool:
    return (inner["x0"] >= outer["x0"] - slack and inner["y0"] >= outer["y0"] - slack
            and inner["x1"] <= outer["x1"] + slack and inner["y1"] <= outer["y1"] + slack)


@pytest.mark.system
def test_pictures_render_in_chromium_without_overlapping_labels(tmp_path):
    """NB201, DARTS and mbconv pictures in one page of headless chromium: every text lies
    inside its picture (and inside its box), no two edge labels overlap and no label covers
    a node. Screenshots go to docs/screenshots with NAS_UPDATE_SCREENSHOTS=1."""
    if shutil.which(CHROMIUM) is None:
        skip_or_fail(f"chromium not found at {CHROMIUM} (./setup.sh installs Debian's)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed (pip install -e '.[dev]')")
    rng = np.random.default_rng(6)
    pictures = {"nb201": NB201_CELL, "darts": genotype_arch(DARTS_V2),
                "mbconv": get_space("mbconv").sample(rng)}
    extra = [("nb201", get_space("nb201").sample(rng)) for _ in range(5)] + \
        [("darts", get_space("darts").sample(rng)) for _ in range(5)]
    out = SCREENSHOTS if os.environ.get("NAS_UPDATE_SCREENSHOTS") else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    body = "".join(f'<div id="{name}" style="display:inline-block;padding:8px">'
                   f'{architecture_svg(name, arch)}</div>' for name, arch in pictures.items())
    body += "".join(architecture_svg(name, arch) for name, arch in extra)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900},
                                    device_scale_factor=1.5)
            page.set_content(f"<!doctype html><html><body style='margin:0;background:#fff'>"
                             f"{body}</body></html>")
            measured = page.evaluate(MEASURE)
            for name in pictures:
                page.locator(f"#{name}").screenshot(path=str(out / f"arch-{name}.png"))
        finally:
            browser.close()
    assert [m["kind"] for m in measured] == [*pictures, *(name for name, _ in extra)]
    for m in measured:
        assert all(inside(t, m["svg"]) for t in m["texts"]), m["kind"]
        labels = m["labels"]
        for i, a in enumerate(labels):
            assert not any(overlap(a, b) for b in labels[i + 1:]), (m["kind"], a)
            assert not any(overlap(a, n) for n in m["nodes"]), (m["kind"], a)
        for block in m["blocks"]:
            assert all(inside(t, block["rect"]) for t in block["texts"]), m["kind"]
    assert len(measured[0]["labels"]) == 6 and len(measured[0]["nodes"]) == 4
    assert len(measured[1]["labels"]) == 16
    for name in pictures:
        assert (out / f"arch-{name}.png").stat().st_size > 5_000
