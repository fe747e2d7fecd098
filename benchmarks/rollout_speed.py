"""Rollout speed vs MD: simulated ns/day of starmd rollout (demo- and paper-scale model, several reverse-step counts)
against OpenMM MD of the same protein (amber14 + GBn2 implicit solvent, 2 fs), all in one run on the same hardware:
CPU (starmd fp32, OpenMM's CPU platform, the same thread count) or GPU (starmd bf16 as `rollout.bf16`, OpenMM's CUDA
platform in mixed precision); and per-frame rollout time vs context length L, with the KV cache and without it.

The models are random-init unless trained weights are given elsewhere: speed depends on the shapes, not the weights.
Proteins are the demo proteins (config `demo`), built exactly as prepare-demo builds them (starmd.data.demo).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from starmd.bench.cli import make_parser, start_benchmark
from starmd.bench.results import loglog_slope, save_figure, write_result
from starmd.bench.workloads import timed_rollout
from starmd.data.demo import DemoConfig, build_start_structure
from starmd.geometry import Rigid
from starmd.rollout.sampler import resolve_device

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "benchmarks.schema.yaml"
SCALES = ("demo_model", "paper_model")
_S_PER_DAY = 86400.0
log = logging.getLogger("bench.rollout_speed")


def md_platform(device: str, threads: int) -> tuple[str, dict[str, str]]:
    """The OpenMM platform (name, properties) on the same hardware as the starmd rollout: comparing a GPU rollout
    with CPU MD would flatter the model by the GPU's speed-up of MD, so a missing CUDA platform is an error."""
    import openmm

    if device == "cpu":
        return "CPU", {"Threads": str(threads)}
    names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if "CUDA" not in names:
        raise ValueError(f"benchmarks.rollout_speed.device is {device!r} but OpenMM {openmm.__version__} has no CUDA "
                         f"platform (has {names}); install it with pip install -e '.[cuda]' (the openmm-cuda-12 "
                         f"package), or set benchmarks.rollout_speed.device: cpu")
    return "CUDA", {"Precision": "mixed", "DeviceIndex": "0"}


def openmm_ns_per_day(sequence: str, demo: DemoConfig, timestep_fs: float, n_steps: int,
                      platform: tuple[str, dict[str, str]]) -> tuple[float, Rigid, int]:
    """Time n_steps of Langevin MD on `platform` (after minimisation and 100 warm-up steps); returns (ns/day,
    backbone frames Rigid [N] of the start structure in Angstrom, atom count)."""
    import openmm
    from openmm import app, unit

    forcefield = app.ForceField(demo.forcefield, demo.implicit_solvent)
    topology, positions = build_start_structure(sequence, demo.start_phi_deg, demo.start_psi_deg, demo.ph,
                                                forcefield, demo.replica_seeds[0])
    # Same force field, solvent and constraints as prepare-demo; 2 fs and real hydrogen masses (no repartitioning).
    system = forcefield.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
    integrator = openmm.LangevinMiddleIntegrator(demo.temperature_k * unit.kelvin, demo.friction_per_ps / unit.picosecond,
                                                 timestep_fs * unit.femtoseconds)
    integrator.setRandomNumberSeed(demo.replica_seeds[0])
    sim = app.Simulation(topology, system, integrator, openmm.Platform.getPlatformByName(platform[0]), platform[1])
    sim.context.setPositions(positions)
    sim.minimizeEnergy(maxIterations=demo.minimize_max_iterations)
    sim.context.setVelocitiesToTemperature(demo.temperature_k * unit.kelvin, demo.replica_seeds[0])
    sim.step(100)
    tic = time.perf_counter()
    sim.step(n_steps)
    sim.context.getState(getEnergy=True)  # make sure the steps have finished
    wall = time.perf_counter() - tic
    xyz = torch.tensor(np.asarray(positions.value_in_unit(unit.angstrom)), dtype=torch.float64)
    atoms = {(a.residue.index, a.name): a.index for a in topology.atoms()}
    idx = [[atoms[(r.index, name)] for name in ("N", "CA", "C")] for r in topology.residues()]
    bb = xyz[torch.tensor(idx)]  # [N, 3 atoms, 3]
    frames = Rigid.from_3_points(bb[:, 0], bb[:, 1], bb[:, 2]).to(dtype=torch.float32)
    return n_steps * timestep_fs * 1e-6 / wall * _S_PER_DAY, frames, topology.getNumAtoms()


def rollout_ns_per_day(settings: dict, scale: str, frames: Rigid, steps: int, device: str) -> dict:
    """Median wall time per generated frame (a steps=1 warm-up rollout runs first; the median resists a frame
    stalled by other load) -> simulated ns/day of one trajectory at delta_t_ps per frame."""
    cfg = settings["rollout_speed"]
    common = {"model_kwargs": settings[scale], "feature_dims": settings["feature_dims"], "n_res": frames.shape[0],
              "seed": settings["seed"], "threads": settings["threads"], "delta_t_ps": cfg["delta_t_ps"],
              "start_frames": frames, "device": device, "bf16": device == "cuda"}
    timed_rollout(n_frames=1, steps=1, **common)
    run = timed_rollout(n_frames=cfg["n_frames"], steps=steps, **common)
    per_frame = float(np.median(run["frame_s"]))
    return {"steps": steps, "s_per_frame": per_frame, "frame_s": run["frame_s"], "s_per_network_eval": per_frame / steps,
            "ns_per_day": cfg["delta_t_ps"] * 1e-3 / per_frame * _S_PER_DAY}


def per_frame_vs_context(settings: dict, frames: Rigid, device: str) -> dict:
    """Per-frame time of one long demo-scale rollout with the cache, and of a shorter one without it."""
    cfg = settings["rollout_speed"]
    common = {"model_kwargs": settings["demo_model"], "feature_dims": settings["feature_dims"],
              "n_res": frames.shape[0], "seed": settings["seed"], "threads": settings["threads"],
              "steps": cfg["per_frame_steps"], "delta_t_ps": cfg["delta_t_ps"], "start_frames": frames,
              "device": device, "bf16": device == "cuda"}
    cached = timed_rollout(n_frames=cfg["per_frame_n_frames"], **common)["frame_s"]
    out = {"n_res": frames.shape[0], "steps": cfg["per_frame_steps"], "cached_frame_s": cached}
    # Frame l attends to l held frames (the start + l - 1 generated); fit the growth over the second half.
    half = len(cached) // 2
    ls = np.arange(1, len(cached) + 1)
    out["cached_exponent_in_L_second_half"] = round(loglog_slope(ls[half:], cached[half:]), 3)
    out["cached_last_over_first_frame"] = cached[-1] / cached[1] if len(cached) > 1 else None
    if cfg["recompute_n_frames"] > 0:
        recompute = timed_rollout(n_frames=cfg["recompute_n_frames"], use_cache=False, **common)["frame_s"]
        out["recomputed_frame_s"] = recompute
        if len(recompute) >= 4:
            half = len(recompute) // 2
            out["recomputed_exponent_in_L_second_half"] = round(loglog_slope(ls[half:len(recompute)],
                                                                             recompute[half:]), 3)
        n = min(len(recompute), len(cached))
        out["speedup_of_cache_at_L"] = {"L": n, "ratio": recompute[n - 1] / cached[n - 1]}
    return out


def plot(proteins: list[dict], context: dict, hardware: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8))
    labels, values, colours = [], [], []
    for p in proteins:
        labels.append(f"{p['name']}\nOpenMM")
        values.append(p["openmm_ns_per_day"])
        colours.append("black")
        for scale, runs in p["starmd"].items():
            for r in runs:
                labels.append(f"{p['name']}\n{scale.removesuffix('_model')} {r['steps']}st")
                values.append(r["ns_per_day"])
                colours.append("tab:blue" if scale == "demo_model" else "tab:orange")
    ax0.bar(range(len(values)), values, color=colours)
    ax0.set_xticks(range(len(values)), labels, rotation=90, fontsize=6)
    ax0.set(yscale="log", ylabel="simulated ns / day (one trajectory)", title=f"starmd rollout vs OpenMM ({hardware})")
    ls = np.arange(1, len(context["cached_frame_s"]) + 1)
    ax1.plot(ls, context["cached_frame_s"], "o-", ms=3, label="KV cache")
    if "recomputed_frame_s" in context:
        ax1.plot(ls[:len(context["recomputed_frame_s"])], context["recomputed_frame_s"], "s-", ms=3,
                 label="no cache (recompute)")
    ax1.set(xlabel="frame index l (context length)", ylabel="wall time per frame (s)",
            title=f"per-frame time, demo model, N={context['n_res']}, {context['steps']} steps")
    ax1.legend(fontsize=7)
    for ax in (ax0, ax1):
        ax.title.set_fontsize(9)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__.split("\n")[0])
    parser.add_argument("--demo-json", required=True, help="JSON of the `demo` config section (the proteins)")
    args, settings, started = start_benchmark(parser, argv, SCHEMA)
    demo = DemoConfig.from_json(args.demo_json)
    if not demo.proteins:
        raise ValueError("--demo-json: demo.proteins is empty; the speed benchmark needs at least one protein")
    cfg = settings["rollout_speed"]
    device = resolve_device(cfg["device"], "benchmarks.rollout_speed.device").type
    platform = md_platform(device, settings["threads"])
    proteins, first_frames = [], None
    for protein in demo.proteins:
        name, sequence = protein["name"], demo.protein(protein["name"])["sequence"]
        md_ns_day, frames, n_atoms = openmm_ns_per_day(sequence, demo, cfg["md_timestep_fs"], cfg["md_steps"],
                                                       platform)
        first_frames = frames if first_frames is None else first_frames
        entry = {"name": name, "n_res": len(sequence), "n_atoms": n_atoms, "openmm_ns_per_day": md_ns_day,
                 "starmd": {}}
        for scale in SCALES:
            runs = [rollout_ns_per_day(settings, scale, frames, steps, device) for steps in cfg["steps"]]
            for r in runs:
                r["speedup_over_openmm"] = r["ns_per_day"] / md_ns_day
            entry["starmd"][scale] = runs
        proteins.append(entry)
        log.info("%s: OpenMM %.3g ns/day; starmd %s", name, md_ns_day,
                 {s: [round(r["ns_per_day"], 1) for r in runs] for s, runs in entry["starmd"].items()})
    results = {
        "proteins": proteins,
        "per_frame_vs_context": per_frame_vs_context(settings, first_frames, device),
        "device": device,
        "openmm": {"forcefield": demo.forcefield, "implicit_solvent": demo.implicit_solvent, "platform": platform[0],
                   "platform_properties": platform[1], "integrator": "LangevinMiddleIntegrator",
                   "timestep_fs": cfg["md_timestep_fs"], "constraints": "HBonds", "hydrogen_mass": "unmodified",
                   "threads": settings["threads"] if device == "cpu" else None},
        "note": "random-init starmd models (speed does not depend on the weights), one trajectory per rollout, "
                f"{'fp32 on CPU' if device == 'cpu' else 'bf16 autocast on the GPU'}; ns/day = delta_t_ps per frame / "
                "wall time per frame",
    }
    write_result(args.out_json, benchmark="rollout_speed", settings=settings, results=results, started=started)
    plot(proteins, results["per_frame_vs_context"], "GPU" if device == "cuda" else "CPU", args.out_png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
