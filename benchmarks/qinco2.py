"""QINCo2 against a fair RQ at equal bits, in one command (issue 18, item 3).

Fair means: faiss RQ trains on exactly the array QINCo2 trains on (``compare`` hands both the same
one; a test asserts it), at the same K and M (same bits), with QINCo2's encoding beam as its
training beam; it is reported with both faiss training modes (``progressive_dim`` and ``default``)
and encoded at QINCo2's beam, at beam 1 and at the largest beam (``--max-beam``). QINCo2 trains
with the beam and candidates it encodes with. Both are scored on the same held-out vectors, held
out by file: every 10th audio file of the log-mel set, or the valid + test rows (clips) of a z cache.

Vector sets: ``--vectors logmel`` (log-mel frames of ``--data``, PCA to d dims fitted on the
training files; stand-ins for z), or ``--vectors z --z-cache PATH`` (the z cache of a stage-1 model,
``<workdir>/dae/<point>/t<t>/z.zarr``).

Downstream rows (``--stage3 DIR --audioae DIR --clips FOLDER``): held-out clips encoded to z by the
stage-3 model's encoder, quantized by QINCo2 and by RQ at the same m (equal bits), decoded through
stage 3, and compared with the originals: mel distance and embedding cosine (``--embedding``).

    nice .venv/bin/python benchmarks/qinco2.py --minutes 8 --out qinco2_fair.json
    nice .venv/bin/python benchmarks/qinco2.py --vectors z --z-cache work/demo/dae/d96/t100/z.zarr --d 64
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field

import faiss
import numpy as np
import torch

from spresso.core.rates import bits_per_frame
from spresso.data.vectors import VectorSource
from spresso.quant import FaissRQ, QINCo2, QINCo2Spec, residual_kmeans_init
from spresso.quant.features import audio_feature_vectors, audio_files
from spresso.quant.rq_baseline import TRAIN_TYPES
from spresso.quant.training import (
    TrainSettings,
    make_optimizer,
    relative_mse,
    reseed_unused,
    train_step,
)


@dataclass
class Settings:
    d: int = 64
    K: int = 256
    M: int = 8
    preset: str = "S"
    beam: int = 8  # QINCo2's encoding beam = its training beam = RQ's training beam
    candidates: int = 8
    max_beam: int = 64  # the largest RQ encoding beam reported
    minutes: float = 8.0  # QINCo2 training budget
    # Held-out check of QINCo2 every this many minutes of training (0: none); its time is not
    # charged to the budget. With RQ's final row it says how the ratio was still moving.
    trace_minutes: float = 0.0
    batch: int = 4000
    max_steps: int | None = None
    train_types: tuple[str, ...] = tuple(TRAIN_TYPES)
    seed: int = 0


@dataclass
class Result:
    """Held-out relative MSE per m (index m-1) of each row, and what each row cost."""

    rows: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, dict] = field(default_factory=dict)
    models: dict[str, torch.nn.Module] = field(default_factory=dict)  # "qinco2", "rq <train type>" (torch modules)


# -- the vector sets, held out by file -------------------------------------------------------
def logmel_vectors(data: str, d: int, held_out: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) log-mel frames, PCA to d dims fitted on the training files; every 10th file held out."""
    files = audio_files(data)
    train, basis = audio_feature_vectors([f for i, f in enumerate(files) if i % 10], d=d, return_basis=True)
    held = audio_feature_vectors([f for i, f in enumerate(files) if i % 10 == 0], d=d, basis=basis)
    return train, held[np.random.default_rng(seed).permutation(len(held))[:held_out]]


def z_vectors(path: str, array: str, held_out: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) z frames of a z cache: its train rows, and its valid + test rows (whole clips)."""
    src = VectorSource(path, array, "NCT")
    train_rows, val_rows = src.split(0.1, seed)
    held_rows = src.held_out_rows(train_rows, val_rows)
    return src.read_rows(train_rows), src.sample(held_rows, held_out, seed=seed)


# -- the two quantizers ----------------------------------------------------------------------
def train_rq(x: np.ndarray, s: Settings, train_type: str) -> FaissRQ:
    return FaissRQ(s.d, s.M, s.K, beam=s.beam, train_type=train_type).train(x)


def train_qinco2(x: np.ndarray, s: Settings, log=print, held: np.ndarray | None = None) -> tuple[QINCo2, dict]:
    """k-means init, then steps with the encoding beam and candidates until the time budget (or max_steps) runs out.

    With ``held`` and ``s.trace_minutes``, the held-out curve is measured at the start and every
    ``trace_minutes`` of training (``info["trace"]``: steps, training seconds, relative MSE per m).
    """
    torch.manual_seed(s.seed)
    model = QINCo2(QINCo2Spec.from_preset(s.preset, d=s.d, K=s.K, M=s.M, A=s.candidates, B=s.beam))
    model.norm.fit(x)
    xn_all = model.norm(torch.from_numpy(x))
    residual_kmeans_init(model, xn_all.numpy(), niter=20, seed=s.seed)
    budget = s.minutes * 60
    steps_per_epoch = max(1, len(x) // s.batch)
    # With max_steps: the schedule in steps. Else the schedule runs on the training clock: a nominal
    # 1000 steps spread over the time budget (warm-up in its first 1%), whatever a step costs.
    ts = TrainSettings(beam=s.beam, candidates=s.candidates, warmup_steps=10, total_steps=s.max_steps or 1000)
    rng = np.random.default_rng(s.seed)
    step, t0 = 0, time.time()
    on_clock = None if s.max_steps is not None else (lambda _step: ts.total_steps * min(1.0, (time.time() - t0) / budget))
    opt, sched = make_optimizer(model, ts, on_clock)
    trace: list[dict] = []
    next_trace = 0.0

    def checkpoint_trace() -> None:
        nonlocal t0, next_trace
        if held is None or not s.trace_minutes:
            return
        t_check, seconds = time.time(), time.time() - t0
        model.eval()
        row = curve(lambda v, m: model.encode(torch.from_numpy(v), m), lambda c: model.decode(c).numpy(), held, s.M)
        model.train()
        trace.append({"steps": step, "seconds": round(seconds, 1), "rel_mse": row})
        log(f"  held-out at step {step} ({seconds:.0f}s): m={s.M} {row[-1]:.5f}")
        next_trace = seconds + s.trace_minutes * 60
        t0 += time.time() - t_check  # the check is not training time

    checkpoint_trace()
    done = lambda: (s.max_steps is not None and step >= s.max_steps) or time.time() - t0 > budget  # noqa: E731
    while not done():
        usage = torch.zeros(s.M, s.K)
        for idx in np.array_split(rng.permutation(len(x)), steps_per_epoch):
            xn = xn_all[idx]
            info, codes = train_step(model, opt, sched, xn, ts, usage=usage)
            step += 1
            if step % 10 == 0:
                log(f"  step {step} train MSE (normalised) {info['train_mse']:.4f} lr {info['lr']:.2e}  {time.time() - t0:.0f}s")
            if trace and time.time() - t0 >= next_trace:
                checkpoint_trace()
            if done():
                break
        reseed_unused(model, opt, usage, xn, codes)
    seconds = time.time() - t0
    if trace and trace[-1]["steps"] != step:
        checkpoint_trace()
    model.eval()
    return model, {"steps": step, "epochs": step * s.batch / len(x), "seconds": seconds,
                   "train_beam": ts.beam, "train_candidates": ts.candidates, "trace": trace}


def curve(encode, decode, held: np.ndarray, M: int) -> list[float]:
    """Relative MSE of a truncated encode at m = 1..M."""
    return [relative_mse(held, decode(encode(held, m))) for m in range(1, M + 1)]


def compare(train_x: np.ndarray, held: np.ndarray, s: Settings, *, rq_trainer=train_rq, qinco2_trainer=train_qinco2,
            log=print) -> Result:
    """Every row of the table. Both trainers get ``train_x`` itself: the same vectors, by construction."""
    res = Result()
    t0 = time.time()
    model, info = qinco2_trainer(train_x, s, held=held)
    res.info["qinco2"] = {**info, "train_vectors": len(train_x)}
    res.models["qinco2"] = model
    res.rows[f"QINCo2 beam {s.beam} A {s.candidates}"] = curve(
        lambda x, m: model.encode(torch.from_numpy(x), m), lambda c: model.decode(c).numpy(), held, s.M)
    log(f"QINCo2: {info['steps']} steps ({info['epochs']:.2f} epochs) in {time.time() - t0:.0f}s")
    for train_type in s.train_types:
        t0 = time.time()
        rq = rq_trainer(train_x, s, train_type)
        res.info[f"rq {train_type}"] = {"seconds": time.time() - t0, "train_vectors": len(train_x), "train_beam": s.beam}
        log(f"faiss RQ ({train_type}, beam {s.beam}) trained in {time.time() - t0:.0f}s")
        module = res.models[f"rq {train_type}"] = rq.to_module()
        for beam in sorted({1, s.beam, s.max_beam}):
            res.rows[f"RQ {train_type} beam {beam}"] = curve(
                lambda x, m, b=beam: module.encode(torch.from_numpy(x), m, beam=b), lambda c: module.decode(c).numpy(), held, s.M)
    return res


def fair_rq(res: Result, s: Settings) -> str:
    """The row QINCo2 is measured against: RQ at QINCo2's beam, of whichever faiss training mode did
    better at m = M (the stronger baseline)."""
    rows = [f"RQ {t} beam {s.beam}" for t in s.train_types if f"RQ {t} beam {s.beam}" in res.rows]
    return min(rows, key=lambda name: res.rows[name][-1]) if rows else f"RQ {s.train_types[0]} beam {s.beam}"


def table(res: Result, s: Settings) -> str:
    names = list(res.rows)
    base = f"QINCo2 beam {s.beam} A {s.candidates}"
    fair = fair_rq(res, s)
    lines = ["| m | bits | " + " | ".join(names) + f" | QINCo2 / {fair} |", "|---" * (len(names) + 3) + "|"]
    for m in range(1, s.M + 1):
        vals = " | ".join(f"{res.rows[n][m - 1]:.5f}" for n in names)
        ratio = res.rows[base][m - 1] / res.rows[fair][m - 1] if fair in res.rows else float("nan")
        lines.append(f"| {m} | {bits_per_frame(m, s.K):.0f} | {vals} | {ratio:.3f} |")
    return "\n".join(lines)


def trace_table(res: Result, s: Settings) -> str:
    """QINCo2's held-out error over its training, as ratios to the fair RQ row: is the ratio still moving?"""
    trace = res.info.get("qinco2", {}).get("trace") or []
    fair = res.rows.get(fair_rq(res, s))
    if not trace or fair is None:
        return ""
    ms = sorted({1, min(4, s.M), s.M})
    lines = ["| steps | training min | " + " | ".join(f"ratio m={m}" for m in ms) + " |", "|---" * (len(ms) + 2) + "|"]
    for point in trace:
        ratios = " | ".join(f"{point['rel_mse'][m - 1] / fair[m - 1]:.3f}" for m in ms)
        lines.append(f"| {point['steps']} | {point['seconds'] / 60:.1f} | {ratios} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vectors", choices=["logmel", "z"], default="logmel")
    ap.add_argument("--data", default="../shared/data/sfx-dev", help="audio folder of the log-mel set")
    ap.add_argument("--z-cache", help="z cache (Zarr) of a stage-1 model, for --vectors z")
    ap.add_argument("--array", default="z")
    ap.add_argument("--heldout", type=int, default=2000)
    ap.add_argument("--max-train", type=int, default=None,
                    help="subsample the training vectors (seeded) to this many; both quantizers get that same array")
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--K", type=int, default=256)
    ap.add_argument("--M", type=int, default=8)
    ap.add_argument("--preset", default="S")
    ap.add_argument("--beam", type=int, default=8, help="QINCo2's encoding (= training) beam, RQ's training beam")
    ap.add_argument("--candidates", type=int, default=8, help="QINCo2's pre-selected candidates (training and encoding)")
    ap.add_argument("--max-beam", type=int, default=64, help="the largest RQ encoding beam reported")
    ap.add_argument("--minutes", type=float, default=8.0, help="QINCo2 training budget")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--trace-minutes", type=float, default=0.0,
                    help="measure QINCo2's held-out curve every this many training minutes (not charged to the budget)")
    ap.add_argument("--batch", type=int, default=4000)
    ap.add_argument("--train-types", default="progressive_dim,default", help="faiss RQ training modes (the first is the ratio's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="write the rows and settings as JSON here")
    ap.add_argument("--stage3", help="downstream rows: a stage-3 checkpoint folder (its encoder makes z)")
    ap.add_argument("--audioae", help="downstream rows: the AudioAE checkpoint folder")
    ap.add_argument("--clips", help="downstream rows: a folder of held-out audio clips")
    ap.add_argument("--n-clips", type=int, default=8)
    ap.add_argument("--clip-stride", type=int, default=10,
                    help="downstream rows: every this many files of --clips (1 when the folder holds only held-out files)")
    ap.add_argument("--m", default="4", help="downstream rows: codebooks used (equal bits for both); a list: 4,12")
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--embedding", default="aisfx", help="downstream rows: embedding model for the cosine")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    s = Settings(d=args.d, K=args.K, M=args.M, preset=args.preset, beam=args.beam, candidates=args.candidates,
                 max_beam=args.max_beam, minutes=args.minutes, batch=args.batch, max_steps=args.max_steps,
                 trace_minutes=args.trace_minutes,
                 train_types=tuple(args.train_types.split(",")))
    t0 = time.time()
    if args.vectors == "z":
        if not args.z_cache:
            ap.error("--vectors z needs --z-cache")
        train_x, held = z_vectors(args.z_cache, args.array, args.heldout)
        s.d = train_x.shape[1]
    else:
        train_x, held = logmel_vectors(args.data, args.d, args.heldout)
    if args.max_train and len(train_x) > args.max_train:
        train_x = train_x[np.sort(np.random.default_rng(1).permutation(len(train_x))[: args.max_train])]
    print(f"vectors ({args.vectors}): {len(train_x)} train / {len(held)} held-out (by file), d={s.d}; K={s.K}, "
          f"M={s.M} ({bits_per_frame(s.M, s.K):.0f} bits/vector); read in {time.time() - t0:.0f}s", flush=True)
    res = compare(train_x, held, s, log=lambda msg: print(msg, flush=True))
    print(f"\nheld-out relative MSE (error / held-out variance); {args.threads} threads")
    print(table(res, s))
    if s.trace_minutes:
        print(f"\nQINCo2 during training, held-out error over {fair_rq(res, s)}")
        print(trace_table(res, s))
    report = {"settings": vars(args), "d": s.d, "train_vectors": len(train_x), "held_out_vectors": len(held),
              "rows": res.rows, "info": res.info}
    if args.stage3:
        # lazy: the downstream rows need the eval stack (embedding models), the table alone does not
        from downstream_qinco2 import downstream_rows
        report["downstream"] = downstream_rows(args, res)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
