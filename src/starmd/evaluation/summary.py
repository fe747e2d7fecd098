"""Read saved eval JSONs and reduce them across proteins (median per metric), for the table, figures and report."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from starmd.errors import reading
from starmd.evaluation.evaluate import BASELINES, FORMAT_VERSION, METRICS

TABLE_ENSEMBLES = ("model", "oracle", "baseline_noise", "baseline_replica")


def load_eval(path: str | Path) -> dict:
    """One eval JSON written by `python -m starmd evaluate`, checked for the keys the figures read."""
    path = Path(path)
    with reading(path, "eval JSON (truncated?)", "delete it; snakemake reruns evaluate"):
        data = json.loads(path.read_text())
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: eval format_version {data.get('format_version')!r}, expected {FORMAT_VERSION}")
    for key in ("name", "metrics", "curves"):
        if key not in data:
            raise ValueError(f"{path}: eval JSON has no key {key!r}")
    return data


def _median(values: list) -> float:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.median(finite)) if finite else float("nan")


def summary_rows(evals: list[dict]) -> list[dict]:
    """One row per metric: median over proteins per ensemble, and how many proteins flag each baseline."""
    rows = []
    for metric, (higher, _) in METRICS.items():
        entries = [e["metrics"][metric] for e in evals if metric in e["metrics"]]
        if not entries:
            continue
        row = {"metric": metric, "better": {True: "higher", False: "lower", None: "-"}[higher],
               **{ens: _median([m[ens] for m in entries]) for ens in TABLE_ENSEMBLES}}
        flags = [f"{b.removeprefix('baseline_')} {sum(b in m.get('oracle_not_separated_from', []) for m in entries)}"
                 f"/{len(entries)}" for b in BASELINES] if higher is not None else []
        row["oracle_not_separated"] = ", ".join(flags)
        rows.append(row)
    return rows


COLUMNS = ("metric", "better", *TABLE_ENSEMBLES, "oracle_not_separated")


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def rows_to_markdown(rows: list[dict], n_proteins: int) -> str:
    lines = [f"Median over {n_proteins} protein(s). `oracle_not_separated`: proteins where the oracle does not beat "
             "that baseline (the metric cannot tell MD from it).", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


TRUTH_ENSEMBLES = ("model", "oracle_segments", "oracle", "baseline_noise", "baseline_replica")


def truth_rows(evals: list[dict]) -> list[dict]:
    """Known-answer rows (evaluations with a `truth` block only): median over proteins per ensemble, the target and
    on how many proteins the model meets it."""
    with_truth = [e["truth"]["metrics"] for e in evals if "truth" in e]
    if not with_truth:
        return []
    rows = []
    for metric, first in with_truth[0].items():
        rows.append({"metric": metric, "target": first["target"],
                     **{ens: _median([m[metric][ens] for m in with_truth]) for ens in TRUTH_ENSEMBLES},
                     "model_meets_target": f"{sum(m[metric]['model_meets_target'] for m in with_truth)}"
                                           f"/{len(with_truth)}"})
    return rows


def truth_rows_to_markdown(rows: list[dict]) -> str:
    """Markdown of `truth_rows` ('' when there are none)."""
    if not rows:
        return ""
    columns = ("metric", "target", *TRUTH_ENSEMBLES, "model_meets_target")
    lines = ["", "Against the exact statistics of the known-answer system (README.md (Known-answer system)); "
             "`oracle_segments`: MD of the system cut to the model's size (the finite-sample floor).", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def rows_to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: _fmt(r[c]) for c in COLUMNS} for r in rows)
    return buf.getvalue()


def mean_time_curves(evals: list[dict], ensemble: str, source: str) -> dict[str, np.ndarray]:
    """Validity / RMSD-vs-time curves of one ensemble averaged over proteins on their common leading time points."""
    curves = [e["curves"]["time"][ensemble] for e in evals]
    n = min(len(c["time_ps"]) for c in curves)
    time = np.asarray(curves[0]["time_ps"][:n])
    for e, c in zip(evals, curves):
        if not np.allclose(c["time_ps"][:n], time):
            raise ValueError(f"{source}: {e['name']} has a different time grid than {evals[0]['name']}; "
                             f"cannot average its curves")
    return {"time_ps": time, **{key: np.nanmean([np.asarray(c[key][:n], dtype=float) for c in curves], axis=0)
                                for key in ("ca_validity", "ca_aa_validity", "rmsd_to_start_A")}}
