"""`python -m starmd figures`: every paper figure and the metrics table, from saved JSON only (never recomputed).

Inputs: eval JSONs (`python -m starmd evaluate`), the training `metrics.jsonl`, optional ablation eval JSONs and the
KV-cache benchmark JSON. Output files are byte-reproducible: pyplot-free `Figure` objects rendered by Agg (PNG) and
the PDF backend, matplotlib's default style plus `RC` (in a context, so the caller's settings are untouched), no
timestamps or software tags in PNG/PDF metadata: a rerun on the same inputs rewrites identical files.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.figure import Figure

from starmd.errors import reading
from starmd.evaluation.config import EvaluationConfig
from starmd.evaluation.report import write_html
from starmd.evaluation.summary import (COLUMNS, load_eval, mean_time_curves, rows_to_csv, rows_to_markdown,
                                      summary_rows, truth_rows, truth_rows_to_markdown)
from starmd.io import atomic_path
from starmd.training.metrics import read_metrics
from starmd.training.plot import training_figure

log = logging.getLogger(__name__)

RC = {
    "figure.dpi": 100, "savefig.dpi": 100, "font.family": "DejaVu Sans", "font.size": 9, "axes.titlesize": 9,
    "axes.grid": True, "grid.alpha": 0.3, "lines.linewidth": 1.3, "legend.fontsize": 8, "legend.frameon": False,
    "svg.hashsalt": "starmd", "path.simplify": True,
}
COLORS = {"model": "#d62728", "oracle": "#2ca02c", "reference": "#1f77b4", "baseline_noise": "#7f7f7f",
          "baseline_replica": "#9467bd"}
PNG_META = {"Software": None}
PDF_META = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}


def save(fig: Figure, out_dir: Path, stem: str) -> Path:
    """Write stem.png and stem.pdf atomically without metadata; returns the PNG path."""
    png = out_dir / f"{stem}.png"
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", metadata=PNG_META, bbox_inches="tight")
    with atomic_path(out_dir / f"{stem}.pdf") as tmp:
        fig.savefig(tmp, format="pdf", metadata=PDF_META, bbox_inches="tight")
    return png


def _grid(n: int, width: float = 3.2, height: float = 2.6):
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = Figure(figsize=(width * cols, height * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def plot_table(rows: list[dict], n_proteins: int):
    fig = Figure(figsize=(8, 0.22 * (len(rows) + 2)))
    ax = fig.subplots()
    ax.axis("off")
    cells = [[f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS] for r in rows]
    table = ax.table(cellText=cells, colLabels=list(COLUMNS), loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.auto_set_column_width(list(range(len(COLUMNS))))
    ax.set_title(f"Metrics, median over {n_proteins} protein(s)")
    return fig


def plot_stability(evals: list[dict], ablations: dict[str, list[dict]]):
    """CA+AA validity (solid) / CA validity (dashed) and CA RMSD to start vs rollout time, mean over proteins."""
    fig = Figure(figsize=(9, 3.2))
    ax_v, ax_r = fig.subplots(1, 2)
    series = [(k, mean_time_curves(evals, k, "--eval"), COLORS[k]) for k in ("model", "oracle", "reference")]
    cmap = matplotlib.colormaps["copper"]
    for i, (label, ab_evals) in enumerate(sorted(ablations.items())):
        series.append((f"model {label}", mean_time_curves(ab_evals, "model", f"--ablation {label}"),
                       cmap(0.2 + 0.6 * i / max(len(ablations) - 1, 1))))
    for label, c, color in series:
        t_ns = c["time_ps"] / 1000.0
        ax_v.plot(t_ns, c["ca_aa_validity"], color=color, label=label)
        ax_v.plot(t_ns, c["ca_validity"], color=color, linestyle="--", linewidth=0.8)
        ax_r.plot(t_ns, c["rmsd_to_start_A"], color=color, label=label)
    ax_v.set(xlabel="rollout time (ns)", ylabel="validity (solid CA+AA, dashed CA)", ylim=(-0.02, 1.02))
    ax_r.set(xlabel="rollout time (ns)", ylabel="CA RMSD to start (A)")
    ax_r.legend(loc="best")
    fig.tight_layout()
    return fig


def plot_rmsf(evals: list[dict]):
    fig, axes = _grid(len(evals))
    for ax, e in zip(axes, evals):
        c = e["curves"]["rmsf"]
        for key in ("reference", "oracle", "model"):
            ax.plot(c["residue_index"], c[key], color=COLORS[key], label=key)
        ax.set(title=e["name"], xlabel="residue", ylabel="CA RMSF (A)")
    axes[0].legend(loc="best")
    fig.tight_layout()
    return fig


def plot_pca_density(evals: list[dict]):
    keys = ("reference", "model", "oracle")
    fig = Figure(figsize=(8.4, 2.6 * len(evals)))
    axes = fig.subplots(len(evals), 3, squeeze=False)
    for row, e in zip(axes, evals):
        c = e["curves"]["pca"]
        extent = (c["x_edges"][0], c["x_edges"][-1], c["y_edges"][0], c["y_edges"][-1])
        for ax, key in zip(row, keys):
            hist = np.asarray(c["hist"][key], dtype=float)
            density = hist / max(hist.sum(), 1.0)
            ax.imshow(density.T, origin="lower", extent=extent, aspect="auto", cmap="viridis",
                      interpolation="nearest")
            ax.set(title=f"{e['name']} {key} ({c['outside'][key]} off-grid)", xlabel="PC1 (A)", ylabel="PC2 (A)")
            ax.grid(False)
    fig.tight_layout()
    return fig


def plot_autocorrelation(evals: list[dict]):
    fig, axes = _grid(len(evals))
    for ax, e in zip(axes, evals):
        c = e["curves"]["autocorrelation"]
        lag_ns = np.asarray(c["lag_ps"]) / 1000.0
        for key in ("reference", "oracle", "model", "baseline_replica"):
            ax.plot(lag_ns, c[key], color=COLORS[key], label=key)
        ax.set(title=e["name"], xlabel="lag (ns)", ylabel="ACF of reference PC1")
    axes[0].legend(loc="best")
    fig.tight_layout()
    return fig


def plot_truth_acf(evals: list[dict]):
    """Slow-mode autocorrelations of the known-answer system: exact, model and MD segments of the model's size."""
    truth_evals = [e for e in evals if "truth" in e]
    n_modes = len(truth_evals[0]["truth"]["curves"]["model"]["acf_modes"])
    fig = Figure(figsize=(3.2 * n_modes, 2.6 * len(truth_evals)))
    axes = fig.subplots(len(truth_evals), n_modes, squeeze=False)
    for row, e in zip(axes, truth_evals):
        curves = e["truth"]["curves"]
        for k, ax in enumerate(row):
            ax.plot(curves["model"]["acf_modes"][k]["exact"], "k-", lw=2, label="exact")
            ax.plot(curves["oracle_segments"]["acf_modes"][k]["model"], color=COLORS["oracle"], label="MD, same size")
            ax.plot(curves["model"]["acf_modes"][k]["model"], color=COLORS["model"], label="model")
            ax.set(title=f"{e['name']}: slow mode {k + 1}", xlabel="lag (frames)", ylabel="ACF")
    axes[0][0].legend(loc="best", fontsize=7)
    fig.tight_layout()
    return fig


def read_kv_bench(path: Path) -> list[dict]:
    """KV benchmark JSON: {"records": [...]} or a list; each record has n_residues, n_frames and *_bytes fields."""
    with reading(path, "benchmark JSON (truncated?)", "delete it; snakemake reruns bench_kv_cache"):
        data = json.loads(path.read_text())
    records = data.get("records") if isinstance(data, dict) else data
    if not isinstance(records, list) or not records:
        raise ValueError(f"{path}: expected a non-empty list of records (top level or under 'records')")
    for i, rec in enumerate(records):
        if not {"n_residues", "n_frames"} <= set(rec) or not any(k.endswith("_bytes") for k in rec):
            raise ValueError(f"{path}: record {i} needs n_residues, n_frames and at least one *_bytes field")
    return records


def plot_kv_bench(records: list[dict]):
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    groups: dict[tuple, list[tuple[float, float]]] = {}
    for rec in records:
        for key, value in rec.items():
            if key.endswith("_bytes") and value is not None:
                label = (key.removesuffix("_bytes"), rec.get("kind", ""), rec["n_residues"])
                groups.setdefault(label, []).append((rec["n_frames"], value))
    for (field, kind, n_res), pts in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        style = "--" if kind == "analytic" else "o-"
        ax.plot(*zip(*sorted(pts)), style, markersize=3, label=" ".join(filter(None, (field, kind, f"N={n_res}"))))
    ax.set(xlabel="frames in context L", ylabel="cache size (bytes)", xscale="log", yscale="log")
    ax.legend(loc="best", fontsize=6)
    fig.tight_layout()
    return fig


CAPTIONS = {
    "metrics_table": "Metrics per ensemble, median over proteins (README.md (Metrics) defines each).",
    "stability": "Validity (solid: CA+AA, dashed: CA) and CA RMSD to the start structure vs rollout time, mean over "
                 "proteins; ablation settings in copper shades.",
    "rmsf": "Per-residue CA RMSF of the generated ensemble vs the reference replica and the oracle replica.",
    "pca_density": "Frame density in the reference's top-2 PCA plane (aligned CA), on the recall/precision grid.",
    "autocorrelation": "Autocorrelation of the reference-PC1 projection vs lag; random-order baseline for contrast.",
    "training": "Training loss and its parts (lines), EMA validation loss (markers) and learning rate vs optimiser step.",
    "kv_cache_memory": "KV-cache memory vs context length: singles cache vs pair cache, measured and analytic.",
    "truth_acf": "Known-answer system: autocorrelation of the slowest modes (projection on the exact modes), exact vs "
                 "model vs MD of the same size, over 3 decorrelation times.",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m starmd figures", description=__doc__)
    parser.add_argument("--eval", nargs="+", required=True, type=Path, help="runs/{run}/eval/{name}.json files")
    parser.add_argument("--metrics", type=Path, help="runs/{run}/metrics.jsonl (training curves)")
    parser.add_argument("--ablation", nargs="+", action="append", default=[], metavar=("LABEL", "EVAL_JSON"),
                        help="an ablation setting: its label (e.g. tau=0.0) then its eval JSONs; repeatable")
    parser.add_argument("--kv-bench", type=Path, help="benchmarks/results/kv_cache_memory.json (plotted if present)")
    parser.add_argument("--out-dir", required=True, type=Path, help="runs/{run}/figures")
    parser.add_argument("--config-json", default="{}", help="JSON of the `evaluation` config section")
    args = parser.parse_args(argv)
    cfg = EvaluationConfig.from_json(args.config_json)

    evals = sorted((load_eval(p) for p in args.eval), key=lambda e: e["name"])
    ablations = {}
    for item in args.ablation:
        if len(item) < 2:
            parser.error(f"--ablation {item[0]!r}: give a label and at least one eval JSON")
        ablations[item[0]] = [load_eval(p) for p in item[1:]]
    with matplotlib.style.context(["default", RC]):  # matplotlib defaults + RC, whatever the user's matplotlibrc
        write_figures(evals, ablations, args.metrics, args.kv_bench, args.out_dir, cfg.figure_max_proteins)
    return 0


def write_figures(evals: list[dict], ablations: dict[str, list[dict]], metrics: Path | None, kv_bench: Path | None,
                  out: Path, max_proteins: int) -> None:
    """Tables, figures and report.html into `out` (see main)."""
    out.mkdir(parents=True, exist_ok=True)
    shown = evals[:max_proteins]
    rows = summary_rows(evals)
    for path, text in ((out / "metrics_table.md", rows_to_markdown(rows, len(evals))
                        + truth_rows_to_markdown(truth_rows(evals))),
                       (out / "metrics_table.csv", rows_to_csv(rows))):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    figures = [(save(plot_table(rows, len(evals)), out, "metrics_table"), CAPTIONS["metrics_table"]),
               (save(plot_stability(evals, ablations), out, "stability"), CAPTIONS["stability"]),
               (save(plot_rmsf(shown), out, "rmsf"), CAPTIONS["rmsf"]),
               (save(plot_pca_density(shown), out, "pca_density"), CAPTIONS["pca_density"]),
               (save(plot_autocorrelation(shown), out, "autocorrelation"), CAPTIONS["autocorrelation"])]
    if truth_rows(evals):
        figures.append((save(plot_truth_acf(evals), out, "truth_acf"), CAPTIONS["truth_acf"]))
    notes = []
    if metrics is not None:
        figures.append((save(training_figure(read_metrics(metrics), str(metrics)), out, "training"), CAPTIONS["training"]))
    if kv_bench is not None and kv_bench.exists():
        figures.append((save(plot_kv_bench(read_kv_bench(kv_bench)), out, "kv_cache_memory"),
                        CAPTIONS["kv_cache_memory"]))
    elif kv_bench is not None:
        notes.append(f"KV-cache benchmark {kv_bench} not found: memory figure skipped.")
        log.warning(notes[-1])
    write_html(out / "report.html", rows, len(evals), figures, notes)
