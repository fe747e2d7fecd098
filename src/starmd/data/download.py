"""Resumable HTTP download: stream to `<dest>.part`, resume with a Range request, back off on transient failures.

ATLAS archives are hundreds of MB to GBs each, served by a single academic host; a dropped connection must cost
only the missing bytes, and a busy server (5xx) a pause rather than a failed pipeline. The `.part` file survives a
failed run, so the next run resumes it too. `dest` only ever appears complete (renamed from `.part`).
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import requests
from tqdm import tqdm

_CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)")


class DownloadError(RuntimeError):
    """The file could not be downloaded (after retries, or for a reason retrying cannot fix)."""


class NotFoundError(DownloadError):
    """The server answered 404: the file does not exist at that URL."""


class _Transient(Exception):
    """A failure worth retrying (5xx, short body)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: attempt k (1-based) failing sleeps `backoff_base_s * 2**(k-1)` before the next one."""

    max_retries: int = 5  # consecutive failed attempts without progress before giving up
    backoff_base_s: float = 2.0
    timeout_s: float = 60.0  # connect and per-read socket timeout
    chunk_bytes: int = 1 << 20
    verify_size: bool = True  # the finished file must match Content-Length / Content-Range total


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """'bytes 100-199/1000' -> (100, 1000); 'bytes */1000' -> (None, 1000); unknown parts -> None."""
    m = _CONTENT_RANGE.fullmatch((value or "").strip())
    if not m:
        return None, None
    start, total = m.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def download_resumable(url: str, dest: str | Path, policy: RetryPolicy = RetryPolicy(), *, desc: str = "",
                       progress_file: TextIO | None = None) -> Path:
    """Download `url` to `dest`, resuming `<dest>.part` if present. Returns `dest`.

    Raises NotFoundError on 404, DownloadError on any other 4xx, and DownloadError once more than
    `policy.max_retries` consecutive attempts failed (5xx, timeouts, dropped connections); an attempt that received
    bytes before failing restarts that count, so a flaky but progressing connection still finishes.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    progress_file = progress_file or sys.stderr
    failures = 0
    with requests.Session() as session:  # one connection pool for all attempts
        while True:
            offset = part.stat().st_size if part.exists() else 0
            try:
                _attempt(session, url, part, offset, policy, desc, progress_file)
                break
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    _Transient) as e:
                progressed = part.exists() and part.stat().st_size > offset
                failures = 1 if progressed else failures + 1  # bytes arrived: restart the count of futile tries
                if failures > policy.max_retries:
                    raise DownloadError(f"{url}: giving up after {failures} failed attempts; last error: {e}") from e
                wait = policy.backoff_base_s * 2 ** (failures - 1)
                print(f"download: {url}: {e}; retry {failures}/{policy.max_retries} in {wait:.3g} s",
                      file=progress_file)
                time.sleep(wait)
    part.replace(dest)
    return dest


def _attempt(session: requests.Session, url: str, part: Path, offset: int, policy: RetryPolicy, desc: str,
             progress_file: TextIO) -> None:
    """One GET appending to `part`; returns once `part` is complete, raises _Transient/requests errors to retry."""
    # identity: byte offsets must be offsets into the file itself, not into a gzip-encoded body
    headers = {"Accept-Encoding": "identity"} | ({"Range": f"bytes={offset}-"} if offset else {})
    with session.get(url, headers=headers, stream=True, timeout=policy.timeout_s) as r:
        if r.status_code == 404:
            raise NotFoundError(f"{url}: 404 Not Found")
        if r.status_code == 416:  # our range starts at/after the end: .part is complete, or stale and longer
            _, total = _parse_content_range(r.headers.get("Content-Range"))
            if total == offset:
                return
            part.unlink()
            raise _Transient(f"416 for bytes={offset}- (server size {total}); restarting from byte 0")
        if r.status_code >= 500:
            raise _Transient(f"HTTP {r.status_code} {r.reason}")
        if r.status_code not in (200, 206):
            raise DownloadError(f"{url}: unexpected HTTP {r.status_code} {r.reason}")
        if r.status_code == 206:
            start, total = _parse_content_range(r.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _Transient(f"server resumed at byte {start}, not {offset}; restarting from byte 0")
        else:  # 200: a full body (first request, or a server that ignores Range) -> start the file over
            offset = 0
            length = r.headers.get("Content-Length")
            total = int(length) if length is not None else None
        with open(part, "ab" if offset else "wb") as f, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=desc or url,
                file=progress_file, mininterval=0.5) as bar:
            for chunk in r.iter_content(chunk_size=policy.chunk_bytes):
                f.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and policy.verify_size and size != total:
        if size > total:
            part.unlink()
            raise DownloadError(f"{url}: got {size} bytes but the server announced {total}; deleted {part}")
        raise _Transient(f"connection ended at byte {size} of {total}")
