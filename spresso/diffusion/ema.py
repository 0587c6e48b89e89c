"""EDM2's power-function EMA of the weights (Karras et al. 2024, section 3).

After t updates the average weights step tau in proportion to tau^gamma, i.e.
beta_t = (1 - 1/t)^(gamma + 1). Unlike a constant decay, its averaging profile scales with the
length of training (the same ``std`` suits a 300-step demo and a 400k-step run): ``std`` is the
profile's width relative to its length, sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3)).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def std_to_gamma(std: float) -> float:
    """Solve sigma_rel^2 (gamma + 2)^2 (gamma + 3) = gamma + 1 for the positive root."""
    s2 = std * std
    # s2 (g^3 + 7 g^2 + 16 g + 12) - g - 1 = 0
    roots = np.roots([s2, 7 * s2, 16 * s2 - 1, 12 * s2 - 1])
    real = [float(r.real) for r in roots if abs(r.imag) < 1e-9 and r.real > -1]
    if not real:
        raise ValueError(f"EMA std {std} has no valid exponent (use 0 < std < 0.28)")
    return max(real)


class EMA:
    """A float32 shadow of a module's parameters (and buffers copied as they are)."""

    def __init__(self, model: nn.Module, std: float = 0.05):
        self.std = float(std)
        self.gamma = std_to_gamma(std)
        self.num_updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
        self._params = {k for k, _ in model.named_parameters()}

    def beta(self, t: int) -> float:
        return (1 - 1 / t) ** (self.gamma + 1) if t > 0 else 0.0

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        self.num_updates += 1
        beta = self.beta(self.num_updates)
        for k, v in model.state_dict().items():
            if k in self._params:
                self.shadow[k].lerp_(v.detach().float(), 1 - beta)
            else:
                self.shadow[k].copy_(v.detach())
        return beta

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> nn.Module:
        state = model.state_dict()
        model.load_state_dict({k: self.shadow[k].to(state[k].dtype) for k in state}, strict=True)
        return model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, shadow: dict[str, torch.Tensor], num_updates: int) -> None:
        if set(shadow) != set(self.shadow):
            raise KeyError("EMA state does not match the model")
        self.shadow = {k: v.clone().float().to(self.shadow[k].device) for k, v in shadow.items()}
        self.num_updates = int(num_updates)
