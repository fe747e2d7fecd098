"""Atomic file output and small shared I/O helpers.

Every stage writes through `atomic_path`, so a crash or a kill mid-write never leaves a file that Snakemake (or a
user) could mistake for finished output, and an existing good file is only replaced once the new one is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block finishes.

    The temp file lives in the same directory (same filesystem, so `os.replace` is atomic) and keeps the target's
    suffix so libraries that dispatch on extension (mdtraj, matplotlib) still work.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + (target.suffix if suffix is None else suffix),
                               dir=target.parent)
    os.close(fd)
    work = Path(tmp)
    # mkstemp creates 0600; give the output the permissions any other file written here would get.
    umask = os.umask(0)
    os.umask(umask)
    work.chmod(0o666 & ~umask)
    try:
        yield work
        os.replace(work, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            work.unlink()
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
