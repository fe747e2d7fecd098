"""The Snakemake workflow itself: config validation at start, dry runs of both configs, and partial reruns.

Real `snakemake` runs on a temporary copy of the workflow with a tiny demo config (two 5-residue peptides, a few ps
of real OpenMM MD), so what is tested is exactly what a user runs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from training_data import TINY_MODEL

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

TINY_DEMO = {
    "dataset": "demo",
    "run": "tiny",
    "demo": {
        "proteins": [
            {"name": "tinya_A", "sequence": "GAWKA", "split": "train"},
            {"name": "tinyb_A", "sequence": "AEWKG", "split": "test"},
        ],
        "equilibration_ps": 0.0,
        "production_ps": 2.0,
        "frame_interval_ps": 0.5,
        "minimize_max_iterations": 50,
    },
    "frames": {"stride": 1},
    "features": {"featurizer": "offline"},
}
DATA_TARGETS = [f"data/{kind}/{n}.h5" for kind in ("frames", "features/offline") for n in ("tinya_A", "tinyb_A")]


def _copy_workflow(dst: Path) -> Path:
    for item in ("Snakefile", "config.yaml", "rules", "schemas", "envs", "report"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / item)
    (dst / "benchmarks").mkdir()
    for script in (REPO / "benchmarks").glob("*.py"):  # the bench rules take their scripts as inputs
        shutil.copy(script, dst / "benchmarks" / script.name)
    return dst


def _snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(SNAKEMAKE + ["--cores", "2", *args], cwd=workdir, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _jobs(dry_run_output: str) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry run (empty when nothing is to be done)."""
    if "Nothing to be done" in dry_run_output:
        return {}
    table = dry_run_output.split("Job stats:", 1)[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.M) if m[1] != "total"}


@pytest.mark.parametrize("configfile", [None, "config.demo.yaml"])
def test_dry_run_of_paper_and_demo_configs_resolves(configfile, tmp_path):
    wf = _copy_workflow(tmp_path)
    shutil.copy(REPO / "config.demo.yaml", wf / "config.demo.yaml")
    args = ["-n"] + (["--configfile", configfile] if configfile else [])
    out = _snakemake(wf, *args).stdout
    jobs = _jobs(out)
    for rule in ("extract_frames", "train", "rollout", "evaluate", "figures"):
        assert jobs.get(rule, 0) >= 1, (rule, jobs)
    if configfile is None:  # the paper setup downloads every ATLAS chain of the shipped splits, OpenFold features
        assert jobs["download_atlas"] == jobs["featurize_openfold"] == 1387 and "prepare_demo" not in jobs
        assert "featurize" not in jobs
    else:
        assert jobs["prepare_demo"] == jobs["featurize"] == 3 and "download_atlas" not in jobs
        assert "featurize_openfold" not in jobs
        assert jobs["rollout_ablation"] == 4 and jobs["evaluate_ablation"] == 4


@pytest.mark.parametrize(
    "patch, key",
    [
        ({"frames": {"strid": 2}}, "strid"),
        ({"training": {"stepz": 5}}, "stepz"),
        ({"rollout": {"steps": "many"}}, "steps"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_unknown_or_mistyped_key_fails_at_start_naming_it(patch, key, tmp_path):
    wf = _copy_workflow(tmp_path)
    (wf / "bad.yaml").write_text(yaml.safe_dump({**TINY_DEMO, **patch}))
    proc = _snakemake(wf, "-n", "--configfile", "bad.yaml", check=False)
    assert proc.returncode != 0
    assert key in proc.stdout + proc.stderr


def test_short_ablation_horizon_is_refused(tmp_path):
    wf = _copy_workflow(tmp_path)
    (wf / "bad.yaml").write_text(yaml.safe_dump({**TINY_DEMO, "training": {"num_frames": 8},
                                                 "ablation": {"n_frames": 20}}))
    proc = _snakemake(wf, "-n", "--configfile", "bad.yaml", check=False)
    assert proc.returncode != 0 and "ablation.n_frames" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_rerun_does_nothing_and_a_changed_setting_reruns_only_what_depends_on_it(tmp_path):
    wf = _copy_workflow(tmp_path)
    (wf / "tiny.yaml").write_text(yaml.safe_dump(TINY_DEMO))
    _snakemake(wf, *DATA_TARGETS, "--configfile", "tiny.yaml")
    for target in DATA_TARGETS:
        assert (wf / target).stat().st_size > 0

    again = _snakemake(wf, "-n", *DATA_TARGETS, "--configfile", "tiny.yaml").stdout
    assert _jobs(again) == {}, again

    changed = dict(TINY_DEMO, frames={"stride": 2})
    (wf / "tiny.yaml").write_text(yaml.safe_dump(changed))
    jobs = _jobs(_snakemake(wf, "-n", *DATA_TARGETS, "--configfile", "tiny.yaml").stdout)
    assert jobs == {"extract_frames": 2}, jobs

    # a featurizer setting reruns the features only; the MD and the frames stay
    (wf / "tiny.yaml").write_text(yaml.safe_dump(dict(TINY_DEMO, features={"featurizer": "offline",
                                                                           "offline": {"n_rbf": 8}})))
    jobs = _jobs(_snakemake(wf, "-n", *DATA_TARGETS, "--configfile", "tiny.yaml").stdout)
    assert jobs == {"featurize": 2}, jobs

    # a changed training setting retrains for real: the old run's last.pt is moved aside, not resumed or refused
    training = {"steps": 2, "batch_size": 1, "num_frames": 2, "strides": [1], "crop_size": 8, "log_every": 1,
                "val_every": 10, "checkpoint_every": 10, "warmup_steps": 1, "val_samples": 0}
    ckpt = wf / "runs" / "tiny" / "checkpoints" / "final.pt"
    for lr in (1e-3, 2e-3):
        (wf / "tiny.yaml").write_text(yaml.safe_dump(dict(TINY_DEMO, model=TINY_MODEL,
                                                          training=dict(training, lr=lr))))
        if lr == 2e-3:
            jobs = _jobs(_snakemake(wf, "-n", str(ckpt.relative_to(wf)), "--configfile", "tiny.yaml").stdout)
            assert jobs == {"train": 1}, jobs
        _snakemake(wf, str(ckpt.relative_to(wf)), "--configfile", "tiny.yaml")
        assert torch.load(ckpt, weights_only=False)["config"]["training"]["lr"] == lr
    [superseded] = (wf / "runs" / "tiny").glob("checkpoints.superseded-*")
    # final.pt was a rule output (Snakemake deleted it before the rerun); last.pt holds the same finished state
    old = torch.load(superseded / "last.pt", weights_only=False)
    assert old["config"]["training"]["lr"] == 1e-3 and old["step"] == 2
