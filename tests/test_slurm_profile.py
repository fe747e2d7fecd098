"""The slurm/ profile on a real SLURM: the project's Snakefile and profile, submitted with `snakemake --profile`.

A one-node cluster (slurmctld + slurmd + munge from Debian's slurm-wlm, tests/slurm_cluster.py) runs a tiny demo
(two 5-residue peptides, 2 ps of real OpenMM MD, a ~14k-parameter model) from raw MD to a rollout and an ablation
rollout. Every job record is read back from SLURM (`scontrol show job`): partition, GPU request, nodes and tasks.
A training job is then cut by its time limit (`scontrol update TimeLimit=1`, which brings the profile's TERM@300
warning signal at slurmctld's next check) and its resubmission requeued mid-run (`scontrol requeue`); training must
resume from last.pt both times and end with the uninterrupted run's final checkpoint, bit for bit. ATLAS downloads
run on the submit host under the profile's cap. Without SLURM, a dry run of the paper setup checks every job's
resources.

What the copy of the profile changes: the account (the test cluster has no accounting, so any name is accepted); its
partition names already match the test cluster's `cpu` and `gpu`. On the command line the tests add only
`--slurm-status-command squeue` (no slurmdbd, so no sacct; slurmctld keeps finished jobs for MinJobAge = 1 h),
`--slurm-init-seconds-before-status-checks 1` (the default 40 s would dominate a few-second job) and their
--configfile. The node has no CUDA device: GPU jobs are scheduled on counted GPUs and run on its CPU.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

from slurm_cluster import SlurmCluster, missing_reason
from training_data import TINY_MODEL, tiny_demo_dataset

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "slurm"
RUN = "tiny"
TEST_ACCOUNT = "starmdtest"

# Raw MD -> frames -> features -> train -> rollout (and one ablation point) in a few minutes on 2 shared cores.
TINY = {
    **tiny_demo_dataset(),
    "run": RUN,
    "model": TINY_MODEL,
    # long enough to outlast slurmctld's 30 s time-limit check after the first checkpoint (about 1 minute on an idle
    # core, 4 on 2 busy ones); checkpoints often, so an interruption loses little
    "training": {"steps": 400, "batch_size": 1, "num_frames": 2, "strides": [1], "crop_size": 8, "log_every": 1,
                 "val_every": 10000, "val_samples": 0, "checkpoint_every": 10, "warmup_steps": 1, "num_workers": 0},
    "rollout": {"n_frames": 3, "delta_t_ps": 0.5, "n_samples": 1, "steps": 2},
    "ablation": {"taus": [0.1], "n_frames": 20, "n_samples": 1},
}
FINAL = f"runs/{RUN}/checkpoints/final.pt"
TARGETS = [f"runs/{RUN}/rollouts/tinyb_A.h5", f"runs/{RUN}/ablation/tau0.1/rollouts/tinyb_A.h5"]
GPU_RULES = {"train", "rollout", "rollout_ablation", "featurize_openfold"}
CPU_RULES = {"prepare_demo", "extract_frames", "featurize"}

real_slurm = pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))
# The pipeline fixture alone took 5.4 min on 2 cores shared with other jobs, and its jobs inherit the tests' nice
# level, so a busy machine stretches it a lot; the fixture run counts towards the first test's limit.
SLOW_TIMEOUT = pytest.mark.timeout(2400)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = SlurmCluster.start(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()


def _copy_profile(dst: Path) -> Path:
    """The repo's slurm/ profile with only the account set for the test cluster (partitions already cpu / gpu)."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert profile["default-resources"]["slurm_partition"] == "cpu"
    assert {profile["set-resources"][rule]["slurm_partition"] for rule in GPU_RULES} == {"gpu"}
    profile["default-resources"]["slurm_account"] = TEST_ACCOUNT
    dst.mkdir()
    (dst / "config.yaml").write_text(yaml.safe_dump(profile))
    return dst


def _copy_workflow(wf: Path) -> Path:
    """The workflow (Snakefile, rules, schemas, envs, report captions) and the profile; starmd is the installed
    package (the Snakefile's PYTHONPATH then names the copy's absent src/, which Python skips)."""
    for item in ("Snakefile", "config.yaml", "rules", "schemas", "envs", "report"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, wf / item)
    (wf / "benchmarks").mkdir()
    for script in (REPO / "benchmarks").glob("*.py"):  # inputs of the bench rules, which the DAG still parses
        shutil.copy(script, wf / "benchmarks" / script.name)
    _copy_profile(wf / "profile")
    return wf


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Path:
    wf = _copy_workflow(tmp_path_factory.mktemp("workflow"))
    (wf / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return wf


def _dry_run_resources(text: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of every job a dry run lists (`rule X:` ... `    resources: k=v, k=v`)."""
    jobs = []
    for block in re.split(r"^(?=(?:local)?rule \w+:$)", text, flags=re.M)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block)[1]
        line = re.search(r"^    resources: (.*)$", block, flags=re.M)[1]
        jobs.append((rule, dict(item.split("=", 1) for item in line.split(", "))))
    return jobs


def test_dry_run_of_the_paper_setup_places_every_rule(tmp_path):
    """`snakemake --profile slurm -n` on config.yaml (ATLAS, ~5,000 jobs) resolves, and every job carries the
    partition and GPU request of its rule: no alias (rollout_ablation) falls back to the CPU defaults."""
    wf = _copy_workflow(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "profile", "-n"], cwd=wf,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = _dry_run_resources(proc.stdout)
    rules = {rule for rule, _ in jobs}
    assert rules >= GPU_RULES | {"download_atlas", "extract_frames", "evaluate", "evaluate_ablation", "figures"}
    for rule, res in jobs:
        assert res["slurm_account"] == TEST_ACCOUNT and res["nodes"] == "1", (rule, res)
        if rule in GPU_RULES:
            assert res["slurm_partition"] == "gpu" and res["gpu"] == "1", (rule, res)
        else:
            assert res["slurm_partition"] == "cpu" and "gpu" not in res, (rule, res)
    assert all(res["downloads"] == "1" for rule, res in jobs if rule == "download_atlas")


def _snakemake_cmd(*args: str, configfiles: tuple[str, ...] = ("tiny.yaml",)) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--profile", "profile", "--configfile", *configfiles,
            "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1", *args]


def _run(cluster: SlurmCluster, wf: Path, *args: str, configfiles: tuple[str, ...] = ("tiny.yaml",),
         timeout: int = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(_snakemake_cmd(*args, configfiles=configfiles), cwd=wf, env=cluster.env,
                          capture_output=True, text=True, timeout=timeout)


def _records(cluster: SlurmCluster, ids: list[str]) -> list[dict[str, str]]:
    return [cluster.job(i) for i in ids]


def _rule(record: dict[str, str]) -> str:
    """The rule of a job, from the --comment the executor sets (rule_<name>[_wildcards_...])."""
    return record["Comment"].removeprefix("rule_").split("_wildcards_")[0]


@pytest.fixture(scope="module")
def pipeline(cluster, workflow):
    """Run the tiny demo to its rollouts through SLURM once; return the SLURM records of its jobs."""
    before = set(cluster.job_ids())
    start = time.monotonic()
    proc = _run(cluster, workflow, *TARGETS)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    records = _records(cluster, [i for i in cluster.job_ids() if i not in before])
    print(f"pipeline through SLURM: {len(records)} jobs in {elapsed:.0f} s")
    return records


@pytest.mark.slow
@real_slurm
@SLOW_TIMEOUT
def test_pipeline_runs_to_its_rollouts(pipeline, workflow):
    for target in [*TARGETS, FINAL]:
        assert (workflow / target).stat().st_size > 0, target
    rules = sorted(_rule(r) for r in pipeline)
    # (make_splits is not among them: the DAG computes the splits itself, and these targets do not read the files)
    assert rules == sorted(["prepare_demo"] * 2 + ["extract_frames"] * 2 + ["featurize"] * 2
                           + ["train", "rollout", "rollout_ablation"]), rules
    assert all(r["JobState"] == "COMPLETED" and r["ExitCode"] == "0:0" for r in pipeline), pipeline


@pytest.mark.slow
@real_slurm
@SLOW_TIMEOUT
def test_gpu_rules_on_gpu_partition_cpu_rules_on_cpu_partition(pipeline, cluster, workflow, tmp_path):
    # featurize with OpenFold: submitted for real, then fails in the job (no OpenFold weights on the test cluster)
    (workflow / "openfold.yaml").write_text(yaml.safe_dump(
        {"features": {"featurizer": "openfold", "openfold": {"weights": str(tmp_path / "absent.pt")}}}))
    before = set(cluster.job_ids())
    proc = _run(cluster, workflow, "data/features/openfold/tinya_A.h5", "--retries", "0",
                configfiles=("tiny.yaml", "openfold.yaml"), timeout=900)
    assert proc.returncode != 0, "featurize_openfold cannot succeed without weights"
    openfold = _records(cluster, [i for i in cluster.job_ids() if i not in before])
    assert [_rule(r) for r in openfold] == ["featurize_openfold"], openfold

    for record in pipeline + openfold:
        rule, gres = _rule(record), record.get("TresPerJob", "")
        assert record["Account"] == TEST_ACCOUNT and record["NumNodes"] == "1", record
        if rule in GPU_RULES:
            assert record["Partition"] == "gpu" and gres == "gres:gpu:1", record
        else:
            assert rule in CPU_RULES and record["Partition"] == "cpu" and "gpu" not in gres, record
    train = next(r for r in pipeline if _rule(r) == "train")
    # one task (torchrun), 8 CPUs, 64 GB, 24 h, as the profile asks
    assert (train["NumTasks"], train["CPUs/Task"], train["TimeLimit"]) == ("1", "8", "1-00:00:00"), train
    assert train["MinMemoryNode"] in ("64000M", "62.50G"), train


def _wait(what: str, ready, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _freeze(cluster: SlurmCluster, job_id: str) -> list[int]:
    """SIGSTOP every process of a running job (`scontrol listpids`; one node, so they are local): SLURM still sees
    it RUNNING, but it makes no progress, so a signal SLURM sends later finds the trainer alive however fast this
    machine trains (an idle machine finished the tiny training before slurmctld's next 30 s time-limit check)."""
    out = cluster.run("scontrol", "listpids", job_id).stdout
    pids = [int(line.split()[0]) for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert pids, f"scontrol listpids {job_id} listed no process:\n{out}"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids


def _signalled_or_resumed(pids: list[int]) -> bool:
    """A SIGTERM is pending on one of the frozen processes, or SLURM continued or ended them itself (its kill
    sequence sends SIGCONT before SIGTERM)."""
    for pid in pids:
        try:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        except FileNotFoundError:
            return True
        pending = int(status["SigPnd"], 16) | int(status["ShdPnd"], 16)
        if pending & (1 << (signal.SIGTERM - 1)) or not status["State"].strip().startswith("T"):
            return True
    return False


def _thaw(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def _steps_logged(metrics: Path) -> int:
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


@pytest.mark.slow
@real_slurm
@SLOW_TIMEOUT
def test_timed_out_and_requeued_training_resumes_to_the_uninterrupted_checkpoint(pipeline, cluster, workflow):
    reference = torch.load(workflow / FINAL, weights_only=False)
    # a fresh training run of the same config on the same inputs: the finished run moves aside
    shutil.move(workflow / "runs" / RUN, workflow / "reference")
    (workflow / "logs" / RUN / "train.log").unlink()
    metrics = workflow / "runs" / RUN / "checkpoints" / "metrics.jsonl"
    last = metrics.with_name("last.pt")
    steps = TINY["training"]["steps"]

    before = set(cluster.job_ids())

    def train_jobs() -> list[str]:
        return [i for i in cluster.job_ids() if i not in before]

    # Snakemake clears a job's log before each attempt, so a watcher keeps every "resumed ..." line the trainer logs
    log, resumed, done = workflow / "logs" / RUN / "train.log", set(), threading.Event()

    def watch_log() -> None:
        while not done.is_set():
            if log.exists():
                resumed.update(line for line in log.read_text().splitlines() if " resumed " in line)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_log, daemon=True)
    watcher.start()
    proc = subprocess.Popen(_snakemake_cmd(FINAL), cwd=workflow, env=cluster.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        # 1. the time limit: 1 minute makes the profile's TERM@300 due at once; slurmctld sends it at its next
        # periodic check (every 30 s), so training must still have more than that to go
        _wait("the first checkpoint", lambda: len(train_jobs()) == 1 and last.exists())
        [first] = train_jobs()
        frozen = _freeze(cluster, first)  # held until SLURM's warning signal is on its way
        cluster.run("scontrol", "update", f"JobId={first}", "TimeLimit=1")
        _wait("the TERM@300 warning signal", lambda: _signalled_or_resumed(frozen), timeout_s=120)
        _thaw(frozen)
        _wait("the time-limited job to end", lambda: cluster.job(first)["JobState"] not in ("RUNNING", "PENDING"),
              timeout_s=600)
        stopped_at = _steps_logged(metrics)
        # 2. Snakemake resubmits it (retries); once that job has resumed and trained a little, requeue it mid-run
        _wait("the resubmitted job", lambda: len(train_jobs()) == 2)
        second = train_jobs()[1]
        _wait("training to resume and progress", lambda: _steps_logged(metrics) > stopped_at + 5)
        frozen = _freeze(cluster, second)  # so it cannot finish before the requeue reaches it
        requeued_at = _steps_logged(metrics)
        cluster.run("scontrol", "requeue", second)
        _wait("the requeue's signal", lambda: _signalled_or_resumed(frozen), timeout_s=120)
        _thaw(frozen)
        out, _ = proc.communicate(timeout=1800)
    finally:
        done.set()
        watcher.join()
        if proc.poll() is None:
            proc.terminate()
            proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-6000:]
    assert stopped_at < steps and requeued_at < steps, (stopped_at, requeued_at, "raise training.steps")
    # SLURM's records: the first job stopped (warning signal -> last.pt, trainer exit 75, torchrun exit 1) or was
    # killed at its limit; the second was requeued once and completed
    timed_out, requeued = cluster.job(first), cluster.job(second)
    assert timed_out["JobState"] in ("FAILED", "TIMEOUT") and timed_out["ExitCode"] != "0:0", timed_out
    assert timed_out["TimeLimit"] == "00:01:00", timed_out
    assert requeued["Restarts"] == "1" and requeued["JobState"] == "COMPLETED", requeued
    assert len(train_jobs()) == 2 and {_rule(cluster.job(i)) for i in train_jobs()} == {"train"}

    final = torch.load(workflow / FINAL, weights_only=False)
    assert final["step"] == reference["step"] == steps
    for key in ("model", "ema"):
        for name, value in reference[key].items():
            assert torch.equal(final[key][name], value), f"{key}.{name} differs from the uninterrupted run"
    # resumed twice, each time from a checkpoint past the start: "resumed runs/tiny/checkpoints/last.pt at step N"
    at = sorted(int(line.rsplit(" ", 1)[1]) for line in resumed if "last.pt" in line)
    # (the time-limited job saved at or before its last logged step; the requeued one on SIGTERM, after the call)
    assert len(at) == 2 and 0 < at[0] <= stopped_at < requeued_at <= at[1], (resumed, stopped_at, requeued_at)


class _AtlasServer(ThreadingHTTPServer):
    """Serves ATLAS-shaped zips at their ATLAS paths, slowly, and records the most downloads in flight at once."""

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _AtlasHandler)
        self.files, self.in_flight, self.max_in_flight = files, 0, 0
        self.lock = threading.Lock()


class _AtlasHandler(BaseHTTPRequestHandler):
    server: _AtlasServer

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        with self.server.lock:
            self.server.in_flight += 1
            self.server.max_in_flight = max(self.server.max_in_flight, self.server.in_flight)
        try:
            time.sleep(2.0)  # long enough for concurrent downloads to overlap
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        finally:
            with self.server.lock:
                self.server.in_flight -= 1


@pytest.mark.slow
@real_slurm
@SLOW_TIMEOUT
def test_atlas_downloads_run_on_the_submit_host_at_most_four_at_once(pipeline, cluster, workflow):
    """download_atlas is a local rule under the profile's `downloads: 4` cap: no SLURM job, never 5 at once."""
    from starmd.data.atlas import atlas_url, expected_members

    raw = workflow / "data" / "raw" / "demo" / "tinya_A"
    sources = [raw / "tinya_A.pdb", *(raw / f"tinya_A_prod_R{k}_fit.xtc" for k in (1, 2, 3))]
    names = [line.split(",")[0] for line in
             (REPO / "src/starmd/data/splits/atlas_test.csv").read_text().splitlines()[1:7]]
    files = {}
    for name in names:  # the tiny demo peptide's real MD, under each ATLAS chain name
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for member, src in zip(expected_members(name), sources):
                zf.writestr(member, src.read_bytes())
        files[atlas_url("", name)] = buf.getvalue()
    server = _AtlasServer(files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address
    (workflow / "atlas.yaml").write_text(yaml.safe_dump(
        {"dataset": "atlas", "run": "atlas", "atlas": {"base_url": f"http://{host}:{port}"}}))
    before = cluster.job_ids()
    try:
        proc = _run(cluster, workflow, *(f"data/raw/atlas/{n}/{n}.pdb" for n in names),
                    configfiles=("config.yaml", "atlas.yaml"), timeout=900)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert all((workflow / f"data/raw/atlas/{n}/{n}_prod_R3_fit.xtc").stat().st_size > 0 for n in names)
    assert cluster.job_ids() == before, "a download was submitted to SLURM"
    assert 1 <= server.max_in_flight <= 4, server.max_in_flight
