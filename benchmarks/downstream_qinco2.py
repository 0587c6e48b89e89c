"""Downstream rows of benchmarks/qinco2.py: held-out clips decoded through stage 3 from QINCo2 and RQ codes.

For each clip (every ``--clip-stride``-th file of ``--clips``, default every 10th; its first 5 s window): the stage-3 model's encoder
makes z (:class:`~spresso.eval.baselines.dae.Stage1Adapter`, which loads any diffusion-autoencoder
checkpoint), each quantizer of the comparison keeps m codebooks of it (equal bits), and stage 3
decodes the reconstruction (same noise seed for every row). Rows: unquantized z (the ceiling),
QINCo2, and RQ of each faiss training mode; columns: multi-scale mel distance and embedding cosine
to the original (lower / higher is better), averaged over the clips.
"""
from __future__ import annotations

import numpy as np
import torch

from spresso.audio import load_mono
from spresso.eval.baselines.audioae import float16_stream, read_float16_stream
from spresso.eval.baselines.dae import Stage1Adapter
from spresso.eval.embeddings import load_embedding_model
from spresso.eval.metrics import cosine_similarity, mel_distance
from spresso.quant.features import audio_files

WINDOW = 240000  # one 5 s window at 48 kHz


def held_out_clips(folder: str, n: int, stride: int = 10) -> list[np.ndarray]:
    """The first 5 s (zero-padded) of up to n held-out files: every 10th by default, as the log-mel set
    holds out; stride 1 for a folder that holds only held-out files (e.g. a z cache's test-split files)."""
    clips = []
    for f in audio_files(folder)[::stride][:n]:
        wave, _, _ = load_mono(f, 48000)
        clips.append(np.pad(wave[:WINDOW], (0, max(0, WINDOW - len(wave)))).astype(np.float32))
    return clips


def downstream_rows(args, res) -> dict[str, dict[str, float]]:
    if args.vectors != "z":
        raise SystemExit("downstream rows need the quantizers trained on z of that model: use --vectors z --z-cache")
    adapter = Stage1Adapter(args.stage3, args.audioae, steps=args.decode_steps)
    embed = load_embedding_model(args.embedding)
    clips = held_out_clips(args.clips, args.n_clips, args.clip_stride)
    ref = embed.embed_from(np.stack(clips), 48000).mean(1)
    ms = [int(m) for m in str(args.m).split(",")]
    runs = [("z (unquantized)", None, 0)] + [(f"{name} m={m}", q, m) for m in ms for name, q in res.models.items()]
    zs = [read_float16_stream(adapter.encode(wave)) for wave in clips]  # [d, T'] per clip, shared by every row
    rows = {}
    for name, q, m in runs:
        outs = []
        for wave, z in zip(clips, zs):
            if q is not None:
                z = q.decode(q.encode(torch.from_numpy(np.ascontiguousarray(z.T)), m)).numpy().T
            outs.append(adapter.decode_variation(float16_stream(z), WINDOW, 0))
        out = np.stack(outs)
        mel = mel_distance(out, np.stack(clips))
        cos = cosine_similarity(embed.embed_from(out, 48000).mean(1), ref)
        # per clip too, for paired differences between rows (same clips, same noise)
        rows[name] = {"mel_distance": float(mel.mean()), "embedding_cosine": float(cos.mean()), "m": m,
                      "mel_per_clip": [float(v) for v in mel], "cosine_per_clip": [float(v) for v in cos]}
        print(f"downstream {name}: mel {rows[name]['mel_distance']:.4f}  {args.embedding} cosine "
              f"{rows[name]['embedding_cosine']:.4f}", flush=True)
    return rows
