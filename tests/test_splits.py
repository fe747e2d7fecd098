"""make-splits: the shipped AlphaFlow/MDGen ATLAS lists, demo splits from the config, and narrowing options."""

from __future__ import annotations

import csv
import json
from importlib import resources

import pytest

from starmd.__main__ import main as starmd_main
from starmd.data.splits import SplitsConfig, apply_config, atlas_sequences, atlas_splits, make_splits, read_split

DEMO = {"proteins": [
    {"name": "chignolin", "sequence": "GYDPETGTWG", "split": "train"},
    {"name": "trpcage", "sequence": "NLYIQWLKDGGPSSGRPPPS", "split": "train"},
    {"name": "villin", "sequence": "LSDEDFKAVFGMTRSAFANLPLWKQQNLKKEKGLF", "split": "val"},
    {"name": "wwdomain", "sequence": "GSKLPPGWEKRMSRSSGRVYYFNHITNASQWERPSG", "split": "test"},
    {"name": "bba", "sequence": "EQYTAKYKGRTFRNEKELRDFIEKFKGR", "split": "test"},
]}


def test_shipped_atlas_lists_match_peer_counts_and_are_disjoint():
    splits, seqs = atlas_splits(), atlas_sequences()
    assert {k: len(v) for k, v in splits.items()} == {"train": 1266, "val": 39, "test": 82}
    assert len(seqs) == 1390 and seqs["6o2v_A"].startswith("GWNDPDRMLLRDVKAL")
    assert splits["test"][0] == "6o2v_A"
    sets = {k: set(v) for k, v in splits.items()}
    assert sum(map(len, sets.values())) == 1266 + 39 + 82  # no duplicates inside a split
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert set().union(*sets.values()) <= set(seqs)
    # test-set chain lengths as stated by the peers (39-724 residues), checked against the csv's own seqlen column
    text = resources.files("starmd.data").joinpath("splits", "atlas_test.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    assert all(len(seqs[r["name"]]) == int(r["seqlen"]) for r in rows)
    assert min(int(r["seqlen"]) for r in rows) == 39 and max(int(r["seqlen"]) for r in rows) == 724


def test_cli_atlas_full_and_limited(tmp_path):
    assert starmd_main(["make-splits", "--dataset", "atlas", "--out-dir", str(tmp_path / "full")]) == 0
    assert read_split(tmp_path / "full" / "train.txt") == atlas_splits()["train"]
    assert len(read_split(tmp_path / "full" / "test.txt")) == 82

    cfg = {"limit": {"train": 5, "val": 0, "test": None}, "max_seqlen": 120}
    assert starmd_main(["make-splits", "--dataset", "atlas", "--out-dir", str(tmp_path / "sub"),
                        "--config-json", json.dumps(cfg)]) == 0
    seqs = atlas_sequences()
    train, val, test = (read_split(tmp_path / "sub" / f"{s}.txt") for s in ("train", "val", "test"))
    assert len(train) == 5 and val == [] and (tmp_path / "sub" / "val.txt").read_text() == ""
    assert test == [n for n in atlas_splits()["test"] if len(seqs[n]) <= 120] and 0 < len(test) < 82
    assert all(len(seqs[n]) <= 120 for n in train)
    assert not list((tmp_path / "sub").glob(".*"))  # no temp files left behind


def test_explicit_names_replace_a_split_and_must_be_atlas_chains():
    cfg = SplitsConfig.from_dict({"names": {"train": ["6o2v_A", "7ead_A"]}})
    with pytest.raises(ValueError, match="both 'train' and 'test'"):  # both are test chains: leakage refused
        make_splits("atlas", cfg)
    train = atlas_splits()["train"][:2]
    out = make_splits("atlas", SplitsConfig.from_dict({"names": {"train": train, "test": ["6o2v_A"]}}))
    assert out["train"] == train and out["test"] == ["6o2v_A"] and len(out["val"]) == 39
    with pytest.raises(ValueError, match=r"splits.names.train: \['1abc_Z'\]"):
        make_splits("atlas", SplitsConfig.from_dict({"names": {"train": ["1abc_Z"]}}))


def test_cli_demo_uses_split_field(tmp_path):
    rc = starmd_main(["make-splits", "--dataset", "demo", "--out-dir", str(tmp_path),
                      "--config-json", json.dumps({"max_seqlen": 30}), "--demo-json", json.dumps(DEMO)])
    assert rc == 0
    assert read_split(tmp_path / "train.txt") == ["chignolin", "trpcage"]
    assert read_split(tmp_path / "val.txt") == []  # villin (35 residues) dropped by max_seqlen
    assert read_split(tmp_path / "test.txt") == ["bba"]  # wwdomain (36) dropped, bba (28) kept
    with pytest.raises(ValueError, match="'test' split is empty"):
        apply_config({"train": ["chignolin"], "val": [], "test": ["wwdomain"]},
                     {p["name"]: p["sequence"] for p in DEMO["proteins"]}, SplitsConfig(max_seqlen=30))


@pytest.mark.parametrize("section, match", [
    ({"limits": {}}, r"unknown key\(s\) \['limits'\]"),
    ({"limit": {"training": 3}}, r"splits.limit: unknown split\(s\) \['training'\]"),
    ({"limit": {"train": -1}}, r"splits.limit.train: expected a non-negative integer"),
    ({"names": {"val": "6o2v_A"}}, r"splits.names.val: expected a list"),
    ({"max_seqlen": 0}, r"splits.max_seqlen"),
])
def test_bad_config_names_the_key(section, match):
    with pytest.raises(ValueError, match=match):
        SplitsConfig.from_dict(section)


def test_bad_demo_section_is_a_clear_cli_error(tmp_path, capsys):
    bad = {"proteins": [{"name": "x", "sequence": "GG", "split": "holdout"}]}
    rc = starmd_main(["make-splits", "--dataset", "demo", "--out-dir", str(tmp_path), "--demo-json", json.dumps(bad)])
    assert rc == 2 and "demo.proteins[0] (x): split 'holdout'" in capsys.readouterr().err
    assert starmd_main(["make-splits", "--dataset", "demo", "--out-dir", str(tmp_path)]) == 2
    assert "--demo-json" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_schema_fragment_matches_config(repo_root):
    import yaml
    from dataclasses import fields

    schema = yaml.safe_load((repo_root / "schemas" / "splits.schema.yaml").read_text())
    assert schema["additionalProperties"] is False
    defaults = {f.name: f.default for f in fields(SplitsConfig)}
    assert {k: v["default"] for k, v in schema["properties"].items()} == defaults
