"""Generated examples during DiT training: EMA samples for the valid captions, as audio and spectrograms."""
from __future__ import annotations

from pathlib import Path

import torch

from spresso.audio.io import write_audio
from spresso.data.latent_batches import split_rows
from spresso.data.zarr_cache import ClipCache
from spresso.diffusion.autoencoder import build_denoiser
from spresso.diffusion.generate import generate_latents
from spresso.models.text_encoder import TextEmbedding


def write_generated_examples(weights: dict, trainer, text: TextEmbedding, captions: list[str], frames: int,
                             folder: Path, audioae=None, steps: int = 32, seed: int = 0) -> list[Path]:
    """Sample with the EMA ``weights`` of a :class:`~spresso.train.dit.DiTTrainer`; write audio (when an
    AudioAE is given) and spectrogram PNGs."""
    import matplotlib  # lazy: optional plotting, only when a run writes examples

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after choosing the Agg backend

    model = build_denoiser(trainer.cfg, *trainer.text_dims)
    model.load_state_dict(weights, strict=True)
    model.to(trainer.device).eval()
    sc = trainer.cfg.sampler
    x0 = generate_latents(model, text, trainer.normalizer, frames, steps=steps, sigma_min=sc.sigma_min, sigma_max=sc.sigma_max,
                          rho=sc.rho, guidance=sc.guidance, seed=seed, device=trainer.device, autocast=trainer.autocast)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    waves = None
    if audioae is not None:
        with torch.no_grad():
            waves = audioae.decode(x0.to(next(audioae.parameters()).device)).float().cpu()
        for i, wave in enumerate(waves):
            path = folder / f"sample{i}.flac"
            write_audio(path, wave.numpy().clip(-1, 1), audioae.sample_rate)
            written.append(path)
    for i, caption in enumerate(captions):
        fig, ax = plt.subplots(figsize=(8, 3))
        if waves is not None:
            spec = torch.stft(waves[i], 2048, 512, window=torch.hann_window(2048), return_complex=True).abs()
            ax.imshow((spec + 1e-5).log10().numpy(), origin="lower", aspect="auto", cmap="magma", vmin=-5, vmax=1)
            ax.set_ylabel("STFT bin (2048)")
        else:
            ax.imshow(x0[i].cpu().numpy(), origin="lower", aspect="auto", cmap="magma")
            ax.set_ylabel("x0 channel")
        ax.set_title(caption[:80])
        fig.tight_layout()
        path = folder / f"sample{i}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    (folder / "captions.txt").write_text("\n".join(captions) + "\n")
    written.append(folder / "captions.txt")
    return written


def example_captions(captions_path: str, x0_path: str, n: int) -> tuple[TextEmbedding, list[str]]:
    """The first ``n`` valid clips' caption embeddings and texts (train clips when there is no valid split)."""
    rows = split_rows(x0_path, "valid")
    if rows.size == 0:
        rows = split_rows(x0_path, "train")
    rows = rows[:n]
    cache = ClipCache.open(captions_path, mode="r")
    emb = TextEmbedding(torch.from_numpy(cache.read("text", rows)).float(), torch.from_numpy(cache.read("text_mask", rows)),
                        torch.from_numpy(cache.read("pooled", rows)).float())
    return emb, [str(c) for c in cache.read("caption", rows)]
