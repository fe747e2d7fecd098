"""scripts/synthetic_study.py table in a fresh clone: rows of variants evaluated in an earlier session (whose runs/
is not here) are kept from the committed table instead of being overwritten as "not run", and a CA validity under
the target is marked, and the ACF cell lists each slow mode's error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_table_keeps_rows_evaluated_elsewhere_and_marks_missed_validity(tmp_path):
    committed = json.loads((REPO / "docs/study/synthetic_study.json").read_text())
    kept = next(r for r in committed if "missing" not in r and r["ca_validity"] >= 0.96 and "acf_error_per_mode" in r)
    broken = {**kept, "variant": "broken", "ca_validity": 0.02}
    out = tmp_path / "study"
    out.mkdir()
    (out / "synthetic_study.json").write_text(json.dumps([kept, broken]))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"configfiles": ["config.synthetic.yaml"], "variants": [
        {"name": kept["variant"], "change": kept["change"]}, {"name": "broken", "change": "x"},
        {"name": "never_run", "change": "y"}]}))
    subprocess.run([sys.executable, "scripts/synthetic_study.py", "table", "--spec", str(spec), "--out", str(out),
                    "--out-root", str(tmp_path / "no_runs")], cwd=REPO, check=True, capture_output=True)
    rows = {r["variant"]: r for r in json.loads((out / "synthetic_study.json").read_text())}
    assert rows[kept["variant"]] == kept and rows["never_run"]["missing"]
    table = (out / "synthetic_study.md").read_text()
    assert f"| {kept['variant']} | {kept['change']} | {kept['ca_validity']:.2f} |" in table
    assert "| broken | " in table and "| 0.02 ✗ |" in table
    assert "| never_run | y | (not run) |" in table
    per_mode = " / ".join(f"{e:.2f}" for e in kept["acf_error_per_mode"])
    assert f"| {kept['acf_error_exact']:.3f} ✗ ({per_mode}) |" in table  # every committed row misses 0.1
    header, rule = table.splitlines()[:2]
    assert "| CA validity | backbone validity |" in header
    assert all(line.count("|") == rule.count("|") for line in table.splitlines())  # every row has every column
