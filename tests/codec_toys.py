"""Tiny randomly initialised checkpoints saved with the real save functions, and bundles from them.

Sized for tests on 2 CPU cores: AudioAE width 16 with 8 latent channels, a 2+1-block DiT of
width 32, a 1-block latent encoder at t = 100 (5 z frames per 5 s window), QINCo2 K 16, M 4.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from spresso.config import SpressoConfig
from spresso.config.audioae import AudioAEConfig, AudioAEModelConfig
from spresso.config.dae import (
    DAEConfig,
    LatentEncoderConfig,
    LoRASettings,
    OperatingPoint,
)
from spresso.config.dit import DiTConfig, DiTModelConfig
from spresso.core.checkpoint import save_checkpoint
from spresso.diffusion.autoencoder import build_dae, build_denoiser
from spresso.diffusion.normalize import LatentNormalizer
from spresso.models.audioae import AudioAE
from spresso.quant import QINCo2, QINCo2Spec, ResidualQuantizer, save_qinco2, save_rq
from spresso.train.export import export_bundle
from spresso.train.stage1 import DAETrainer, save_dae_checkpoint

C, TD, PD, T_POOL, ZC = 8, 12, 10, 100, 6


def config(t: int = T_POOL, K: int = 16, M: int = 4, m: int = 3, mask_padding: bool = False) -> SpressoConfig:
    ae = AudioAEConfig(model=AudioAEModelConfig(latent_dim=C, width=16, blocks=1, intermediate=32))
    dit = DiTConfig(model=DiTModelConfig(in_channels=C, width=32, heads=4, joint_blocks=2, single_blocks=1, patch=4))
    dae = DAEConfig(t=t, encoder=LatentEncoderConfig(z_channels=ZC, heads=2, depth=1, mask_padding=mask_padding), lora=LoRASettings(rank=4, alpha=4),
                    points=[OperatingPoint(t=t, K=K, M=M, m=m)], decode_steps=2)
    return SpressoConfig(audioae=ae, dit=dit, dae=dae)


def _jitter(module: torch.nn.Module, scale: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def make_checkpoints(root: Path, *, seed: int = 0, meta_run_ids: dict | None = None, K: int = 16, M: int = 4,
                     m: int = 3, mask_padding: bool = False) -> dict[str, Path]:
    """audioae/, stage3/ (a dae checkpoint), qinco2/ (K codewords, M codebooks, m by default) and rq/ (an RQ of
    the same K and M, the quantizer a qinco2 run may ship instead) under ``root``."""
    torch.manual_seed(seed)
    cfg = config(K=K, M=M, m=m, mask_padding=mask_padding)
    ids = meta_run_ids or {}
    ae = AudioAE.from_config(cfg.audioae.model)
    _jitter(ae, 0.02, seed)
    save_checkpoint(root / "audioae", ae.state_dict(), kind="audioae", config=cfg.to_dict(),
                    meta={"step": 1, **({"mlflow_run_id": ids["audioae"]} if "audioae" in ids else {})})
    den = build_denoiser(cfg.dit, TD, PD)
    _jitter(den, 0.05, seed + 1)
    model = build_dae(den, cfg.dae.encoder, cfg.dae.t, cfg.dae.lora)
    # LoRA B starts at zero: give the adapters weights so merging them is actually exercised.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.05)
    norm = LatentNormalizer([0.05 * i for i in range(C)], [1.0 + 0.1 * i for i in range(C)])
    trainer = DAETrainer(model, cfg, "stage3", norm)
    meta = {**norm.to_meta(), "stage": "stage3", "t": cfg.dae.t, "text_dims": [TD, PD], "dit_config": cfg.dit.model_dump(mode="json"),
            **({"mlflow_run_id": ids["stage"]} if "stage" in ids else {})}
    save_dae_checkpoint(root / "stage3", trainer.state(), cfg.to_dict(), meta)
    q = QINCo2(QINCo2Spec(d=ZC, K=K, M=M, L=1, de=8, dh=8, A=4, B=1))  # B = 1: greedy, so truncated encodes are prefixes
    _jitter(q, 0.05, seed + 2)
    save_qinco2(root / "qinco2", q)
    books = torch.randn(M, K, ZC, generator=torch.Generator().manual_seed(seed + 3)) * torch.tensor([0.5 ** j for j in range(M)])[:, None, None]
    save_rq(root / "rq", ResidualQuantizer.from_arrays(books.numpy(), torch.zeros(ZC).numpy(), 1.0, beam=4))
    return {"audioae": root / "audioae", "stage": root / "stage3", "qinco2": root / "qinco2", "rq": root / "rq"}


def make_bundle(root: Path, continuous: bool = False, seed: int = 0, **shape) -> Path:
    """A bundle from :func:`make_checkpoints`; ``shape``: its K, M, m (and mask_padding)."""
    ck = make_checkpoints(root / "ck", seed=seed, **shape)
    return export_bundle(ck["audioae"], ck["stage"], None if continuous else ck["qinco2"], root / ("cont" if continuous else "bundle"))


_SHARED: dict = {}


def shared_bundle(continuous: bool = False, seed: int = 0) -> Path:
    """One bundle per (mode, seed) for the whole test session (read-only: copy it before damaging it)."""
    key = (continuous, seed)
    if key not in _SHARED:
        _SHARED[key] = make_bundle(Path(tempfile.mkdtemp(prefix="spresso-codec-toys-")), continuous=continuous, seed=seed)
    return _SHARED[key]
