"""`python -m starmd figures`: files from saved JSON only, byte-reproducible PNG/PDF, table medians, HTML report."""

from __future__ import annotations

import base64
import copy
import csv
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import pytest

from starmd.evaluation.figures import main as figures_main

import eval_inputs as E

CHROMIUM = Path("/usr/bin/chromium")
FIGURES = ("metrics_table", "stability", "rmsf", "pca_density", "autocorrelation", "training", "kv_cache_memory")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """One real eval JSON (evaluate on constructed MD), two renamed copies with planted jsd_pca values, an ablation
    copy, a training metrics.jsonl and a KV benchmark JSON."""
    from starmd.evaluation.cli import main as evaluate_main

    root = tmp_path_factory.mktemp("fig")
    raw_dir, frames = E.write_reference(root, n_stored=200)
    rollout = E.write_rollout(root, n_frames=50)
    real = root / "eval" / "helix.json"
    assert evaluate_main(["--name", "helix", "--rollout", str(rollout), "--frames", str(frames), "--raw-dir",
                          str(raw_dir), "--out", str(real), "--config-json", '{"tica_lag": 5}']) == 0
    base = json.loads(real.read_text())
    evals = []
    for name, value in (("p1", 0.1), ("p2", 0.9), ("p3", 0.2)):
        e = copy.deepcopy(base)
        e["name"] = name
        e["metrics"]["jsd_pca"]["model"] = value
        path = root / "eval" / f"{name}.json"
        path.write_text(json.dumps(e))
        evals.append(path)
    ablation = copy.deepcopy(base)
    ablation["curves"]["time"]["model"]["ca_aa_validity"] = [0.0] * len(ablation["curves"]["time"]["model"]["time_ps"])
    ablation_path = root / "ablation_tau0" / "helix.json"
    ablation_path.parent.mkdir()
    ablation_path.write_text(json.dumps(ablation))
    metrics = root / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "loss": 2.0 / (s + 1),
                                           **({"val_loss": 2.5 / (s + 1)} if s % 10 == 0 else {})}) + "\n"
                               for s in range(50)))
    kv = root / "kv_cache_memory.json"
    kv.write_text(json.dumps({"records": [
        {"n_residues": n, "n_frames": L, "kind": kind, "singles_bytes": 2 * 8 * n * L * 256 * 2,
         "pairs_bytes": 8 * n * n * L * 128 * 2} for n in (100, 500) for L in (10, 100, 400)
        for kind in ("analytic", "measured")]}))
    return {"root": root, "evals": evals, "real": real, "ablation": ablation_path, "metrics": metrics, "kv": kv}


def _argv(inputs: dict, out: Path) -> list[str]:
    return ["--eval", *map(str, inputs["evals"]), "--metrics", str(inputs["metrics"]), "--kv-bench",
            str(inputs["kv"]), "--ablation", "tau=0.0", str(inputs["ablation"]), "--out-dir", str(out)]


@pytest.fixture(scope="module")
def figures_dir(inputs) -> Path:
    out = inputs["root"] / "figures"
    assert figures_main(_argv(inputs, out)) == 0
    return out


def test_all_figures_and_tables_written(figures_dir):
    report = (figures_dir / "report.html").read_text()
    for stem in FIGURES:
        png = figures_dir / f"{stem}.png"
        image = matplotlib.image.imread(png)  # decodes: a real PNG
        assert min(image.shape[:2]) > 200 and image[..., :3].std() > 0.05, stem  # something drawn, not a blank page
        pdf = (figures_dir / f"{stem}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF"), stem
        # the report embeds exactly this PNG
        assert f'<figure id="{stem}"><img alt="{stem}.png" src="data:image/png;base64,' \
               f'{base64.b64encode(png.read_bytes()).decode("ascii")}">' in report, stem


def test_table_is_median_over_proteins(figures_dir):
    rows = {r["metric"]: r for r in csv.DictReader((figures_dir / "metrics_table.csv").open())}
    assert rows["jsd_pca"]["model"] == "0.200"  # median of planted 0.1, 0.9, 0.2
    assert rows["jsd_pca"]["better"] == "lower"
    assert rows["rmsf_pearson_r"]["oracle_not_separated"].startswith("noise 3/3")  # RMSF-matched noise
    md = (figures_dir / "metrics_table.md").read_text()
    assert "| jsd_pca | lower | 0.200 |" in md and "Median over 3 protein(s)" in md


def test_figures_are_byte_reproducible(inputs, figures_dir, tmp_path):
    again = tmp_path / "again"
    shutil.copytree(figures_dir, again)
    for f in again.glob("*.p*"):
        f.unlink()  # delete every PNG/PDF, regenerate into the same folder
    assert figures_main(_argv(inputs, again)) == 0
    for stem in FIGURES:
        for ext in ("png", "pdf"):
            assert (again / f"{stem}.{ext}").read_bytes() == (figures_dir / f"{stem}.{ext}").read_bytes(), stem
    assert (again / "report.html").read_bytes() == (figures_dir / "report.html").read_bytes()


class _ReportParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: dict[str, bytes] = {}
        self.cells: list[str] = []
        self._in_td = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            assert a["src"].startswith("data:image/png;base64,")
            self.images[a["alt"]] = base64.b64decode(a["src"].split(",", 1)[1], validate=True)
        self._in_td = tag == "td"

    def handle_data(self, data):
        if self._in_td:
            self.cells.append(data)


def test_html_report_embeds_every_figure_and_the_table(figures_dir, tmp_path):
    report = figures_dir / "report.html"
    parser = _ReportParser()
    parser.feed(report.read_text())
    pngs = sorted(figures_dir.glob("*.png"))
    assert sorted(parser.images) == sorted(p.name for p in pngs)
    for png in pngs:
        assert parser.images[png.name] == png.read_bytes()
    assert "jsd_pca" in parser.cells and "0.200" in parser.cells
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed: HTML parsed and checked, screenshot render skipped")
    shot = tmp_path / "report.png"
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,2000", report.as_uri()], check=True, timeout=60, capture_output=True)
    assert shot.stat().st_size > 10_000


def test_missing_kv_bench_is_noted_and_bad_inputs_name_the_file(inputs, tmp_path):
    out = tmp_path / "figs"
    argv = ["--eval", str(inputs["real"]), "--kv-bench", str(tmp_path / "absent.json"), "--out-dir", str(out)]
    assert figures_main(argv) == 0
    assert not (out / "kv_cache_memory.png").exists() and not (out / "training.png").exists()
    assert "absent.json not found" in (out / "report.html").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format_version": 1, "name": "x", "metrics": {}}))
    with pytest.raises(ValueError, match=r"bad\.json.*curves"):
        figures_main(["--eval", str(bad), "--out-dir", str(out)])
    lines = tmp_path / "metrics.jsonl"
    lines.write_text('{"step": 1, "loss": 0.5}\n{"loss": 0.4}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2.*step"):
        figures_main(["--eval", str(inputs["real"]), "--metrics", str(lines), "--out-dir", str(out)])


def test_truncated_benchmark_json_is_one_line_naming_it(inputs, tmp_path):
    truncated = tmp_path / "kv_cache_memory.json"
    truncated.write_text(inputs["kv"].read_text()[:40])
    argv = [*_argv(inputs, tmp_path / "figures")]
    argv[argv.index(str(inputs["kv"]))] = str(truncated)
    proc = subprocess.run([sys.executable, "-m", "starmd", "figures", *argv], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert re.fullmatch(rf"{re.escape(str(truncated))}: unreadable benchmark JSON \(truncated\?\): .+ \(delete it; "
                        r"snakemake reruns bench_kv_cache\)", proc.stderr.strip().splitlines()[-1]), proc.stderr
