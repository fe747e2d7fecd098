"""The slurm/ profile: real snakemake + the real SLURM executor plugin against fake SLURM commands on PATH.

The fakes record every call (argv and the job script fed on stdin) and answer like a cluster where every job fails at
once, so snakemake submits each ready job exactly once and stops; the test then reads the sbatch command lines.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "slurm"

FAKE = r'''#!{python}
"""Fake SLURM command: append argv (+ stdin for sbatch) to calls.jsonl and answer plausibly."""
import json, os, sys
name = os.path.basename(sys.argv[0])
record = {{"cmd": name, "argv": sys.argv[1:]}}
if name == "sbatch":
    record["stdin"] = sys.stdin.read()
with open({log!r}, "a") as f:
    f.write(json.dumps(record) + "\n")
if name == "sbatch":
    n = sum(1 for _ in open({log!r}))
    print(1000 + n)
elif name == "sinfo":
    print("PARTITION\ncpu*\ngpu")
elif name in ("sacctmgr", "sshare"):
    print("YOUR_ACCOUNT")
elif name == "sacct":
    ids = [a for a in sys.argv if a.isdigit()]
    for i in ids:
        print(f"{{i}}|FAILED")
'''

SNAKEFILE = '''
# independent rules, so all four are submitted in the first round
rule all:
    input: "runs/demo/checkpoints/final.pt", "runs/demo/rollouts/p1.h5", "data/splits/train.txt",
           "data/features/openfold/p1.h5"

rule splits:
    output: "data/splits/train.txt"
    resources: runtime=5
    shell: "echo p1 > {output}"

rule featurize:
    output: "data/features/openfold/p1.h5"
    resources: gpu=1
    shell: "touch {output}"

rule train:
    output: "runs/demo/checkpoints/final.pt"
    resources: gpu=1
    shell: "torchrun --standalone --nproc-per-node {resources.gpu} -m starmd train > {output}"

rule rollout:
    output: "runs/demo/rollouts/p1.h5"
    resources: gpu=1
    shell: "touch {output}"
'''


def _snakemake() -> list[str]:
    exe = Path(sys.executable).parent / "snakemake"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "snakemake"]


@pytest.fixture
def workflow(tmp_path: Path) -> tuple[Path, dict[str, str], Path]:
    bin_dir, work = tmp_path / "bin", tmp_path / "work"
    bin_dir.mkdir()
    work.mkdir()
    calls = tmp_path / "calls.jsonl"
    script = FAKE.format(python=sys.executable, log=str(calls))
    for name in ("sbatch", "squeue", "sacct", "sinfo", "sacctmgr", "sshare", "scontrol", "scancel"):
        path = bin_dir / name
        path.write_text(script)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    (work / "Snakefile").write_text(SNAKEFILE)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin",
           "HOME": str(tmp_path)}
    # A copy of the repo profile, so the run's .snakemake state never lands in the repo.
    shutil.copytree(PROFILE, tmp_path / "profile")
    return work, env, calls


def _calls(path: Path, cmd: str) -> list[dict]:
    if not path.exists():
        return []
    return [c for c in map(json.loads, path.read_text().splitlines()) if c["cmd"] == cmd]


def test_profile_declares_gpu_rules_in_one_place():
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert set(profile["default-resources"]) >= {"slurm_account", "slurm_partition", "runtime", "mem_mb"}
    for rule in ("train", "featurize", "rollout"):
        res = profile["set-resources"][rule]
        assert res["gpu"] >= 1 and res["slurm_partition"] and "slurm_account" not in res
    assert "--signal=TERM@" in profile["set-resources"]["train"]["slurm_extra"]


def test_dry_run_resolves(workflow):
    work, env, calls = workflow
    out = subprocess.run([*_snakemake(), "--profile", str(work.parent / "profile"), "-n"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout + out.stderr
    for rule in ("train", "rollout", "featurize", "splits"):
        assert f"rule {rule}:" in text or f"localrule {rule}:" in text, text
    assert not _calls(calls, "sbatch"), "a dry run must not submit"


def test_sbatch_lines_carry_gpu_request(workflow):
    work, env, calls = workflow
    proc = subprocess.Popen([*_snakemake(), "--profile", str(work.parent / "profile"), "--retries", "0"], cwd=work,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(_calls(calls, "sbatch")) < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
    finally:  # the fake jobs never finish; we only needed the submissions
        proc.terminate()
        try:
            log = proc.communicate(timeout=10)[0]
        except subprocess.TimeoutExpired:  # it waits for the fake cluster to confirm cancellation
            proc.kill()
            log = proc.communicate()[0]
    by_rule = {}
    for call in _calls(calls, "sbatch"):
        argv = call["argv"]
        by_rule[argv[argv.index("--comment") + 1].removeprefix("rule_")] = argv
    assert set(by_rule) == {"splits", "featurize", "train", "rollout"}, log[-3000:]

    def opt(argv: list[str], flag: str) -> str | None:
        return argv[argv.index(flag) + 1] if flag in argv else None

    for rule in ("train", "rollout", "featurize"):
        argv = by_rule[rule]
        assert "--gpus=1" in argv and opt(argv, "-p") == "gpu" and opt(argv, "-A") == "YOUR_ACCOUNT", argv
    train = by_rule["train"]
    assert "--signal=TERM@300" in train and "--requeue" in train and opt(train, "-t") == "1440"
    assert opt(train, "--mem") == "64000" and "--cpus-per-task=8" in train
    assert "--signal=TERM@300" not in by_rule["rollout"]
    # the job script snakemake submits runs the rule with the GPU count the profile set (torchrun --nproc-per-node)
    assert "train:gpu=1" in " ".join(_decode_b64_args(train))
    splits = by_rule["splits"]
    assert not any(a.startswith("--gpus") for a in splits) and opt(splits, "-p") == "cpu" and opt(splits, "-t") == "5"


def _decode_b64_args(argv: list[str]) -> list[str]:
    """Snakemake passes --set-resources to the job as base64//... tokens inside --wrap."""
    wrap = next(a for a in argv if a.startswith("--wrap="))
    return [base64.b64decode(tok.removeprefix("base64//")).decode() for tok in wrap.split()
            if tok.startswith("base64//")]
