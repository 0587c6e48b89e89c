"""Caption embeddings, computed once per clip and cached in Zarr beside the x0 latents.

The caption cache is a :class:`~spresso.data.zarr_cache.ClipCache` row-aligned with the x0
cache (same keys, same order) holding

- ``text`` [N, max_tokens, token_dim] float16: the encoder's token states,
- ``text_mask`` [N, max_tokens] bool,
- ``pooled`` [N, pooled_dim] float32: the sentence embedding,
- ``caption`` [N] str: the caption itself (for logging generated examples).

Its identity attrs are the encoder's description and a digest of the captions: a different
encoder or changed captions rebuild it rather than mix embeddings. Filling runs block by block
and resumes (only blocks not ``done`` are encoded).
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from spresso.core.digest import digest_json
from spresso.core.errors import SpressoError
from spresso.data.reader import read_manifest
from spresso.data.zarr_cache import CacheError, ClipCache
from spresso.models.text_encoder import TextEncoder, build_text_encoder

log = logging.getLogger(__name__)

CAPTION_ARRAYS = ("text", "text_mask", "pooled")


def caption_arrays(encoder: TextEncoder) -> dict:
    L = encoder.max_tokens
    return {
        "text": ((L, encoder.token_dim), np.float16),
        "text_mask": ((L,), bool),
        "pooled": ((encoder.pooled_dim,), np.float32),
        "caption": ((), "str"),
    }


def fill_caption_cache(path: str, keys: Sequence[str], captions: Sequence[str], encoder: TextEncoder, *,
                       chunk_rows: int = 256, batch_size: int = 64, progress: bool = True) -> ClipCache:
    """Create (or finish) the caption cache at ``path`` for ``keys``/``captions`` (row-aligned)."""

    if len(keys) != len(captions):
        raise SpressoError(f"{len(keys)} keys but {len(captions)} captions")
    captions = ["" if c is None else str(c) for c in captions]
    attrs = {"text_encoder": encoder.describe(), "captions_digest": digest_json(captions)}
    arrays = caption_arrays(encoder)
    try:
        cache = ClipCache.create(path, list(keys), arrays, chunk_rows, attrs)
    except CacheError as err:
        # A derived cache: rebuilding it is cheap and always correct, mixing would be wrong.
        log.info("caption cache %s is stale (%s); rebuilding it", path, err)
        cache = ClipCache.create(path, list(keys), arrays, chunk_rows, attrs, overwrite=True)
    blocks = cache.missing_blocks()
    for start, stop in tqdm(blocks, desc="captions", disable=not progress or not blocks):
        parts = [encoder.encode(captions[i:min(i + batch_size, stop)]) for i in range(start, stop, batch_size)]
        cache.write_block(
            start, stop,
            text=np.concatenate([p.tokens.numpy() for p in parts]).astype(np.float16),
            text_mask=np.concatenate([p.mask.numpy() for p in parts]),
            pooled=np.concatenate([p.pooled.numpy() for p in parts]).astype(np.float32),
            caption=np.asarray(captions[start:stop], dtype=object),
        )
    return cache


def manifest_captions(shards_dir: str, keys: Sequence[str]) -> list[str]:
    """The captions of ``keys`` from the shard manifest (an unknown key is an error)."""

    table = read_manifest(shards_dir)
    by_key = dict(zip(table.column("key").to_pylist(), table.column("caption").to_pylist()))
    missing = [k for k in keys if k not in by_key]
    if missing:
        raise SpressoError(f"{len(missing)} clips of the x0 cache are not in the manifest of {shards_dir} (e.g. {missing[0]})")
    return [by_key[k] or "" for k in keys]


def build_caption_cache(cfg, encoder: TextEncoder | None = None, *, progress: bool = True) -> ClipCache:
    """The caption cache for the x0 cache of ``cfg`` (``cfg.dit.captions_path``), filled as needed."""

    x0 = ClipCache.open(cfg.path(cfg.audioae.latents_path), mode="r")
    keys = x0.keys
    captions = manifest_captions(cfg.path(cfg.data.shards_dir), keys)
    encoder = encoder or build_text_encoder(cfg.dit.text_encoder)
    return fill_caption_cache(cfg.path(cfg.dit.captions_path), keys, captions, encoder,
                              chunk_rows=x0.chunk_rows, batch_size=cfg.dit.text_encoder.batch_size, progress=progress)
