"""Atomic file output and small shared I/O helpers.

Every stage writes through `atomic_path`, so a crash or a kill mid-write never leaves a file that Snakemake (or a
user) could mistake for finished output, and an existing good file is only replaced once the new one is complete.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _temp_name(target: Path) -> Path:
    """`.{name}.tmp-{pid}` beside `target`: hidden, and it says which output and which writer it belongs to."""
    return target.parent / f".{target.name}.tmp-{os.getpid()}"


def remove_stale_temp_files(target: str | os.PathLike) -> list[Path]:
    """Delete what `atomic_path`/`atomic_dir` writers of `target` left behind when they were killed mid-write
    (temp files or folders whose pid is dead); returns the removed paths.

    Only one job writes an output at a time (Snakemake's contract), so a dead writer's leftovers are garbage for good.
    """
    target = Path(target)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.tmp-(\d+)(\..*)?")
    removed = []
    for path in sorted(target.parent.glob(f".{glob.escape(target.name)}.tmp-*")):
        match = pattern.fullmatch(path.name)
        if match and int(match[1]) != os.getpid() and not _pid_alive(int(match[1])):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block finishes.

    The temp file `.{name}.tmp-{pid}{suffix}` lives in the same directory (same filesystem, so `os.replace` is
    atomic) and keeps the target's suffix so libraries that dispatch on extension (mdtraj, matplotlib) still work.
    Leftovers of earlier writers of `target` that were killed are removed first.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(target)
    work = _temp_name(target).with_name(_temp_name(target).name + (target.suffix if suffix is None else suffix))
    work.open("wb").close()  # created with the usual (umask) permissions, emptied if this process left one
    try:
        yield work
        os.replace(work, target)
    except BaseException:
        work.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """`atomic_path` for a directory: yield `.{name}.tmp-{pid}` beside `target`; it replaces `target` only when the
    block finishes, so an interrupted run never leaves a directory that looks complete."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(target)
    work = _temp_name(target)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        yield work
        if target.exists():
            old = work.with_name(work.name + ".old")  # still a temp name of `target`: cleaned up if killed here
            os.replace(target, old)
            os.replace(work, target)
            shutil.rmtree(old)
        else:
            os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as sorted, indented JSON atomically (stable bytes for identical content)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed (trajectories can be GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Path, size and modification time: cheap to take for GBs of inputs, and it changes whenever a file is
    rewritten, which is also when Snakemake reruns the jobs that read it."""
    st = os.stat(path)
    return {"path": str(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
