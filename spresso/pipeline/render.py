"""`pipeline graph`: the DAG as a picture.

Graphviz ``dot`` when it is installed (best layout); otherwise a matplotlib drawing with a
layered layout (layer = longest path from a source), so no system package is required.
``.dot`` output writes the Graphviz source itself.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Mapping

from spresso.core.errors import SpressoError
from spresso.pipeline.graph import PipelineGraph

COLORS = {"done": "#9be39b", "reused": "#c9e7ff", "running": "#ffe08a", "failed": "#ff9c9c",
          "stale": "#f3c8ff", "skipped": "#dddddd", "pending": "#ffffff"}


def to_dot(graph: PipelineGraph, states: Mapping[str, str] | None = None) -> str:
    states = states or {}
    lines = ["digraph spresso {", '  rankdir=LR; node [shape=box, style="rounded,filled", fontname="Helvetica"];']
    for n in graph.order:
        node = graph.nodes[n]
        r = node.resources
        label = n + (f"\\n{r.gpus:g} GPU x {max(r.workers, 1)}" if r.gpus else "")
        if n in states:
            label += f"\\n[{states[n]}]"
        color = COLORS.get(states.get(n, ""), "#ffffff" if node.stage.available() else "#eeeeee")
        lines.append(f'  "{n}" [label="{label}", fillcolor="{color}"];')
    for producer, consumer, dataset in graph.edges():
        lines.append(f'  "{producer}" -> "{consumer}" [label="{dataset.split(".", 1)[1]}", fontsize=9];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def layers(graph: PipelineGraph) -> dict[str, int]:
    depth: dict[str, int] = {}
    for n in graph.order:  # topological: parents first
        depth[n] = 1 + max((depth[p] for p in graph.parents(n)), default=-1)
    return depth


def _matplotlib(graph: PipelineGraph, out: Path, states: Mapping[str, str]) -> None:
    import matplotlib  # lazy: only the fallback renderer (no Graphviz) needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after matplotlib.use("Agg")

    depth = layers(graph)
    columns: dict[int, list[str]] = {}
    for n in graph.order:
        columns.setdefault(depth[n], []).append(n)
    pos = {}
    for d, names in columns.items():
        for i, n in enumerate(names):
            pos[n] = (d * 3.0, -(i - (len(names) - 1) / 2) * 1.0)
    height = max(len(v) for v in columns.values())
    fig, ax = plt.subplots(figsize=(1.9 * len(columns) + 1, 0.7 * height + 1.2))
    boxes = {}
    for n, (x, y) in pos.items():
        label = n + (f"\n[{states[n]}]" if n in states else "")
        color = COLORS.get(states.get(n, ""), "#ffffff" if graph.nodes[n].stage.available() else "#eeeeee")
        boxes[n] = ax.text(x, y, label, ha="center", va="center", fontsize=8,
                           bbox=dict(boxstyle="round,pad=0.3", fc=color, ec="#333333", lw=0.8))
    fig.canvas.draw()  # the boxes' extents are known only once drawn: arrows attach to their edges
    for producer, consumer, _ in graph.edges():
        ax.annotate("", xy=(0, 0.5), xycoords=boxes[consumer], xytext=(1, 0.5), textcoords=boxes[producer],
                    arrowprops=dict(arrowstyle="->", color="#555555", lw=0.7, shrinkA=4, shrinkB=4))
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    ax.set_xlim(min(xs) - 1.5, max(xs) + 1.5)
    ax.set_ylim(min(ys) - 1, max(ys) + 1)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def render_graph(graph: PipelineGraph, out: str | Path, states: Mapping[str, str] | None = None,
                 engine: str = "auto") -> str:
    """Write the picture; returns the engine used ("dot", "matplotlib" or "source")."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    states = dict(states or {})
    fmt = out.suffix.lstrip(".").lower() or "png"
    if fmt == "dot":
        out.write_text(to_dot(graph, states))
        return "source"
    if engine not in ("auto", "dot", "matplotlib"):
        raise SpressoError(f"unknown graph engine '{engine}' (auto, dot, matplotlib)")
    dot = shutil.which("dot") if engine in ("auto", "dot") else None
    if engine == "dot" and not dot:
        raise SpressoError("graphviz 'dot' is not installed (use --engine matplotlib)")
    if dot:
        proc = subprocess.run([dot, f"-T{fmt}", "-o", str(out)], input=to_dot(graph, states), text=True,
                              capture_output=True, timeout=60)
        if proc.returncode != 0:
            raise SpressoError(f"dot failed: {proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else proc.returncode}")
        return "dot"
    _matplotlib(graph, out, states)
    return "matplotlib"
