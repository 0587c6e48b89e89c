"""Every example in README.md, copied out of the README at test time, so the two cannot drift.

What counts as an example: every line of a fenced shell block (a ``$ `` prompt is stripped and the lines
after it that have no prompt are its documented output), every fenced ``python`` block, and every inline
`` `spresso <command> ...` `` or `` `ray job submit ...` `` span. Template syntax in those is expanded:
``a\\|b`` (a table cell's alternatives) gives one example each, ``[--opt X]`` is included, ``PATH...`` and
``...`` are trimmed, and placeholders become values (``N`` 1, ``S`` 0, ``CONFIG`` demo, ``…`` x, ``$PWD``
the test's folder). Leading ``VAR=value`` assignments are dropped, ``\\`` continuations joined.

The rule for each example, by its program:
- every ``spresso`` command (also behind ``ray job submit -- python pipelines/<stage>.py``, which becomes the
  command the script runs) is parsed by the real CLI parser: argparse must accept it;
- the cheap ones also RUN, in a folder laid out like the repository after `make demo` (a tiny randomly
  initialised bundle shaped like d96, K 256 and 12 codebooks at 1 Hz, at ``work/demo/bundles/d96``, and a
  registered ``models:/spresso@champion``): ``config``, ``pipeline run ... --dry-run``, and the codec's
  ``encode``/``peel``/``inspect``/``decode`` on local files; a documented output line must match (``...`` is
  a wildcard). The rest (training, whole pipeline runs, S3, evaluation on trained models) only parse:
  they take minutes to hours, or a cluster, a bucket or a server;
- ``python`` blocks run for real against the tiny bundle, once as written and once with each alternative
  their comments offer (``# or "models:/spresso@champion"``), with ``wave, sr`` given;
- ``ray job submit``, ``ray start`` and ``mlflow ui`` are parsed by those tools' own (click) parsers, without
  running them; ``make X`` needs a target X in the Makefile; ``python -m pytest FILE -k NAME`` a test
  function matching NAME in FILE;
- a block that is no command at all (a diagram) must be listed in NOT_COMMANDS, so a new kind of example
  fails here until this rule covers it.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
from codec_toys import make_bundle

from spresso.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PLACEHOLDERS = {"N": "1", "S": "0", "CONFIG": "demo"}
NOT_COMMANDS = ("shard → train_audioae",)  # the DAG diagram of "What `make demo` does"
RUN_FOR_REAL = (("config",), ("encode",), ("peel",), ("inspect",), ("decode",))
SHELL_LANGS = ("", "bash", "sh", "shell", "console")


@dataclass
class Example:
    line: int
    argv: list[str]
    output: list[str]  # documented output lines (after a `$ ` prompt)

    def __str__(self) -> str:
        return f"README.md:{self.line}: {shlex.join(self.argv)}"


def fenced_blocks() -> list[tuple[str, int, list[str]]]:
    """(language, first line number, lines) of every fenced block."""
    blocks, current = [], None
    for n, line in enumerate(README.read_text().splitlines(), 1):
        if line.startswith("```"):
            if current is None:
                current = (line[3:].strip(), n + 1, [])
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current[2].append(line)
    return blocks


def expand(text: str) -> list[str]:
    """Template syntax -> concrete commands (one per ``\\|`` alternative)."""
    text = re.sub(r"\[(--?[^\]]*)\]", r"\1", text)  # [--register NAME]; a YAML list in quotes stays
    text = text.replace("$PWD", "/tmp/spresso-readme").replace("…", "x")
    alternatives = re.search(r"(\S+(?:\\\|\S+)+)", text)
    if alternatives:
        return [c for alt in alternatives.group(1).split("\\|") for c in expand(text.replace(alternatives.group(1), alt, 1))]
    return [text]


def tokens(text: str) -> list[str]:
    words = [w.removesuffix("...") for w in shlex.split(text, comments=True) if w not in ("...", "…")]
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words.pop(0)  # VAR=value before the command
    return [PLACEHOLDERS.get(w, w) for w in words if w]


def shell_examples() -> list[Example]:
    out: list[Example] = []
    for lang, start, lines in fenced_blocks():
        if lang not in SHELL_LANGS or any(lines and lines[0].startswith(p) for p in NOT_COMMANDS):
            continue
        prompted = any(line.startswith("$ ") for line in lines)
        pending = ""
        for i, line in enumerate(lines):
            if prompted and not line.startswith("$ "):
                if out and not pending:
                    out[-1].output.append(line)
                continue
            pending += line.removeprefix("$ ")
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            out += [Example(start + i, tokens(c), []) for c in expand(pending) if tokens(c)]
            pending = ""
    return out


def inline_examples() -> list[Example]:
    out = []
    for n, line in enumerate(README.read_text().splitlines(), 1):
        # `ray job submit` alone names the command; with `-- ...` it is an example
        for span in re.findall(r"`((?:spresso [a-z]|ray job submit [^`]* -- )[^`]*)`", line):
            out += [Example(n, tokens(c), []) for c in expand(span)]
    return out


def python_blocks() -> list[tuple[int, str]]:
    return [(start, "\n".join(lines)) for lang, start, lines in fenced_blocks() if lang == "python"]


# ----------------------------------------------------------------------------- checking one command
def entry_argv(argv: list[str]) -> list[str] | None:
    """The `spresso` arguments a command amounts to (`python pipelines/x.py ...` -> the CLI call it makes)."""
    if argv[0] == "spresso":
        return argv[1:]
    if argv[0] == "python" and len(argv) > 1 and argv[1].startswith("pipelines/"):
        script = (REPO / argv[1]).read_text()
        prefix = re.search(r"main\(\[(.*?)\*sys\.argv\[1:\]", script)
        assert prefix, f"{argv[1]} does not call main([..., *sys.argv[1:]])"
        return [*re.findall(r'"([^"]*)"', prefix.group(1)), *argv[2:]]
    return None


def parses(argv: list[str]) -> argparse.Namespace:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"the CLI parser refuses `spresso {shlex.join(argv)}`: {err.getvalue().strip().splitlines()[-1]}")


def click_parses(group, argv: list[str]) -> None:
    """A click group's subcommand parses ``argv[1:]`` (options, required arguments), without running."""
    parent = group.make_context(group.name or "cli", [argv[0]])
    command = group.get_command(parent, argv[0])
    assert command is not None, f"no command {argv[0]}"
    command.make_context(argv[0], list(argv[1:]), parent=parent)


def check_external(example: Example) -> None:
    argv = example.argv
    if argv[0] == "make":
        targets = re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), re.M)
        assert argv[1] in targets, f"{example}: no Makefile target {argv[1]}"
    elif argv[:3] == ["ray", "job", "submit"]:
        # lazy: Ray's CLI only for its examples
        from ray.dashboard.modules.job.cli import job_cli_group

        click_parses(job_cli_group, argv[2:])
        check_spresso(Example(example.line, argv[argv.index("--") + 1:], []), run=False)
    elif argv[:2] == ["ray", "start"]:
        from ray.scripts.scripts import cli as ray_cli  # lazy: as above

        click_parses(ray_cli, argv[1:])
    elif Path(argv[0]).name == "mlflow":
        from mlflow.cli import (
            cli as mlflow_cli,  # lazy: MLflow's CLI only for its example
        )

        click_parses(mlflow_cli, argv[1:])
    elif Path(argv[0]).name == "python" and argv[1:3] == ["-m", "pytest"]:
        test_file, name = argv[3], argv[argv.index("-k") + 1]
        assert re.search(rf"def test_\w*{name}", (REPO / test_file).read_text()), f"{example}: no test {name}"
    else:
        pytest.fail(f"{example}: no rule for this program; add one to tests/test_readme_examples.py")


def check_spresso(example: Example, run: bool, capsys=None) -> None:
    argv = entry_argv(example.argv)
    if argv is None:
        check_external(example)
        return
    args = parses(argv)
    cheap = tuple(argv[:1]) in RUN_FOR_REAL or (argv[:2] == ["pipeline", "run"] and "--dry-run" in argv)
    if not (run and cheap and not any("://" in a for a in argv)):
        return
    rc = main(argv)
    captured = capsys.readouterr()
    if example.output:
        wanted = [re.escape(line).replace(re.escape("..."), ".*") for line in example.output]
        got = (captured.out + captured.err).strip().splitlines()
        for want in wanted:
            assert any(re.fullmatch(want, g) for g in got), f"{example}: output {got[-3:]} lacks {want}"
        if any(o.startswith("error:") for o in example.output):
            assert rc == 2
            return
    assert rc == 0, f"{example}: exit {rc}: {captured.err.strip()[-500:]}"
    assert args is not None


# ----------------------------------------------------------------------------- the demo-like folder
@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory, _mlflow_template):
    """A folder as `make demo` leaves the repository: a d96-shaped bundle, a registered champion, a sound."""
    root = tmp_path_factory.mktemp("readme")
    bundle = make_bundle(root / "build", K=256, M=12, m=12)
    d96 = root / "work" / "demo" / "bundles" / "d96"
    shutil.copytree(bundle, d96)
    shutil.copytree(REPO / "configs", root / "configs")  # `configs/paper.yaml` as the README names it
    shutil.copy(_mlflow_template, root / "work" / "demo" / "mlflow.db")
    uri = f"sqlite:///{root / 'work' / 'demo' / 'mlflow.db'}"
    # lazy: MLflow only for the registry
    from spresso.runtime.tracking import (
        BUNDLE_ARTIFACT,
        ensure_experiment,
        mlflow_client,
    )
    from spresso.train.export import register_bundle  # lazy: as above

    client = mlflow_client(uri)
    run = client.create_run(ensure_experiment(uri, "spresso", str(root / "work" / "demo")), run_name="export")
    client.log_artifacts(run.info.run_id, str(d96), BUNDLE_ARTIFACT)
    client.set_terminated(run.info.run_id)
    register_bundle(uri, "spresso", run.info.run_id, "tiny", alias="champion")
    rng = np.random.default_rng(0)
    soundfile.write(root / "sound.wav", (0.1 * rng.standard_normal((44100 * 2, 2))).astype(np.float32), 44100)
    return root


@pytest.fixture
def in_demo_folder(demo_folder, monkeypatch):
    monkeypatch.chdir(demo_folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return demo_folder


def test_the_readme_has_examples_of_every_kind():
    shell, inline, python = shell_examples(), inline_examples(), python_blocks()
    assert len(shell) >= 10 and len(inline) >= 15 and len(python) >= 1
    assert any(e.argv[:2] == ["spresso", "encode"] for e in shell)
    assert any(e.argv[:3] == ["ray", "job", "submit"] for e in shell)


@pytest.mark.parametrize("example", shell_examples(), ids=str)
def test_shell_example(example, in_demo_folder, capsys):
    check_spresso(example, run=True, capsys=capsys)


@pytest.mark.parametrize("example", inline_examples(), ids=str)
def test_inline_example(example, in_demo_folder, capsys):
    check_spresso(example, run=True, capsys=capsys)


@pytest.mark.parametrize("line, code", [pytest.param(n, c, id=f"README.md:{n}") for n, c in python_blocks()])
def test_python_example(line, code, in_demo_folder):
    variants = [code]
    for literal, alternative in re.findall(r'("[^"]+").*#\s*or\s+("[^"]+")', code):
        variants.append(code.replace(literal, alternative, 1))
    assert len(variants) >= 2 or "# or" not in code
    for variant in variants:
        rng = np.random.default_rng(1)
        scope = {"wave": (0.1 * rng.standard_normal(44100)).astype(np.float32), "sr": 44100}
        exec(compile(variant, f"README.md:{line}", "exec"), scope)
        assert scope["wave48"].ndim >= 1 and scope["sr"] == 48000
