"""scripts/synthetic_study.py table in a fresh clone: rows of variants evaluated in an earlier session (whose runs/
is not here) are kept from the committed table instead of being overwritten as "not run", and a CA validity under
the target is marked, and the ACF cell lists each slow mode's error."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
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


def _study_script():
    spec = importlib.util.spec_from_file_location("synthetic_study", REPO / "scripts/synthetic_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_copies_of_generated_tables_match_their_tables():
    """README.md and docs/ copy the study's generated tables; every copy is the committed table, byte for byte."""
    study = _study_script()
    copies = [(doc, m) for doc in study.documents(REPO) for m in study.COPY.finditer(doc.read_text())]
    assert {m.group(2) for _, m in copies} >= {"docs/study/synthetic_study.md", "docs/study/onestep.md"}
    for doc, m in copies:
        assert m.group(3) == "\n" + (REPO / m.group(2)).read_text() + "\n", f"{doc}: stale copy of {m.group(2)}"


def test_sync_copies_rewrites_only_the_named_table():
    study = _study_script()
    doc = ("text\n<!-- copy of docs/a.md: generated -->\n\n| old |\n\n<!-- end of copy -->\nmore\n"
           "<!-- copy of docs/b.md: generated -->\n\n| b |\n\n<!-- end of copy -->\n")
    new = study.sync_copies(doc, {"docs/a.md": "| new |\n|---|\n"})
    assert new == doc.replace("| old |\n", "| new |\n|---|\n")
    assert study.sync_copies(new, {"docs/a.md": "| new |\n|---|\n"}) == new  # idempotent


def test_based_on_starts_from_the_parent_overrides_and_names_a_missing_parent(tmp_path):
    """A variant `based_on` another gets the parent's overrides (resolved through the parent's own `based_on`) with
    its own merged over them; the parent itself is unchanged, and a parent that is not an earlier variant is an
    error naming the spec and both variants."""
    study = _study_script()
    spec = tmp_path / "spec.yaml"
    variants = study.resolve_based_on([
        {"name": "a", "overrides": {"training": {"steps": 10, "tau_max": 0.02}, "rollout": {"tau": 0.01}}},
        {"name": "a_markov", "based_on": "a", "overrides": {"training": {"context_window": 1}}},
        {"name": "a_markov_seed1", "based_on": "a_markov", "overrides": {"seed": 1, "rollout": {"tau": 0.03}}},
    ], spec)
    assert variants[0]["overrides"] == {"training": {"steps": 10, "tau_max": 0.02}, "rollout": {"tau": 0.01}}
    assert variants[1]["overrides"] == {"training": {"steps": 10, "tau_max": 0.02, "context_window": 1},
                                        "rollout": {"tau": 0.01}}
    assert variants[2]["overrides"] == {"seed": 1, "training": {"steps": 10, "tau_max": 0.02, "context_window": 1},
                                        "rollout": {"tau": 0.03}}
    assert all("based_on" not in v for v in variants)
    with pytest.raises(ValueError, match=r"spec\.yaml: variant 'b' is based_on 'later'"):
        study.resolve_based_on([{"name": "b", "based_on": "later"}, {"name": "later"}], spec)


def test_load_spec_reads_the_spec_once_with_its_grids(tmp_path):
    """load_spec returns the base config (config.yaml + configfiles + the spec's base), the resolved variants and the
    probe grids, so `ideal`, `onestep` and `filters` use what was read with the variants."""
    study = _study_script()
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "configfiles": ["config.synthetic.yaml"], "base": {"training": {"trans_loss_weight": 1.0}},
        "onestep": {"seed": 3, "history": 8}, "filters": {"taus": [0.0]},
        "variants": [{"name": "a", "overrides": {"seed": 1}}, {"name": "b", "based_on": "a"}]}))
    base, variants, grids = study.load_spec(spec)
    synthetic = yaml.safe_load((REPO / "config.synthetic.yaml").read_text())
    assert base["training"]["trans_loss_weight"] == 1.0
    assert base["synthetic"] == synthetic["synthetic"]
    assert [v["overrides"] for v in variants] == [{"seed": 1}, {"seed": 1}]
    assert grids == {"onestep": {"seed": 3, "history": 8}, "filters": {"taus": [0.0]}}
