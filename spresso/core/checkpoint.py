"""Checkpoints: safetensors for tensors plus JSON for everything else; never pickles.

A checkpoint directory holds
- ``model.safetensors``: the weights (what inference needs), loaded strictly;
- ``config.json``: ``{"kind": ..., "config": <full SpressoConfig dict>, "meta": {...}}``;
- ``state.safetensors`` / ``state.json`` (optional): optimiser, EMA, step, RNG seeds - what
  resuming training needs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from spresso.core import storage
from spresso.core.errors import CheckpointError

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "state.safetensors"
STATE_META_FILE = "state.json"


def _contiguous(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str = "optim") -> tuple[dict, dict]:
    """Split an optimiser state dict into tensors (for safetensors) and JSON metadata."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for k, v in state.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping, prefix: str = "optim") -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, v in tensors.items():
        if not name.startswith(prefix + "."):
            continue
        _, idx, k = name.split(".", 2)
        state.setdefault(int(idx), {})[k] = v
    for name, v in meta.get("scalars", {}).items():
        idx, k = name.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    directory: str | Path,
    weights: Mapping[str, torch.Tensor],
    *,
    kind: str,
    config: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
    state: Mapping[str, torch.Tensor] | None = None,
    state_meta: Mapping[str, Any] | None = None,
) -> Path:
    storage.make_dirs(directory)
    storage.write_bytes(storage.join(directory, MODEL_FILE), save_safetensors(_contiguous(weights)))
    storage.write_text(storage.join(directory, CONFIG_FILE),
                       json.dumps({"kind": kind, "config": config, "meta": dict(meta or {})}, indent=1))
    if state is not None or state_meta is not None:
        storage.write_bytes(storage.join(directory, STATE_FILE), save_safetensors(_contiguous(state or {})))
        storage.write_text(storage.join(directory, STATE_META_FILE), json.dumps(dict(state_meta or {}), default=str))
    return directory if storage.is_url(directory) else Path(directory)


def has_checkpoint(directory: str | Path) -> bool:
    """Whether ``directory`` (a local folder or a URL prefix) holds a checkpoint (its config file)."""
    return storage.is_file(storage.join(directory, CONFIG_FILE))


def read_checkpoint_config(directory: str | Path, kind: str | None = None) -> dict:
    path = storage.join(directory, CONFIG_FILE)
    if not storage.is_file(path):
        raise CheckpointError(f"{directory}: not a checkpoint (no {CONFIG_FILE})")
    try:
        info = json.loads(storage.read_text(path))
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: corrupt checkpoint config") from None
    if kind is not None and info.get("kind") != kind:
        raise CheckpointError(f"{directory}: holds a '{info.get('kind')}' checkpoint, expected '{kind}'")
    return info


def load_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    path = storage.join(directory, MODEL_FILE)
    if not storage.is_file(path):
        raise CheckpointError(f"{directory}: missing {MODEL_FILE}")
    try:
        return load_safetensors(storage.read_bytes(path))
    except Exception as err:
        raise CheckpointError(f"{path}: unreadable weights ({err})") from None


def load_state(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    meta_path, tensor_path = storage.join(directory, STATE_META_FILE), storage.join(directory, STATE_FILE)
    if not storage.is_file(meta_path):
        return {}, {}
    tensors = load_safetensors(storage.read_bytes(tensor_path)) if storage.is_file(tensor_path) else {}
    return tensors, json.loads(storage.read_text(meta_path))


def load_strict(module: torch.nn.Module, weights: Mapping[str, torch.Tensor], what: str = "model") -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming what does not match."""
    own = module.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[0]})")
        raise CheckpointError(f"{what}: weights do not match the model: " + ", ".join(parts))
    for k, v in weights.items():
        if own[k].shape != v.shape:
            raise CheckpointError(f"{what}: shape mismatch for {k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}")
    module.load_state_dict(weights, strict=True)
