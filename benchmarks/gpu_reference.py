"""What the GPU benchmarks share besides timing (benchmarks/timing.py): each GPU's dense bf16 peak, and the
DiT's synthetic text-conditioned batch."""
from __future__ import annotations

import torch

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, with where each figure comes from. Longer names first:
# the first key found in the device name wins ("H100 PCIe" before "H100", "L40S" before "L4").
BF16_PEAK = {
    "H100 PCIe": (756.0, "NVIDIA H100 datasheet: H100 PCIe BF16 1513 TFLOPS with sparsity, /2 dense"),
    "H100": (989.0, "NVIDIA H100 datasheet: H100 SXM BF16 1979 TFLOPS with sparsity, /2 dense"),
    "H200": (989.0, "NVIDIA H200 datasheet: H200 SXM BF16 1979 TFLOPS with sparsity, /2 dense"),
    "A100": (312.0, "NVIDIA A100 datasheet: BF16 312 TFLOPS dense (624 with sparsity)"),
    "L40S": (362.0, "from the earlier benchmarks/dit_step.py table; not checked against a datasheet"),
    "A10G": (125.0, "from the earlier benchmarks/dit_step.py table; not checked against a datasheet"),
    "L4": (121.0, "from the earlier benchmarks/dit_step.py table; not checked against a datasheet"),
    "B200": (2250.0, "from the earlier benchmarks/dit_step.py table; not checked against a datasheet"),
}


def gpu_peak(name: str) -> tuple[float | None, str | None]:
    """(bf16 peak TFLOP/s, its source) of the GPU called ``name`` (torch.cuda.get_device_name), or (None, None)."""
    for key, (peak, source) in BF16_PEAK.items():
        if key in name:
            return peak, source
    return None, None


def dit_batch(batch: int, channels: int, frames: int, text_dims: tuple[int, int], device, *, tokens: int = 32,
              seed: int = 0) -> dict:
    """A seeded DiT training batch: x0 [batch, channels, frames], a text embedding whose first 12 tokens are real,
    and valid_frames: every other clip padded after half its frames, as short sound effects are (what stage 1
    and 3 mask with ``dae.encoder.mask_padding``; the DiT ignores it)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, tokens, dtype=torch.bool)
    mask[:, :12] = True
    return {"x0": torch.randn(batch, channels, frames, generator=g).to(device),
            "text": torch.randn(batch, tokens, text_dims[0], generator=g).to(device), "text_mask": mask.to(device),
            "pooled": torch.randn(batch, text_dims[1], generator=g).to(device),
            "valid_frames": torch.tensor([frames if i % 2 == 0 else frames // 2 for i in range(batch)]).to(device)}
