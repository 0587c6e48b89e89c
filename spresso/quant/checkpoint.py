"""Saving and loading a trained QINCo2 (safetensors weights + JSON spec; never pickles)."""
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

KIND = "qinco2"


def save_qinco2(directory: str | Path, model: QINCo2, config: Mapping[str, Any] | None = None,
                meta: Mapping[str, Any] | None = None, **state) -> Path:
    return save_checkpoint(directory, model.state_dict(), kind=KIND, config=dict(config or {}),
                           meta={**dict(meta or {}), "spec": model.spec.to_dict()}, **state)


def load_qinco2(directory: str | Path, device: str = "cpu") -> QINCo2:
    """The quantizer in a checkpoint folder, weights loaded strictly."""
    info = read_checkpoint_config(directory, KIND)
    try:
        spec = QINCo2Spec(**info["meta"]["spec"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{directory}: invalid QINCo2 spec ({err})") from None
    model = QINCo2(spec)
    load_strict(model, load_weights(directory), "qinco2")
    return model.to(device).eval()
