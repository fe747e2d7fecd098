"""Bad inputs: one exception type, one line `<file>: <what is wrong> (<what to do>)`.

What to do is usually "delete it; snakemake reruns <the rule that makes it>" (for a file that is missing, without the
"delete it").

Every step raises `InputError` (a ValueError, like the config checks) for a file it cannot use; `python -m starmd`
prints its message as one line and exits 1 (the traceback only with `--debug`). `reading` turns a library's own
failure to parse a file (h5py, mdtraj, torch) into an InputError naming the file. docs/errors.md lists the messages.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np


class InputError(ValueError):
    """`path` cannot be used: `problem`, and what to do about it (`fix`)."""

    def __init__(self, path: str | os.PathLike, problem: str, fix: str) -> None:
        self.path, self.problem, self.fix = str(path), problem, fix
        super().__init__(f"{path}: {problem} ({fix})")


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str, fix: str) -> Iterator[None]:
    """Run the block that parses `path` (a `what`, e.g. "XTC trajectory"); a missing, empty or unparsable file
    becomes an InputError naming it (mdtraj, for one, fails on a PDB without atoms with an AttributeError). Keep the
    block to the parsing call; InputErrors raised inside pass through unchanged."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"no such {what}", missing_fix(fix))
    if path.stat().st_size == 0:
        raise InputError(path, f"empty {what} (0 bytes)", fix)
    try:
        yield
    except InputError:
        raise
    except Exception as exc:  # the block only parses `path`: whatever the library raises says the file is broken
        raise InputError(path, f"unreadable {what}: {describe(exc)}", fix) from exc


def missing_fix(fix: str) -> str:
    """What to do about a missing file: `fix` without its "delete it; " (the fixes of this package start so)."""
    return fix.removeprefix("delete it; ")


def describe(exc: BaseException) -> str:
    """A library exception in a few words: the first sentence of its message (torch appends a paragraph of advice),
    or its type when it has no message (mdtraj's IndexError on a broken PDB)."""
    text = " ".join(str(exc).split())
    return text.split(". ")[0].rstrip(".") if text else type(exc).__name__


def open_h5(path: str | os.PathLike, what: str, fix: str) -> h5py.File:
    """Open an HDF5 file for reading; a missing, empty, truncated or non-HDF5 file is an InputError naming it."""
    with reading(path, what, fix):
        return h5py.File(path, "r")


def check_finite_dataset(path: str | os.PathLike, dataset: h5py.Dataset, fix: str, rows: int = 64) -> None:
    """Every value of `dataset` (in file `path`) must be finite; read `rows` entries of its first axis at a time, so
    memory stays bounded. The error names the dataset and the index of the first NaN/inf."""
    for start in range(0, dataset.shape[0], rows):
        bad = ~np.isfinite(dataset[start:start + rows])
        if bad.any():
            index = np.argwhere(bad)[0]
            index[0] += start
            raise InputError(path, f"{dataset.name.lstrip('/')} has non-finite values (NaN/inf), the first at index "
                             f"{index.tolist()}", fix)
