"""Paths that may be local folders or fsspec URLs (``s3://bucket/prefix``, ``memory://``, ``gs://``).

One place that knows the difference: every stage, cache and loader goes through these helpers, so
a workdir can be a local folder or a bucket with no stage-specific code.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import IO, Iterator

import fsspec
import pyarrow.fs

from spresso.core.errors import SpressoError

# Object stores are configured the way their users expect: the standard AWS variables
# (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION) reach s3fs
# through botocore, in this process and in every Ray worker (they import this module). What we add:
# a short connect timeout, so an unreachable endpoint is an error within seconds rather than after
# botocore's minutes of retries, and the "standard" retry mode, which retries throttling, 5xx and
# dropped connections with backoff. fsspec applies these defaults to every S3 filesystem it makes.
S3_CLIENT_CONFIG = {"connect_timeout": 5, "read_timeout": 120, "retries": {"max_attempts": 5, "mode": "standard"}}
fsspec.config.conf.setdefault("s3", {}).setdefault("config_kwargs", S3_CLIENT_CONFIG)

_MISSING_BUCKET = ("NoSuchBucket", "bucket does not exist", "The specified bucket")
_REFUSED = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden", "403", "ExpiredToken",
            "Unable to locate credentials", "NoCredentialsError")
_STORE_CLIENTS = {"botocore", "aiobotocore", "s3fs", "gcsfs", "boto3"}
_UNREACHABLE = ("Could not connect", "ConnectTimeout", "EndpointConnectionError", "Connect timeout", "Cannot connect",
                "Connection refused", "Name or service not known", "nodename nor servname")


def describe_error(err: BaseException) -> str:
    """One line saying what went wrong talking to a store: missing bucket, refused credentials, no endpoint."""
    text = f"{type(err).__name__}: {err}"
    if any(s in text for s in _MISSING_BUCKET):
        return "no such bucket"
    if isinstance(err, PermissionError) or any(s in text for s in _REFUSED):
        return "access refused: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the node's role)"
    if any(s in text for s in _UNREACHABLE):
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or "the default AWS endpoint"
        return f"cannot reach {endpoint} (AWS_ENDPOINT_URL)"
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"{type(err).__name__}: {first[:200]}"


def is_store_error(err: BaseException) -> bool:
    """An exception raised by an object-store client (botocore, s3fs, gcsfs), whatever its class."""
    return any(type(e).__module__.split(".")[0] in _STORE_CLIENTS for e in (err, err.__cause__, err.__context__) if e)


def check_store(path: str | Path) -> None:
    """Fail fast, in one line naming the URL, when ``path`` is on a store we cannot write to.

    Writes then deletes one small object under it: a missing bucket, refused
    credentials or an unreachable endpoint show here, in seconds, not ten minutes into a stage.
    Local paths are not checked (a missing folder is created by its writer).
    """
    if not is_url(path):
        return
    probe = join(path, ".spresso-write-check")
    try:
        fs, resolved = filesystem(probe)
        if fs.protocol[0] in ("s3", "s3a"):  # one attempt each: a dead endpoint answers in seconds
            fs = type(fs)(skip_instance_cache=True,
                          config_kwargs={**S3_CLIENT_CONFIG, "retries": {"max_attempts": 1, "mode": "standard"}})
            fs.retries = 1  # s3fs's own retry loop (a class attribute)
        fs.pipe_file(resolved, b"ok")
        fs.rm_file(resolved)
    except Exception as err:  # every failure becomes one line naming the URL
        raise SpressoError(f"{path}: {describe_error(err)}") from None


def is_url(path: str | Path) -> bool:
    return "://" in str(path)


def absolute(path: str | Path) -> str:
    """An absolute local path (Ray needs them: workers do not share the driver's cwd); URLs unchanged."""
    text = str(path)
    return text if is_url(text) else str(Path(text).resolve())


def join(root: str | Path, *parts: str) -> str:
    """``root/part/...`` for a local folder or a URL (URLs always join with '/')."""
    root = str(root)
    if is_url(root):
        return "/".join([root.rstrip("/"), *parts])
    return str(PurePosixPath(root).joinpath(*parts))


def parent(path: str | Path) -> str:
    """The folder (or URL prefix) that holds ``path``."""
    text = str(path).rstrip("/")
    if is_url(text):
        return text.rsplit("/", 1)[0]
    return str(PurePosixPath(text).parent)


def filesystem(path: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem that holds ``path`` and the path as that filesystem names it."""
    fs, _, [resolved] = fsspec.get_fs_token_paths(str(path))
    return fs, resolved


def arrow_filesystem(path: str | Path) -> tuple[pyarrow.fs.FileSystem | None, str]:
    """(pyarrow filesystem, path) for libraries that take pyarrow's (Ray Train's storage, Ray Data).

    A URL gets fsspec's filesystem wrapped for pyarrow, so Ray reaches the bucket exactly as the rest
    of spresso does (same credentials, endpoint and retries); a local path gets None (Ray's default).
    """
    if not is_url(path):
        return None, absolute(path)
    fs, resolved = filesystem(path)
    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), resolved


def open_file(path: str | Path, mode: str = "rb") -> IO:
    """An open file object for a local path or URL (use it as a context manager)."""
    return fsspec.open(str(path), mode).open()


def exists(path: str | Path) -> bool:
    fs, resolved = filesystem(path)
    return fs.exists(resolved)


def is_file(path: str | Path) -> bool:
    fs, resolved = filesystem(path)
    return fs.isfile(resolved)


def read_bytes(path: str | Path) -> bytes:
    with open_file(path, "rb") as f:
        return f.read()


def read_text(path: str | Path) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` whole; a local file goes to a temporary name first and is renamed into place."""
    if is_url(path):
        with fsspec.open(str(path), "wb") as f:
            f.write(data)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(target)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def make_dirs(path: str | Path) -> None:
    """Create a local folder (object stores have no folders: nothing to do)."""
    if not is_url(path):
        Path(path).mkdir(parents=True, exist_ok=True)


def replace_tree(local_dir: str | Path, dest: str | Path) -> str:
    """Make ``dest`` (a local folder or URL prefix) hold exactly the files of the local folder ``local_dir``.

    Locally the folder is copied beside ``dest`` and renamed into place; on an object store the old
    objects are removed first and each file is uploaded (readers check the config file, written last).
    """
    src = Path(local_dir)
    if not is_url(dest):
        with _swapped_in(Path(dest)) as new:
            shutil.copytree(src, new, dirs_exist_ok=True)
        return str(Path(dest))
    fs, root = filesystem(dest)
    if fs.exists(root):
        fs.rm(root, recursive=True)
    # config.json last: a reader that finds it finds the weights too
    files = sorted(p for p in src.rglob("*") if p.is_file())
    for f in sorted(files, key=lambda p: p.name == "config.json"):
        fs.put_file(str(f), f"{root.rstrip('/')}/{f.relative_to(src).as_posix()}")
    return str(dest)


@contextlib.contextmanager
def staged(dest: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """A local folder standing for ``dest``, for writers that need real files (audio, plots, NumPy).

    Without ``replace`` a local ``dest`` is used as it is. With ``replace``, an empty temporary
    sibling of a local ``dest`` is yielded and swapped into place by renames when the block ends
    without error, so a failed or interrupted writer leaves the old folder (or none), never half a
    new one. For a URL, a temporary folder holding ``dest``'s files (none when ``replace``) is
    yielded; when the block ends without error, ``replace`` makes ``dest`` hold exactly that folder,
    otherwise the new and changed files are uploaded. On an error nothing is uploaded.
    """
    if not is_url(dest):
        if replace:
            with _swapped_in(Path(dest)) as local:
                yield local
            return
        Path(dest).mkdir(parents=True, exist_ok=True)
        yield Path(dest)
        return
    fs, root = filesystem(dest)
    root = root.rstrip("/")
    with tempfile.TemporaryDirectory(prefix="spresso-staged-") as tmp:
        local = Path(tmp)
        if not replace and fs.exists(root):
            fs.get(root + "/", str(local) + "/", recursive=True)
        before = _stamps(local)
        yield local
        if replace:
            replace_tree(local, dest)
            return
        for rel, stamp in sorted(_stamps(local).items()):
            if before.get(rel) != stamp:
                fs.put_file(str(local / rel), f"{root}/{rel}")


@contextlib.contextmanager
def _swapped_in(dest: Path) -> Iterator[Path]:
    """A new sibling folder that replaces ``dest`` (two renames) only if the block succeeds."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        yield new
    except BaseException:  # KeyboardInterrupt too: nothing half-written stays behind
        shutil.rmtree(new, ignore_errors=True)
        raise
    new.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; a published folder gets the usual mode
    old = dest.with_name(f".{dest.name}.old-{new.name.rsplit('-', 1)[-1]}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _stamps(folder: Path) -> dict[str, tuple[int, int]]:
    stats = {p.relative_to(folder).as_posix(): p.stat() for p in folder.rglob("*") if p.is_file()}
    return {rel: (st.st_size, st.st_mtime_ns) for rel, st in stats.items()}


def list_details(root: str | Path) -> list[tuple[str, int, str]]:
    """(relative name, size, version tag) of every file below ``root``, from the listing alone.

    The tag is what the store says changes with the content: an object's ETag, else its
    modification time. Reads no object.
    """
    fs, resolved = filesystem(root)
    if not fs.exists(resolved):
        return []
    base = resolved.rstrip("/")
    out = []
    for name, info in fs.find(base, detail=True).items():
        if info.get("type") == "directory":
            continue
        tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or info.get("created")
        rel = name.rsplit("/", 1)[-1] if name == base else name[len(base) + 1:]  # ``root`` may be one file
        out.append((rel, int(info.get("size") or 0), str(tag)))
    return sorted(out)


def list_files(root: str | Path) -> list[str]:
    """Every file below ``root``, as paths relative to it, sorted ('/'-separated)."""
    fs, resolved = filesystem(root)
    if not fs.exists(resolved):
        return []
    base = resolved.rstrip("/")
    return sorted(p[len(base) + 1:] for p in fs.find(base) if p != base)
