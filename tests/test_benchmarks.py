"""Each benchmark script (benchmarks/*.py) run once at its smallest size, as Snakemake runs it (a subprocess with
--config-json): the JSON holds the machine description and the command, and its numbers are consistent (measured
cache bytes = formula, pair/singles ratio = N c_z / (2 H C) > 1, fitted exponents 1 and 2, positive rates). No
assertion depends on how fast this machine is."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from starmd.bench.config import load_settings, section_for

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "schemas" / "benchmarks.schema.yaml"
# The training-test model (tests/training_data.TINY_MODEL scale) keeps the demo-scale runs fast here.
TINY = {"c_s": 16, "c_z": 8, "n_blocks": 2, "n_heads": 2, "c_hidden": 8, "no_heads_ipa": 2, "c_hidden_ipa": 8,
        "no_qk_points": 2, "no_v_points": 2, "c_time": 8, "c_phys_time": 8, "n_rbf": 8}
SMALL = {"threads": 1, "feature_dims": {"c_s": 8, "c_z": 4}, "demo_model": TINY}


def run_bench(script: str, tmp_path: Path, settings: dict, *extra: str) -> dict:
    out_json, out_png = tmp_path / f"{script}.json", tmp_path / f"{script}.png"
    cmd = [sys.executable, str(REPO / "benchmarks" / f"{script}.py"), "--config-json", json.dumps(settings),
           "--out-json", str(out_json), "--out-png", str(out_png), *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out_png.stat().st_size > 1000 and out_png.read_bytes()[:4] == b"\x89PNG"
    doc = json.loads(out_json.read_text())
    machine = doc["machine"]
    assert machine["cpu"] and machine["torch"] and machine["torch_threads"] == 1 and "gpu" in machine
    assert f"benchmarks/{script}.py" in doc["command"] and doc["benchmark"] == script
    return doc


def test_kv_cache_measured_equals_formula_and_pairs_scale_quadratically(tmp_path):
    settings = {**SMALL, "kv_cache": {"n_res": [50, 500], "n_frames": [10, 400], "measured_n_res": [4, 8],
                                      "measured_n_frames": [1, 3], "pair_budget_bytes": 6e7,
                                      "rollout_n_res": 6, "rollout_n_frames": [1, 4], "rollout_steps": 1}}
    doc = run_bench("kv_cache", tmp_path, settings)
    dims = doc["model_dims"]
    assert (dims["n_blocks"], dims["n_heads"], dims["c_hidden"], dims["c_z"]) == (8, 8, 32, 128)  # paper scale
    assert len(doc["measured"]) == 4 and doc["measured_equals_formula"]
    for row in doc["measured"]:
        assert row["singles_bytes"] == row["singles_formula_bytes"] == \
            2 * 8 * row["n_res"] * row["n_frames"] * 8 * 32 * 4  # fp32 keys and values, every block
        assert row["pairs_bytes"] == 8 * row["n_res"] ** 2 * row["n_frames"] * 128 * 2  # bf16
    for name, (in_l, in_n) in {"singles_measured": (1, 1), "pairs_measured": (1, 2), "singles_analytic": (1, 1),
                               "pairs_analytic": (1, 2)}.items():
        slopes = doc["exponents"][name]
        assert slopes["in_L"] and all(math.isclose(v, in_l, abs_tol=1e-6) for v in slopes["in_L"].values())
        assert slopes["in_N"] and all(math.isclose(v, in_n, abs_tol=1e-6) for v in slopes["in_N"].values())
    allocated = [r for r in doc["grid"] if r["pairs_allocated_bytes"] is not None]
    assert [(r["n_res"], r["n_frames"]) for r in allocated] == [(50, 10)]  # 51.2 MB fits in 60 MB; nothing else
    assert allocated[0]["pairs_allocated_bytes"] == allocated[0]["pairs_bytes"]
    head = doc["headline"]
    assert (head["n_res"], head["n_frames"]) == (500, 400)
    assert head["ratio"] == pytest.approx(500 * 128 / (2 * 8 * 32)) and head["ratio"] > 1
    assert head["singles_bytes_per_block"] == 2 * 500 * 400 * 256 * 2
    peaks = doc["rollout_peak_memory"]
    assert [p["n_frames"] for p in peaks] == [1, 4]
    assert peaks[1]["peak_cache_bytes"] > peaks[0]["peak_cache_bytes"] > 0
    for p in peaks:  # demo model (TINY): singles of the start and every generated frame, K and V per block, fp32
        assert p["peak_cache_bytes"] == 2 * TINY["n_blocks"] * p["n_res"] * (p["n_frames"] + 1) * TINY["n_heads"] * \
            TINY["c_hidden"] * 4
    assert {(r["kind"], r["n_residues"]) for r in doc["records"]} >= {("analytic", 500), ("measured", 8)}


def test_training_throughput_both_scales(tmp_path):
    settings = {**SMALL, "paper_model": TINY | {"n_blocks": 3}, "training": {"n_res": 6, "n_frames": 2,
                                                                            "timed_steps": 1,
                                                                            "memory_n_frames": [1, 2]}}
    doc = run_bench("training", tmp_path, settings)
    demo, paper = doc["throughput"]["demo_model"], doc["throughput"]["paper_model"]
    assert paper["n_parameters"] > demo["n_parameters"] > 0
    for run in (demo, paper):
        assert run["frames_per_s"] > 0 and run["tokens_per_s"] == pytest.approx(6 * run["frames_per_s"])
        assert len(run["step_s"]) == 1
    ratios = doc["ratios_demo_over_paper"]
    assert ratios["tokens_per_s"] == pytest.approx(demo["tokens_per_s"] / paper["tokens_per_s"])
    for rows in doc["peak_memory_vs_L"].values():
        assert [r["n_frames"] for r in rows] == [1, 2]
        # the peak was reset before each measurement (else the increase is None: a whole-process peak)
        assert all(r["peak_rss_increase_bytes"] == r["peak_rss_bytes"] - r["rss_before_bytes"] for r in rows)


def test_rollout_speed_against_openmm(tmp_path):
    settings = {**SMALL, "paper_model": TINY | {"n_blocks": 3},
                "rollout_speed": {"steps": [2, 1], "n_frames": 1, "md_steps": 20, "per_frame_n_frames": 4,
                                  "per_frame_steps": 1, "recompute_n_frames": 4}}
    demo = {"proteins": [{"name": "b1_A", "sequence": "GAWKEA"}], "minimize_max_iterations": 20}
    doc = run_bench("rollout_speed", tmp_path, settings, "--demo-json", json.dumps(demo))
    (protein,) = doc["proteins"]
    assert protein["name"] == "b1_A" and protein["n_res"] == 6 and protein["n_atoms"] > 6 * 4
    assert protein["openmm_ns_per_day"] > 0
    for runs in protein["starmd"].values():
        assert [r["steps"] for r in runs] == [2, 1]
        for r in runs:
            assert r["ns_per_day"] == pytest.approx(100.0 * 1e-3 / r["s_per_frame"] * 86400)
            assert r["speedup_over_openmm"] == pytest.approx(r["ns_per_day"] / protein["openmm_ns_per_day"])
    ctx = doc["per_frame_vs_context"]
    assert len(ctx["cached_frame_s"]) == 4 and len(ctx["recomputed_frame_s"]) == 4
    # the growth figures are the fits of these very times: the exponent over the second half, last over first
    cached, ls = ctx["cached_frame_s"], np.arange(1, 5)
    assert ctx["cached_exponent_in_L_second_half"] == pytest.approx(
        np.polyfit(np.log(ls[2:]), np.log(cached[2:]), 1)[0], abs=1e-3)
    assert ctx["cached_last_over_first_frame"] == pytest.approx(cached[-1] / cached[1])
    assert ctx["recomputed_exponent_in_L_second_half"] == pytest.approx(
        np.polyfit(np.log(ls[2:]), np.log(ctx["recomputed_frame_s"][2:]), 1)[0], abs=1e-3)
    assert doc["openmm"]["timestep_fs"] == 2.0 and doc["openmm"]["platform"] == "CPU"
    assert doc["device"] == "cpu" and doc["openmm"]["platform_properties"] == {"Threads": "1"}  # auto, no GPU here


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_md_runs_on_the_rollouts_hardware():
    """A GPU rollout is compared with OpenMM's CUDA platform, never silently with CPU MD."""
    import openmm

    module = _script("rollout_speed")
    assert module.md_platform("cpu", 3) == ("CPU", {"Threads": "3"})
    names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if "CUDA" in names:
        assert module.md_platform("cuda", 3) == ("CUDA", {"Precision": "mixed", "DeviceIndex": "0"})
    else:
        with pytest.raises(ValueError, match=r"no CUDA platform.*openmm-cuda-12"):
            module.md_platform("cuda", 3)


def test_sampling_steps_on_a_trained_checkpoint(tmp_path):
    sys.path.insert(0, str(REPO / "tests"))
    from training_data import TINY_MODEL, make_protein

    from starmd.training.cli import main as train_main

    frames, features = make_protein(tmp_path / "data", "sq_A", "ACDEFGHIK", n_frames=12, seed=3)
    config = {"training": {"steps": 2, "num_frames": 2, "strides": [1], "batch_size": 1, "warmup_steps": 1,
                           "val_every": 100, "checkpoint_every": 100, "log_every": 1, "bf16": False},
              "model": TINY_MODEL, "diffusion": {}}
    assert train_main(["--frames", str(frames), "--features", str(features), "--run-dir", str(tmp_path / "run"),
                       "--config-json", json.dumps(config), "--device", "cpu"]) == 0
    settings = {"threads": 1, "sampling_steps": {"steps": [4, 2, 1], "n_frames": 2, "n_samples": 1,
                                                 "delta_t_ps": 10.0, "jsd_tolerance": 1.0, "validity_tolerance": 1.0,
                                                 "min_reference_validity": 0.0}}
    doc = run_bench("sampling_steps", tmp_path, settings, "--checkpoint",
                    str(tmp_path / "run" / "checkpoints" / "final.pt"), "--features", str(features),
                    "--frames", str(frames))
    rows = doc["rows"]
    assert [r["steps"] for r in rows] == [4, 2, 1] and doc["reference_steps"] == 4
    for r in rows:
        assert 0 <= r["ca_validity"] <= 1 and 0 <= r["ca_aa_validity"] <= r["ca_validity"] and r["wall_s"] > 0
        assert r["n_frames_scored"] == 2 and r["ca_validity_se"] == pytest.approx(
            math.sqrt(r["ca_validity"] * (1 - r["ca_validity"]) / 2))
        assert 0 <= r["jsd_mean"] <= math.sqrt(math.log(2)) + 1e-9
    assert doc["recommended_steps"] == 1  # tolerances of 1.0 admit every count, so the smallest is recommended


def test_recommend_picks_the_smallest_count_within_tolerance():
    module = _script("sampling_steps")
    rows = [{"steps": 200, "ca_validity": 0.9, "ca_aa_validity": 0.5, "jsd_mean": 0.30},
            {"steps": 100, "ca_validity": 0.9, "ca_aa_validity": 0.48, "jsd_mean": 0.30},
            {"steps": 50, "ca_validity": 0.88, "ca_aa_validity": 0.3, "jsd_mean": 0.33},
            {"steps": 20, "ca_validity": 0.80, "ca_aa_validity": 0.5, "jsd_mean": 0.31},
            {"steps": 10, "ca_validity": 0.9, "ca_aa_validity": 0.5, "jsd_mean": 0.5}]
    assert module.recommend(rows, validity_tol=0.05, jsd_tol=0.05) == 100  # 50 loses CA+AA validity
    assert module.recommend(rows, validity_tol=0.2, jsd_tol=0.05) == 20
    assert module.recommend(rows, validity_tol=0.05, jsd_tol=0.05, min_reference_validity=0.95) is None


def test_settings_reject_unknown_keys_and_fill_defaults():
    with pytest.raises(ValueError, match=r"benchmarks\.kv_cache.*n_framez"):
        load_settings(json.dumps({"kv_cache": {"n_framez": [1]}}), SCHEMA)
    with pytest.raises(ValueError, match=r"benchmarks\.threads"):
        load_settings(json.dumps({"threads": 0}), SCHEMA)
    settings = load_settings("{}", SCHEMA)
    assert settings["kv_cache"]["n_res"] == [50, 200, 500] and settings["paper_model"]["n_blocks"] == 8
    part = section_for(settings, "training")
    assert set(part) == {"threads", "seed", "feature_dims", "demo_model", "paper_model", "training"}


def test_inference_path_fast_equals_previous_and_shares_the_static_pair(tmp_path):
    """(The compiled path is left out here: compiling costs minutes on CPU; tests/test_compiled_rollout.py checks it.)"""
    settings = {**SMALL, "paper_model": TINY, "inference_path": {"n_res": [6, 10], "n_samples": 3,
                                                                 "n_frames_held": 2, "timed_steps": 2,
                                                                 "compiled": False}}
    doc = run_bench("inference_path", tmp_path, settings)
    assert [r["n_res"] for r in doc["rows"]] == [6, 10]
    for row in doc["rows"]:
        assert "compiled" not in row
        assert row["max_abs_diff"] < 1e-4  # fp32, same cache and frame
        n = row["n_res"]
        # previous: B copies of the projected single [N, c_s] and pair [N, N, c_z]; fast: one, expanded
        assert row["previous"]["static_bytes"] == 3 * row["fast"]["static_bytes"] == 3 * 4 * n * (16 + n * 8)
        for path in ("previous", "fast"):
            assert len(row[path]["step_s"]) == 2 and row[path]["step_s_median"] > 0
        assert row["speedup"] == pytest.approx(row["previous"]["step_s_median"] / row["fast"]["step_s_median"])
