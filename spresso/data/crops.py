"""Audio crops for the AudioAE: the crop rule both feeds share (:func:`random_crops`) and the
in-worker feed (``audioae.train.feed: in_worker``), endless shuffled batches of random crops of the train clips.

In that feed the only data split among workers is :func:`spresso.data.reader.iter_clips` (rank r reads
every world_size-th tar), and the stream is endless so every DDP rank runs the same number of steps.
The Ray Data feed is :mod:`spresso.data.audio_feed`.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from spresso.core.errors import SpressoError
from spresso.data.reader import iter_clips, shard_paths


def segment_samples(segment_seconds: float, sample_rate: int, hop: int) -> int:
    """Crop length in samples: ``segment_seconds`` rounded down to a multiple of the hop (at least one hop)."""
    return max(hop, int(segment_seconds * sample_rate) // hop * hop)


def random_crops(wave: np.ndarray, valid_samples: int, segment: int, count: int,
                 rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Yield ``count`` crops of ``segment`` samples, each starting uniformly inside the real audio.

    The one crop rule of both feeds (in-worker and Ray Data), so they draw from the same distribution:
    a start in ``[0, valid - segment]``; a clip whose real audio is shorter than the segment is
    taken from its start, zero-padded when the clip itself is shorter. A generator: each start is
    drawn when its crop is taken, so the in-worker stream keeps its exact draw order.
    """
    valid = max(1, min(int(valid_samples), wave.shape[0]))
    if wave.shape[0] < segment:
        wave = np.pad(wave, (0, segment - wave.shape[0]))
    for _ in range(count):
        start = int(rng.integers(0, valid - segment + 1)) if valid > segment else 0
        yield wave[start : start + segment]


class CropStream:
    """Endless batches ``[B, segment]`` of random crops from the clips of ``tar_paths``.

    Crops start inside a clip's real audio (``valid_samples``) so training does not drown in
    the zero padding of short sound effects; a clip shorter than the segment is taken from its
    start (its padding fills the rest). A shuffle buffer mixes clips of different tars; each
    pass over the data is one "epoch" of the stream.
    """

    def __init__(self, tar_paths: list[str], segment: int, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 crops_per_clip: int = 1, shuffle_buffer: int = 256, seed: int = 0):
        if len(tar_paths) < world_size:
            raise SpressoError(f"{len(tar_paths)} train shard(s) for {world_size} workers: every worker needs at least one")
        self.tar_paths, self.segment, self.batch_size = list(tar_paths), segment, batch_size
        self.rank, self.world_size = rank, world_size
        self.crops_per_clip, self.shuffle_buffer = crops_per_clip, shuffle_buffer
        self.rng = np.random.default_rng([seed, rank])

    def _crops(self) -> Iterator[np.ndarray]:
        while True:
            produced = 0
            for clip in iter_clips(self.tar_paths, self.rank, self.world_size):
                for crop in random_crops(clip["wave"], clip["valid_samples"], self.segment, self.crops_per_clip, self.rng):
                    produced += 1
                    yield crop
            if produced == 0:
                raise SpressoError(f"train shards of rank {self.rank} hold no clips")

    def __iter__(self) -> Iterator[torch.Tensor]:
        buffer: list[np.ndarray] = []
        batch: list[np.ndarray] = []
        for crop in self._crops():
            if len(buffer) < self.shuffle_buffer:
                buffer.append(crop)
                continue
            i = int(self.rng.integers(len(buffer)))
            buffer[i], crop = crop, buffer[i]
            batch.append(crop)
            if len(batch) == self.batch_size:
                yield torch.from_numpy(np.stack(batch))
                batch = []


def load_valid_clips(shards_dir: str, limit: int) -> list[dict]:
    """The first ``limit`` clips of the valid split (deterministic), or [] without a valid split."""
    clips = []
    for clip in iter_clips(shard_paths(shards_dir, "valid")):
        clips.append(clip)
        if len(clips) >= limit:
            break
    return clips
