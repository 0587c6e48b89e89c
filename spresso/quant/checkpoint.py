"""Saving and loading a trained quantizer (safetensors weights + JSON spec; never pickles).

Two kinds share the layout: ``qinco2`` (:class:`QINCo2`) and ``rq`` (:class:`ResidualQuantizer`,
the RQ baseline a run may ship instead). :func:`load_quantizer` reads either; everything that only
encodes and decodes (stage 3's z_q cache, the export, the checks) goes through it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from spresso.core.checkpoint import (
    CheckpointError,
    load_strict,
    load_weights,
    read_checkpoint_config,
    save_checkpoint,
)
from spresso.quant.qinco2 import QINCo2, QINCo2Spec
from spresso.quant.rq import KIND as RQ_KIND
from spresso.quant.rq import ResidualQuantizer, RQSpec

KIND = "qinco2"
KINDS = (KIND, RQ_KIND)


def save_qinco2(directory: str | Path, model: QINCo2, config: Mapping[str, Any] | None = None,
                meta: Mapping[str, Any] | None = None, **state) -> Path:
    return save_checkpoint(directory, model.state_dict(), kind=KIND, config=dict(config or {}),
                           meta={**dict(meta or {}), "spec": model.spec.to_dict()}, **state)


def save_rq(directory: str | Path, model: ResidualQuantizer, config: Mapping[str, Any] | None = None,
            meta: Mapping[str, Any] | None = None) -> Path:
    return save_checkpoint(directory, model.state_dict(), kind=RQ_KIND, config=dict(config or {}),
                           meta={**dict(meta or {}), "spec": model.spec.to_dict()})


def quantizer_kind(directory: str | Path) -> str:
    """``qinco2`` or ``rq``: the kind of quantizer a checkpoint folder holds."""
    kind = read_checkpoint_config(directory).get("kind")
    if kind not in KINDS:
        raise CheckpointError(f"{directory}: holds a '{kind}' checkpoint, expected a quantizer ({' or '.join(KINDS)})")
    return kind


def build_quantizer(spec: Mapping[str, Any]) -> QINCo2 | ResidualQuantizer:
    """An untrained quantizer of the spec's kind (``kind`` absent: QINCo2, as in older checkpoints and bundles)."""
    spec = dict(spec)
    if spec.get("kind", KIND) == RQ_KIND:
        return ResidualQuantizer(RQSpec(**spec))
    spec.pop("kind", None)
    return QINCo2(QINCo2Spec(**spec))


def load_quantizer(directory: str | Path, device: str = "cpu") -> QINCo2 | ResidualQuantizer:
    """The quantizer (QINCo2 or RQ) in a checkpoint folder, weights loaded strictly, in eval mode."""
    kind = quantizer_kind(directory)
    info = read_checkpoint_config(directory, kind)
    try:
        model = build_quantizer({**info["meta"]["spec"], **({"kind": RQ_KIND} if kind == RQ_KIND else {})})
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{directory}: invalid {kind} spec ({err})") from None
    load_strict(model, load_weights(directory), kind)
    return model.to(device).eval()


def load_qinco2(directory: str | Path, device: str = "cpu") -> QINCo2:
    """The QINCo2 in a checkpoint folder, weights loaded strictly (an RQ checkpoint is refused)."""
    read_checkpoint_config(directory, KIND)
    return load_quantizer(directory, device)
