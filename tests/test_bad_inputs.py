"""Every bad input a step can be given ends in one line `<file>: <what is wrong> (<what to do>)`, exit status 1 and no
traceback; `--debug` shows the traceback. The table of these messages is docs/errors.md.

Real files throughout: a PeptideBuilder peptide with three jittered xtc replicas, the real extract-frames writer, a
tiny checkpoint trained and a rollout sampled by `python -m starmd` itself; each case corrupts one copy of one file
(truncated, emptied, NaN written into it) and runs the real step in a subprocess.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from training_data import TINY_MODEL, make_protein

NAME = "bad_A"
TRAINING = {"steps": 2, "batch_size": 1, "num_frames": 2, "strides": [1], "crop_size": 8, "log_every": 1,
            "val_every": 10, "checkpoint_every": 10, "warmup_steps": 1, "val_samples": 0}
ROLLOUT = {"n_frames": 2, "delta_t_ps": 10.0, "n_samples": 1, "steps": 2, "progress_bar": False}
RAW_FIX = "(delete it; snakemake reruns prepare_demo or download_atlas)"
FRAMES_FIX = "(delete it; snakemake reruns extract_frames)"
FEATURES_FIX = "(delete it; snakemake reruns featurize)"
ROLLOUT_FIX = "(delete it; snakemake reruns the rollout)"
CHECKPOINT_FIX = "(delete it; snakemake reruns train)"


def starmd(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "starmd", *map(str, args)], capture_output=True, text=True)


def run_ok(*args: str | Path) -> None:
    proc = starmd(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    """Good inputs of every step: raw MD, frames, features, a trained checkpoint and a rollout."""
    root = tmp_path_factory.mktemp("good")
    frames, features = make_protein(root, NAME, "ACDEFGHIK", n_frames=6, n_replicas=3)
    raw = root / "raw" / NAME
    run = root / "run"
    run_ok("train", "--frames", frames, "--features", features, "--run-dir", run,
           "--config-json", json.dumps({"training": TRAINING, "model": TINY_MODEL}))
    checkpoint = run / "checkpoints" / "final.pt"
    rollout = root / "rollouts" / f"{NAME}.h5"
    run_ok("rollout", "--checkpoint", checkpoint, "--features", features, "--frames", frames, "--out", rollout,
           "--config-json", json.dumps(ROLLOUT))
    return {"pdb": raw / f"{NAME}.pdb", "raw_dir": raw, "frames": frames, "features": features,
            "checkpoint": checkpoint, "rollout": rollout, "xtc1": raw / f"{NAME}_prod_R1_fit.xtc",
            "xtc2": raw / f"{NAME}_prod_R2_fit.xtc", "xtc3": raw / f"{NAME}_prod_R3_fit.xtc"}


# --- how a file goes bad -----------------------------------------------------------------------------------------
def truncate(path: Path) -> None:
    """Cut the file a little after its middle (inside a record), as a full disk or an interrupted copy does."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 13])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def remove(path: Path) -> None:
    path.unlink()


def no_atoms(path: Path) -> None:
    path.write_text("REMARK   1 NO ATOMS\nEND\n")


def nan_at(key: str, index: tuple[int, ...]) -> Callable[[Path], None]:
    """Write one NaN into dataset `key` of an HDF5 file."""
    def corrupt(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            values = f[key][()]
            values[index] = np.nan
            f[key][...] = values
    return corrupt


def args_for(step: str, f: dict[str, Path], out: Path) -> list[str | Path]:
    """The command line of `step` on the files `f`."""
    if step == "extract-frames":
        return ["extract-frames", "--pdb", f["pdb"], "--xtc", f["xtc1"], f["xtc2"], f["xtc3"], "--out", out / "f.h5",
                "--config-json", "{}"]
    if step == "featurize":
        return ["featurize", "--featurizer", "offline", "--name", NAME, "--pdb", f["pdb"], "--out", out / "x.h5",
                "--config-json", '{"featurizer": "offline"}']
    if step == "train":
        return ["train", "--frames", f["frames"], "--features", f["features"], "--run-dir", out / "run",
                "--config-json", json.dumps({"training": TRAINING, "model": TINY_MODEL})]
    if step == "rollout":
        return ["rollout", "--checkpoint", f["checkpoint"], "--features", f["features"], "--frames", f["frames"],
                "--out", out / "r.h5", "--config-json", json.dumps(ROLLOUT)]
    if step == "figures":
        return ["figures", "--eval", f["eval"], "--out-dir", out / "figures"]
    assert step == "evaluate"
    return ["evaluate", "--name", NAME, "--rollout", f["rollout"], "--frames", f["frames"], "--raw-dir", f["raw_dir"],
            "--out", out / "e.json"]


# (step, file, corruption, expected line; {path} is the corrupted file, `...` stands for the library's own words)
CASES = [
    ("extract-frames", "xtc2", truncate, "{path}: unreadable XTC trajectory (truncated?): ... " + RAW_FIX),
    ("extract-frames", "xtc3", empty, "{path}: empty XTC trajectory (0 bytes) " + RAW_FIX),
    ("extract-frames", "xtc1", remove, "{path}: no such XTC trajectory (snakemake reruns prepare_demo or "
     "download_atlas)"),
    ("extract-frames", "pdb", empty, "{path}: empty PDB structure (0 bytes) " + RAW_FIX),
    ("extract-frames", "pdb", truncate, "{xtc1}: 70 atoms, but {path} has 36: trajectory and topology do not belong "
     "together (or one is truncated) " + RAW_FIX),
    ("extract-frames", "pdb", no_atoms, "{path}: unreadable PDB structure: ... " + RAW_FIX),
    ("featurize", "pdb", no_atoms, "{path}: unreadable PDB structure: ... " + RAW_FIX),
    ("featurize", "pdb", empty, "{path}: empty PDB structure (0 bytes) " + RAW_FIX),
    ("train", "frames", truncate, "{path}: unreadable frames HDF5: ... " + FRAMES_FIX),
    ("train", "features", nan_at("pair", (1, 2, 3)),
     "{path}: pair has non-finite values (NaN/inf), the first at index [1, 2, 3] " + FEATURES_FIX),
    ("train", "frames", nan_at("replicas/R2/translations", (4, 5, 1)),
     "{path}: replicas/R2/translations has non-finite values (NaN/inf), the first at index [4, 5, 1] " + FRAMES_FIX),
    ("rollout", "features", truncate, "{path}: unreadable features HDF5: ... " + FEATURES_FIX),
    ("rollout", "features", empty, "{path}: empty features HDF5 (0 bytes) " + FEATURES_FIX),
    ("rollout", "features", nan_at("single", (2, 3)),
     "{path}: single has non-finite values (NaN/inf), the first at index [2, 3] " + FEATURES_FIX),
    ("rollout", "frames", nan_at("start/translations", (0, 2)),
     "{path}: start/translations has non-finite values (NaN/inf), the first at index [0, 2] " + FRAMES_FIX),
    ("rollout", "frames", empty, "{path}: empty frames HDF5 (0 bytes) " + FRAMES_FIX),
    ("rollout", "checkpoint", remove, "{path}: no such checkpoint (snakemake reruns train)"),
    ("rollout", "checkpoint", truncate, "{path}: not a loadable starmd checkpoint, truncated? (PytorchStreamReader failed reading zip "
     "archive: failed finding central directory) " + CHECKPOINT_FIX),
    ("evaluate", "frames", nan_at("replicas/R1/translations", (3, 0, 0)),
     "{path}: replicas/R1/translations has non-finite values (NaN/inf), the first at index [3, 0, 0] " + FRAMES_FIX),
    ("evaluate", "xtc1", truncate, "{path}: unreadable trajectory (truncated?): ... " + RAW_FIX),
    ("evaluate", "rollout", truncate, "{path}: unreadable rollout HDF5: ... " + ROLLOUT_FIX),
    ("figures", "eval", truncate, "{path}: unreadable eval JSON (truncated?): ... (delete it; snakemake reruns "
     "evaluate)"),
    ("evaluate", "rollout", nan_at("translations", (0, 1, 2, 0)),
     "{path}: translations of sample 0 are non-finite (NaN/inf) from frame 1 on (the model diverged: check the "
     "checkpoint and rollout.steps, then rerun the rollout)"),
]


def _copy_inputs(good: dict[str, Path], dest: Path) -> dict[str, Path]:
    """A private copy of every good file (the raw dir, frames, features, checkpoint, rollout + its pdb/xtc)."""
    raw = dest / "raw" / NAME
    shutil.copytree(good["raw_dir"], raw)
    files = {k: raw / p.name for k, p in good.items() if p.parent == good["raw_dir"]}
    files["raw_dir"] = raw
    for key in ("frames", "features", "checkpoint"):
        files[key] = dest / key / good[key].name
        files[key].parent.mkdir()
        shutil.copy(good[key], files[key])
    shutil.copytree(good["rollout"].parent, dest / "rollouts")
    files["rollout"] = dest / "rollouts" / good["rollout"].name
    files["eval"] = dest / "eval.json"  # figures' input: only its syntax matters to the truncated-JSON case
    files["eval"].write_text(json.dumps({"name": NAME, "format_version": 1, "metrics": {}, "curves": {}}))
    return files


@pytest.mark.parametrize("step, key, corrupt, expected", CASES,
                         ids=[f"{c[0]}-{c[1]}-{getattr(c[2], '__name__', 'nan')}" for c in CASES])
def test_bad_input_is_one_line_naming_the_file(step, key, corrupt, expected, good, tmp_path):
    files = _copy_inputs(good, tmp_path / "in")
    corrupt(files[key])
    proc = starmd(*args_for(step, files, tmp_path / "out"))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    pattern = re.escape(expected.format(path=files[key], **files)).replace(re.escape("..."), ".+")
    assert re.fullmatch(pattern, line), line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.h5"))  # nothing was written


def test_debug_shows_the_traceback(good, tmp_path):
    files = _copy_inputs(good, tmp_path / "in")
    empty(files["features"])
    proc = starmd(*args_for("rollout", files, tmp_path / "out"), "--debug")
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"starmd.errors.InputError: {files['features']}: empty features "
                                                    f"HDF5 (0 bytes) {FEATURES_FIX}")
