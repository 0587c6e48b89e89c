"""The stage DAG: declarations, graph, cache keys, runner, status, lineage, pictures.

    from spresso.pipeline import run_pipeline
    result = run_pipeline(cfg)            # the registry's stages, as cfg.pipeline lists them
    print(result.table())
"""
from spresso.pipeline.graph import PipelineGraph, StageNode, build_graph
from spresso.pipeline.runner import PipelineResult, StageOutcome, run_pipeline
from spresso.pipeline.stage import Artifact, Stage, StageContext, StageResult

__all__ = [
    "Artifact", "PipelineGraph", "PipelineResult", "Stage", "StageContext", "StageNode", "StageOutcome",
    "StageResult", "build_graph", "run_pipeline",
]
