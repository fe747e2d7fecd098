"""mdCATH: a domain file in mdCATH's HDF5 layout (built here) served by a loopback HTTP server, downloaded with the
resumable verified downloader (a dropped connection resumed), converted per temperature into the raw layout."""

from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import mdtraj as md
import numpy as np
import pytest
from Bio.PDB import PDBIO
from PeptideBuilder import PeptideBuilder

from starmd.__main__ import main as starmd_main
from starmd.data.frames import FramesConfig, extract_frames, read_frames
from starmd.data.mdcath import MdcathConfig
from starmd.data.splits import SplitsConfig, make_splits
from test_atlas_download import server  # noqa: F401  (the loopback HTTP server fixture)

DOMAIN = "1abcA00"
N_FRAMES = 4


def mdcath_file(path: Path, domain: str = DOMAIN) -> np.ndarray:
    """A hexapeptide in mdCATH's layout: pdbProteinAtoms + coords [F, atoms, 3] (A) for 2 temperatures x 3 replicas;
    returns the start coordinates (A)."""
    structure = PeptideBuilder.make_structure("GAWKEA", [-57.0] * 5, [-47.0] * 5)
    buf = io.StringIO()
    writer = PDBIO()
    writer.set_structure(structure)
    writer.save(buf)
    pdb_text = buf.getvalue()
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".pdb")
    tmp.write_text(pdb_text)
    xyz0 = md.load(str(tmp)).xyz[0] * 10
    with h5py.File(path, "w") as h5:
        g = h5.create_group(domain)
        g.create_dataset("pdbProteinAtoms", data=pdb_text.encode())
        for t in ("320", "348"):
            for r in ("0", "1", "2"):
                coords = xyz0[None] + rng.normal(scale=0.05, size=(N_FRAMES, *xyz0.shape))
                g.create_dataset(f"{t}/{r}/coords", data=coords.astype(np.float32))
    return xyz0


def test_download_and_convert_a_domain_per_temperature(server, tmp_path, capsys):  # noqa: F811
    url, behaviour = server
    xyz0 = mdcath_file(tmp_path / "src.h5")
    body = (tmp_path / "src.h5").read_bytes()
    behaviour.files[f"/data/mdcath_dataset_{DOMAIN}.h5"] = body
    behaviour.cut_first_at = len(body) // 2  # the first GET drops halfway: the download must resume, not restart
    cfg = {"base_url": url, "temperatures": [320, 348], "replicas": [0, 2], "backoff_base_s": 0.0,
           "chunk_bytes": 1024}
    common = ["--domain", DOMAIN, "--h5-dir", str(tmp_path / "h5"), "--config-json", json.dumps(cfg)]
    assert starmd_main(["prepare-mdcath", "download", *common]) == 0
    assert starmd_main(["prepare-mdcath", "convert", *common, "--out-root", str(tmp_path / "raw")]) == 0
    (_, first), (_, second) = behaviour.requests  # the second GET resumes from the bytes already on disk
    assert first is None and 0 < int(second.removeprefix("bytes=").rstrip("-")) <= len(body) // 2
    assert (tmp_path / "h5" / f"mdcath_dataset_{DOMAIN}.h5").read_bytes() == body
    with h5py.File(tmp_path / "src.h5") as h5:
        truth = h5[f"{DOMAIN}/348/2/coords"][()]
    for t in (320, 348):
        out = tmp_path / "raw" / f"{DOMAIN}_{t}"
        name = f"{DOMAIN}_{t}"
        assert sorted(p.name for p in out.iterdir()) == sorted(
            [f"{name}.pdb", f"{name}_prod_R1_fit.xtc", f"{name}_prod_R2_fit.xtc", "provenance.json"])
        frames = read_frames(extract_frames(out / f"{name}.pdb", sorted(out.glob("*.xtc")), tmp_path / f"{t}.h5",
                                            FramesConfig()))
        assert frames["attrs"]["sequence"] == "GAWKEA" and frames["attrs"]["dt_ps"] == pytest.approx(1000.0)
        assert frames["replicas"]["R1"]["translations"].shape == (N_FRAMES, 6, 3)
    # R2 of 348 K is mdCATH replica 2, Angstrom in, the same conformations out (after superposition)
    traj = md.load(str(tmp_path / "raw" / f"{DOMAIN}_348" / f"{DOMAIN}_348_prod_R2_fit.xtc"),
                   top=str(tmp_path / "raw" / f"{DOMAIN}_348" / f"{DOMAIN}_348.pdb"))
    ref = md.Trajectory(truth * 0.1, traj.topology)
    assert max(10 * md.rmsd(traj[k], ref, k)[0] for k in range(N_FRAMES)) < 0.01
    assert 10 * md.rmsd(traj[0], md.Trajectory(xyz0[None] * 0.1, traj.topology), 0)[0] < 0.2


def test_a_corrupt_download_is_named_and_deleted(server, tmp_path, capsys):  # noqa: F811
    url, behaviour = server
    behaviour.files[f"/data/mdcath_dataset_{DOMAIN}.h5"] = b"not an hdf5 file" * 10
    rc = starmd_main(["prepare-mdcath", "download", "--domain", DOMAIN, "--h5-dir", str(tmp_path),
                      "--config-json", json.dumps({"base_url": url})])
    err = capsys.readouterr().err
    assert rc == 1 and f"mdcath_dataset_{DOMAIN}.h5: unreadable mdCATH HDF5" in err
    assert not (tmp_path / f"mdcath_dataset_{DOMAIN}.h5").exists()


def test_snakemake_dataset_mdcath_downloads_converts_and_plans_the_pipeline(server, tmp_path):  # noqa: F811
    """`dataset: mdcath` end to end up to frames for one domain and temperature (a real snakemake run against the
    loopback server), then a dry run that plans the rest of the pipeline for every domain and temperature; a domain
    added to the config reruns the splits and its own jobs, not the download or conversion of the one done."""
    import yaml
    from test_workflow import _copy_workflow, _jobs, _snakemake

    url, behaviour = server
    mdcath_file(tmp_path / "src.h5")
    behaviour.files[f"/data/mdcath_dataset_{DOMAIN}.h5"] = (tmp_path / "src.h5").read_bytes()
    (tmp_path / "wf").mkdir()
    work = _copy_workflow(tmp_path / "wf")
    config = {"dataset": "mdcath", "run": "mine", "features": {"featurizer": "offline"}, "frames": {"stride": 1},
              "rollout": {"delta_t_ps": 1000.0},  # mdCATH's 1 ns frames: trained Delta-t 1-4 ns
              "mdcath": {"base_url": url, "backoff_base_s": 0.0, "temperatures": [320, 348],
                         "domains": [{"domain": DOMAIN, "split": "train"}, {"domain": "9zzzA01", "split": "test"}]}}
    (work / "mine.yaml").write_text(yaml.safe_dump(config))
    name = f"{DOMAIN}_348"
    _snakemake(work, "data/splits/test.txt", f"data/frames/{name}.h5", "--configfile", "mine.yaml")
    assert (work / "data/splits/train.txt").read_text() == f"{DOMAIN}_320\n{DOMAIN}_348\n"
    assert (work / "data/splits/test.txt").read_text() == "9zzzA01_320\n9zzzA01_348\n"
    assert sorted(p.name for p in (work / "data/raw/mdcath" / name).iterdir()) == sorted(
        [f"{name}.pdb", "provenance.json", *(f"{name}_prod_R{k}_fit.xtc" for k in (1, 2, 3))])
    frames = read_frames(work / f"data/frames/{name}.h5")
    assert sorted(frames["replicas"]) == ["R1", "R2", "R3"] and frames["attrs"]["sequence"] == "GAWKEA"
    assert frames["replicas"]["R3"]["translations"].shape == (N_FRAMES, 6, 3)
    assert [path for path, _ in behaviour.requests] == [f"/data/mdcath_dataset_{DOMAIN}.h5"]  # one domain fetched
    jobs = _jobs(_snakemake(work, "-n", "--configfile", "mine.yaml").stdout)
    assert jobs["download_mdcath"] == 1 and jobs["prepare_mdcath"] == 3  # the test domain, and 1abcA00 at 320 K
    assert jobs["extract_frames"] == 3 and jobs["featurize"] == 4
    assert all(jobs.get(rule) for rule in ("train", "rollout", "evaluate", "figures"))
    config["mdcath"]["domains"].append({"domain": "2newB00", "split": "val"})  # one domain more: only its jobs run
    (work / "mine.yaml").write_text(yaml.safe_dump(config))
    out = _snakemake(work, "-n", "data/splits/test.txt", f"data/frames/{name}.h5", "data/frames/2newB00_348.h5",
                     "--configfile", "mine.yaml").stdout
    assert _jobs(out) == {"download_mdcath": 1, "prepare_mdcath": 1, "extract_frames": 1, "make_splits": 1}, out
    assert f"domain={DOMAIN}" not in out and f"name={name}" not in out  # no job of the domain done
    config["mdcath"]["domains"] = []
    (work / "mine.yaml").write_text(yaml.safe_dump(config))
    proc = _snakemake(work, "-n", "--configfile", "mine.yaml", check=False)
    assert proc.returncode != 0 and "config mdcath.domains: empty" in proc.stderr


def test_config_domains_become_proteins_per_temperature_and_errors_name_the_entry():
    section = {"temperatures": [320, 450], "domains": [{"domain": "1abcA00", "split": "train"},
                                                       {"domain": "2defB01", "split": "test"}]}
    assert make_splits("mdcath", SplitsConfig(), mdcath_section=section) == {
        "train": ["1abcA00_320", "1abcA00_450"], "val": [], "test": ["2defB01_320", "2defB01_450"]}
    assert make_splits("mdcath", SplitsConfig(names={"test": ["2defB01_450"]}), mdcath_section=section)["test"] == [
        "2defB01_450"]
    with pytest.raises(ValueError, match="splits.max_seqlen: this dataset's sequences are known only after"):
        make_splits("mdcath", SplitsConfig(max_seqlen=100), mdcath_section=section)
    bad = [({"domain": "1ab_c", "split": "train"}, r"mdcath.domains\[1\]: domain '1ab_c' is not a CATH domain id"),
           ({"domain": "2defB01", "split": "val"}, r"mdcath.domains\[1\]: duplicate domain 2defB01"),
           ({"domain": "3xyz", "split": "dev"}, r"mdcath.domains\[1\] \(3xyz\): split 'dev' is not one of")]
    for entry, message in bad:
        with pytest.raises(ValueError, match=message):
            MdcathConfig.from_dict({"domains": [section["domains"][1], entry]})
