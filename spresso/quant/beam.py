"""Beam search encoding for QINCo2 (path-optimal over the steps actually used).

For each of the B hypotheses of a vector, the pre-selection codebook P_m proposes the A codewords
closest to the current residual; the network evaluates all B x A candidates and the B best
partial reconstructions survive. The last step keeps one. Encoding with the model truncated to
m steps optimises the m-step error, which is why ``encode(x, m)`` beats the m-prefix of a longer
code.

The search truncated to m steps differs from the M-step one only in keeping one hypothesis (not B)
after step m; both rank the same candidates, so the truncated encode is the best hypothesis of the
M-step beam after step m. :func:`encode_all_normalized` therefore returns every truncated encode
1..M from one M-step search, at the cost of one encode.

Work is batched by a memory budget (the B x A x max(de, dh) activations of a chunk of vectors),
not by a fixed small chunk: on a GPU a chunk is as large as free memory allows.

Precision: the search runs in fp32 on every device, as :meth:`QINCo2.decode` does. A code is the
argmin of reconstruction errors that decoding must then reproduce; a bf16 network in the search
ranks candidates by a slightly different f_m than the one decode applies, so the same z would get
different codes on a GPU and a CPU, and the chosen path is no longer the best for the decoder.
``amp=True`` (CUDA only) runs the network under bf16 autocast for throughput experiments; no
training, caching or codec path uses it.
"""
from __future__ import annotations

import contextlib

import torch
from tqdm import tqdm

CPU_BUDGET_BYTES = 512 << 20


def _budget_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return CPU_BUDGET_BYTES


def chunk_rows(model, beam: int, candidates: int, device: torch.device) -> int:
    """How many vectors one pass can hold: the candidate activations dominate memory."""
    s = model.spec
    width = max(s.de, s.dh, s.d, s.K // max(1, candidates))
    per_vector = beam * candidates * width * 4 * 4  # a few live fp32 tensors of that size
    return max(1, _budget_bytes(device) // per_vector)


def _sqdist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """||x - c||^2 for x [..., d] against every row of c [K, d] -> [..., K] (fp32)."""
    return (x * x).sum(-1, keepdim=True) - 2 * x @ c.T + (c * c).sum(-1)


def _search(model, x: torch.Tensor, m: int, beam: int, candidates: int, amp: bool,
            every_m: bool = False) -> torch.Tensor | list[torch.Tensor]:
    """Best m-step path [N, m]; with ``every_m`` the best k-step path after every step k (module docstring)."""
    N, d = x.shape
    K = model.spec.K
    B0 = min(beam, K)
    A = min(candidates, K)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (amp and x.is_cuda) else contextlib.nullcontext()

    # Step 0: exhaustive over the plain codebook.
    dist0 = _sqdist(x, model.codebook0)  # [N, K]
    keep = 1 if m == 1 else B0
    dist, idx = dist0.topk(keep, dim=1, largest=False)  # [N, b]
    codes = idx[:, :, None]  # [N, b, steps]
    x_hat = model.codebook0[idx]  # [N, b, d]
    best = [codes[:, 0, :]]  # topk is sorted: hypothesis 0 is the best path so far

    for s in range(1, m):
        step = model.steps[s - 1]
        b = x_hat.shape[1]
        residual = x[:, None, :] - x_hat  # [N, b, d]
        # Pre-selection: the A codewords of P_m nearest to each hypothesis' residual.
        cand = _sqdist(residual, step.preselect).topk(A, dim=-1, largest=False).indices  # [N, b, A]
        table = step.code_table()  # [K, de]
        with autocast:
            h = table[cand] + step.context(x_hat)[:, :, None, :]  # [N, b, A, de]
            delta = step.head(h)
        new_hat = x_hat[:, :, None, :] + step.codebook[cand] + delta.float()  # [N, b, A, d]
        err = (x[:, None, None, :] - new_hat).pow(2).sum(-1).reshape(N, b * A)
        keep = 1 if s == m - 1 else min(beam, b * A)
        dist, flat = err.topk(keep, dim=1, largest=False)  # [N, keep]
        parent = torch.div(flat, A, rounding_mode="floor")
        chosen = cand.reshape(N, b * A).gather(1, flat)
        codes = torch.cat([codes.gather(1, parent[:, :, None].expand(-1, -1, codes.shape[2])), chosen[:, :, None]], dim=2)
        x_hat = new_hat.reshape(N, b * A, d).gather(1, flat[:, :, None].expand(-1, -1, d))
        best.append(codes[:, 0, :])
    return best if every_m else best[-1]


def _checked(model, xn: torch.Tensor, m: int) -> None:
    if not 1 <= m <= model.M:
        raise ValueError(f"m must be in [1, {model.M}], got {m}")
    if xn.shape[-1] != model.spec.d:
        raise ValueError(f"vectors have {xn.shape[-1]} dims, the quantizer expects {model.spec.d}")


@torch.no_grad()
def encode_all_normalized(model, xn: torch.Tensor, m: int, *, beam: int, candidates: int) -> list[torch.Tensor]:
    """Normalised vectors [N, d] -> ``[codes [N, 1], ..., codes [N, m]]``, entry k equal to the
    k-step truncated encode (module docstring), from one m-step search (fp32)."""
    _checked(model, xn, m)
    rows = chunk_rows(model, beam, candidates, xn.device)
    parts = [_search(model, xn[i : i + rows], m, beam, candidates, False, every_m=True)
             for i in range(0, xn.shape[0], rows)]
    if not parts:
        return [xn.new_zeros((0, k), dtype=torch.long) for k in range(1, m + 1)]
    return [torch.cat([p[k] for p in parts]) for k in range(m)]


@torch.no_grad()
def encode_normalized(model, xn: torch.Tensor, m: int, *, beam: int, candidates: int, amp: bool | None = None,
                      progress: bool = False) -> torch.Tensor:
    """Normalised vectors [N, d] -> codes [N, m] (int64) with the model truncated to m steps (fp32; ``amp``: module docstring)."""
    _checked(model, xn, m)
    amp = bool(amp)  # fp32 unless asked: encode must rank candidates with decode's network (module docstring)
    rows = chunk_rows(model, beam, candidates, xn.device)
    out = []
    it = range(0, xn.shape[0], rows)
    if progress:
        it = tqdm(it, desc=f"encode m={m}", unit="chunk")
    for i in it:
        out.append(_search(model, xn[i : i + rows], m, beam, candidates, amp))
    return torch.cat(out) if out else xn.new_zeros((0, m), dtype=torch.long)
