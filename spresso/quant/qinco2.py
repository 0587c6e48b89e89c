"""QINCo2: residual quantization whose codewords are produced by a small network per step.

Step 0 is a plain K x d codebook C_0. Every later step m owns a base codebook C_m (K x d), a
pre-selection codebook P_m (K x d) and a network

    f_m(c, x_hat) = c + out_proj(blocks(concat_block(in_proj(c), x_hat)))

where ``concat_block(e, x_hat) = e + W_cat [e; x_hat]`` and ``blocks`` are L bias-free residual
ReLU MLPs (de -> dh -> de), with no normalisation layers. The reconstruction after step m is
x_hat_m = x_hat_{m-1} + f_m(C_m[i_m], x_hat_{m-1}).

``out_proj`` starts at zero, so an untrained model is exactly residual quantization with its
codebooks: k-means initialisation gives an RQ-quality starting point that training improves on.
:func:`init_networks` offers the QINCo2 paper's alternative (``"concat_down"``): the concat layer
(with its bias when ``concat_bias``) and every block's down-projection start at zero, the
projections at Kaiming-uniform, so f_m starts as c + out_proj(in_proj(c)), not as c.

Decoding and beam search reuse each step's codeword table (:meth:`QINCoStep.code_table`, K x de)
between calls while the weights it depends on are unchanged (keyed on their storage and version
counters, which every in-place update, optimiser step and ``load_state_dict`` bumps); with
gradients enabled it is always rebuilt so training back-propagates through it.

The concat linear is split as W_cat [e; x] = W_e e + W_x x: the first term depends on the
codeword only (a K x de table computed once per step), the second on the hypothesis only, so
beam search runs the MLP blocks, not the projections, on its B x A candidates.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from spresso.quant.beam import encode_all_normalized, encode_normalized
from spresso.quant.normalize import Normalizer

# (L blocks, embedding dim de, hidden dim dh) of the paper's presets.
PRESETS: dict[str, tuple[int, int, int]] = {"S": (2, 128, 256), "M": (4, 384, 384), "L": (16, 384, 384)}
MAX_K = 4096
MAX_M = 32


@dataclass(frozen=True)
class QINCo2Spec:
    d: int
    K: int = 1024
    M: int = 20
    L: int = 2
    de: int = 128
    dh: int = 256
    A: int = 16  # pre-selected candidates per hypothesis
    B: int = 32  # beam width
    concat_bias: bool = False  # a bias on the concat layer (the paper's; part of the codeword table)

    @classmethod
    def from_preset(cls, preset: str, d: int, **kw) -> "QINCo2Spec":
        L, de, dh = PRESETS[preset]
        base = {"L": L, "de": de, "dh": dh}
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(d=d, **base)

    def __post_init__(self):
        if not 2 <= self.K <= MAX_K:
            raise ValueError(f"K must be in [2, {MAX_K}], got {self.K}")
        if not 1 <= self.M <= MAX_M:
            raise ValueError(f"M must be in [1, {MAX_M}], got {self.M}")
        if self.d < 1 or self.L < 0 or self.de < 1 or self.dh < 1 or self.A < 1 or self.B < 1:
            raise ValueError(f"invalid QINCo2 sizes: {self}")

    def to_dict(self) -> dict:
        return asdict(self)


class ResidualBlock(nn.Module):
    """h + W2 relu(W1 h), bias-free."""

    def __init__(self, de: int, dh: int):
        super().__init__()
        self.up = nn.Linear(de, dh, bias=False)
        self.down = nn.Linear(dh, de, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.down(torch.relu(self.up(h)))


class QINCoStep(nn.Module):
    """One step m >= 1: base codebook, pre-selection codebook and the network f_m."""

    def __init__(self, spec: QINCo2Spec):
        super().__init__()
        d, de = spec.d, spec.de
        self.codebook = nn.Parameter(torch.randn(spec.K, d) * 0.1)
        self.preselect = nn.Parameter(torch.randn(spec.K, d) * 0.1)
        self.in_proj = nn.Linear(d, de, bias=False)
        self.cat_code = nn.Linear(de, de, bias=spec.concat_bias)  # W_e (and the bias) of the concat block
        self.cat_ctx = nn.Linear(d, de, bias=False)  # W_x of the concat block
        self.blocks = nn.Sequential(*[ResidualBlock(de, spec.dh) for _ in range(spec.L)])
        self.out_proj = nn.Linear(de, d, bias=False)
        nn.init.zeros_(self.out_proj.weight)  # f_m(c, x_hat) = c at initialisation
        self.table_cache: tuple[tuple, torch.Tensor] | None = None

    def table_key(self) -> tuple:
        """Identity of the weights the codeword table depends on: storage, version, dtype, device."""
        ws = [self.codebook, self.in_proj.weight, self.cat_code.weight]
        if self.cat_code.bias is not None:
            ws.append(self.cat_code.bias)
        return tuple((w.data_ptr(), w._version, w.dtype, w.device) for w in ws)

    def fresh_code_table(self) -> torch.Tensor:
        e = self.in_proj(self.codebook)
        return e + self.cat_code(e)

    def code_table(self) -> torch.Tensor:
        """[K, de]: e + W_e e (+ b) with e = in_proj(c) for every codeword (the x_hat-free part).

        Cached without gradients (module docstring): at K = 4096 it is ~10^8 multiply-adds per
        step, which every small decode would otherwise pay. In-place edits through ``.data``
        bypass version counters: call :meth:`QINCo2.clear_tables` after such an edit.
        """
        if torch.is_grad_enabled():
            return self.fresh_code_table()
        key = self.table_key()
        if self.table_cache is None or self.table_cache[0] != key:
            self.table_cache = (key, self.fresh_code_table())
        return self.table_cache[1]

    def context(self, x_hat: torch.Tensor) -> torch.Tensor:
        """[..., de]: W_x x_hat (the codeword-free part of the concat block)."""
        return self.cat_ctx(x_hat)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.blocks(h))

    def forward(self, codes: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """f_m(C_m[codes], x_hat) for one code per vector: [N] codes, [N, d] x_hat -> [N, d]."""
        h = self.code_table()[codes] + self.context(x_hat)
        return self.codebook[codes] + self.head(h)


class QINCo2(nn.Module):
    def __init__(self, spec: QINCo2Spec):
        super().__init__()
        self.spec = spec
        self.norm = Normalizer(spec.d)
        self.codebook0 = nn.Parameter(torch.randn(spec.K, spec.d) * 0.1)
        self.steps = nn.ModuleList([QINCoStep(spec) for _ in range(spec.M - 1)])

    @property
    def M(self) -> int:
        return self.spec.M

    def clear_tables(self) -> None:
        """Drop every cached codeword table (only needed after edits that bypass version counters)."""
        for step in self.steps:
            step.table_cache = None

    def codebook(self, m: int) -> torch.Tensor:
        return self.codebook0 if m == 0 else self.steps[m - 1].codebook

    # -- decoding --------------------------------------------------------------------------
    def decode_normalized(self, codes: torch.Tensor, partials: bool = False):
        """Codes [N, m] (any m <= M) -> x_hat [N, d] in normalised space (or every x_hat_k)."""
        m = codes.shape[-1]
        if m > self.M:
            raise ValueError(f"codes have {m} steps, the model has {self.M}")
        x_hat = self.codebook0[codes[:, 0]]
        outs = [x_hat]
        for s in range(1, m):
            x_hat = x_hat + self.steps[s - 1](codes[:, s], x_hat)
            outs.append(x_hat)
        return outs if partials else x_hat

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """Integer codes [..., m] -> vectors [..., d] in data space."""
        lead = codes.shape[:-1]
        flat = codes.reshape(-1, codes.shape[-1]).to(device=self.codebook0.device, dtype=torch.long)
        if flat.shape[0] == 0:
            return torch.zeros(*lead, self.spec.d, device=flat.device)
        chunk = chunk or flat.shape[0]  # decoding is one gather + M small MLPs per vector: no need to chunk
        out = torch.cat([self.norm.inverse(self.decode_normalized(flat[i : i + chunk]))
                         for i in range(0, flat.shape[0], chunk)])
        return out.reshape(*lead, self.spec.d)

    def forward(self, xn: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training losses for normalised vectors and their (beam-searched) codes [N, m].

        Returns (sum over steps of the partial-reconstruction MSE, the pre-selection codebooks'
        MSE, the per-step MSEs). Called through ``forward`` so DDP syncs the gradients.
        """
        partials = self.decode_normalized(codes, partials=True)
        step_mse = torch.stack([(xn - x_hat).pow(2).mean() for x_hat in partials])
        pre = xn.new_zeros(())
        for s in range(1, codes.shape[1]):
            # P_m should point where the chosen codeword's network output lands: at the residual.
            target = (xn - partials[s - 1]).detach()
            pre = pre + (self.steps[s - 1].preselect[codes[:, s]] - target).pow(2).mean()
        return step_mse.sum(), pre, step_mse.detach()

    # -- encoding --------------------------------------------------------------------------
    @torch.no_grad()
    def encode_all(self, x: torch.Tensor, m: int | None = None, *, beam: int | None = None,
                   candidates: int | None = None) -> list[torch.Tensor]:
        """Vectors [..., d] -> ``[encode(x, 1), ..., encode(x, m)]`` from one m-step beam search.

        The k-th entry equals ``encode(x, k)`` (a truncated encode, not a prefix of the longest
        code): see :func:`spresso.quant.beam.encode_all_normalized`.
        """
        if x.shape[-1] != self.spec.d:
            raise ValueError(f"vectors have {x.shape[-1]} dims, the quantizer expects {self.spec.d}")
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1]).to(device=self.codebook0.device, dtype=torch.float32)
        per_m = encode_all_normalized(self, self.norm(flat), m or self.M, beam=beam or self.spec.B,
                                      candidates=candidates or self.spec.A)
        return [c.reshape(*lead, c.shape[-1]) for c in per_m]

    @torch.no_grad()
    def encode(self, x: torch.Tensor, m: int | None = None, *, beam: int | None = None, candidates: int | None = None,
               amp: bool | None = None) -> torch.Tensor:
        """Vectors [..., d] -> codes [..., m] (int64), beam search with the model truncated to m steps."""
        if x.shape[-1] != self.spec.d:
            raise ValueError(f"vectors have {x.shape[-1]} dims, the quantizer expects {self.spec.d}")
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1]).to(device=self.codebook0.device, dtype=torch.float32)
        codes = encode_normalized(self, self.norm(flat), m or self.M, beam=beam or self.spec.B,
                                  candidates=candidates or self.spec.A, amp=amp)
        return codes.reshape(*lead, codes.shape[-1])


def init_networks(model: QINCo2, scheme: str = "out_proj") -> QINCo2:
    """Initialise every step's network: ``"out_proj"`` (ours: f_m = c at start, exactly RQ after
    k-means) or ``"concat_down"`` (the paper's: concat layer and each block's down-projection at
    zero, projections and up-projections Kaiming-uniform). Codebooks are untouched."""
    if scheme not in ("out_proj", "concat_down"):
        raise ValueError(f"unknown QINCo2 init scheme {scheme!r}")
    with torch.no_grad():
        for step in model.steps:
            if scheme == "out_proj":
                nn.init.zeros_(step.out_proj.weight)
                continue
            for lin in (step.cat_code, step.cat_ctx):
                nn.init.zeros_(lin.weight)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)
            for block in step.blocks:
                nn.init.kaiming_uniform_(block.up.weight, nonlinearity="relu")
                nn.init.zeros_(block.down.weight)
            nn.init.kaiming_uniform_(step.in_proj.weight, nonlinearity="relu")
            nn.init.kaiming_uniform_(step.out_proj.weight, nonlinearity="relu")
    return model
