"""starmd.io atomic writes under a real SIGKILL: a writer process killed mid-write leaves the previous output (or none)
and a temp file named for the output and its pid; the next write of that output removes it, while a live writer's
temp file is left alone."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from starmd.io import atomic_dir, atomic_path, remove_stale_temp_files

# A writer that starts the atomic write, writes half its data, says so and blocks until it is killed.
WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from starmd.io import atomic_dir, atomic_path

    kind, target = sys.argv[1], Path(sys.argv[2])
    with (atomic_path(target) if kind == "file" else atomic_dir(target)) as work:
        (work if kind == "file" else work / "a.txt").write_text("half")
        print("writing", flush=True)
        time.sleep(600)
""")


def _start_writer(kind: str, target: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, kind, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "writing\n"  # mid-write now
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("existing", [False, True])
def test_sigkill_mid_write_leaves_the_old_output_and_the_next_write_removes_the_leftover(existing, tmp_path):
    target = tmp_path / "x.h5"
    if existing:
        with atomic_path(target) as tmp:
            tmp.write_text("good")
    writer = _start_writer("file", target)
    _kill(writer)
    assert _hidden(tmp_path) == [f".x.h5.tmp-{writer.pid}.h5"]  # identifiable: this output, that (dead) writer
    assert target.read_text() == "good" if existing else not target.exists()

    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and _hidden(tmp_path) == []


def test_a_live_writers_temp_file_and_other_outputs_leftovers_are_not_touched(tmp_path):
    target, other = tmp_path / "a.xtc", tmp_path / "a.xtc.bak"
    live = _start_writer("file", target)
    dead = _start_writer("file", other)
    _kill(dead)
    try:
        assert remove_stale_temp_files(target) == []  # the live writer is still writing
        assert _hidden(tmp_path) == [f".a.xtc.bak.tmp-{dead.pid}.bak", f".a.xtc.tmp-{live.pid}.xtc"]
    finally:
        _kill(live)
    assert remove_stale_temp_files(target) == [tmp_path / f".a.xtc.tmp-{live.pid}.xtc"]
    assert _hidden(tmp_path) == [f".a.xtc.bak.tmp-{dead.pid}.bak"]  # another output's: cleaned when that is written


def test_atomic_dir_sigkill_mid_write_keeps_the_old_folder_and_the_next_write_removes_the_leftover(tmp_path):
    target = tmp_path / "p_A"
    with atomic_dir(target) as work:
        (work / "a.txt").write_text("good")
    writer = _start_writer("dir", target)
    _kill(writer)
    assert (target / "a.txt").read_text() == "good" and _hidden(tmp_path) == [f".p_A.tmp-{writer.pid}"]

    with atomic_dir(target) as work:
        (work / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"] and _hidden(tmp_path) == []


def test_an_exception_mid_write_cleans_up_at_once(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text("{")
            raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_dir(tmp_path / "d") as work:
            (work / "a").write_text("x")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
