"""Every command's --help ends with two or three real examples, and the CLI's own parser accepts each one."""
import argparse
import contextlib
import io
import shlex

import pytest

from spresso.cli import build_parser, main
from spresso.cli.examples import EXAMPLES

ALL = sorted(EXAMPLES)


def help_text(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as done:  # argparse exits after printing help
        main([*command.split(), "--help"])
    assert done.value.code in (0, None)
    return capsys.readouterr().out


def examples_in(text: str) -> list[str]:
    block = text.rsplit("examples:\n", 1)[1]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip().startswith("spresso ")]


@pytest.mark.parametrize("command", ALL)
def test_help_ends_with_real_examples(command, capsys):
    text = help_text(command, capsys)
    assert "examples:\n" in text, f"`spresso {command} --help` shows no examples"
    found = examples_in(text)
    own = [e for e in found if " ".join(shlex.split(e)[1:]).startswith(command)]
    assert 2 <= len(own) <= 3 and len(found) <= 4, found  # a follow-up command may join them (peel, then inspect)
    for example in found:
        argv = shlex.split(example)[1:]
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                args = build_parser().parse_args(argv)
            except SystemExit:
                pytest.fail(f"the CLI refuses its own example `{example}`: {err.getvalue().strip().splitlines()[-1]}")
        assert hasattr(args, "func"), example


def test_every_command_has_examples():
    parser = build_parser()
    seen = []

    def walk(p, words):
        groups = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]  # no public listing
        if words and (not groups or " ".join(words) in EXAMPLES):  # a leaf, or a group that runs on its own
            seen.append(" ".join(words))
        for action in groups:
            for name, sub in action.choices.items():
                walk(sub, [*words, name])

    walk(parser, [])
    assert sorted(c for c in seen if c != "train") == sorted(ALL)
