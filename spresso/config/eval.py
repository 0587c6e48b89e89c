"""Evaluation settings: metrics, embedding backend, the evaluation set and the harness."""
from __future__ import annotations

from pydantic import Field

from spresso.config.base import Section


class EvalConfig(Section):
    embedding: str = "aisfx"  # aisfx | vggish | clap (the latter two need embedding_checkpoint)
    embedding_checkpoint: str | None = None  # local file/folder for vggish / clap; never downloaded
    num_clips: int = Field(500, ge=1)  # the paper: 500 five-second clips per set
    seed: int = 0
    split: str = "test"  # shard split evaluated when no folder is given
    clip_seconds: float = Field(5.0, gt=0)
    out_dir: str = "eval"  # <workdir>/eval/<set>/... outputs, <workdir>/eval/cache/<codec-id>/ per-clip results
    n_boot: int = Field(200, ge=10)  # bootstrap draws for every interval (FAD costs two D x D eighs per draw)
    level: float = Field(0.95, gt=0, lt=1)
    example_clips: int = Field(4, ge=0)  # clips with audio players and spectrograms in the report
    variations: int = Field(2, ge=0)  # extra decodings (other seeds) of stochastic codecs for the examples
    diffusion_steps: int = Field(32, ge=1)  # solver steps for our codec bundles (their solver, DPM-Solver++(2M) by default; the paper: 64 Heun)
    gpus_per_task: float = Field(0.25, ge=0)  # used only when the cluster has GPUs
