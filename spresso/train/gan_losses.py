"""Adversarial losses for the AudioAE: least-squares GAN (DAC) or hinge (Vocos), and feature matching.

Every function takes the lists produced by
:class:`spresso.models.discriminators.AudioDiscriminator` and averages per sub-discriminator,
then sums over sub-discriminators (as DAC does).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

GanLoss = Literal["lsgan", "hinge"]


def discriminator_loss(real: list[torch.Tensor], fake: list[torch.Tensor], kind: GanLoss = "lsgan") -> torch.Tensor:
    """D wants real -> 1, fake -> 0 (LSGAN), or real >= 1, fake <= -1 (hinge)."""
    total = real[0].new_zeros((), dtype=torch.float32)
    for r, f in zip(real, fake):
        r, f = r.float(), f.float()
        if kind == "lsgan":
            total = total + (r - 1).square().mean() + f.square().mean()
        elif kind == "hinge":
            total = total + F.relu(1 - r).mean() + F.relu(1 + f).mean()
        else:
            raise ValueError(f"unknown GAN loss {kind!r}")
    return total


def generator_adversarial_loss(fake: list[torch.Tensor], kind: GanLoss = "lsgan") -> torch.Tensor:
    """G wants D(fake) -> 1 (LSGAN) or D(fake) >= 1 (hinge)."""
    total = fake[0].new_zeros((), dtype=torch.float32)
    for f in fake:
        f = f.float()
        if kind == "lsgan":
            total = total + (f - 1).square().mean()
        elif kind == "hinge":
            total = total + F.relu(1 - f).mean()
        else:
            raise ValueError(f"unknown GAN loss {kind!r}")
    return total


def feature_matching_loss(real_fmaps: list[list[torch.Tensor]], fake_fmaps: list[list[torch.Tensor]]) -> torch.Tensor:
    """L1 between D's intermediate features on real (detached) and generated audio."""
    total = real_fmaps[0][0].new_zeros((), dtype=torch.float32)
    for real_d, fake_d in zip(real_fmaps, fake_fmaps):
        for r, f in zip(real_d, fake_d):
            total = total + (r.detach().float() - f.float()).abs().mean()
    return total
