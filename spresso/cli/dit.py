"""`spresso train dit` (pretrain the text-to-audio DiT), `spresso embed-captions` (its text side) and
`spresso generate` (text -> audio)."""
from __future__ import annotations

from pathlib import Path

from spresso.cli.common import add_config_args, config_from_args
from spresso.cli.examples import add_examples
from spresso.cli.stages import add_run_args
from spresso.core.errors import SpressoError


def _train(args) -> int:
    # lazy: keeps `spresso --help` free of torch and Ray
    from spresso.train.dit import train_dit

    final = train_dit(config_from_args(args), parent_run_id=args.parent_run_id, force=args.force)
    print(final)
    return 0


def _embed_captions(args) -> int:
    # lazy: keeps `spresso --help` free of torch
    from spresso.data.captions import build_caption_cache

    print(build_caption_cache(config_from_args(args), progress=not args.no_progress).path)
    return 0


def _generate(args) -> int:
    # lazy: keeps `spresso --help` free of torch
    from spresso.diffusion.generate import generate_audio

    cfg = config_from_args(args)
    dit_dir = args.dit or str(Path(cfg.path(cfg.dit.checkpoint_dir)) / "final")
    audioae_dir = args.audioae or str(Path(cfg.path(cfg.audioae.checkpoint_dir)) / "final")
    if not Path(dit_dir).is_dir():
        raise SpressoError(f"DiT checkpoint not found: {dit_dir} (run `spresso train dit`, or pass --dit)")
    [out] = generate_audio(dit_dir, [args.prompt], [args.out], audioae_dir=audioae_dir, steps=args.steps, seed=args.seed,
                           guidance=args.guidance, seconds=args.seconds, device=args.device)
    print(out)
    return 0


def register(commands, train) -> None:
    p = train.add_parser("dit", help="pretrain the text-to-audio DiT (EDM2) on the x0 cache; reruns resume or reuse")
    add_examples(p, "train dit")
    add_config_args(p)
    add_run_args(p)
    p.set_defaults(func=_train)

    e = commands.add_parser("embed-captions", help="fill the caption-embedding cache (row-aligned with the x0 cache; "
                                                   "`train dit` builds it too when missing)")
    add_examples(e, "embed-captions")
    add_config_args(e)
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=_embed_captions)

    g = commands.add_parser("generate", help="generate a sound effect from a text prompt with the trained DiT")
    add_examples(g, "generate")
    add_config_args(g)
    g.add_argument("--prompt", required=True, help='what to generate, e.g. "metal door slam"')
    g.add_argument("--out", required=True, help="output audio file (.wav/.flac)")
    g.add_argument("--steps", type=int, default=None, help="Heun steps (default dit.sampler.steps = 64: 127 evaluations)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default dit.sampler.guidance)")
    g.add_argument("--seconds", type=float, default=None, help="length (default: the training clip length)")
    g.add_argument("--dit", default=None, help="DiT checkpoint folder (default <workdir>/<dit.checkpoint_dir>/final)")
    g.add_argument("--audioae", default=None, help="AudioAE checkpoint folder (default <workdir>/<audioae.checkpoint_dir>/final)")
    g.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    g.set_defaults(func=_generate)
