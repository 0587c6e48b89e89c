"""The stage DAG, derived from what each stage reads and writes.

Shared stages get one instance; branch stages one per operating point, named
``<stage>@<point>``. A read names another stage's output (``train_dit.checkpoint``); a branch
stage's read resolves to its own branch's instance (``stage1@c11``) when there is one, else to
the shared stage. Edges are never listed by hand: they follow from the reads.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from spresso.config import SpressoConfig, config_from_dict
from spresso.config.pipeline import OperatingPoint, StageResources
from spresso.core.errors import SpressoError
from spresso.pipeline.resources import apply_resources
from spresso.pipeline.stage import Stage, resolve_location


@dataclass
class StageNode:
    name: str  # instance name
    stage: Stage
    point: OperatingPoint | None
    cfg: SpressoConfig  # the config this instance runs with (branch overrides applied)
    outputs: dict[str, str]  # output name -> resolved location
    datasets: dict[str, str]  # output name -> dataset name in the graph
    upstream: dict[str, tuple[str, str]] = field(default_factory=dict)  # read -> (node, output)
    external: dict[str, str] = field(default_factory=dict)  # read -> location
    resources: StageResources = field(default_factory=StageResources)
    # The config it runs with: ``cfg`` with pipeline.resources.<kind> applied (the key hashes ``cfg``).
    run_cfg: SpressoConfig | None = None

    @property
    def kind(self) -> str:
        return self.stage.name


class PipelineGraph:
    def __init__(self, nodes: dict[str, StageNode], order: list[str]):
        self.nodes = nodes
        self.order = order
        self._children: dict[str, set[str]] = {n: set() for n in nodes}
        for n, node in nodes.items():
            for producer, _ in node.upstream.values():
                self._children[producer].add(n)

    def __iter__(self):
        return (self.nodes[n] for n in self.order)

    def __len__(self) -> int:
        return len(self.order)

    def parents(self, name: str) -> list[str]:
        return sorted({p for p, _ in self.nodes[name].upstream.values()}, key=self.order.index)

    def children(self, name: str) -> list[str]:
        return sorted(self._children[name], key=self.order.index)

    def edges(self) -> list[tuple[str, str, str]]:
        """(producer, consumer, dataset) for every edge, in topological order."""
        out = []
        for n in self.order:
            for read, (producer, output) in sorted(self.nodes[n].upstream.items()):
                out.append((producer, n, self.nodes[producer].datasets[output]))
        return out

    def _closure(self, names: Iterable[str], step) -> set[str]:
        seen: set[str] = set()
        todo = list(names)
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(step(n))
        return seen

    def descendants(self, names: Iterable[str]) -> set[str]:
        return self._closure(names, self.children)

    def ancestors(self, names: Iterable[str]) -> set[str]:
        return self._closure(names, self.parents)

    def match(self, selector: str) -> list[str]:
        """Instances a selector names: an instance (``stage1@c11``), a stage kind (every branch),
        or ``@point`` (a whole branch)."""
        if selector in self.nodes:
            return [selector]
        if selector.startswith("@"):
            hits = [n for n in self.order if self.nodes[n].point and self.nodes[n].point.name == selector[1:]]
        else:
            hits = [n for n in self.order if self.nodes[n].kind == selector]
        if not hits:
            raise SpressoError(f"no stage matches '{selector}' (stages: {', '.join(self.order)})")
        return hits

    def select(self, from_: Sequence[str] = (), until: Sequence[str] = (), only: Sequence[str] = ()) -> set[str]:
        """Instances to run: ``--only`` exactly those; else from ∩ until (each side defaulting to all)."""
        if only:
            return {n for s in only for n in self.match(s)}
        chosen = set(self.order)
        if from_:
            chosen &= self.descendants(n for s in from_ for n in self.match(s))
        if until:
            chosen &= self.ancestors(n for s in until for n in self.match(s))
        return chosen


def branch_config(cfg: SpressoConfig, point: OperatingPoint) -> SpressoConfig:
    """The config of one branch: the point's dotted overrides applied on top (validated)."""
    if not point.overrides:
        return cfg
    tree = cfg.to_dict()
    for dotted, value in point.overrides.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise SpressoError(f"operating point '{point.name}': override '{dotted}' names no config section")
            node = node[p]
        node[leaf] = value
    return config_from_dict(tree, f"operating point '{point.name}' overrides")


def build_graph(cfg: SpressoConfig, stages: Mapping[str, Stage] | Sequence[Stage]) -> PipelineGraph:
    """Instantiate the stages the config lists and connect reads to writers."""
    registry = dict(stages) if isinstance(stages, Mapping) else {s.name: s for s in stages}
    pc = cfg.pipeline
    for name in [*pc.shared, *pc.branch]:
        if name not in registry:
            raise SpressoError(f"unknown stage '{name}' in the pipeline config (known: {', '.join(sorted(registry))})")
    unknown_res = sorted(set(pc.resources) - set(registry))
    if unknown_res:
        raise SpressoError(f"pipeline.resources names unknown stage(s): {', '.join(unknown_res)}")

    nodes: dict[str, StageNode] = {}

    def add(stage: Stage, point: OperatingPoint | None, node_cfg: SpressoConfig) -> None:
        name = f"{stage.name}@{point.name}" if point else stage.name
        nodes[name] = StageNode(
            name, stage, point, node_cfg,
            outputs={o: resolve_location(loc, node_cfg, point) for o, loc in stage.writes.items()},
            datasets={o: f"{name}.{o}" for o in stage.writes},
            external={r: resolve_location(loc, node_cfg, point) for r, loc in stage.external.items()},
            resources=pc.resources.get(stage.name, stage.resources),
            run_cfg=apply_resources(node_cfg, stage),
        )

    for name in pc.shared:
        if registry[name].point_keys:
            raise SpressoError(f"stage '{name}' depends on an operating point: list it under pipeline.branch")
        add(registry[name], None, cfg)
    for point in pc.points:
        pcfg = branch_config(cfg, point)
        for name in pc.branch:
            stage = registry[name]
            if stage.discrete_only and point.continuous:
                continue
            add(stage, point, pcfg)

    for node in nodes.values():
        for read, ref in node.stage.reads.items():
            optional = ref.endswith("?")
            producer_kind, dot, output = ref.rstrip("?").partition(".")
            if not dot or not output:
                raise SpressoError(f"stage '{node.kind}' reads '{ref}': name an output as <stage>.<output>")
            # A branch stage reads its own branch's producer first, then a shared one.
            candidates = ([f"{producer_kind}@{node.point.name}"] if node.point else []) + [producer_kind]
            producer = next((c for c in candidates if c in nodes and output in nodes[c].outputs), None)
            if producer is None:
                if optional:
                    continue
                raise SpressoError(f"stage '{node.name}' reads '{producer_kind}.{output}' but no stage in the pipeline writes it")
            if producer == node.name:
                raise SpressoError(f"stage '{node.name}' reads its own output '{output}'")
            node.upstream[read] = (producer, output)
    return PipelineGraph(nodes, _toposort(nodes))


def _toposort(nodes: dict[str, StageNode]) -> list[str]:
    """Kahn's algorithm; ties broken by declaration order so the order is stable."""
    rank = {n: i for i, n in enumerate(nodes)}
    indeg = {n: len({p for p, _ in node.upstream.values()}) for n, node in nodes.items()}
    children: dict[str, list[str]] = {n: [] for n in nodes}
    for n, node in nodes.items():
        for p in {p for p, _ in node.upstream.values()}:
            children[p].append(n)
    ready = [(rank[n], n) for n, d in indeg.items() if d == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, n = heapq.heappop(ready)
        order.append(n)
        for c in children[n]:
            indeg[c] -= 1
            if indeg[c] == 0:
                heapq.heappush(ready, (rank[c], c))
    if len(order) < len(nodes):
        raise SpressoError(f"cycle in the stage graph: {' -> '.join(_find_cycle(nodes, set(nodes) - set(order)))}")
    return order


def _find_cycle(nodes: dict[str, StageNode], remaining: set[str]) -> list[str]:
    # Every remaining node has a remaining parent: walk parents until a node repeats.
    path: list[str] = []
    n = min(remaining)
    while n not in path:
        path.append(n)
        n = next(p for p, _ in sorted(nodes[n].upstream.values()) if p in remaining)
    cycle = path[path.index(n):] + [n]
    return list(reversed(cycle))
