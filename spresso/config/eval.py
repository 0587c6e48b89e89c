"""Evaluation settings: metrics, embedding backend, the evaluation set and the harness."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from spresso.config.base import Section
from spresso.config.scaling import Placement


class SamplerRow(Section):
    """One way of decoding our codec bundles in the evaluation: a solver and its step count."""

    name: Literal["heun", "dpmpp2m"]
    steps: int = Field(..., ge=1)

    def label(self) -> str:
        return f"{self.name}{self.steps}"


class EvalConfig(Placement):
    """``label``/``accelerator`` (from :class:`Placement`) place the per-clip Ray tasks."""

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
    diffusion_steps: int = Field(32, ge=1)  # solver steps for our codec bundles (with the bundle's solver) when samplers is empty
    # Samplers our codec bundles are evaluated with: the first is the point's primary row, each other one an
    # extra row of the table (e.g. the paper's Heun 64 first, then the fast DPM-Solver++(2M) at 32 and 16 steps).
    samplers: list[SamplerRow] = Field(default_factory=list)
    # Extra rows of every evaluate stage, {name: codec spec}: e.g. {opus6: "opus:6", opus12: "opus:12"}.
    baselines: dict[str, str] = Field(default_factory=dict)
    # The floors a codec must clear to carry information: silence (a "silence" row, KAD and mel included)
    # and each clip scored against another real clip of the set (cosine, mel, SI-SDR).
    floors: bool = False
    # What each Ray task (a chunk of clips) asks of the cluster. GPUs are asked for only when set here
    # (an autoscaler then starts GPU nodes); null CPUs: runtime.actor_cpus.
    cpus_per_task: Optional[float] = Field(None, gt=0)
    gpus_per_task: float = Field(0.0, ge=0)
    # Tasks at once (null: as many as the cluster's CPUs hold at the start).
    max_tasks: Optional[int] = Field(None, ge=1)
