"""Which frames and tokens of a padded clip are real: the masks of ``dae.encoder.mask_padding``.

Clips shorter than the 5 s window are zero-padded (contract 2: ``x0`` [N, 128, 500] with
``valid_frames``). Trained on the padded window, the diffusion autoencoder spends its loss and its z on
where the sound stops, which the codec trims away anyway. With the setting, the padding frames leave
the loss, the encoder's attention and pooling, and (as keys) the DiT's joint attention.
"""
from __future__ import annotations

import torch


def frame_mask(valid_frames: torch.Tensor, T: int) -> torch.Tensor:
    """[B] real frames per clip -> [B, T] bool, True for the first ``valid_frames`` frames."""
    valid = torch.as_tensor(valid_frames).reshape(-1, 1)
    return torch.arange(T, device=valid.device)[None, :] < valid


def token_mask(valid_frames: torch.Tensor, T: int, size: int) -> torch.Tensor:
    """[B] real frames -> [B, ceil(T / size)] bool: a token of ``size`` frames is real when any of its frames is."""
    n = -(-int(T) // int(size))
    valid = torch.as_tensor(valid_frames).reshape(-1, 1)
    return torch.arange(n, device=valid.device)[None, :] * int(size) < valid
