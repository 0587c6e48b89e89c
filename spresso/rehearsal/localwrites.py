"""Did anything land on local disk? A snapshot of a folder tree, compared before and after."""
from __future__ import annotations

from pathlib import Path


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime ns) of every file and folder under ``root`` ({} when it is absent)."""
    if not root.exists():
        return {}
    out = {".": (0, root.stat().st_mtime_ns)}
    for path in root.rglob("*"):
        try:
            st = path.lstat()
        except OSError:
            continue
        out[str(path.relative_to(root))] = (st.st_size if path.is_file() else 0, st.st_mtime_ns)
    return out


def changes(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    """What was created, changed or removed, as '+ path', '~ path', '- path'."""
    out = [f"+ {p}" for p in sorted(after.keys() - before.keys())]
    out += [f"~ {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p] and p != "."]
    out += [f"- {p}" for p in sorted(before.keys() - after.keys())]
    return out


def work_folders_in_job_copies(cluster_root: Path) -> list[str]:
    """``work`` folders inside Ray's copies of the job's working directory on any node: a stage that
    wrote to a relative local path would have written there, not into the repository."""
    pattern = "**/runtime_resources/working_dir_files/*/work"
    return sorted(str(p) for p in cluster_root.glob(pattern))
