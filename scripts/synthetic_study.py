"""The known-answer study (issue 13): every model change measured on the synthetic system, one table row each.

    python scripts/synthetic_study.py run   --spec docs/study/synthetic_study.yaml [--jobs 2]
    python scripts/synthetic_study.py table --spec docs/study/synthetic_study.yaml --out docs/study/
    python scripts/synthetic_study.py ideal --spec docs/study/synthetic_study.yaml --out docs/study/
    python scripts/synthetic_study.py onestep --spec docs/study/synthetic_study.yaml --out docs/study/
    python scripts/synthetic_study.py filters --spec docs/study/synthetic_study.yaml --out docs/study/

`run` needs the synthetic data (`snakemake --cores all data/frames/enm1_A.h5 data/features/offline/enm1_A.h5
--configfile config.synthetic.yaml`; targets before --configfile, which takes every path after it) and trains, rolls
out and evaluates each variant through the same `python -m starmd <step>` commands the rules use, with the variant's
overrides deep-merged over config.yaml + config.synthetic.yaml + the spec's `base` (which pins the settings the rows
were measured from, so a later change of config.yaml's defaults leaves every row reproducible); a variant with
`checkpoint_of: <variant>` only changes the rollout and reuses that variant's checkpoint; `based_on: <variant>` starts
from an earlier variant's overrides, so the row lists only what it changes. Finished outputs are kept,
so a rerun only does what is missing. `table` writes synthetic_study.{json,md,png} from the saved evaluation JSONs
only. `ideal` writes ideal.{json,md,png}: the ACF error the ideal sampler (starmd.evaluation.ideal: exact conditional
given the last K history frames re-noised at tau) reaches at the rollout's size, for the spec's grid of tau and K,
next to the trained variants: what is reachable at all. `onestep` writes onestep.{json,md}: each trained variant's
next frame after K true MD frames (re-noised at its rollout tau by the rollout code), against the exact conditional
law of the slow modes given those frames; this separates a wrong transition from errors that compound along a rollout.
`filters` writes filters.{json,md}: least-squares linear predictors of the next step from noised MD history
(starmd.evaluation.filters), per-residue vs over all residues, with and without history: where the momentum is.
Each command also rewrites the marked copies of its table in README.md and docs/ (`sync_copies`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from starmd.config import apply_base_seed

ROOT = Path(__file__).resolve().parents[1]
CA_VALIDITY_TARGET = 0.95  # issue 13's target for the CA validity column
COLUMNS = [("rmsf_r_exact", "RMSF r", "{:.2f}"), ("rmsf_ratio_exact", "RMSF ratio", "{:.2f}"),
           ("pairwise_rmsd_rel_error_exact", "pairwise RMSD err", "{:+.2f}"),
           ("acf_error_exact", "ACF err (3 modes; per mode, slowest first)", "{:.3f}"),
           ("slow_mode_amplitude_ratio_exact", "mode amplitude", "{:.2f}"),
           ("slow_mode_mean_offset_exact", "mode offset", "{:.2f}"),
           ("rmsd_to_start_plateau_rel_error_exact", "plateau err", "{:+.2f}"),
           ("rmsd_to_start_drift_rel", "drift", "{:+.2f}")]


COPY = re.compile(r"(<!-- copy of (\S+): .*? -->\n)(.*?)(<!-- end of copy -->)", re.S)


def sync_copies(doc: str, tables: dict[str, str]) -> str:
    """`doc` with each copy of a generated table replaced by the table's text: a copy is the block between
    `<!-- copy of <table's path from the repository root>: ... -->` and `<!-- end of copy -->` (blank lines around
    the table, so Markdown ends it before the closing comment)."""
    def fill(m: re.Match[str]) -> str:
        return m.group(1) + "\n" + tables[m.group(2)] + "\n" + m.group(4) if m.group(2) in tables else m.group(0)
    return COPY.sub(fill, doc)


def documents(root: Path = ROOT) -> list[Path]:
    """The Markdown files that may hold copies of generated tables: README.md and everything under docs/."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def write_table(path: Path, lines: list[str]) -> None:
    """Writes a generated table and rewrites its copies in README.md and docs/, so no copy goes stale."""
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    with contextlib.suppress(ValueError):  # a table written outside the repository (tests) has no copies
        tables = {path.resolve().relative_to(ROOT).as_posix(): text}
        for doc in documents():
            old = doc.read_text()
            if (new := sync_copies(old, tables)) != old:
                doc.write_text(new)


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Spec(NamedTuple):
    """The study spec, read once: the merged base config, the variants (based_on resolved) and the grids of the
    `ideal`, `onestep` and `filters` commands (by command name)."""
    base: dict
    variants: list[dict]
    grids: dict[str, dict]


def load_spec(path: Path) -> Spec:
    spec = yaml.safe_load(path.read_text())
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for extra in spec.get("configfiles", ["config.synthetic.yaml"]):
        config = deep_merge(config, yaml.safe_load((ROOT / extra).read_text()))
    grids = {k: spec[k] for k in ("ideal", "onestep", "filters") if k in spec}
    return Spec(deep_merge(config, spec.get("base", {})), resolve_based_on(spec["variants"], path), grids)


def resolve_based_on(variants: list[dict], path: Path) -> list[dict]:
    """Variants with `based_on: <earlier variant>` get that variant's overrides with their own deep-merged over them,
    so a row that changes one thing from another lists only that thing."""
    resolved: dict[str, dict] = {}
    out = []
    for variant in variants:
        variant = dict(variant)
        parent = variant.pop("based_on", None)
        if parent is not None:
            if parent not in resolved:
                raise ValueError(f"{path}: variant {variant['name']!r} is based_on {parent!r}, which is not an "
                                 f"earlier variant of the spec")
            variant["overrides"] = deep_merge(resolved[parent], variant.get("overrides", {}))
        resolved[variant["name"]] = variant.get("overrides", {})
        out.append(variant)
    return out


def variant_config(base: dict, variant: dict) -> dict:
    """config.yaml + config.synthetic.yaml + the variant's overrides, its top-level `seed` applied as the workflow
    applies it (starmd.config.apply_base_seed)."""
    cfg = deep_merge(base, variant.get("overrides", {}))
    apply_base_seed(cfg)
    return cfg


def _run(cmd: list[str], log: Path, threads: int) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with log.open("a") as f:
        f.write("+ " + " ".join(cmd) + "\n")
        f.flush()
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=True, cwd=ROOT)


def train_dir(out_root: Path, variant: dict) -> Path:
    """The run directory holding the variant's checkpoint: its own, or that of the variant it reuses."""
    return out_root / variant.get("checkpoint_of", variant["name"])


def run_variant(base: dict, variant: dict, out_root: Path, threads: int) -> Path:
    """Train (unless reusing a checkpoint), roll out and evaluate one variant; returns its evaluation JSON."""
    cfg = variant_config(base, variant)
    name = cfg["synthetic"]["name"]
    vdir = out_root / variant["name"]
    frames, features = f"data/frames/{name}.h5", f"data/features/{cfg['features']['featurizer']}/{name}.h5"
    trained = train_dir(out_root, variant)
    ckpt = trained / "checkpoints" / "final.pt"
    py = sys.executable
    if "checkpoint_of" not in variant and not ckpt.exists():
        section = json.dumps({k: cfg[k] for k in ("training", "model", "diffusion")}, sort_keys=True)
        _run([py, "-m", "starmd", "train", "--frames", frames, "--features", features, "--run-dir", str(trained),
              "--config-json", section], vdir / "train.log", threads)
    rollout = vdir / "rollouts" / f"{name}.h5"
    if not rollout.exists():
        _run([py, "-m", "starmd", "rollout", "--checkpoint", str(ckpt), "--features", features, "--frames", frames,
              "--out", str(rollout), "--config-json", json.dumps(cfg["rollout"], sort_keys=True)],
             vdir / "rollout.log", threads)
    out = vdir / "eval" / f"{name}.json"
    if not out.exists():
        _run([py, "-m", "starmd", "evaluate", "--name", name, "--rollout", str(rollout), "--frames", frames,
              "--raw-dir", f"data/raw/synthetic/{name}", "--out", str(out),
              "--config-json", json.dumps(cfg["evaluation"], sort_keys=True)], vdir / "evaluate.log", threads)
    return out


def cmd_run(args: argparse.Namespace) -> int:
    base, variants, _ = load_spec(args.spec)
    chosen = [v for v in variants if not args.only or v["name"] in args.only]
    out_root = ROOT / args.out_root
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    trainers = [v for v in chosen if "checkpoint_of" not in v]
    reusers = [v for v in chosen if "checkpoint_of" in v]
    for phase in (trainers, reusers):  # a reuser needs its trainer's checkpoint
        with ThreadPoolExecutor(args.jobs) as pool:
            for path in pool.map(lambda v: run_variant(base, v, out_root, threads), phase):
                print(f"done: {path}", file=sys.stderr)
    return 0


def _shown(path: Path) -> str:
    """A path as the table records it: relative to the repository when inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def collect(spec: Path, out_root: Path, previous: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per variant from its evaluation JSON; a variant not evaluated on this machine (an earlier session's
    runs/) keeps its row from the last table (`previous`, by variant), else it is marked missing."""
    base, variants, _ = load_spec(spec)
    rows = []
    for v in variants:
        name = variant_config(base, v)["synthetic"]["name"]
        path = out_root / v["name"] / "eval" / f"{name}.json"
        if not path.exists():  # the spec's words, the saved numbers
            kept = previous.get(v["name"]) or {"variant": v["name"], "missing": _shown(path)}
            rows.append({**kept, "change": v.get("change", "")})
            continue
        ev = json.loads(path.read_text())
        truth = ev["truth"]["metrics"]
        row = {"variant": v["name"], "change": v.get("change", ""), "eval": _shown(path),
               "ca_validity": ev["metrics"]["ca_validity"]["model"],
               "backbone_validity": ev["metrics"]["backbone_validity"]["model"],
               "md_backbone_validity": ev["metrics"]["backbone_validity"]["oracle"],
               "acf_error_per_mode": ev["truth"]["curves"]["model"]["acf_error_per_mode"],
               "acf_modes": ev["truth"]["curves"]["model"]["acf_modes"][:3],  # the figure's curves, kept with the row
               **{m: truth[m]["model"] for m, _, _ in COLUMNS},
               "md_segments": {m: truth[m]["oracle_segments"] for m, _, _ in COLUMNS},
               "meets": {m: truth[m]["model_meets_target"] for m, _, _ in COLUMNS}}
        rows.append(row)
    return rows


def _per_mode(row: dict, metric: str) -> str:
    """The ACF cell's per-mode errors (slowest first), where the row has them: which mode the mean comes from."""
    if metric != "acf_error_exact" or "acf_error_per_mode" not in row:
        return ""
    return " (" + " / ".join(f"{e:.2f}" for e in row["acf_error_per_mode"]) + ")"


def _fraction(value: float | None) -> str:
    """A validity cell; rows saved before backbone validity was tabulated have none ("n/a")."""
    return "n/a" if value is None else f"{value:.2f}"


def cmd_table(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    saved = args.out / "synthetic_study.json"
    previous = {r["variant"]: r for r in json.loads(saved.read_text())} if saved.exists() else {}
    rows = collect(args.spec, ROOT / args.out_root, previous)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "synthetic_study.json").write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
    head = ["variant", "change", "CA validity", "backbone validity"] + [c[1] for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    done = [r for r in rows if "missing" not in r]
    if done:
        seg = done[0]["md_segments"]
        md_backbone = next((r["md_backbone_validity"] for r in done if "md_backbone_validity" in r), None)
        lines.append("| MD, same size | exact dynamics, S segments of the rollout length | 1.00 | "
                     + _fraction(md_backbone) + " | " + " | ".join(fmt.format(seg[m]) for m, _, fmt in COLUMNS) + " |")
    for r in rows:
        if "missing" in r:
            lines.append(f"| {r['variant']} | {r['change']} | (not run) |" + " |" * (len(COLUMNS) + 1))
            continue
        cells = [fmt.format(r[m]) + ("" if r["meets"][m] else " ✗") + _per_mode(r, m) for m, _, fmt in COLUMNS]
        validity = f"{r['ca_validity']:.2f}" + ("" if r["ca_validity"] >= CA_VALIDITY_TARGET else " ✗")
        lines.append(f"| {r['variant']} | {r['change']} | {validity} | {_fraction(r.get('backbone_validity'))} | "
                     + " | ".join(cells) + " |")
    write_table(args.out / "synthetic_study.md", lines)
    curves = [r for r in done if "acf_modes" in r]  # rows from before the curves were kept have none
    if curves:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for k, ax in enumerate(axes):
            ax.plot(curves[0]["acf_modes"][k]["exact"], "k-", lw=2, label="exact")
            for r in curves:
                ax.plot(r["acf_modes"][k]["model"], lw=1, label=r["variant"])
            ax.set_title(f"slow mode {k + 1}")
            ax.set_xlabel("lag (frames)")
        axes[0].set_ylabel("autocorrelation")
        axes[-1].legend(fontsize=6, loc="upper right")
        fig.tight_layout()
        fig.savefig(args.out / "synthetic_study.png", dpi=120)
    print("\n".join(lines))
    return 0


def cmd_ideal(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from starmd.diffusion.r3 import R3Diffuser
    from starmd.evaluation.ideal import contextual_noise_A, ideal_scores
    from starmd.evaluation.truth import load_truth

    base, variants, grids = load_spec(args.spec)
    grid = grids["ideal"]
    truth = load_truth(ROOT / "data/raw/synthetic" / base["synthetic"]["name"] / "truth.json")
    r3 = R3Diffuser(**base["diffusion"]["r3"])
    size = dict(n_frames=base["rollout"]["n_frames"], n_trajectories=base["rollout"]["n_samples"],
                repeats=grid["repeats"], seed=grid["seed"])
    rows = []
    for tau in grid["taus"]:
        noise = contextual_noise_A(tau, r3)
        for window in grid["windows"]:
            rows.append({"tau": tau, "noise_A": noise, "window": window, **ideal_scores(truth, noise, window, **size)})
    trained = [{"variant": r["variant"], "tau": variant_config(base, v)["rollout"]["tau"],
                "acf_error_exact": r["acf_error_exact"]}
               for r, v in zip(collect(args.spec, ROOT / args.out_root), variants) if "missing" not in r]
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"size": size, "grid": grid, "ideal": rows, "trained": trained}
    (args.out / "ideal.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    label = {w: ("all" if w is None else str(w)) for w in grid["windows"]}
    head = ["rollout tau", "noise (A per coordinate)"] + [f"K = {label[w]}" for w in grid["windows"]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for tau in grid["taus"]:
        cells = [r for r in rows if r["tau"] == tau]
        lines.append(f"| {tau} | {cells[0]['noise_A']:.2f} | "
                     + " | ".join(f"{r['acf_error_exact']:.3f}" for r in cells) + " |")
    write_table(args.out / "ideal.md", lines)
    fig, ax = plt.subplots(figsize=(6, 4))
    for window in grid["windows"]:
        pts = [(r["noise_A"], r["acf_error_exact"]) for r in rows if r["window"] == window]
        ax.plot(*zip(*pts), "o-", label=f"ideal, K = {label[window]}")
    for t in trained:
        ax.plot(contextual_noise_A(t["tau"], r3), t["acf_error_exact"], "kx")
    if trained:
        ax.plot([], [], "kx", label="trained variants")
    ax.axhline(0.1, color="grey", ls="--", label="target")
    ax.set_xlabel("contextual noise at rollout (A per coordinate)")
    ax.set_ylabel("slow-mode ACF error")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / "ideal.png", dpi=120)
    print("\n".join(lines))
    return 0


def onestep_scores(variant: dict, base: dict, truth: dict, out_root: Path, grid: dict) -> dict[str, Any]:
    """One variant's next-frame law after `grid["history"]` clean MD frames, per slow mode, vs the ideal's."""
    import h5py
    import numpy as np
    import torch

    from starmd.evaluation import metrics as M
    from starmd.evaluation.ideal import conditional_coefficients, contextual_noise_A, mode_autocovariance
    from starmd.evaluation.truth import mode_projections
    from starmd.geometry import Rigid
    from starmd.rollout.config import RolloutConfig
    from starmd.rollout.inputs import load_features, load_model
    from starmd.rollout.peptide import PeptideChain
    from starmd.rollout.sampler import centred, denoise_frame, make_context
    from starmd.training.cli import build_diffuser

    config = variant_config(base, variant)
    name = config["synthetic"]["name"]
    ckpt = train_dir(out_root, variant) / "checkpoints" / "final.pt"
    features = load_features(ROOT / f"data/features/{config['features']['featurizer']}/{name}.h5")
    model, ckpt_config, _ = load_model(ckpt, features)
    diffuser = build_diffuser(ckpt_config)
    cfg = RolloutConfig.from_dict(config["rollout"])
    h, m, s = grid["history"], grid["windows"], grid["samples"]
    with h5py.File(ROOT / f"data/frames/{name}.h5") as f:
        group = f["replicas"][grid["replica"]]
        starts = np.random.default_rng(grid["seed"]).choice(len(group["translations"]) - h - 1, m, replace=False)
        idx = np.sort(starts)[:, None] + np.arange(h)  # [M, H] history frames
        rots = torch.from_numpy(np.stack([group["rotations"][list(i)] for i in idx])).float()
        trans = torch.from_numpy(np.stack([group["translations"][list(i)] for i in idx])).float()
        chain = PeptideChain.from_start(Rigid(rots[0, 0], trans[0, 0]), f["aatype"][()])
    history = Rigid(rots.repeat_interleave(s, 0), trans.repeat_interleave(s, 0))  # [M S, H, N]
    generator = torch.Generator().manual_seed(grid["seed"])
    b, n = m * s, rots.shape[2]
    with torch.no_grad():
        context = make_context(model, features.single, features.pair, b, cfg.delta_t_ps, cfg.context_window or None,
                               use_cache=True)
        tau = torch.full((b,), cfg.tau)
        for j in range(h):
            frame = centred(Rigid(history.rots[:, j], history.trans[:, j]))
            noisy = diffuser.contextual_noise(frame, cfg.tau, generator) if cfg.tau > 0 else frame
            context.append(noisy, tau, torch.full((b,), j * cfg.delta_t_ps))
        nxt = denoise_frame(context, diffuser, h * cfg.delta_t_ps, (b, n), cfg, generator, torch.float32,
                            torch.device("cpu"), contextlib.nullcontext, chain)
    mean_ca = np.asarray(truth["mean_ca_A"])
    sample_ca = M.superpose(nxt.trans.double().numpy(), mean_ca)
    hist_ca = M.superpose(trans.reshape(m * h, n, 3).double().numpy(), mean_ca)
    modes = truth["slow_modes"]
    noise_var = contextual_noise_A(cfg.tau, diffuser.r3) ** 2
    per_mode = []
    for k in range(len(modes["variance_A2"])):
        w = np.asarray(modes["projection_ca"][k])
        q_next = mode_projections([sample_ca], mean_ca, w)[0].reshape(m, s)
        q_hist = mode_projections([hist_ca], mean_ca, w)[0].reshape(m, h)
        autocov = mode_autocovariance(modes["period_frames"][k], modes["damping_ratio"][k], modes["variance_A2"][k],
                                      h + 1)
        coef, var = conditional_coefficients(autocov, noise_var, h)
        ideal_mean, ideal_var = q_hist @ coef, var + noise_var * float(coef @ coef)
        markov_coef, _ = conditional_coefficients(autocov, noise_var, 1)
        scale = np.sqrt(ideal_var)
        per_mode.append({
            "mean_error": float(np.sqrt(np.mean((q_next.mean(1) - ideal_mean) ** 2)) / scale),
            "markov_mean_error": float(np.sqrt(np.mean((q_hist[:, -1] * markov_coef[0] - ideal_mean) ** 2)) / scale),
            "persistence_mean_error": float(np.sqrt(np.mean((q_hist[:, -1] - ideal_mean) ** 2)) / scale),
            "spread_ratio": float(np.sqrt(q_next.var(1, ddof=1).mean() / ideal_var)),
            "ideal_step_std_A": float(scale), "mode_std_A": float(np.sqrt(autocov[0]))})
    return {"variant": variant["name"], "tau": cfg.tau, "per_mode": per_mode,
            **{key: float(np.mean([p[key] for p in per_mode]))
               for key in ("mean_error", "markov_mean_error", "persistence_mean_error", "spread_ratio")}}


def cmd_onestep(args: argparse.Namespace) -> int:
    from starmd.evaluation.truth import load_truth

    base, variants, grids = load_spec(args.spec)
    grid = grids["onestep"]
    truth = load_truth(ROOT / "data/raw/synthetic" / base["synthetic"]["name"] / "truth.json")
    out_root = ROOT / args.out_root
    measured = {v["name"]: onestep_scores(v, base, truth, out_root, grid) for v in variants
                if (train_dir(out_root, v) / "checkpoints" / "final.pt").exists()}
    # rows of variants whose checkpoints are not here (an earlier session's runs/) are kept from the last table
    previous = args.out / "onestep.json"
    kept = {r["variant"]: r for r in json.loads(previous.read_text())["rows"]} if previous.exists() else {}
    rows = [measured.get(v["name"], kept.get(v["name"])) for v in variants]
    rows = [r for r in rows if r is not None]
    args.out.mkdir(parents=True, exist_ok=True)
    floor = 1 / grid["samples"] ** 0.5
    (args.out / "onestep.json").write_text(json.dumps({"grid": grid, "sampling_floor": floor, "rows": rows},
                                                      indent=2, sort_keys=True) + "\n")
    lines = ["| variant | rollout tau | next-frame mean error (model) | same, best Markovian | same, copy last "
             "frame | spread ratio |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['tau']} | {r['mean_error']:.2f} | {r['markov_mean_error']:.2f} | "
              f"{r['persistence_mean_error']:.2f} | {r['spread_ratio']:.2f} |" for r in rows]
    write_table(args.out / "onestep.md", lines)
    print("\n".join(lines))
    return 0


def cmd_filters(args: argparse.Namespace) -> int:
    import h5py
    import numpy as np

    from starmd.diffusion.r3 import R3Diffuser
    from starmd.evaluation.filters import filter_scores
    from starmd.evaluation.ideal import contextual_noise
    from starmd.evaluation.truth import load_truth

    base, _, grids = load_spec(args.spec)
    grid = grids["filters"]
    name = base["synthetic"]["name"]
    projection = np.asarray(load_truth(ROOT / "data/raw/synthetic" / name / "truth.json")["slow_modes"]
                            ["projection_ca"], dtype=np.float64)
    with h5py.File(ROOT / f"data/frames/{name}.h5") as f:
        fit, test = (f["replicas"][r]["translations"][()].astype(np.float64) for r in (grid["fit"], grid["test"]))
    fit, test = (x - x.mean(axis=1, keepdims=True) for x in (fit, test))  # the rollout's frames are centred too
    r3 = R3Diffuser(**base["diffusion"]["r3"])
    rows = []
    for tau in grid["taus"]:
        alpha, sigma = contextual_noise(tau, r3)
        for coupling in ("residue", "pair"):
            scores = filter_scores(fit, test, projection, alpha, sigma, grid["history"], coupling,
                                   np.random.default_rng(grid["seed"]))
            rows.append({"tau": tau, "noise_A": sigma, "coupling": coupling, **scores})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "filters.json").write_text(json.dumps({"grid": grid, "rows": rows}, indent=2, sort_keys=True) + "\n")
    lines = ["| tau | noise (A) | filter | slow-mode error, Markovian (3 modes) | with history | step residual (A), "
             "Markovian | with history |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        modes = [" / ".join(f"{e:.2f}" for e in r[k]["mode_error"]) for k in ("markov", "history")]
        lines.append(f"| {r['tau']} | {r['noise_A']:.2f} | {r['coupling']} | {modes[0]} | {modes[1]} | "
                     f"{r['markov']['step_residual_A']:.3f} | {r['history']['step_residual_A']:.3f} |")
    write_table(args.out / "filters.md", lines)
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("run", "table", "ideal", "onestep", "filters"):
        p = sub.add_parser(name)
        p.add_argument("--spec", type=Path, default=ROOT / "docs/study/synthetic_study.yaml")
        p.add_argument("--out-root", type=Path, default=Path("runs/study"))
        if name == "run":
            p.add_argument("--jobs", type=int, default=1, help="variants run at once (threads split between them)")
            p.add_argument("--only", nargs="*", help="run only these variants")
        else:
            p.add_argument("--out", type=Path, default=ROOT / "docs/study")
    args = parser.parse_args(argv)
    return {"run": cmd_run, "table": cmd_table, "ideal": cmd_ideal, "onestep": cmd_onestep,
            "filters": cmd_filters}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
