"""Fast decoding: a step-invariant cache around the conditioned DiT.

:class:`CachedDenoiser` computes once per decode what does not depend on the noise level: the
null caption's text tokens (``text_in``) and pooled embedding (``pooled_embed``), the audio-down
tokens f_phi(z) and their decimated RoPE positions, the audio tokens' positions. Each step then
only runs the noise embedding and the blocks, inside the one EDM2 preconditioning
(:meth:`spresso.diffusion.edm2.Denoiser.precondition`). It reproduces
``DiffusionAutoencoder.forward(x, sigma, null text, z, drop=True)`` (a test checks it). The
samplers (DPM-Solver++(2M), Heun) are in :mod:`spresso.diffusion.sampler`.
"""
from __future__ import annotations

from typing import Callable

import torch

from spresso.diffusion.padding import token_mask
from spresso.models.conditioned_dit import AUDIO_DOWN
from spresso.models.dit import AUDIO, TEXT
from spresso.models.latent_encoder import decimated_positions
from spresso.models.mmdit import StreamInput, carried
from spresso.models.rope import frame_positions


class CachedDenoiser:
    """D(x; sigma) for one batch of z with the null caption, step-invariant parts computed once."""

    def __init__(self, dae, z: torch.Tensor | None, frames: int, autocast: Callable | None = None,
                 valid_frames: torch.Tensor | None = None):
        self.denoiser = dae.denoiser
        self.net, self.dit = self.denoiser.net, self.denoiser.net.dit
        dit = self.dit
        B = z.shape[0]
        device = z.device
        self.frames = int(frames)
        self.autocast = autocast
        with torch.no_grad():
            # The codec decodes without a caption: every sample takes the learned null caption.
            tokens = dit.text_in(dit.null_tokens.expand(B, 1, -1).float())
            self.c_text = dit.pooled_embed(dit.null_pooled.expand(B, -1).float())
            # One real token: no key mask, so SDPA may pick its fused kernels (same values as an all-True mask).
            self.text = StreamInput(tokens, None, None)
            L = -(-self.frames // dit.patch)
            self.positions = frame_positions(L, dit.patch, device=device)
            # A model trained with mask_padding hides a window's padding as keys, as in training; None when
            # every frame is signal (no mask: SDPA keeps its fused kernels).
            self.audio_mask = z_mask = None
            if getattr(dae, "mask_padding", False) and valid_frames is not None and bool((valid_frames < self.frames).any()):
                self.audio_mask = token_mask(valid_frames, self.frames, dit.patch)
                z_mask = token_mask(valid_frames, self.frames, self.net.t)
            self.extra = {}
            if z is not None:
                zpos = decimated_positions(self.frames, self.net.t, device=device)
                if z.shape[-1] != zpos.numel():
                    raise ValueError(f"z has {z.shape[-1]} frames, {self.frames} x0 frames need {zpos.numel()}")
                self.extra[AUDIO_DOWN] = StreamInput(self.net.f_phi(z.float().transpose(1, 2)), zpos, z_mask,
                                                      key_bias=self.net.z_key_bias)

    def raw(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """F(c_in x; c_noise): the DiT's forward with the cached streams (mirrors DiT.forward)."""
        dit = self.dit
        audio = dit.audio_in(dit.patchify(x_in))
        c = dit.noise_embed(c_noise) + self.c_text
        streams = {AUDIO: StreamInput(audio, self.positions, self.audio_mask), TEXT: self.text, **self.extra}
        for block in dit.joint:
            out = block(streams, c, dit.rope)
            streams = carried(streams, out)
        h = streams[AUDIO].tokens
        for block in dit.single:
            h = block({AUDIO: StreamInput(h, self.positions, self.audio_mask)}, c, dit.rope)[AUDIO]
        return dit.unpatchify(dit.final(h, c), x_in.shape[-1])

    def cached_net(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """:meth:`raw` under the autocast context, if one was given (the network only: D(x) stays float32)."""
        if self.autocast is None:
            return self.raw(x_in, c_noise)
        with self.autocast():
            return self.raw(x_in, c_noise)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.denoiser.precondition(self.cached_net, x, sigma)
