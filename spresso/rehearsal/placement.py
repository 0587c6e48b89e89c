"""Which node type each stage asked for: the node label its resources name (``pipeline.resources.<stage>.label``),
and the driver's (``pipeline.driver_label``), mapped onto the cluster's node types by their labels."""
from __future__ import annotations

from spresso.rehearsal.cluster import LABEL


def type_with_label(value: str, node_types: dict[str, dict]) -> str | None:
    for name, spec in node_types.items():
        if spec["labels"].get(LABEL) == value:
            return name
    return None


def expected_node_types(cfg, stages: list[str], node_types: dict[str, dict]) -> dict[str, str]:
    """stage instance (``stage1@c11``) -> the node type its label asks for; stages without a label are left
    out (any type may host them). ``driver`` -> the type of ``pipeline.driver_label``, when set."""
    out = {}
    for stage in stages:
        label = getattr(cfg.pipeline.resources.get(stage.split("@", 1)[0]), "label", None)
        if label and type_with_label(label, node_types):
            out[stage] = type_with_label(label, node_types)
    driver = getattr(cfg.pipeline, "driver_label", None)
    if driver and type_with_label(driver, node_types):
        out["driver"] = type_with_label(driver, node_types)
    return out
