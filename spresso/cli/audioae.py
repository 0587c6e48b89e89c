"""`spresso train audioae`: train the 48 kHz AudioAE (DAC recipe) on the train shards with Ray Train."""
from __future__ import annotations

from spresso.cli.common import add_config_args, config_from_args
from spresso.cli.examples import add_examples
from spresso.cli.stages import add_run_args


def _train(args) -> int:
    # lazy: keeps `spresso --help` free of torch and Ray
    from spresso.train.audioae import train_audioae

    final = train_audioae(config_from_args(args), parent_run_id=args.parent_run_id, force=args.force)
    print(final)
    return 0


def register(commands, train) -> None:
    p = train.add_parser(
        "audioae", help="train the AudioAE; rerunning resumes an unfinished run, an unchanged finished one is reused",
    )
    add_examples(p, "train audioae")
    add_config_args(p)
    add_run_args(p)
    p.set_defaults(func=_train)
