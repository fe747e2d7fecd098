"""The Snakemake workflow itself: config validation at start, dry runs of both configs, and partial reruns.

Real `snakemake` runs on a temporary copy of the workflow with a tiny demo config (two 5-residue peptides, a few ps
of real OpenMM MD), so what is tested is exactly what a user runs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mdtraj as md
import numpy as np
import pytest
import torch
import yaml

from training_data import TINY_MODEL, tiny_demo_dataset

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

TINY_DEMO = {
    **tiny_demo_dataset(),
    "run": "tiny",
    "rollout": {"delta_t_ps": 0.5},  # the MD's frame spacing: a trained Delta-t (checked at workflow start)
}
# The steps after training at their smallest: 4 rollout frames at the MD's 0.5 ps, a 2-point tau ablation over
# 10 x the training window, metrics binned for 5 residues x 4 frames, the KV-cache benchmark at test size.
PIPELINE_TINY = {
    "rollout": {"n_frames": 4, "delta_t_ps": 0.5, "n_samples": 1, "steps": 2, "progress_bar": False},
    "ablation": {"taus": [0.0, 0.1], "n_frames": 20, "n_samples": 1},
    "evaluation": {"tica_lag": 1, "acf_max_lag": 2, "grid_bins": 4, "jsd_bins": 4, "pairwise_rmsd_max_frames": 4,
                   "max_distance_pairs": 10, "w2_max_samples": 10, "min_sequence_separation": 2},
    "benchmarks": {"threads": 1, "feature_dims": {"c_s": 8, "c_z": 4}, "demo_model": TINY_MODEL,
                   "paper_model": TINY_MODEL,
                   "kv_cache": {"n_res": [50, 500], "n_frames": [10, 400], "measured_n_res": [4, 8],
                                "measured_n_frames": [1, 3], "pair_budget_bytes": 6e7, "rollout_n_res": 6,
                                "rollout_n_frames": [1, 4], "rollout_steps": 1}},
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


@pytest.mark.parametrize("configfile", [None, "config.demo.yaml", "config.synthetic.yaml"])
def test_dry_run_of_paper_and_demo_configs_resolves(configfile, tmp_path):
    """Also the start checks pass on every shipped config (e.g. its rollout Delta-t is a trained one)."""
    wf = _copy_workflow(tmp_path)
    for name in ("config.demo.yaml", "config.synthetic.yaml"):
        shutil.copy(REPO / name, wf / name)
    args = ["-n"] + (["--configfile", configfile] if configfile else [])
    out = _snakemake(wf, *args).stdout
    jobs = _jobs(out)
    for rule in ("extract_frames", "train", "rollout", "evaluate", "figures"):
        assert jobs.get(rule, 0) >= 1, (rule, jobs)
    if configfile is None:  # the paper setup downloads every ATLAS chain of the shipped splits, OpenFold features
        assert jobs["download_atlas"] == jobs["featurize_openfold"] == 1387 and "prepare_demo" not in jobs
        assert "featurize" not in jobs
    elif configfile == "config.synthetic.yaml":
        assert jobs["prepare_synthetic"] == jobs["featurize"] == 1 and "download_atlas" not in jobs
    else:
        assert jobs["prepare_demo"] == jobs["featurize"] == 3 and "download_atlas" not in jobs
        assert "featurize_openfold" not in jobs
        assert jobs["rollout_ablation"] == 4 and jobs["evaluate_ablation"] == 4


@pytest.mark.parametrize(
    "patch, line",
    [
        ({"frames": {"strid": 2}}, r"config frames\.strid: unknown key \(allowed: object keys stride\)"),
        ({"training": {"stepz": 5}}, r"config training\.stepz: unknown key \(allowed: object keys .*batch_size, .*, "
                                     r"steps, strides, .*\)"),
        ({"rollout": {"steps": "many"}}, r"config rollout\.steps: 'many' is not of type 'integer' \(allowed: "
                                         r"integer >= 1\)"),
        ({"training": {"steps": 20.0}}, r"config training\.steps: 20\.0 is not of type 'integer' \(allowed: "
                                        r"integer >= 1\)"),
        ({"training": {"lr": "1e-3"}}, r"config training\.lr: '1e-3' is not of type 'number' \(allowed: number > 0\)"),
        ({"colour": "blue"}, r"config colour: unknown key \(allowed: object keys ablation, .*\)"),
        ({"evaluation": {"reference_replica": "R9"}}, r"config evaluation\.reference_replica: 'R9' is not a replica "
                                                      r"of the dataset \(allowed: one of R1, R2, R3\)"),
        ({"evaluation": {"reference_replica": "R2", "oracle_replica": "R2"}},
         r"config evaluation\.oracle_replica: must differ from evaluation\.reference_replica \(allowed: another of "
         r"R1, R2, R3\)"),
        ({"demo": {**TINY_DEMO["demo"], "replica_seeds": [1, 2]}},
         r"config demo\.replica_seeds: 2 seeds, but the workflow reads 3 replicas \(allowed: exactly 3 distinct "
         r"seeds\)"),
        ({"training": {"num_frames": 8}, "ablation": {"n_frames": 20}},
         r"config ablation\.n_frames: 20 is shorter than 10 x training\.num_frames \(allowed: >= 80; the ablation "
         r"is about long horizons\)"),
        ({"rollout": {"delta_t_ps": 100.0}},
         r"config rollout\.delta_t_ps: 100 ps lies outside the Delta-t the model trains on, \[0\.5, 2\] ps = "
         r"training\.strides \[1, 2, 4\] x frames\.stride 1 x 0\.5 ps \(demo\.frame_interval_ps\) \(allowed: a "
         r"delta_t_ps in that range, other strides, or rollout\.allow_delta_t_extrapolation: true\)"),
    ],
)
def test_config_problem_fails_at_start_with_one_line_naming_the_key(patch, line, tmp_path):
    wf = _copy_workflow(tmp_path)
    (wf / "bad.yaml").write_text(yaml.safe_dump({**TINY_DEMO, **patch}))
    proc = _snakemake(wf, "-n", "--configfile", "bad.yaml", check=False)
    assert proc.returncode == 1
    assert re.fullmatch(line, proc.stderr.strip()), proc.stderr  # the whole of stderr: no traceback, no schema dump
    assert "Job stats" not in proc.stdout  # stopped before building the DAG


def test_paper_setup_with_a_rollout_step_it_never_trains_on_fails_at_start_naming_the_keys(tmp_path):
    """The old paper setup: ATLAS frames kept every 400 ps (stride 40), strides [1, 2, 4], rollout at 100 ps."""
    wf = _copy_workflow(tmp_path)
    (wf / "bad.yaml").write_text(yaml.safe_dump({"frames": {"stride": 40}}))
    proc = _snakemake(wf, "-n", "--configfile", "bad.yaml", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "config rollout.delta_t_ps: 100 ps lies outside the Delta-t the model trains on, [400, 1600] ps = "
        "training.strides [1, 2, 4] x frames.stride 40 x 10 ps (ATLAS saves every 10 ps) (allowed: a delta_t_ps in "
        "that range, other strides, or rollout.allow_delta_t_extrapolation: true)")


def test_delta_t_extrapolation_runs_when_the_config_allows_it(tmp_path):
    wf = _copy_workflow(tmp_path)
    rollout = {**PIPELINE_TINY["rollout"], "delta_t_ps": 100.0, "allow_delta_t_extrapolation": True}
    (wf / "tiny.yaml").write_text(yaml.safe_dump({**TINY_DEMO, **PIPELINE_TINY, "rollout": rollout,
                                                  "training": {"num_frames": 2}}))
    out = _snakemake(wf, "-n", "-p", "--configfile", "tiny.yaml").stdout
    assert _jobs(out)["rollout"] == 1 and _jobs(out)["train"] == 1
    assert '"allow_delta_t_extrapolation": true' in out  # it travels to the rollout step with its section


def test_top_level_seed_reaches_training_rollout_and_evaluation(tmp_path):
    """`seed` is the one value a user changes for another training/sampling seed: every model step's command gets
    it (added to its section's own seed), the data steps keep theirs."""
    wf = _copy_workflow(tmp_path)
    cfg = {**TINY_DEMO, **PIPELINE_TINY, "seed": 3, "rollout": {**PIPELINE_TINY["rollout"], "seed": 2},
           "training": {"num_frames": 2}, "demo": {**TINY_DEMO["demo"], "replica_seeds": [4, 5, 6]}}
    (wf / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    out = _snakemake(wf, "-n", "-p", "--configfile", "tiny.yaml").stdout
    sections = {}
    for step in ("train", "rollout", "evaluate", "prepare-demo"):
        line = next(ln for ln in out.splitlines() if f"-m starmd {step} " in ln)
        sections[step] = json.loads(re.search(r"--config-json '([^']*)'", line).group(1))
    assert sections["train"]["training"]["seed"] == 3
    assert sections["rollout"]["seed"] == 5
    assert sections["evaluate"]["seed"] == 3
    assert sections["prepare-demo"]["replica_seeds"] == [4, 5, 6]


@pytest.mark.slow
def test_rerun_does_nothing_and_a_changed_setting_reruns_only_what_depends_on_it(tmp_path):
    wf = _copy_workflow(tmp_path)
    (wf / "tiny.yaml").write_text(yaml.safe_dump(TINY_DEMO))
    _snakemake(wf, *DATA_TARGETS, "--configfile", "tiny.yaml")
    for target in DATA_TARGETS:
        assert (wf / target).stat().st_size > 0

    again = _snakemake(wf, "-n", *DATA_TARGETS, "--configfile", "tiny.yaml").stdout
    assert _jobs(again) == {}, again

    changed = dict(TINY_DEMO, frames={"stride": 2}, rollout={"delta_t_ps": 1.0})  # rollout: not a data input
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

    # on through rollout, evaluate and figures to the report; the trained checkpoint is used as it is
    (wf / "tiny.yaml").write_text(yaml.safe_dump(dict(TINY_DEMO, model=TINY_MODEL, training=dict(training, lr=2e-3),
                                                      **PIPELINE_TINY)))
    report = "runs/tiny/figures/report.html"
    jobs = _jobs(_snakemake(wf, "-n", report, "--configfile", "tiny.yaml").stdout)
    assert jobs == {"rollout": 1, "evaluate": 1, "rollout_ablation": 2, "evaluate_ablation": 2, "bench_kv_cache": 1,
                    "figures": 1}, jobs
    _snakemake(wf, report, "--configfile", "tiny.yaml")
    rollout = wf / "runs" / "tiny" / "rollouts"
    traj = md.load(str(rollout / "tinyb_A_s0.xtc"), top=str(rollout / "tinyb_A.pdb"))
    assert traj.n_frames == 4 and traj.n_residues == 5 and np.allclose(traj.time, [0.5, 1.0, 1.5, 2.0])
    result = json.loads((wf / "runs" / "tiny" / "eval" / "tinyb_A.json").read_text())
    assert result["name"] == "tinyb_A" and result["inputs"]["rollout"] == "runs/tiny/rollouts/tinyb_A.h5"
    assert result["metrics"]["ca_validity"]["reference"] == 1.0  # MD frames are valid by construction
    assert all(0.0 <= result["metrics"][m]["model"] <= 1.0 for m in ("ca_validity", "jsd_pca"))
    for tau in ("0", "0.1"):
        ablated = json.loads((wf / "runs" / "tiny" / "ablation" / f"tau{tau}" / "eval" / "tinyb_A.json").read_text())
        assert ablated["inputs"]["rollout"] == f"runs/tiny/ablation/tau{tau}/rollouts/tinyb_A.h5"
    html = (wf / report).read_text()
    for figure in ("metrics_table", "stability", "rmsf", "pca_density", "autocorrelation", "training",
                   "kv_cache_memory"):
        assert f'<figure id="{figure}"><img' in html, figure
    assert _jobs(_snakemake(wf, "-n", report, "--configfile", "tiny.yaml").stdout) == {}
