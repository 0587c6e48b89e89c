"""Residual quantization as our own module: codebooks that decode by summing, encode by beam search.

The codec ships it when a RQ baseline beats QINCo2 (``qinco2.ship``). Its codebooks come from
faiss (:class:`~spresso.quant.rq_baseline.FaissRQ`, trained on the same vectors as QINCo2), but
encoding and decoding here are plain PyTorch, so a bundle never needs faiss to decode and the
codec treats it exactly like QINCo2: same ``encode(x, m, beam=...)`` / ``decode(codes)``, same
normalisation (per-dim mean, one global std), same meaning of a code prefix (the first m codebooks).

Beam search: B hypotheses per vector, each extended by every one of the K codewords of the next
step (exact squared distances to the residual), the B best kept, the best one at the last step;
the procedure faiss's ResidualQuantizer runs with ``max_beam_size = B``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from spresso.quant.normalize import Normalizer

KIND = "rq"
CPU_BUDGET_BYTES = 256 << 20


@dataclass(frozen=True)
class RQSpec:
    d: int
    K: int
    M: int
    B: int = 32  # beam width when encoding
    kind: str = KIND

    def __post_init__(self):
        if self.kind != KIND:
            raise ValueError(f"an RQ spec has kind {KIND!r}, got {self.kind!r}")
        if self.d < 1 or self.K < 2 or self.M < 1 or self.B < 1:
            raise ValueError(f"invalid RQ sizes: {self}")

    def to_dict(self) -> dict:
        return asdict(self)


def _sqdist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """||x - c||^2 for x [..., d] against every row of c [K, d] -> [..., K]."""
    return (x * x).sum(-1, keepdim=True) - 2 * x @ c.T + (c * c).sum(-1)


class ResidualQuantizer(nn.Module):
    def __init__(self, spec: RQSpec):
        super().__init__()
        self.spec = spec
        self.norm = Normalizer(spec.d)
        self.register_buffer("codebooks", torch.zeros(spec.M, spec.K, spec.d))

    @property
    def M(self) -> int:
        return self.spec.M

    @classmethod
    def from_arrays(cls, codebooks: np.ndarray, mean: np.ndarray, std: float, beam: int) -> "ResidualQuantizer":
        """From trained codebooks [M, K, d] in normalised space and the normalisation (e.g. a trained FaissRQ's)."""
        cb = np.asarray(codebooks, np.float32)
        if cb.ndim != 3:
            raise ValueError(f"codebooks must be [M, K, d], got shape {cb.shape}")
        M, K, d = cb.shape
        model = cls(RQSpec(d=d, K=K, M=M, B=beam))
        model.codebooks.copy_(torch.from_numpy(cb))
        model.norm.mean.copy_(torch.as_tensor(np.asarray(mean, np.float32)))
        model.norm.std.fill_(float(std))
        return model.eval()

    # -- decoding --------------------------------------------------------------------------
    def decode_normalized(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [N, m] (any m <= M) -> the sum of the chosen codewords [N, d] (normalised space)."""
        m = codes.shape[-1]
        if m > self.M:
            raise ValueError(f"codes have {m} steps, the quantizer has {self.M}")
        steps = torch.arange(m, device=codes.device)
        return self.codebooks[steps, codes].sum(-2)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Integer codes [..., m] -> vectors [..., d] in data space."""
        lead = codes.shape[:-1]
        flat = codes.reshape(-1, codes.shape[-1]).to(device=self.codebooks.device, dtype=torch.long)
        return self.norm.inverse(self.decode_normalized(flat)).reshape(*lead, self.spec.d)

    # -- encoding --------------------------------------------------------------------------
    def _search(self, xn: torch.Tensor, m: int, beam: int) -> torch.Tensor:
        N, K = xn.shape[0], self.spec.K
        dist = _sqdist(xn, self.codebooks[0])  # [N, K]
        _, idx = dist.topk(1 if m == 1 else min(beam, K), dim=1, largest=False)
        codes = idx[:, :, None]  # [N, b, steps]
        x_hat = self.codebooks[0][idx]  # [N, b, d]
        for s in range(1, m):
            b = x_hat.shape[1]
            err = _sqdist(xn[:, None, :] - x_hat, self.codebooks[s]).reshape(N, b * K)
            _, flat = err.topk(1 if s == m - 1 else min(beam, b * K), dim=1, largest=False)
            parent, chosen = torch.div(flat, K, rounding_mode="floor"), flat % K
            codes = torch.cat([codes.gather(1, parent[:, :, None].expand(-1, -1, codes.shape[2])), chosen[:, :, None]], dim=2)
            x_hat = x_hat.gather(1, parent[:, :, None].expand(-1, -1, xn.shape[1])) + self.codebooks[s][chosen]
        return codes[:, 0, :]

    @torch.no_grad()
    def encode_all(self, x: torch.Tensor, m: int | None = None, *, beam: int | None = None,
                   candidates: int | None = None) -> list[torch.Tensor]:
        """``[encode(x, 1), ..., encode(x, m)]``: QINCo2's interface; RQ's search is cheap enough to run per m."""
        return [self.encode(x, k, beam=beam) for k in range(1, (m or self.M) + 1)]

    @torch.no_grad()
    def encode(self, x: torch.Tensor, m: int | None = None, *, beam: int | None = None, candidates: int | None = None,
               amp: bool | None = None) -> torch.Tensor:
        """Vectors [..., d] -> codes [..., m] (int64), beam search over the first m codebooks.

        ``candidates`` and ``amp`` are accepted for QINCo2's signature and ignored (RQ scores all K codewords)."""
        if x.shape[-1] != self.spec.d:
            raise ValueError(f"vectors have {x.shape[-1]} dims, the quantizer expects {self.spec.d}")
        m = m or self.M
        if not 1 <= m <= self.M:
            raise ValueError(f"m must be in [1, {self.M}], got {m}")
        beam = beam or self.spec.B
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1]).to(device=self.codebooks.device, dtype=torch.float32)
        xn = self.norm(flat)
        rows = max(1, CPU_BUDGET_BYTES // (min(beam, self.spec.K) * self.spec.K * 4 * 3))
        out = [self._search(xn[i : i + rows], m, beam) for i in range(0, xn.shape[0], rows)]
        codes = torch.cat(out) if out else xn.new_zeros((0, m), dtype=torch.long)
        return codes.reshape(*lead, m)
