"""The house rules, checked on every `make test`: layers, cycles, import placement, private names.

- import-linter's contracts in pyproject.toml (layers top to bottom, no Ray/MLflow/Zarr below
  `data`, no cycles between siblings at any depth);
- a function-local import is only for a heavy or optional dependency kept lazy, and says so with a
  `# lazy: <why>` comment on its line or the line above;
- no module uses another module's private name (`from x import _y`, `obj._y` where `_y` is
  defined elsewhere in spresso);
- `pipelines/*.py` are thin: they call the CLI's entry and nothing else of the package.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "spresso"
LAZY_TAG = "# lazy:"


def _sources(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py"))


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_import_linter_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout or "broken" not in result.stdout.split("Contracts:")[-1]


def _function_local_imports(path: Path):
    tree = ast.parse(path.read_text())
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    yield node


def test_function_local_imports_say_why_they_are_lazy():
    offenders = []
    for path in _sources(PACKAGE, ROOT / "pipelines"):
        lines = path.read_text().splitlines()
        for node in _function_local_imports(path):
            here = lines[node.lineno - 1]
            above = lines[node.lineno - 2] if node.lineno >= 2 else ""
            if LAZY_TAG not in here and not above.strip().startswith(LAZY_TAG):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {here.strip()}")
    assert not offenders, f"{len(offenders)} function-local imports without a '{LAZY_TAG} <why>' comment:\n" + "\n".join(offenders[:60])


def _private_definitions() -> dict[str, set[str]]:
    """Private (single-underscore) names defined in each spresso module: functions, classes,
    methods, module constants and ``self._x`` attributes."""
    defined: dict[str, set[str]] = {}
    for path in _sources(PACKAGE):
        names = defined.setdefault(_module_name(path), set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                names.add(node.attr)
        defined[_module_name(path)] = {n for n in names if n.startswith("_") and not n.startswith("__")}
    return defined


def test_no_private_name_is_used_across_modules():
    defined = _private_definitions()
    offenders = []
    for path in _sources(PACKAGE, ROOT / "pipelines", ROOT / "benchmarks"):
        here = _module_name(path)
        own = defined.get(here, set())
        elsewhere = set().union(*(v for k, v in defined.items() if k != here))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("spresso"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: imports {node.module}.{alias.name}")
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value
                if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                    continue
                if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super":
                    continue
                if node.attr in elsewhere and node.attr not in own:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: uses .{node.attr} of another module")
    assert not offenders, "private names used across modules:\n" + "\n".join(offenders[:60])


@pytest.mark.parametrize("script", sorted((ROOT / "pipelines").glob("*.py")), ids=lambda p: p.name)
def test_pipeline_scripts_only_call_the_cli(script: Path):
    tree = ast.parse(script.read_text())
    spresso_imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("spresso")]
    assert spresso_imports, f"{script.name} does not call the spresso CLI"
    assert all(n.module == "spresso.cli" for n in spresso_imports), f"{script.name} imports more than spresso.cli"
    assert "sys.path" not in script.read_text(), f"{script.name} edits sys.path (the package is installed)"
    assert len(script.read_text().splitlines()) <= 25, f"{script.name} is not thin"


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, normalised text) of the lines that carry code: no blanks, comments,
    docstrings, imports or lone punctuation (what a duplicate-code finder compares)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            skip.update(range(node.lineno, node.end_lineno + 1))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            skip.update(range(node.lineno, node.end_lineno + 1))
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = " ".join(line.split("#", 1)[0].split()) if "#" in line and "'" not in line and '"' not in line else " ".join(line.split())
        if number in skip or not text or text.startswith("#") or all(c in "()[]{}:,." for c in text):
            continue
        out.append((number, text))
    return out


def test_no_block_of_six_lines_is_written_twice():
    window = 6
    seen: dict[tuple[str, ...], str] = {}
    duplicates = []
    for path in _sources(PACKAGE, ROOT / "pipelines"):
        lines = _code_lines(path)
        for i in range(len(lines) - window + 1):
            block = tuple(text for _, text in lines[i:i + window])
            where = f"{path.relative_to(ROOT)}:{lines[i][0]}-{lines[i + window - 1][0]}"
            first = seen.setdefault(block, where)
            if first != where:
                duplicates.append(f"{where} repeats {first}")
    assert not duplicates, f"{len(duplicates)} blocks of {window}+ code lines written twice:\n" + "\n".join(duplicates[:40])
