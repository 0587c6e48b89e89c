"""Checks that the diffusion autoencoder behaves as the paper says, measured on held-out clips.

Three comparisons (issue 6, "What must be shown"), each on the same seeded valid-split clips of
the x0 cache, decoded with the same seeded noise, solver and step count, so that two rows differ
only in the model or the conditioning they name:

1. *conditioning is used* -- at every operating point, stage 1 decoding from z = g_psi(x0) must be
   closer to the original than the same model with z withheld (an unconditional sample);
2. *frame rate* -- stage 1 from z at the smallest t (highest z frame rate) must beat the largest t
   (the paper: reconstruction error rises with t);
3. *stage 3 helps* -- with z_q (z quantized by the frozen QINCo2 with the point's m codebooks) the
   stage-3 model must beat the stage-1 model fed the same z_q.

Every reconstruction is scored twice: against the real audio (the clip's original, from the
shards) and against the AudioAE decoding of the original x0 (the diffusion autoencoder's own
target). The verdicts use the real audio when it is at hand: a weak AudioAE adds an output that
does not depend on its latent (the demo one puts a low-frequency waveform under every clip), and
SI-SDR against its decodings then rewards reproducing that artifact -- the ``constant`` row, the
AudioAE decoding one mean latent frame for every clip, measures how much. Metrics are per clip
over the clip's valid samples (the cache pads short clips), averaged over ``seeds`` decodings of
each clip, then over clips; each comparison also counts the clips it wins and gives a paired
bootstrap interval for its mean difference.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from spresso.config.layout import point_config, quantizer_dir, stage_output
from spresso.core.checkpoint import has_checkpoint
from spresso.core.errors import SpressoError
from spresso.core.rates import frame_rate
from spresso.data.latents import ShardClipSource, manifest_columns
from spresso.data.zarr_cache import ClipCache
from spresso.diffusion.checkpoints import load_dae
from spresso.diffusion.normalize import LatentNormalizer
from spresso.diffusion.reconstruct import null_text
from spresso.diffusion.sampler import sample
from spresso.eval.metrics import mel_distance, si_sdr
from spresso.quant import load_quantizer

# Row conditions.
FROM_Z, WITHHELD, FROM_ZQ = "z", "withheld", "z_q"
ORIGINAL, CONSTANT = "original", "constant"  # the AudioAE rows: decoding the clip's x0 / one mean frame
# Metric columns: <metric>_<reference>; "ae" = AudioAE-decoded original x0, "audio" = the real clip.
METRICS = ("mel", "si_sdr")
REFERENCES = ("ae", "audio")


# -- inputs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecodeSettings:
    """How every row is decoded: one solver, step count and noise seed for all (paired rows)."""

    steps: int = 32
    solver: str = "dpmpp2m"
    seed: int = 0
    seeds: int = 1  # decodings per clip (noise seeds seed, seed + SEED_STRIDE, ...), scores averaged per clip

    def describe(self) -> str:
        noise = f"noise seed {self.seed}" if self.seeds == 1 else f"{self.seeds} noise seeds from {self.seed}, scores averaged per clip"
        return f"{self.solver} {self.steps} steps, {noise}, null caption"

    def draws(self) -> list["DecodeSettings"]:
        """One single-seed setting per decoding of a clip."""
        return [DecodeSettings(self.steps, self.solver, self.seed + SEED_STRIDE * k) for k in range(max(1, int(self.seeds)))]


SEED_STRIDE = 1_000_000  # above every batch offset (seed + clip index), so no two decodings share noise


@dataclass
class EvalClips:
    """Seeded clips of one split: x0 [N, C, T] (AudioAE units), valid frames, real audio when available."""

    rows: np.ndarray
    keys: list[str]
    x0: torch.Tensor
    valid_frames: np.ndarray
    hop: int
    audio: np.ndarray | None = None  # [N, T * hop] float32, or None (shards missing / misaligned)
    audio_note: str = ""

    @property
    def frames(self) -> int:
        return int(self.x0.shape[-1])

    def valid_samples(self) -> np.ndarray:
        return np.maximum(self.valid_frames.astype(np.int64), 1) * self.hop


def select_clips(x0_path: str, n: int, *, seed: int = 0, split: str = "valid", shards_dir: str | None = None) -> EvalClips:
    """``n`` rows of ``split`` drawn with ``seed`` (sorted), their x0 and, from ``shards_dir``, their audio."""

    cache = ClipCache.open(x0_path, mode="r")
    pool = cache.rows_where("split", split)
    if pool.size == 0:
        raise SpressoError(f"{x0_path}: no finished rows in split '{split}'")
    if n < 1:
        raise SpressoError(f"need at least one clip, got n={n}")
    rows = np.sort(np.random.default_rng(seed).choice(pool, size=min(n, pool.size), replace=False))
    x0 = torch.from_numpy(np.asarray(cache.read("x0", rows), dtype=np.float32))
    valid = np.asarray(cache.read("valid_frames", rows), dtype=np.int64)
    keys = [str(k) for k in np.asarray(cache.keys)[rows]]
    hop = int(round(48000 / float(cache.attrs.get("frame_rate", 100))))
    clips = EvalClips(rows, keys, x0, valid, hop)
    if shards_dir is None:
        clips.audio_note = "no shards given: scored against the AudioAE-decoded x0 only"
    else:
        clips.audio, clips.audio_note = _real_audio(shards_dir, rows, keys, x0.shape[-1] * hop)
    return clips


def _real_audio(shards_dir: str, rows: np.ndarray, keys: list[str], clip_samples: int) -> tuple[np.ndarray | None, str]:
    """The clips' audio from the shards (row i of the cache = manifest row i), checked by key."""

    if not Path(shards_dir).exists() and "://" not in shards_dir:
        return None, f"no shards at {shards_dir}: scored against the AudioAE-decoded x0 only"
    try:
        manifest_keys = manifest_columns(shards_dir)["key"]
        if any(str(manifest_keys[r]) != k for r, k in zip(rows, keys)):
            return None, f"{shards_dir}: manifest rows do not match the x0 cache's keys (shards rebuilt?): AudioAE reference only"
        source = ShardClipSource(shards_dir, clip_samples)
        audio = np.stack([source(int(r), int(r) + 1)["wave"][0] for r in rows])
    except (SpressoError, OSError, IndexError) as err:
        return None, f"real audio unavailable ({str(err).splitlines()[0]}): AudioAE reference only"
    return audio.astype(np.float32), f"real audio from {shards_dir}"


@dataclass
class StageModel:
    """One loaded stage checkpoint (stage 1 or stage 3) with the normaliser it was trained with."""

    model: torch.nn.Module  # DiffusionAutoencoder
    normalizer: object  # LatentNormalizer
    stage: str
    path: str = ""
    run_id: str | None = None  # the MLflow run that trained it (checkpoint meta), for lineage

    @property
    def t(self) -> int:
        return int(self.model.t)


def load_stage(checkpoint_dir: str | Path, stage: str, device="cpu") -> StageModel:
    model, info = load_dae(checkpoint_dir, map_location=device)
    meta = info.get("meta", {})
    normalizer = LatentNormalizer.from_attrs(meta, float(model.denoiser.sigma_data))
    return StageModel(model.eval(), normalizer, stage, str(checkpoint_dir), meta.get("mlflow_run_id"))


@dataclass
class PointModels:
    """What one operating point trained: stage 1 always; QINCo2, m and stage 3 when discrete."""

    name: str
    stage1: StageModel
    quantizer: object | None = None  # QINCo2 or RQ (what the qinco2 stage shipped)
    m: int | None = None
    stage3: StageModel | None = None
    beam: int | None = None

    @property
    def t(self) -> int:
        return self.stage1.t


def trained_points(cfg, device="cpu") -> tuple[list[PointModels], list[str]]:
    """The pipeline's operating points whose stage-1 checkpoint exists (and their stage 3 / QINCo2).

    Returns the loaded points and one line per point or part left out (not trained yet).
    """

    points, skipped = [], []
    if not cfg.pipeline.points:
        raise SpressoError("the config lists no pipeline.points (operating points) to check")
    for point in cfg.pipeline.points:
        pcfg = point_config(cfg, point)
        s1 = stage_output(pcfg, "stage1")
        if not has_checkpoint(s1):
            skipped.append(f"{point.name}: no stage-1 checkpoint at {s1}")
            continue
        entry = PointModels(point.name, load_stage(s1, "stage1", device))
        if not point.continuous:
            qdir, s3 = quantizer_dir(pcfg), stage_output(pcfg, "stage3")
            if has_checkpoint(qdir):
                entry.quantizer, entry.m = load_quantizer(qdir, device=str(device)), int(pcfg.dae.point().m)
                entry.beam = pcfg.dae.stage3.quantize_beam
            else:
                skipped.append(f"{point.name}: no quantizer at {qdir}")
            if has_checkpoint(s3):
                entry.stage3 = load_stage(s3, "stage3", device)
            else:
                skipped.append(f"{point.name}: no stage-3 checkpoint at {s3}")
        points.append(entry)
    return points, skipped


# -- decoding and scoring -------------------------------------------------------------------------
@torch.no_grad()
def decode_x0(stage: StageModel, z: torch.Tensor | None, frames: int, batch: int, settings: DecodeSettings,
              valid_frames: torch.Tensor | None = None) -> torch.Tensor:
    """z [B, c, T'] or None (withheld) -> x0 [B, C, frames] in AudioAE units, from seeded noise.

    The noise depends only on (seed, batch, C, frames), so every row starts from the same noise.
    ``valid_frames`` [B]: each clip's real frames (a model trained with mask_padding hides the rest).
    """
    model = stage.model
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(int(settings.seed))
    noise = torch.randn(batch, stage.normalizer.channels, int(frames), generator=gen).to(device)
    text = null_text(model, batch, device)
    drop = torch.ones(batch, dtype=torch.bool, device=device)  # the codec's case: no caption
    z = None if z is None else z.to(device).float()
    valid = None if valid_frames is None else torch.as_tensor(valid_frames).to(device)

    def denoise(x, sigma):
        return model(x, sigma, text, z, drop=drop, valid_frames=valid)

    y = sample(denoise, noise, steps=settings.steps, solver=settings.solver)
    return stage.normalizer.denormalize(y)


@torch.no_grad()
def encode_z(stage: StageModel, x0: torch.Tensor, valid_frames=None) -> torch.Tensor:
    device = next(stage.model.parameters()).device
    valid = None if valid_frames is None else torch.as_tensor(valid_frames).to(device)
    return stage.model.encode(stage.normalizer.normalize(x0.to(device)), valid).float()


@torch.no_grad()
def quantize_z(quantizer, z: torch.Tensor, m: int, beam: int | None = None) -> torch.Tensor:
    """z [B, c, T'] -> z_q [B, c, T'] with the first m codebooks."""
    vectors = z.transpose(1, 2).to(quantizer.norm.mean.device)
    codes = quantizer.encode(vectors, m, beam=beam)
    return quantizer.decode(codes).float().transpose(1, 2).to(z.device)


class Scorer:
    """Per-clip mel distance and SI-SDR of decoded x0 against the clips' references."""

    def __init__(self, audioae, clips: EvalClips, batch: int = 8):
        self.audioae, self.clips, self.batch = audioae, clips, int(batch)
        self.n_valid = clips.valid_samples()
        self.references = {"ae": self.to_audio(clips.x0)}
        if clips.audio is not None:
            self.references["audio"] = clips.audio

    @torch.no_grad()
    def to_audio(self, x0: torch.Tensor) -> np.ndarray:
        device = next(self.audioae.parameters()).device
        parts = [self.audioae.decode(x0[i:i + self.batch].to(device)).float().cpu().numpy() for i in range(0, x0.shape[0], self.batch)]
        return np.concatenate(parts)

    def score_audio(self, wave: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for ref_name, ref in self.references.items():
            n = min(wave.shape[-1], ref.shape[-1])
            mel, sdr = [], []
            for i, valid in enumerate(self.n_valid):
                k = int(min(valid, n))
                mel.append(float(mel_distance(wave[i, :k], ref[i, :k])[0]))
                sdr.append(float(si_sdr(wave[i, :k], ref[i, :k])[0]))
            out[f"mel_{ref_name}"], out[f"si_sdr_{ref_name}"] = np.asarray(mel), np.asarray(sdr)
        return out

    def score(self, x0_hat: torch.Tensor) -> dict[str, np.ndarray]:
        return self.score_audio(self.to_audio(x0_hat.cpu()))

    def constant_latent(self) -> torch.Tensor:
        """Every clip's x0 replaced by the clips' mean frame, held for the whole clip: a latent that
        carries nothing about any clip, so whatever its decoding scores is the AudioAE's own."""
        x0 = self.clips.x0
        return x0.mean(dim=(0, 2), keepdim=True).expand_as(x0).contiguous()


# -- results --------------------------------------------------------------------------------------
@dataclass
class Row:
    point: str
    t: int
    model: str  # stage1 | stage3 | audioae
    condition: str  # z | withheld | z_q | original
    scores: dict[str, np.ndarray]
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.point}/{self.model}/{self.condition}"

    def mean(self, column: str) -> float:
        return float(np.mean(self.scores[column])) if column in self.scores else float("nan")


@dataclass
class Comparison:
    """``better`` should beat ``worse``: lower mel distance and higher SI-SDR against the primary
    reference (the real audio when both rows have it, else the AudioAE decoding)."""

    check: str
    claim: str
    better: Row
    worse: Row

    @property
    def reference(self) -> str:
        both = set(self.better.scores) & set(self.worse.scores)
        return "audio" if {"mel_audio", "si_sdr_audio"} <= both else "ae"

    def delta(self, column: str) -> float:
        """better - worse, averaged over clips (mel: negative is good; SI-SDR: positive is good)."""
        return self.better.mean(column) - self.worse.mean(column)

    def interval(self, column: str, *, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
        """Paired bootstrap interval of ``delta(column)``: clips resampled with replacement."""
        b, w = self.better.scores.get(column), self.worse.scores.get(column)
        if b is None or w is None:
            return float("nan"), float("nan")
        diff = np.asarray(b, np.float64) - np.asarray(w, np.float64)
        idx = np.random.default_rng(seed).integers(0, diff.size, size=(int(resamples), diff.size))
        means = diff[idx].mean(axis=1)
        tail = (1.0 - level) / 2 * 100
        return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))

    def wins(self, column: str) -> int:
        b, w = self.better.scores.get(column), self.worse.scores.get(column)
        if b is None or w is None:
            return 0
        return int(np.sum(b < w)) if column.startswith("mel") else int(np.sum(b > w))

    @property
    def holds(self) -> bool:
        ref = self.reference
        return self.delta(f"mel_{ref}") < 0 and self.delta(f"si_sdr_{ref}") > 0

    @property
    def significant(self) -> bool:
        """Both primary deltas hold with their 95% bootstrap interval clear of zero."""
        ref = self.reference
        return self.interval(f"mel_{ref}")[1] < 0 and self.interval(f"si_sdr_{ref}")[0] > 0


@dataclass
class DAEChecks:
    rows: list[Row]
    comparisons: list[Comparison]
    clips: int
    settings: DecodeSettings
    audio_note: str = ""
    skipped: list[str] = field(default_factory=list)

    def columns(self) -> list[str]:
        cols = [f"{m}_{r}" for r in REFERENCES for m in METRICS]
        return [c for c in cols if any(c in row.scores for row in self.rows)]

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics: row means and comparison deltas / win counts / verdicts."""
        out = {}
        for row in self.rows:
            for c in self.columns():
                if c in row.scores:
                    out[f"{row.label.replace('/', '.')}.{c}"] = row.mean(c)
        for comp in self.comparisons:
            for c in self.columns():
                out[f"check.{comp.check}.delta_{c}"] = comp.delta(c)
                out[f"check.{comp.check}.wins_{c}"] = float(comp.wins(c))
            for c in (f"mel_{comp.reference}", f"si_sdr_{comp.reference}"):
                lo, hi = comp.interval(c)
                out[f"check.{comp.check}.ci_low_{c}"], out[f"check.{comp.check}.ci_high_{c}"] = lo, hi
            out[f"check.{comp.check}.holds"] = float(comp.holds)
            out[f"check.{comp.check}.significant"] = float(comp.significant)
        return out

    def to_dict(self) -> dict:
        return {"clips": self.clips, "decode": self.settings.describe(), "audio": self.audio_note, "skipped": self.skipped,
                "rows": [{"label": r.label, "point": r.point, "t": r.t, "model": r.model, "condition": r.condition,
                          "seconds": r.seconds, **{c: r.scores[c].tolist() for c in r.scores}} for r in self.rows],
                "comparisons": [{"check": c.check, "claim": c.claim, "better": c.better.label, "worse": c.worse.label,
                                 "reference": c.reference, "holds": c.holds, "significant": c.significant,
                                 **{f"delta_{k}": c.delta(k) for k in self.columns()},
                                 **{f"ci95_{k}": list(c.interval(k)) for k in self.columns()},
                                 **{f"wins_{k}": c.wins(k) for k in self.columns()}} for c in self.comparisons]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def run_checks(points: Iterable[PointModels], clips: EvalClips, audioae, settings: DecodeSettings = DecodeSettings(), *,
               batch: int = 8, progress: bool = False) -> DAEChecks:
    """Decode and score every row the three checks need; return the rows and the comparisons."""

    points = list(points)
    if not points:
        raise SpressoError("no trained operating point to check (train stage 1 first)")
    scorer = Scorer(audioae, clips, batch)
    rows: list[Row] = []
    if "audio" in scorer.references:  # the AudioAE alone: the ceiling every DAE row sits under (vs real audio)
        vs_audio = {k: v for k, v in scorer.score_audio(scorer.references["ae"]).items() if k.endswith("_audio")}
        rows.append(Row("-", 0, "audioae", ORIGINAL, vs_audio))
    rows.append(Row("-", 0, "audioae", CONSTANT, scorer.score(scorer.constant_latent())))
    jobs = []
    for p in points:
        jobs += [(p, p.stage1, FROM_Z), (p, p.stage1, WITHHELD)]
        if p.quantizer is not None:
            jobs.append((p, p.stage1, FROM_ZQ))
            if p.stage3 is not None:
                jobs += [(p, p.stage3, FROM_ZQ), (p, p.stage3, FROM_Z)]
    cache: dict[tuple[str, str], torch.Tensor] = {}
    bar = tqdm(jobs, desc="dae checks", disable=not progress)
    for p, stage, condition in bar:
        bar.set_postfix_str(f"{p.name}/{stage.stage}/{condition}")
        start = time.perf_counter()
        if condition != WITHHELD and (p.name, FROM_Z) not in cache:
            cache[(p.name, FROM_Z)] = encode_z(p.stage1, clips.x0, clips.valid_frames)  # g_psi is frozen after stage 1: one z per point
        if condition == FROM_ZQ and (p.name, FROM_ZQ) not in cache:
            cache[(p.name, FROM_ZQ)] = quantize_z(p.quantizer, cache[(p.name, FROM_Z)], p.m, p.beam)
        per_draw = []
        for draw in settings.draws():
            parts = []
            for i in range(0, clips.x0.shape[0], batch):
                z = None if condition == WITHHELD else cache[(p.name, condition)][i:i + batch]
                parts.append(decode_x0(stage, z, clips.frames, min(batch, clips.x0.shape[0] - i),
                                       DecodeSettings(draw.steps, draw.solver, draw.seed + i),
                                       clips.valid_frames[i:i + batch]))
            per_draw.append(scorer.score(torch.cat(parts)))
        scores = {c: np.mean([d[c] for d in per_draw], axis=0) for c in per_draw[0]}
        rows.append(Row(p.name, p.t, stage.stage, condition, scores, time.perf_counter() - start))
    return DAEChecks(rows, compare(rows), int(clips.x0.shape[0]), settings, clips.audio_note)


def compare(rows: list[Row]) -> list[Comparison]:
    """The three checks' comparisons among the rows present."""
    by = {r.label: r for r in rows}
    out = []
    stage1_z = [r for r in rows if r.model == "stage1" and r.condition == FROM_Z]
    for r in stage1_z:
        if f"{r.point}/stage1/{WITHHELD}" in by:
            out.append(Comparison(f"conditioning.{r.point}", f"{r.point} (t={r.t}): stage 1 from z beats z withheld",
                                  r, by[f"{r.point}/stage1/{WITHHELD}"]))
    if len({r.t for r in stage1_z}) > 1:
        lo, hi = min(stage1_z, key=lambda r: r.t), max(stage1_z, key=lambda r: r.t)
        out.append(Comparison("frame_rate", f"stage 1 from z: t={lo.t} ({frame_rate(lo.t):.3g} Hz) beats t={hi.t} ({frame_rate(hi.t):.3g} Hz)", lo, hi))
    for r in rows:
        if r.model == "stage3" and r.condition == FROM_ZQ and f"{r.point}/stage1/{FROM_ZQ}" in by:
            out.append(Comparison(f"stage3.{r.point}", f"{r.point}: stage 3 beats stage 1 on the same z_q",
                                  r, by[f"{r.point}/stage1/{FROM_ZQ}"]))
    return out


def format_table(result: DAEChecks) -> str:
    """The rows (clip means) then the comparisons with their verdicts, as fixed-width text."""
    cols = result.columns()
    head = f"{'row':<28}{'t':>4}" + "".join(f"{c:>14}" for c in cols) + f"{'sec':>7}"
    lines = [f"DAE checks: {result.clips} valid-split clips; {result.settings.describe()}; {result.audio_note}",
             "mel = multi-scale log-mel L1 (lower is better), si_sdr in dB (higher is better);",
             "_audio = against the real clip, _ae = against the AudioAE-decoded original x0;",
             "-/audioae/constant = the AudioAE decoding one mean latent frame for every clip (knows no clip)", "",
             head, "-" * len(head)]
    for r in result.rows:
        t = str(r.t) if r.t else "-"
        lines.append(f"{r.label:<28}{t:>4}" + "".join(f"{r.mean(c):>14.3f}" if c in r.scores else f"{'-':>14}" for c in cols) + f"{r.seconds:>7.1f}")
    lines += ["", f"{'check':<22}{'holds':>6}{'ref':>6}" + "".join(f"{'d_' + c:>16}{'wins':>7}" for c in cols) + "  claim"]
    for c in result.comparisons:
        lines.append(f"{c.check:<22}{'yes' if c.holds else 'NO':>6}{c.reference:>6}"
                     + "".join(f"{c.delta(k):>16.3f}{f'{c.wins(k)}/{result.clips}':>7}" for k in cols) + f"  {c.claim}")
    lines += ["", "95% paired bootstrap intervals of the deltas against the verdict's reference:"]
    for c in result.comparisons:
        ivs = "   ".join(f"d_{k} [{lo:+.3f}, {hi:+.3f}]" for k in (f"mel_{c.reference}", f"si_sdr_{c.reference}")
                       for lo, hi in [c.interval(k)])
        lines.append(f"{c.check:<22}{ivs}   {'clear of zero' if c.significant else 'overlaps zero'}")
    lines.append("(d_ = better row minus worse row; holds = lower mel and higher SI-SDR against `ref`:"
                 " the real audio when present, else the AudioAE decoding)")
    for s in result.skipped:
        lines.append(f"skipped: {s}")
    return "\n".join(lines)
