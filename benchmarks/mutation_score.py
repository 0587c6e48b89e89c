"""Mutation score per module: runs mutmut (configured in pyproject.toml [tool.mutmut]) and prints a table.

    python benchmarks/mutation_score.py --run        # mutate, test, then print the table (about an hour)
    python benchmarks/mutation_score.py              # print the table of the last run (mutants/*.meta)
    python benchmarks/mutation_score.py --survivors  # and list the surviving mutants not yet explained
    python benchmarks/mutation_score.py --run --only 'spresso.codec.bitpack.*'  # (re)test some mutants only
    python benchmarks/mutation_score.py --run --rerun-survivors  # retest the unexplained survivors only

A mutant counts as killed when a test failed or timed out on it. Survivors that are equivalent programs
(no test can tell them from the original) are listed, each with its reason, in docs/testing.md; they
leave the denominator of the "score" column. "raw" is killed / all mutants.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MUTANTS = REPO / "mutants"
EQUIVALENTS_DOC = REPO / "docs" / "testing.md"
# A row of the equivalent-mutant table in docs/testing.md: | `spresso.x.y.x_f__mutmut_3` | reason |
EQUIVALENT_ROW = re.compile(r"^\|\s*`(spresso\.[^`]+__mutmut_\d+)`\s*\|")
KILLED = {1, 3, 36, 24, -24, 152, 255}  # test failure, pytest internal error, timeouts (mutmut's exit codes)
SURVIVED = 0
UNTESTED = {5, 33}  # no test covers the mutated function


def only_mutate() -> list[str]:
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]
    return list(config["only_mutate"])


def equivalent_mutants() -> set[str]:
    """The mutant names documented as equivalent (docs/testing.md)."""
    if not EQUIVALENTS_DOC.exists():
        return set()
    return {m.group(1) for line in EQUIVALENTS_DOC.read_text().splitlines() if (m := EQUIVALENT_ROW.match(line))}


def run_mutmut(max_children: int | None, only: list[str]) -> None:
    """`mutmut run` (resumes where a run stopped; ``only``: these mutant names or globs, rerun even if done).
    Its progress spinner goes to mutants/mutmut-run.log, not the terminal."""
    cmd = [sys.executable, "-m", "mutmut", "run"]
    if max_children:
        cmd += ["--max-children", str(max_children)]
    cmd += only
    MUTANTS.mkdir(exist_ok=True)
    log = MUTANTS / "mutmut-run.log"
    print(f"running {' '.join(cmd[2:])} (log: {log.relative_to(REPO)})", flush=True)
    with log.open("w") as out:
        rc = subprocess.call(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if rc != 0:
        sys.exit(f"mutmut run failed (exit {rc}); see {log}")


def module_results(module: str) -> dict[str, int | None]:
    """mutant name -> mutmut exit code for one source file (None: not run yet)."""
    meta = MUTANTS / (module + ".meta")
    if not meta.exists():
        return {}
    for _ in range(20):  # a running mutmut rewrites the file: read it again if it is caught half-written
        try:
            return json.loads(meta.read_text())["exit_code_by_key"]
        except json.JSONDecodeError:
            time.sleep(0.1)
    raise SystemExit(f"{meta}: not readable JSON")


def open_survivors() -> list[str]:
    """Surviving (or untested) mutants of the mutated modules that docs/testing.md does not explain."""
    equivalent = equivalent_mutants()
    return sorted(k for module in only_mutate() for k, c in module_results(module).items()
                  if (c == SURVIVED or c in UNTESTED) and k not in equivalent)


def table(show_survivors: bool) -> int:
    equivalent = equivalent_mutants()
    rows, survivors, below = [], [], 0
    for module in only_mutate():
        results = module_results(module)
        total = len(results)
        killed = sum(1 for c in results.values() if c in KILLED)
        alive = [k for k, c in results.items() if c == SURVIVED or c in UNTESTED]
        eq = [k for k in alive if k in equivalent]
        open_ = sorted(set(alive) - set(eq))
        other = total - killed - len(alive)  # not run yet, suspicious, segfault
        denominator = total - len(eq)
        score = 100.0 * killed / denominator if denominator else float("nan")
        raw = 100.0 * killed / total if total else float("nan")
        below += score < 85.0
        rows.append((module, total, killed, len(eq), len(open_), other, raw, score))
        survivors += open_
    header = ("module", "mutants", "killed", "equivalent", "survived", "other", "raw %", "score %")
    width = max(len(r[0]) for r in rows + [header])
    print(f"{header[0]:<{width}} " + " ".join(f"{h:>10}" for h in header[1:]))
    for module, *numbers in rows:
        ints, floats = numbers[:5], numbers[5:]
        print(f"{module:<{width}} " + " ".join(f"{n:>10d}" for n in ints) + " ".join(f"{f:>11.1f}" for f in floats))
    if show_survivors:
        print("\nsurvivors not listed as equivalent in docs/testing.md:")
        for name in survivors:
            print("   ", name)
    return below


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="store_true", help="run mutmut first (resumes: results are cached)")
    parser.add_argument("--max-children", type=int, default=None, help="parallel test processes (default: CPUs)")
    parser.add_argument("--only", nargs="+", default=[], metavar="GLOB",
                        help="with --run: only these mutants (names or globs such as 'spresso.codec.bitpack.*')")
    parser.add_argument("--rerun-survivors", action="store_true",
                        help="with --run: retest only the surviving mutants not listed as equivalent (after adding tests)")
    parser.add_argument("--survivors", action="store_true", help="list surviving mutants not marked equivalent")
    args = parser.parse_args()
    if args.run:
        only = list(args.only)
        if args.rerun_survivors:
            only += open_survivors()
            if not only:
                sys.exit("no surviving mutants to retest")
        run_mutmut(args.max_children, only)
    if not MUTANTS.exists():
        sys.exit("no mutants/ yet: run with --run")
    below = table(args.survivors)
    if below:
        print(f"\n{below} module(s) below the 85% target")


if __name__ == "__main__":
    main()
