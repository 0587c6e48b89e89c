"""Where each stage's outputs live, derived from the config alone (relative to the workdir).

Every reader of a stage's outputs (the next stage, the export, the evaluation, the DAG) asks here,
so no layer needs the stage that wrote them to find them.
"""
from __future__ import annotations

from spresso.config import SpressoConfig
from spresso.config.dae import OperatingPoint as DAEPoint
from spresso.core.storage import absolute as _abs
from spresso.core.storage import join


def stage_output(cfg: SpressoConfig, stage: str) -> str:
    return join(_abs(cfg.path(cfg.dae.folder())), stage, "final")


def dit_dir(cfg: SpressoConfig) -> str:
    return _abs(cfg.path(cfg.dae.dit_dir)) if cfg.dae.dit_dir else _abs(cfg.path(cfg.dit.checkpoint_dir)) + "/final"


def quantizer_dir(cfg: SpressoConfig) -> str:
    return _abs(cfg.path(cfg.dae.quantizer_dir)) if cfg.dae.quantizer_dir else _abs(cfg.path(cfg.qinco2.checkpoint_dir)) + "/final"


def dae_dir(cfg, point) -> str:
    """Relative folder of one branch's DAE outputs: ``dae/<point>/t<t>`` (stage1/, z.zarr, stage3/)."""
    return f"{cfg.dae.checkpoint_dir.rstrip('/')}/{point.name}/t{point.t}"


def qinco2_dir(cfg, point) -> str:
    return f"{cfg.qinco2.checkpoint_dir.rstrip('/')}/{point.name}"


def point_config(cfg, point):
    """The config a branch's library functions run with.

    The stage modules read one operating point from ``dae.t`` / ``dae.points`` and keep their
    outputs at config-derived paths shared by every run (``dae/t<t>``, ``qinco2/``); a DAG with
    several branches needs them per branch. So each branch gets ``dae.t`` = its t, its own
    ``dae.points`` entry (K, M, m), and output folders under its name: ``dae/<point>/t<t>`` and
    ``qinco2/<point>`` (the quantizer trains max(qinco2.M, m) codebooks).
    """
    M = max(cfg.qinco2.M, point.m or 1)
    K = point.K or cfg.qinco2.K
    entry = DAEPoint(t=point.t, K=K, M=M, m=point.m or min(M, cfg.qinco2.M))
    dae = cfg.dae.model_copy(update={
        "t": point.t,
        "points": [p for p in cfg.dae.points if p.t != point.t] + [entry],
        "checkpoint_dir": f"{cfg.dae.checkpoint_dir.rstrip('/')}/{point.name}",
        "quantizer_dir": None if point.continuous else f"{qinco2_dir(cfg, point)}/final",
    })
    q = cfg.qinco2.model_copy(update={"K": K, "M": M, "checkpoint_dir": qinco2_dir(cfg, point),
                                      "vectors_path": f"{dae_dir(cfg, point)}/z.zarr"})
    return cfg.model_copy(update={"dae": dae, "qinco2": q})


