"""Pictures of architectures as standalone inline SVG, for the dashboard and the HTML report.

`architecture_svg(space, arch)` draws one architecture as a trial stores it (the JSON `arch`
of `nas best --json`):

- the NAS-Bench-201 cell and the DARTS normal and reduction cells as graphs: states on a
  line, each edge an arc labelled with its operation (arcs of different spans have different
  heights, so no two labels overlap);
- the stages and blocks of the mbconv, hybrid and quant networks as one row of boxes per stage;
- any other space (a plugin, a user's PyGlove space, a `module:attr` reference) as a table of
  its decisions (name -> value).

It never raises: an architecture that does not fit its space's picture (a hand-edited row, an
older layout) is drawn as the table. The SVG has no external reference, no script and no
stylesheet; it is sized by its viewBox (with its natural size as width and height, and
`max-width: 100%` so that it shrinks in a narrow page). Its parts carry class names that pages
and tests can find: `node`, `edge` (with `data-op`, `data-from`, `data-to`), `cell`, `stage`,
`block`, `decision`. Every text is escaped: names come from users.

Which picture a space gets depends on its class, looked up through the space registry (a
plugin space subclassing `DartsSpace` gets the DARTS picture). A `module:attr` reference is
resolved only when its module is already imported: drawing a picture for a web page never
imports code named in a database.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape as _escape
from xml.sax.saxutils import quoteattr as _quoteattr

#: Approximate advance of one character, as a fraction of the font size (DejaVu Sans and
#: Arial average about 0.55; a little more keeps boxes wide enough).
CHAR_WIDTH = 0.62
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
MAX_TABLE_ROWS = 200
MAX_VALUE_CHARS = 80

#: Colours of operations by family (line, label).
_GREY = "#9aa0a6"
_OP_COLOURS = (("none", "#9aa0a6"), ("zero", "#9aa0a6"), ("skip", "#5f6368"),
               ("identity", "#5f6368"), ("conv", "#1a73e8"), ("pool", "#188038"))
_OTHER_OP = "#a142f4"


def op_colour(op: str) -> str:
    """The colour of an operation's edge, by family (conv, pool, skip, none, other)."""
    for part, colour in _OP_COLOURS:
        if part in op:
            return colour
    return _OTHER_OP


#: Characters XML 1.0 does not allow (C0 controls but tab, newline, return; surrogates...).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def escaped(text: str) -> str:
    """`text` as XML character data: markup escaped, characters XML forbids replaced."""
    return _escape(_NOT_XML.sub("\ufffd", text))


def attribute(value: str) -> str:
    """`value` as a quoted XML attribute value (escaped as `escaped` does)."""
    return _quoteattr(_NOT_XML.sub("\ufffd", value))


def text_width(text: str, size: float) -> float:
    return len(text) * size * CHAR_WIDTH


# ---- a small canvas: SVG parts and the box they cover ---------------------------------------
@dataclass
class Canvas:
    """SVG markup with the bounding box of what was drawn (the viewBox is that box plus a
    margin). `uid` prefixes ids, so that two pictures in one page do not share them."""

    uid: str
    parts: list[str] = field(default_factory=list)
    colours: set[str] = field(default_factory=set)  # of the arrowheads in use
    box: list[float] = field(default_factory=lambda: [math.inf, math.inf, -math.inf, -math.inf])

    def cover(self, x0: float, y0: float, x1: float, y1: float) -> None:
        b = self.box
        b[0], b[1] = min(b[0], x0, x1), min(b[1], y0, y1)
        b[2], b[3] = max(b[2], x0, x1), max(b[3], y0, y1)

    def add(self, markup: str) -> None:
        self.parts.append(markup)

    def text(self, x: float, y: float, text: str, *, size: float = 12, anchor: str = "middle",
             fill: str = "#202124", weight: str = "normal") -> str:
        """A `<text>` centred vertically on y, covered in the bounding box."""
        width = text_width(text, size)
        x0 = {"start": x, "middle": x - width / 2, "end": x - width}[anchor]
        self.cover(x0, y - size * 0.7, x0 + width, y + size * 0.7)
        bold = ' font-weight="bold"' if weight != "normal" else ""
        return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
                f'dominant-baseline="central" fill="{fill}"{bold}>{escaped(text)}</text>')

    def svg(self, title: str, kind: str, margin: float = 12) -> str:
        x0, y0, x1, y1 = self.box if math.isfinite(self.box[0]) else (0, 0, 10, 10)
        x0, y0, w, h = x0 - margin, y0 - margin, x1 - x0 + 2 * margin, y1 - y0 + 2 * margin
        return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="{x0:.0f} {y0:.0f} {w:.0f} '
                f'{h:.0f}" width="{w:.0f}" height="{h:.0f}" style="max-width:100%;height:auto" '
                f'role="img" aria-label={attribute(title)} class="nas-arch" '
                f'data-kind="{kind}" font-family="{FONT}">'
                f'<title>{escaped(title)}</title>'
                f'{self._markers()}{"".join(self.parts)}</svg>')

    def arrow(self, colour: str) -> str:
        """The id of an arrowhead marker of this colour (defined once per picture)."""
        self.colours.add(colour)
        return f"{self.uid}-arrow-{colour.lstrip('#')}"

    def _markers(self) -> str:
        if not self.colours:
            return ""
        markers = "".join(
            f'<marker id="{self.arrow(c)}" viewBox="0 0 10 10" refX="9" refY="5" '
            f'markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" '
            f'fill="{c}"/></marker>' for c in sorted(self.colours))
        return f"<defs>{markers}</defs>"


# ---- graphs: states on a line, edges as labelled arcs --------------------------------------
BOX_HALF_HEIGHT = 16


@dataclass(frozen=True)
class Node:
    """A state of a cell graph: `shape` "circle" or "box" (a cell input or output)."""

    name: str
    x: float
    y: float
    shape: str = "circle"
    fill: str = "#e8f0fe"
    caption: str = ""

    @property
    def radius(self) -> float:
        return 19 if self.shape == "circle" else 24

    @property
    def half_width(self) -> float:
        return self.radius if self.shape == "circle" else \
            max(self.radius, text_width(self.name, 13) / 2 + 7)

    def boundary(self, ox: float, oy: float, ux: float, uy: float) -> tuple[float, float]:
        """Where the ray from (ox, oy), a point inside the node, in the unit direction
        (ux, uy) leaves the node's shape."""
        dx, dy = ox - self.x, oy - self.y
        if self.shape == "circle":
            b = ux * dx + uy * dy
            t = -b + math.sqrt(max(b * b - (dx * dx + dy * dy - self.radius ** 2), 0.0))
        else:
            t = min((h - math.copysign(1, u) * d) / abs(u)
                    for h, u, d in ((self.half_width, ux, dx), (BOX_HALF_HEIGHT, uy, dy)) if u)
        return ox + ux * t, oy + uy * t


def draw_node(canvas: Canvas, node: Node) -> None:
    r = node.radius
    if node.shape == "circle":
        shape = f'<circle cx="{node.x:.1f}" cy="{node.y:.1f}" r="{r}" fill="{node.fill}" ' \
                f'stroke="#3c4043" stroke-width="1.5"/>'
        canvas.cover(node.x - r, node.y - r, node.x + r, node.y + r)
    else:
        w, h = 2 * node.half_width, BOX_HALF_HEIGHT
        shape = f'<rect x="{node.x - w / 2:.1f}" y="{node.y - h:.1f}" width="{w:.1f}" ' \
                f'height="{2 * h}" rx="6" fill="{node.fill}" stroke="#3c4043" ' \
                f'stroke-width="1.5"/>'
        canvas.cover(node.x - w / 2, node.y - h, node.x + w / 2, node.y + h)
    label = canvas.text(node.x, node.y, node.name, size=13, weight="bold")
    caption = canvas.text(node.x, node.y + r + 13, node.caption, size=10, fill="#5f6368") \
        if node.caption else ""
    canvas.add(f'<g class="node" data-node={attribute(node.name)}>{shape}{label}{caption}</g>')


def draw_edge(canvas: Canvas, source: Node, target: Node, op: str, lift: float, *,
              label: bool = True, extra_class: str = "", colour: str = "",
              start_dx: float = 0.0, end_dx: float = 0.0) -> None:
    """An arrow from `source` to `target` bending by `lift` (negative: upwards; 0: straight),
    labelled with `op` at its apex. A `none` edge is grey and dashed but still labelled.
    `start_dx` and `end_dx` shift where it leaves and enters a node (fanned-out arcs)."""
    (x0, y0), (x2, y2) = (source.x, source.y), (target.x, target.y)
    cx, cy = (x0 + x2) / 2, (y0 + y2) / 2 + 2 * lift  # the quadratic's apex is at lift
    start = source.boundary(x0 + start_dx, y0, *_unit(x0 + start_dx, y0, cx, cy))
    end = target.boundary(x2 + end_dx, y2, *_unit(x2 + end_dx, y2, cx, cy))
    end = _towards(*end, cx, cy, 2)  # the arrowhead's tip touches the node
    colour = colour or op_colour(op)
    dashed = ' stroke-dasharray="5 4"' if colour == _GREY else ""
    width = 1.2 if not label else 1.8
    path = (f'<path d="M{start[0]:.1f},{start[1]:.1f} Q{cx:.1f},{cy:.1f} {end[0]:.1f},'
            f'{end[1]:.1f}" fill="none" stroke="{colour}" stroke-width="{width}"{dashed} '
            f'marker-end="url(#{canvas.arrow(colour)})"/>')
    canvas.cover(x0, min(y0, y0 + lift), x2, max(y2, y0 + lift))
    text = _label(canvas, (x0 + x2) / 2, (y0 + y2) / 2 + lift, op, colour) if label else ""
    classes = f"edge {extra_class}".strip()
    canvas.add(f'<g class="{classes}" data-op={attribute(op)} data-from={attribute(source.name)} '
               f'data-to={attribute(target.name)}>{path}{text}</g>')


def _label(canvas: Canvas, x: float, y: float, text: str, colour: str) -> str:
    """An edge label on a white plate (a line under the letters would read as dashes)."""
    width, height = text_width(text, 11) + 6, 15
    plate = (f'<rect x="{x - width / 2:.1f}" y="{y - height / 2:.1f}" width="{width:.1f}" '
             f'height="{height}" rx="3" fill="#ffffff" fill-opacity="0.92"/>')
    return plate + canvas.text(x, y, text, size=11, fill=colour)


def _unit(x: float, y: float, tx: float, ty: float) -> tuple[float, float]:
    """The unit vector from (x, y) towards (tx, ty)."""
    norm = math.hypot(tx - x, ty - y) or 1.0
    return (tx - x) / norm, (ty - y) / norm


def _towards(x: float, y: float, tx: float, ty: float, distance: float) -> tuple[float, float]:
    """The point `distance` from (x, y) in the direction of (tx, ty)."""
    dx, dy = tx - x, ty - y
    norm = math.hypot(dx, dy) or 1.0
    return x + dx / norm * distance, y + dy / norm * distance


# ---- NAS-Bench-201 ----------------------------------------------------------------------------
NB201_SPACING = 190
NB201_LIFT = 62


def nb201_picture(canvas: Canvas, arch: Any, space: Any = None) -> str:
    """The cell: nodes 0..3 on a line, edge i->j (i < j) in the arch's order; neighbours are
    joined straight, two-step edges arc above and the 0->3 edge below."""
    from search_spaces.nb201 import EDGES

    ops = _string_list(arch, "ops", len(EDGES))
    nodes = [Node(str(i), i * NB201_SPACING, 0, caption={0: "input", 3: "output"}.get(i, ""))
             for i in range(4)]
    for (i, j), op in zip(EDGES, ops, strict=True):
        span = j - i
        lift = {1: 0.0, 2: -NB201_LIFT, 3: 1.6 * NB201_LIFT}[span]
        draw_edge(canvas, nodes[i], nodes[j], op, lift)
    for node in nodes:
        draw_node(canvas, node)
    return "NAS-Bench-201 cell: " + ", ".join(f"{i}->{j} {op}" for (i, j), op
                                               in zip(EDGES, ops, strict=True))


def _string_list(arch: Any, key: str, length: int) -> list[str]:
    values = arch.get(key) if isinstance(arch, dict) else None
    if not (isinstance(values, list) and len(values) == length
            and all(isinstance(v, str) for v in values)):
        raise ValueError(f"expected {key!r}: {length} strings")
    return values


# ---- DARTS ------------------------------------------------------------------------------------
DARTS_SPACING = 130
DARTS_LIFT = 24  # arc height per state of span (labels of different spans never meet)
DARTS_BASE_LIFT = 24  # a short arc is steeper than a long one: arcs leave a node apart


def darts_lift(span: int) -> float:
    return DARTS_BASE_LIFT + DARTS_LIFT * span


def darts_picture(canvas: Canvas, arch: Any, space: Any = None) -> str:
    """Both cells, one under the other: the two cell inputs, the intermediate nodes and the
    output on a line; each node's first chosen edge arcs above, its second below; the
    concatenation into the output is drawn with thin grey arrows."""
    if not isinstance(arch, dict):
        raise ValueError("a darts architecture is a dict of cells")
    cells = [(name, _darts_nodes(arch.get(name), name)) for name in ("normal", "reduce")]
    top = 0.0
    titles = []
    for name, nodes in cells:
        above = max((darts_lift(i + 2 - n["inputs"][k])
                     for i, n in enumerate(nodes) for k in range(0, len(n["inputs"]), 2)),
                    default=0)
        baseline = top + above + 36
        title = canvas.text(-40, top, f"{name} cell", size=14, anchor="start", weight="bold")
        inner = Canvas(canvas.uid, colours=canvas.colours)
        _darts_cell(inner, nodes, baseline)
        canvas.add(f'<g class="cell" data-cell={attribute(name)}>{title}{"".join(inner.parts)}'
                   f'</g>')
        canvas.cover(*inner.box)
        top = inner.box[3] + 34
        titles.append(f"{name}: " + "; ".join(
            f"node {i}: " + ", ".join(f"{op}~{s}" for s, op in zip(n["inputs"], n["ops"],
                                                                     strict=True))
            for i, n in enumerate(nodes)))
    return "DARTS cells. " + ". ".join(titles)


def _darts_nodes(nodes: Any, cell: str) -> list[dict[str, Any]]:
    if not isinstance(nodes, list) or not nodes:
        raise ValueError(f"the {cell} cell must be a list of nodes")
    for i, node in enumerate(nodes):
        inputs, ops = (node.get("inputs"), node.get("ops")) if isinstance(node, dict) else (0, 0)
        if not (isinstance(inputs, list) and isinstance(ops, list) and len(inputs) == len(ops)
                and all(isinstance(op, str) for op in ops)
                and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < i + 2
                        for s in inputs)):
            raise ValueError(f"node {i} of the {cell} cell is not a DARTS node")
    return nodes


def _darts_cell(canvas: Canvas, nodes: list[dict[str, Any]], y: float) -> None:
    count = len(nodes)
    states = [Node("c_{k-2}", 0, y, "box", "#e6f4ea"), Node("c_{k-1}", DARTS_SPACING, y, "box",
                                                            "#e6f4ea")]
    states += [Node(str(i), (i + 2) * DARTS_SPACING, y) for i in range(count)]
    output = Node("c_{k}", (count + 2) * DARTS_SPACING, y, "box", "#fef7e0")
    nodes_out = [*states, output]
    # (source, target, op, lift): each node's first edge above, its second below; then the
    # concatenation of the nodes into the output, as thin grey arcs below the labels
    edges = [(s, i + 2, op, darts_lift(i + 2 - s) * (-1 if k % 2 == 0 else 1))
             for i, node in enumerate(nodes)
             for k, (s, op) in enumerate(zip(node["inputs"], node["ops"], strict=True))]
    edges += [(i + 2, count + 2, "concat", darts_lift(count - i) + 12) for i in range(count)]
    starts, ends = _fan(edges, 0, nodes_out), _fan(edges, 1, nodes_out)
    for e, (s, t, op, lift) in enumerate(edges):
        concat = op == "concat" and t == count + 2
        draw_edge(canvas, nodes_out[s], nodes_out[t], op, lift, label=not concat,
                  extra_class="concat" if concat else "", colour="#bdc1c6" if concat else "",
                  start_dx=starts[e], end_dx=-ends[e])
    for node in nodes_out:
        draw_node(canvas, node)


def _fan(edges: list[tuple[int, int, str, float]], end: int, nodes: list[Node]) -> list[float]:
    """Horizontal offsets where arcs leave (end 0) or enter (end 1) a node on the same side,
    so that they do not start as one line: the longer (outer) arc further out, all within
    80% of the node's half width."""
    groups: dict[tuple[int, bool], list[int]] = {}
    for e, edge in enumerate(edges):
        groups.setdefault((edge[end], edge[3] < 0), []).append(e)
    offsets = [0.0] * len(edges)
    for members in groups.values():
        members.sort(key=lambda e: abs(edges[e][1] - edges[e][0]))
        node = nodes[edges[members[0]][end]]
        spread = min(14.0, 1.6 * node.half_width / max(1, len(members) - 1))
        for rank, e in enumerate(members):
            offsets[e] = ((len(members) - 1) / 2 - rank) * spread
    return offsets


# ---- networks: one row of boxes per stage -----------------------------------------------------
BOX_W, BOX_H, BOX_GAP, ROW_GAP = 96, 58, 12, 18
HEADER_W = 118
MAX_BOXES_PER_LINE = 8


@dataclass(frozen=True)
class Block:
    """One box: up to three lines of text, a fill colour, and a marker of a stride-2 block."""

    lines: tuple[str, ...]
    fill: str = "#e8f0fe"
    downsample: bool = False
    data: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Stage:
    title: str
    subtitle: str
    blocks: tuple[Block, ...]


def draw_stages(canvas: Canvas, heading: str, stages: list[Stage]) -> None:
    """A heading line, then each stage: its title on the left and its blocks in a row
    (wrapped after `MAX_BOXES_PER_LINE` boxes)."""
    canvas.add(canvas.text(0, 0, heading, size=13, anchor="start", weight="bold"))
    y = 22.0
    if any(block.downsample for stage in stages for block in stage.blocks):
        canvas.add('<rect x="0" y="17" width="18" height="12" rx="3" fill="none" '
                   'stroke="#c5221f" stroke-width="2"/>'
                   + canvas.text(24, 23, "downsampling block (stride 2)", size=11,
                                 anchor="start", fill="#5f6368"))
        y += 20
    for s, stage in enumerate(stages):
        parts = [canvas.text(0, y + 18, stage.title, size=13, anchor="start", weight="bold"),
                 canvas.text(0, y + 36, stage.subtitle, size=11, anchor="start",
                             fill="#5f6368")]
        lines = max(1, math.ceil(len(stage.blocks) / MAX_BOXES_PER_LINE))
        for b, block in enumerate(stage.blocks):
            row, col = divmod(b, MAX_BOXES_PER_LINE)
            parts.append(_draw_block(canvas, HEADER_W + col * (BOX_W + BOX_GAP),
                                     y + row * (BOX_H + BOX_GAP), block))
        if not stage.blocks:
            parts.append(canvas.text(HEADER_W, y + BOX_H / 2, "(no blocks)", size=11,
                                     anchor="start", fill="#5f6368"))
        canvas.add(f'<g class="stage" data-stage="{s}">{"".join(parts)}</g>')
        y += lines * (BOX_H + BOX_GAP) - BOX_GAP + ROW_GAP


def _draw_block(canvas: Canvas, x: float, y: float, block: Block) -> str:
    canvas.cover(x, y, x + BOX_W, y + BOX_H)
    stroke = ' stroke-width="2.5" stroke="#c5221f"' if block.downsample else \
        ' stroke-width="1.2" stroke="#3c4043"'
    parts = [f'<rect x="{x:.1f}" y="{y:.1f}" width="{BOX_W}" height="{BOX_H}" rx="6" '
             f'fill="{block.fill}"{stroke}/>']
    step = BOX_H / (len(block.lines) + 1)
    for i, line in enumerate(block.lines):
        size = 12 if i == 0 else 10.5
        parts.append(canvas.text(x + BOX_W / 2, y + step * (i + 1), _fit(line, size),
                                 size=size, weight="bold" if i == 0 else "normal"))
    data = "".join(f" data-{k}={attribute(v)}" for k, v in block.data)
    return f'<g class="block"{data}>{"".join(parts)}</g>'


def _fit(text: str, size: float, width: float = BOX_W - 8) -> str:
    """`text` cut with an ellipsis to fit in `width`."""
    room = int(width / (size * CHAR_WIDTH))
    return text if len(text) <= room else text[:max(1, room - 1)] + "…"


def mbconv_picture(canvas: Canvas, arch: Any, space: Any = None) -> str:
    """Each stage's active blocks (the first `depth`): kernel, expand ratio, output channels;
    a red outline marks a stride-2 block."""
    if not isinstance(arch, dict) or not isinstance(arch.get("stages"), list):
        raise ValueError("an mbconv architecture has a list of stages")
    specs = _try(lambda: space.net_spec(arch).blocks) if space is not None else None
    by_position = {(b.stage, b.index): b for b in specs or ()}
    kernels = tuple(getattr(space, "kernel_sizes", (3, 5, 7)))
    stages = []
    for s, stage in enumerate(arch["stages"]):
        depth, blocks = stage.get("depth"), stage.get("blocks")
        if not (isinstance(depth, int) and isinstance(blocks, list) and 0 <= depth <= len(blocks)):
            raise ValueError(f"stage {s} has no valid depth and blocks")
        boxes = []
        for j, block in enumerate(blocks[:depth]):
            kernel, expand = block["kernel"], block["expand"]
            spec = by_position.get((s, j))
            lines = [f"MB{expand} {kernel}x{kernel}", f"expand {expand}"]
            if spec is not None:
                lines.append(f"{spec.c_out} ch, {spec.side_out}x{spec.side_out}")
            boxes.append(Block(tuple(lines), _shade(kernel, kernels),
                               bool(spec and spec.stride == 2),
                               (("kernel", str(kernel)), ("expand", str(expand)))))
        stages.append(Stage(f"stage {s + 1}", f"depth {depth}", tuple(boxes)))
    heading = f"MBConv network: input {arch.get('resolution')}px, width x{arch.get('width')}"
    draw_stages(canvas, heading, stages)
    return heading + ". " + ". ".join(
        f"{st.title} ({st.subtitle}): " + ", ".join(b.lines[0] for b in st.blocks)
        for st in stages)


_KERNEL_FILLS = ("#e8f0fe", "#d2e3fc", "#aecbfa")
_TYPE_FILLS = {"basic": "#e8f0fe", "bottleneck": "#e6f4ea", "transformer": "#fce8e6"}
_BITS_FILLS = {2: "#fce8e6", 4: "#fef7e0", 8: "#e6f4ea"}


def _shade(value: Any, scale: tuple[Any, ...]) -> str:
    """A lighter fill for a smaller value of `scale`."""
    index = min((i for i, v in enumerate(scale) if value <= v), default=len(scale) - 1)
    return _KERNEL_FILLS[min(index, len(_KERNEL_FILLS) - 1)]


def hybrid_picture(canvas: Canvas, arch: Any, space: Any = None) -> str:
    """The stages cut at the downsampling blocks, each with its width and its block types."""
    blocks, downsample, widths = (arch.get(k) for k in ("blocks", "downsample", "widths")) \
        if isinstance(arch, dict) else (None, None, None)
    if not (isinstance(blocks, list) and isinstance(downsample, list)
            and isinstance(widths, list) and len(widths) == len(downsample) + 1
            and all(isinstance(i, int) for i in downsample)
            and list(downsample) == sorted(set(downsample))
            and all(0 < i < len(blocks) for i in downsample)):
        raise ValueError("a hybrid architecture has blocks, sorted downsample indices and "
                         "one width per stage")
    plan = _try(lambda: space.plan(arch)) if space is not None else None
    bounds = [0, *downsample, len(blocks)]
    stages = []
    for s, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        boxes = []
        for i in range(a, b):
            kind = str(blocks[i])
            lines = [kind, f"block {i}"]
            if plan is not None:
                lines.append(f"{plan[i].c_out} ch, {plan[i].side_out}x{plan[i].side_out}")
            boxes.append(Block(tuple(lines), _TYPE_FILLS.get(kind, "#f1f3f4"),
                               s > 0 and i == a, (("type", kind),)))
        stages.append(Stage(f"stage {s + 1}", f"width {widths[s]}", tuple(boxes)))
    heading = f"Hybrid CNN-transformer network: {len(blocks)} blocks"
    draw_stages(canvas, heading, stages)
    return heading + ". " + ". ".join(
        f"{st.title} ({st.subtitle}): " + ", ".join(b.lines[0] for b in st.blocks)
        for st in stages)


def quant_picture(canvas: Canvas, arch: Any, space: Any = None) -> str:
    """Each stage's blocks: operator, kernel, activation, width and weight bit-width (the
    fill shows the bit-width). Without the space's `layers_per_stage`, one row."""
    layers = arch.get("layers") if isinstance(arch, dict) else None
    if not (isinstance(layers, list) and layers and all(
            isinstance(la, dict) and {"op", "kernel", "act", "width", "bits"} <= set(la)
            for la in layers)):
        raise ValueError("a quant architecture is {'layers': [blocks]}")
    per_stage = getattr(space, "layers_per_stage", None)
    if not (isinstance(per_stage, int) and per_stage > 0 and len(layers) % per_stage == 0):
        per_stage = len(layers)
    stages = []
    for s in range(len(layers) // per_stage):
        boxes = []
        for i, layer in enumerate(layers[s * per_stage:(s + 1) * per_stage]):
            lines = (f"{layer['op']} {layer['kernel']}x{layer['kernel']}",
                     f"{layer['act']}, w{layer['width']}",
                     f"{layer['bits']}-bit weights, {layer.get('abits', 8)}-bit act")
            boxes.append(Block(lines, _BITS_FILLS.get(layer["bits"], "#f1f3f4"),
                               s > 0 and i == 0 and per_stage < len(layers),
                               (("op", str(layer["op"])), ("bits", str(layer["bits"])))))
        title = f"stage {s + 1}" if per_stage < len(layers) else "blocks"
        stages.append(Stage(title, f"{len(boxes)} blocks", tuple(boxes)))
    heading = "Mixed-precision network"
    draw_stages(canvas, heading, stages)
    return heading + ". " + ". ".join(
        f"{st.title}: " + ", ".join(" ".join(b.lines) for b in st.blocks) for st in stages)


# ---- any other space: the decisions as a table -----------------------------------------------
def decisions(arch: Any) -> list[tuple[str, str]]:
    """(decision, value) rows of any JSON-like architecture: nested dicts and lists are
    flattened into dotted paths (`optimizer.lr`, `blocks[1]`)."""
    rows: list[tuple[str, str]] = []
    _flatten(arch, "", rows)
    return rows


def _flatten(value: Any, path: str, rows: list[tuple[str, str]]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{path}.{key}" if path else str(key), rows)
    elif isinstance(value, list | tuple) and value and any(
            isinstance(v, dict | list | tuple) for v in value):
        for i, item in enumerate(value):
            _flatten(item, f"{path}[{i}]", rows)
    else:
        rows.append((path or "architecture", _value_text(value)))


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, default=repr)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS - 1] + "…"


def table_picture(canvas: Canvas, arch: Any, space: Any = None, *, heading: str = "") -> str:
    """The decisions as a two-column table (at most `MAX_TABLE_ROWS` rows)."""
    rows = decisions(arch)
    shown = rows[:MAX_TABLE_ROWS]
    if len(rows) > len(shown):
        shown.append(("…", f"{len(rows) - len(shown)} more decisions"))
    size, row_h = 12, 22
    name_w = max([text_width(n, size) for n, _ in shown] + [text_width("decision", size)]) + 20
    value_w = max([text_width(v, size) for _, v in shown] + [text_width("value", size)]) + 20
    y = 0.0
    if heading:
        canvas.add(canvas.text(0, y, heading, size=13, anchor="start", weight="bold"))
        y += 24
    canvas.add(f'<rect x="0" y="{y - row_h / 2:.1f}" width="{name_w + value_w:.1f}" '
               f'height="{row_h}" fill="#f1f3f4"/>')
    canvas.add(canvas.text(8, y, "decision", size=size, anchor="start", weight="bold"))
    canvas.add(canvas.text(name_w + 8, y, "value", size=size, anchor="start", weight="bold"))
    for i, (name, value) in enumerate(shown):
        y += row_h
        band = (f'<rect x="0" y="{y - row_h / 2:.1f}" width="{name_w + value_w:.1f}" '
                f'height="{row_h}" fill="#f8f9fa"/>') if i % 2 else ""
        canvas.add(f'<g class="decision" data-name={attribute(name)}>{band}'
                   f'{canvas.text(8, y, name, size=size, anchor="start", fill="#3c4043")}'
                   f'{canvas.text(name_w + 8, y, value, size=size, anchor="start")}</g>')
    canvas.cover(0, -row_h / 2, name_w + value_w, y + row_h / 2)
    return "Architecture decisions: " + ", ".join(f"{n} = {v}" for n, v in rows[:40])


# ---- the entry points ---------------------------------------------------------------------------
Drawer = Callable[[Canvas, Any, Any], str]


def architecture_svg(space_name: str, arch: Any, space_args: dict[str, Any] | None = None) -> str:
    """A standalone SVG picture of `arch`, an architecture of space `space_name` as trials
    store it. `space_args` (the job's) refine a network picture (channels, stage lengths);
    without them the space's defaults are tried. Never raises (see the module docstring)."""
    drawer, space = _drawer(space_name, space_args)
    arch = _as_arch(arch, space)
    if space is not None and _try(lambda: space.validate(arch)) is None:
        space = None  # another configuration of the space: draw from the arch alone
    uid = _uid(space_name, arch)
    if drawer is not None:
        canvas = Canvas(uid)
        try:
            title = drawer(canvas, arch, space)
            return canvas.svg(title, drawer.__name__.removesuffix("_picture"))
        except Exception:  # noqa: BLE001 - not the layout this picture expects: the table
            pass
    canvas = Canvas(uid)
    try:
        title = table_picture(canvas, arch, heading=f"space {space_name}")
    except Exception:  # noqa: BLE001 - e.g. nested too deep to flatten
        canvas = Canvas(uid)
        title = table_picture(canvas, {"architecture": "(cannot be shown)"},
                              heading=f"space {space_name}")
    return canvas.svg(title, "table")


def _uid(space_name: Any, arch: Any) -> str:
    """A prefix for the picture's ids: the same picture gets the same ids, two pictures of
    different architectures in one page do not share any."""
    text = _try(lambda: json.dumps([space_name, arch], sort_keys=True, default=repr)) \
        or _try(lambda: repr((space_name, arch))) or f"{space_name!s} {id(arch)}"
    return "nas" + hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()[:10]


def architecture_summary(space_name: str, arch: Any,
                         space_args: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """Rows (name, value) for a table next to the picture: the cell edges of NB201 and DARTS,
    the flattened decisions of any other space. Never raises."""
    drawer, space = _drawer(space_name, space_args)
    arch = _as_arch(arch, space)
    try:
        if drawer is nb201_picture:
            from search_spaces.nb201 import EDGES

            return [(f"edge {i}->{j}", op) for (i, j), op
                    in zip(EDGES, _string_list(arch, "ops", len(EDGES)), strict=True)]
        if drawer is darts_picture:
            return [(f"{cell} node {i}", ", ".join(f"{op} <- {_state_name(s)}" for s, op in
                                                    zip(n["inputs"], n["ops"], strict=True)))
                    for cell in ("normal", "reduce")
                    for i, n in enumerate(_darts_nodes(arch[cell], cell))]
    except Exception:  # noqa: BLE001 - not the layout of its space: its decisions
        pass
    return _try(lambda: decisions(arch)) or [("architecture", "(cannot be shown)")]


def _as_arch(arch: Any, space: Any) -> Any:
    """An architecture given by its key (a string) as the space's JSON form, when the
    space can read the key; anything else as it is."""
    if isinstance(arch, str) and space is not None:
        parsed = _try(lambda: space.from_key(arch))
        return arch if parsed is None else parsed
    return arch


def _state_name(state: int) -> str:
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(state, f"node {state - 2}")


def _drawer(space_name: str, space_args: dict[str, Any] | None) -> tuple[Drawer | None, Any]:
    """The picture of a space's class, and an instance of the space when one can be made
    with `space_args` (None otherwise: the picture then uses the architecture alone)."""
    from search_spaces import DartsSpace, HybridSpace, MBConvSpace, NB201Space, QuantSpace

    cls = _space_class(space_name)
    if cls is None:
        return None, None
    pictures: list[tuple[type, Drawer]] = [
        (NB201Space, nb201_picture), (DartsSpace, darts_picture),
        (MBConvSpace, mbconv_picture), (HybridSpace, hybrid_picture),
        (QuantSpace, quant_picture)]
    for base, drawer in pictures:
        if issubclass(cls, base):
            return drawer, _try(lambda: _space(space_name, space_args))
    return None, None


def _space_class(space_name: str) -> type | None:
    from search_spaces import space_class
    from search_spaces.registry import is_reference, reference_module

    if not isinstance(space_name, str):
        return None
    if is_reference(space_name):
        module = _try(lambda: reference_module(space_name))
        if module is None or module not in sys.modules:
            return None  # never import user code to draw a picture
    cls = _try(lambda: space_class(space_name))
    return cls if isinstance(cls, type) else None


def _space(space_name: str, space_args: dict[str, Any] | None) -> Any:
    from search_spaces import get_space

    return get_space(space_name, **(space_args or {}))


def _try(make: Callable[[], Any]) -> Any:
    """`make()`, or None when it raises (an optional detail of a picture)."""
    try:
        return make()
    except Exception:  # noqa: BLE001 - a detail we can draw without
        return None
