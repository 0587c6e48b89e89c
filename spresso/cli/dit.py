"""`spresso train dit` (pretrain the text-to-audio DiT) and `spresso generate` (text -> audio)."""
from __future__ import annotations

from pathlib import Path

from spresso.cli.common import add_config_args, config_from_args


def _train(args) -> int:
    from spresso.train.dit import train_dit

    final = train_dit(config_from_args(args), force=args.force)
    print(final)
    return 0


def _generate(args) -> int:
    from spresso.diffusion.generate import generate_audio

    cfg = config_from_args(args)
    dit_dir = args.dit or str(Path(cfg.path(cfg.dit.checkpoint_dir)) / "final")
    audioae_dir = args.audioae or str(Path(cfg.path(cfg.audioae.checkpoint_dir)) / "final")
    if not Path(dit_dir).is_dir():
        from spresso.core.errors import SpressoError

        raise SpressoError(f"DiT checkpoint not found: {dit_dir} (run `spresso train dit`, or pass --dit)")
    [out] = generate_audio(dit_dir, [args.prompt], [args.out], audioae_dir=audioae_dir, steps=args.steps, seed=args.seed,
                           guidance=args.guidance, seconds=args.seconds, device=args.device)
    print(out)
    return 0


def register(commands, train) -> None:
    p = train.add_parser("dit", help="pretrain the text-to-audio DiT (EDM2) on the x0 cache; reruns resume or reuse")
    add_config_args(p)
    p.add_argument("--force", action="store_true", help="train even when an identical finished run exists")
    p.set_defaults(func=_train)

    g = commands.add_parser("generate", help="generate a sound effect from a text prompt with the trained DiT")
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
