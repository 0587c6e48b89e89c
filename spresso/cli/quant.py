"""`spresso train qinco2` and `spresso quantize`: argument parsing only."""
from __future__ import annotations

import argparse
import json

from spresso.cli.common import add_config_args, config_from_args
from spresso.cli.examples import add_examples


def _train(args: argparse.Namespace) -> int:
    # lazy: keeps `spresso --help` free of torch, Ray and faiss
    from spresso.train.qinco2 import train_qinco2

    cfg = config_from_args(args)
    out = train_qinco2(cfg, vectors=args.vectors, array=args.array, rq_train_type=args.rq_train_type,
                       parent_run_id=args.parent_run_id)
    m = out["metrics"]
    M = cfg.qinco2.M
    print(f"checkpoint: {out['checkpoint']}  (mlflow run {out['run_id']})")
    print("held-out relative MSE (error / variance), RQ trained on the same vectors at the same beam")
    print(" m   qinco2      rq          ratio")
    for i in range(1, M + 1):
        if f"val_mse_m{i}" in m:
            print(f"{i:2d}  {m[f'val_mse_m{i}']:.6f}    {m[f'rq_val_mse_m{i}']:.6f}    {m[f'ratio_to_rq_m{i}']:.3f}")
    if "quantizer_shipped_rq" in m:
        print(f"shipped: {'rq' if m['quantizer_shipped_rq'] else 'qinco2'} (qinco2.ship={cfg.qinco2.ship})")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    # lazy: keeps `spresso --help` free of torch, Ray and faiss
    from spresso.train.qinco2 import quantize_cache

    cfg = config_from_args(args)
    ckpt = args.checkpoint or cfg.path(cfg.qinco2.checkpoint_dir) + "/final"
    path = quantize_cache(ckpt, args.input, args.output, array=args.array or cfg.qinco2.vectors_array,
                          layout=cfg.qinco2.layout, beam=args.beam, ms=args.m)
    print(json.dumps({"codes": path, "checkpoint": ckpt}))
    return 0


def register(commands, train) -> None:
    p = train.add_parser("qinco2", help="train the QINCo2 quantizer on vector frames (stage 2) against faiss RQ")
    add_examples(p, "train qinco2")
    add_config_args(p)
    p.add_argument("--vectors", help="Zarr group/array of vectors [default: qinco2.vectors_path in the workdir]")
    p.add_argument("--array", help="array name inside the group [default: qinco2.vectors_array]")
    p.add_argument("--rq-train-type", choices=["progressive_dim", "default"], default=None,
                   help="faiss RQ baseline training [default: qinco2.rq_train_type, progressive_dim]")
    p.add_argument("--parent-run-id", default=None, help="MLflow run id of the pipeline run (lineage)")
    p.set_defaults(func=_train)

    q = commands.add_parser("quantize", help="write QINCo2 codes (uint16 [N, T', m] per m) of a vector cache to Zarr")
    add_examples(q, "quantize")
    add_config_args(q)
    q.add_argument("--input", required=True, help="Zarr cache of vectors (e.g. z.zarr)")
    q.add_argument("--output", required=True, help="Zarr group to write the codes to")
    q.add_argument("--array", help="vector array name [default: qinco2.vectors_array]")
    q.add_argument("--checkpoint", help="QINCo2 checkpoint folder [default: <workdir>/<qinco2.checkpoint_dir>/final]")
    q.add_argument("--beam", type=int, help="beam width [default: the model's]")
    q.add_argument("--m", type=lambda v: [int(i) for i in v.split(",")], default=None,
                   help="codebook counts to store, comma-separated (array codes_m<m> each, the truncated encode) "
                        "[default: every m from 1 to M]")
    q.set_defaults(func=_quantize)
