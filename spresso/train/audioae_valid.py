"""The AudioAE's validation during training: reconstruction metrics and audio examples of valid clips."""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import torch

from spresso.audio.io import write_audio
from spresso.eval.metrics import si_sdr
from spresso.models.audioae import AudioAE
from spresso.models.mel import MelSpectrogram, multiscale_mel_distance


# -- validation ----------------------------------------------------------------------------------
def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return module.module if hasattr(module, "module") else module


def valid_region(clip: dict, hop: int) -> np.ndarray:
    """The clip's real audio, rounded up to whole frames (at least one)."""
    n = max(hop, int(math.ceil(clip["valid_samples"] / hop)) * hop)
    wave = clip["wave"][:n]
    return np.pad(wave, (0, n - wave.shape[0])) if wave.shape[0] < n else wave


@torch.no_grad()
def evaluate_reconstruction(model: AudioAE, clips: list[dict], device: torch.device, autocast=None) -> dict[str, float]:
    """Mean multi-scale mel distance and zero-mean SI-SDR over ``clips`` (model and silence)."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    mel, sdr, mel0, sdr0 = [], [], [], []
    for clip in clips:
        ref = torch.from_numpy(valid_region(clip, model.hop)).to(device)[None]
        with autocast() if autocast else contextlib.nullcontext():
            est = model(ref).float()
        mel.append(float(multiscale_mel_distance(est, ref)[0]))
        sdr.append(float(si_sdr(est, ref)[0]))
        silence = torch.zeros_like(ref)
        mel0.append(float(multiscale_mel_distance(silence, ref)[0]))
        sdr0.append(float(si_sdr(silence, ref)[0]))
    model.train(was_training)
    return {"valid/mel_distance": float(np.mean(mel)), "valid/si_sdr": float(np.mean(sdr)),
            "valid/silence_mel_distance": float(np.mean(mel0)), "valid/silence_si_sdr": float(np.mean(sdr0))}


@torch.no_grad()
def write_examples(model: AudioAE, clips: list[dict], folder: Path, device: torch.device) -> None:
    """Original and reconstruction (FLAC) plus a spectrogram comparison (PNG) per clip."""
    import matplotlib  # lazy: optional plotting, only when a run writes audio examples

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after choosing the Agg backend

    model = unwrap(model)
    was_training = model.training
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    mel = MelSpectrogram(model.sample_rate, 2048, 128).to(device)
    for clip in clips:
        ref = torch.from_numpy(valid_region(clip, model.hop)).to(device)[None]
        est = model(ref).float()
        key = clip["key"]
        write_audio(folder / f"{key}.orig.flac", ref[0].cpu().numpy().clip(-1, 1), model.sample_rate)
        write_audio(folder / f"{key}.recon.flac", est[0].cpu().numpy().clip(-1, 1), model.sample_rate)
        fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
        for ax, wave, title in zip(axes, (ref, est), ("original", "reconstruction")):
            ax.imshow(mel(wave)[0].cpu().numpy(), origin="lower", aspect="auto", vmin=-5, vmax=1, cmap="magma")
            ax.set_title(f"{key} {title}")
            ax.set_ylabel("mel band")
        axes[-1].set_xlabel("frame (hop 512)")
        fig.tight_layout()
        fig.savefig(folder / f"{key}.png", dpi=80)
        plt.close(fig)
    model.train(was_training)
