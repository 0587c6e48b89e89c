"""Codec adapters for the evaluation harness, built from ``KIND:ARG[,key=value...]`` specs.

=========  ===============================================  =========================================
kind       spec                                             what
=========  ===============================================  =========================================
opus       ``opus:6`` / ``opus:6,sr=16000``                 Opus (libopus via PyAV) at 6 kbps
audioae    ``audioae:CKPT_DIR``                             the AudioAE alone (the upper bound)
stage1     ``stage1:DAE_DIR,audioae=AE_DIR[,steps=32]``     continuous z through the diffusion decoder
rq         ``rq:DAE_DIR,audioae=AE_DIR,rq=RQ_DIR,m=4``      faiss RQ codes instead of QINCo2 (ablation)
dac        ``dac:WEIGHTS.pth[,codebooks=2]``                Descript Audio Codec, local weights
sqcodec    ``sqcodec:MODEL_DIR,config=0k75bps``             SQCodec, local weights
spresso    ``spresso:BUNDLE[,kbps=0.3][,steps=32][,solver=heun]``  an S-PRESSO codec bundle (solver: the bundle's)
=========  ===============================================  =========================================

Constructing an adapter is cheap (no weights are read); ``available()`` says whether its
package and files are there; the model loads on first use, inside the Ray worker.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from spresso.core import storage
from spresso.core.errors import SpressoError
from spresso.eval.adapter import CodecAdapter
from spresso.eval.baselines.audioae import AudioAEAdapter
from spresso.eval.baselines.bundle import BundleAdapter
from spresso.eval.baselines.dae import RQAdapter, Stage1Adapter
from spresso.eval.baselines.floors import SilenceAdapter
from spresso.eval.baselines.neural import DACAdapter, SQCodecAdapter
from spresso.eval.baselines.opus import OpusAdapter


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """``"kind:arg,k=v,..."`` -> (kind, arg, {k: v})."""
    kind, sep, rest = spec.partition(":")
    if not sep or not kind:
        raise SpressoError(f"codec spec {spec!r} must look like KIND:ARG[,key=value...] (kinds: {', '.join(KINDS)})")
    parts = [p for p in rest.split(",")] if rest else [""]
    arg, options = parts[0], {}
    for p in parts[1:]:
        k, eq, v = p.partition("=")
        if not eq or not k:
            raise SpressoError(f"codec spec {spec!r}: option {p!r} must be key=value")
        options[k.strip()] = v.strip()
    return kind.strip().lower(), arg.strip(), options


def _opus(arg, o, defaults):
    return OpusAdapter(float(arg or 6), int(o.pop("sr", 48000)))


def _audioae(arg, o, defaults):
    return AudioAEAdapter(arg, device=o.pop("device", None))


def _stage1(arg, o, defaults):
    return Stage1Adapter(arg, _need(o, "audioae", "stage1"), steps=int(o.pop("steps", defaults.get("steps", 32))),
                         device=o.pop("device", None))


def _rq(arg, o, defaults):
    return RQAdapter(arg, _need(o, "audioae", "rq"), _need(o, "rq", "rq"), m=int(_need(o, "m", "rq")),
                     steps=int(o.pop("steps", defaults.get("steps", 32))), device=o.pop("device", None))


def _dac(arg, o, defaults):
    return DACAdapter(arg, codebooks=int(o.pop("codebooks", 2)), device=o.pop("device", None))


def _sqcodec(arg, o, defaults):
    return SQCodecAdapter(arg, config=o.pop("config", "0k75bps"), device=o.pop("device", None))


def _silence(arg, o, defaults):
    return SilenceAdapter()


def _spresso(arg, o, defaults):
    kbps = o.pop("kbps", None)
    codebooks = o.pop("codebooks", None)
    return BundleAdapter(arg, kbps=float(kbps) if kbps else None, codebooks=int(codebooks) if codebooks else None,
                         steps=int(o.pop("steps", defaults.get("steps", 32))), solver=o.pop("solver", defaults.get("solver")))


KINDS: dict[str, Callable] = {"opus": _opus, "audioae": _audioae, "stage1": _stage1, "rq": _rq, "dac": _dac,
                              "sqcodec": _sqcodec, "spresso": _spresso, "silence": _silence}


def _need(o: dict, key: str, kind: str) -> str:
    if key not in o:
        raise SpressoError(f"codec kind {kind!r} needs the option {key}=...")
    return o.pop(key)


def build_adapter(spec: str, defaults: dict | None = None) -> CodecAdapter:
    """The adapter a spec names (cheap: nothing is loaded until it encodes)."""
    kind, arg, options = parse_spec(spec)
    if kind not in KINDS:
        raise SpressoError(f"unknown codec kind {kind!r} in {spec!r}; choose one of {', '.join(KINDS)}")
    left = dict(options)
    try:
        adapter = KINDS[kind](arg, left, defaults or {})
    except ValueError as err:
        raise SpressoError(f"codec spec {spec!r}: {err}") from None
    if left:
        raise SpressoError(f"codec spec {spec!r}: unknown option(s) {', '.join(sorted(left))} for kind {kind!r}")
    return adapter


def bundle_rows(name: str, bundle: str, eval_cfg) -> dict[str, str]:
    """Codec specs of one bundle, a row per ``eval.samplers`` entry: the first (the primary row) under
    ``name``, the others as ``<name>-<solver><steps>``. No samplers: one row, the bundle's solver at
    ``eval.diffusion_steps`` steps."""
    if not eval_cfg.samplers:
        return {name: f"spresso:{bundle},steps={eval_cfg.diffusion_steps}"}
    rows = {}
    for i, s in enumerate(eval_cfg.samplers):
        rows[name if i == 0 else f"{name}-{s.label()}"] = f"spresso:{bundle},steps={s.steps},solver={s.name}"
    return rows


def spec_fingerprint(spec: str) -> str:
    """A digest of the spec and of the files it names (names, sizes, mtimes): the per-codec cache
    is keyed by it, so a retrained checkpoint at the same path is evaluated afresh."""
    kind, arg, options = parse_spec(spec)
    stamps = []
    for value in [arg, *options.values()]:
        if value and storage.is_url(value):
            stamps.extend(list(row) for row in storage.list_details(value))
            continue
        p = Path(value) if value else None
        if p is not None and p.exists():
            files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
            for f in files:
                st = f.stat()
                stamps.append([str(f.relative_to(p) if p.is_dir() else f.name), st.st_size, int(st.st_mtime_ns)])
    blob = json.dumps([kind, arg, sorted(options.items()), stamps], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


__all__ = ["KINDS", "build_adapter", "parse_spec", "spec_fingerprint"]
