"""Typed configuration: YAML presets in configs/, validated, overridable with dotted keys.

    cfg = load_config("configs/demo.yaml", ["data.clip_seconds=5", "audioae.steps=100"])

Unknown keys are an error that names the key; every stage logs ``cfg.to_dict()`` and stores it
inside its checkpoints.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from pydantic import Field, ValidationError

from spresso.config.audioae import AudioAEConfig
from spresso.config.base import Section
from spresso.config.budget import BudgetShares
from spresso.config.dae import DAEConfig
from spresso.config.data import DataConfig
from spresso.config.dit import DiTConfig
from spresso.config.eval import EvalConfig
from spresso.config.pipeline import PipelineConfig
from spresso.config.qinco2 import QINCo2Config
from spresso.config.runtime import RuntimeConfig
from spresso.core.errors import ConfigError

__all__ = ["SpressoConfig", "Section", "load_config", "parse_overrides", "ConfigError"]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


class SpressoConfig(Section):
    # Root of every local output (shards, caches, checkpoints, mlflow.db); may be an s3:// URL.
    workdir: str = "work/demo"
    runtime: RuntimeConfig = RuntimeConfig()
    data: DataConfig = DataConfig()
    audioae: AudioAEConfig = AudioAEConfig()
    dit: DiTConfig = DiTConfig()
    dae: DAEConfig = DAEConfig()
    qinco2: QINCo2Config = QINCo2Config()
    eval: EvalConfig = EvalConfig()
    pipeline: PipelineConfig = PipelineConfig()
    # Wall-clock hours for the whole DAG's training, spread over the stages by `budget` (see
    # spresso.config.budget); null: every stage trains to its step count.
    budget_hours: Optional[float] = Field(None, gt=0)
    budget: BudgetShares = BudgetShares()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def path(self, relative: str) -> str:
        """Resolve a config path against the workdir (absolute paths and URLs are kept)."""
        if "://" in relative or relative.startswith("/"):
            return relative
        return str(Path(self.workdir) / relative) if "://" not in self.workdir else f"{self.workdir.rstrip('/')}/{relative}"


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"config override '{dotted}': '{p}' is not a section")
        node = nxt
    node[parts[-1]] = value


def parse_overrides(overrides: Iterable[str]) -> dict:
    """Turn ``["a.b=1", "c=x"]`` into a nested dict; values are parsed as YAML scalars/lists."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"config override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"config override '{item}' has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key, value)
    return tree


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown config key '{loc}'"
    msg = first["msg"]
    return f"{source}: invalid value for '{loc}': {msg}" if loc else f"{source}: {msg}"


def resolve_preset(name_or_path: str | Path) -> Path:
    """``demo`` / ``paper`` name a preset in configs/; anything else is a path."""
    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml") and not p.exists():
        p = CONFIG_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        raise ConfigError(f"config file not found: {name_or_path}")
    return p


def config_from_dict(tree: dict, source: str = "config") -> SpressoConfig:
    try:
        return SpressoConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def _read_tree(path: str | Path, seen: tuple[Path, ...] = ()) -> tuple[dict, str]:
    """A YAML config as a dict, with ``extends: <preset or path>`` resolved (the file's keys win)."""
    p = resolve_preset(path)
    if p.resolve() in seen:
        raise ConfigError(f"{p}: 'extends' loops back to itself ({' -> '.join(str(s) for s in (*seen, p.resolve()))})")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections")
    base = loaded.pop("extends", None)
    if base is None:
        return loaded, str(p)
    if not isinstance(base, str):
        raise ConfigError(f"{p}: 'extends' names one preset or YAML path, got {base!r}")
    # Relative paths are relative to the extending file; bare names are presets.
    base_path = p.parent / base if base.endswith((".yaml", ".yml")) and not Path(base).is_absolute() else base
    parent, _ = _read_tree(base_path, (*seen, p.resolve()))
    return _deep_merge(parent, loaded), str(p)


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> SpressoConfig:
    """Load a preset or YAML file (None: the built-in defaults) and apply dotted overrides.

    A file may start with ``extends: demo`` (a preset or another YAML): it is loaded first and the
    file's own keys are merged over it (sections merge key by key, lists are replaced whole).
    """
    tree: dict = {}
    source = "config"
    if path is not None:
        tree, source = _read_tree(path)
    tree = _deep_merge(tree, parse_overrides(overrides))
    return config_from_dict(tree, source)
