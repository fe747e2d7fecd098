"""`download-mdcath` / `prepare-mdcath`: one mdCATH domain, per temperature, into the raw layout.

mdCATH (Mirarchi et al. 2024) ships one HDF5 per CATH domain, `mdcath_dataset_{domain}.h5` (Hugging Face
`compsciencelab/mdCATH`, folder `data/`), fetched with the same resumable, size-verified downloader as ATLAS and then
checked to open as HDF5 with the domain's group (a corrupt file is deleted so the next run fetches it again). Layout
assumed (from the mdCATH paper and loader; checked by nothing here but the test's own file): group `{domain}` holding
`pdbProteinAtoms` (PDB text of the simulated protein atoms, as a dataset or attribute) and one subgroup per
temperature ('320', '348', '379', '413', '450' K), each with replicas '0'..'4' holding `coords` [F, atoms, 3] in
Angstrom, one frame per ns. Each chosen temperature becomes one protein `{domain}_{T}` (the workflow's `{name}`)
whose replicas R1, R2, ... are the chosen mdCATH replicas, CA-superposed on the start structure. Every temperature
of a domain shares the domain's split (the same protein at 320 K in train and at 450 K in test would leak).

Two steps, so the workflow downloads on the login node and converts anywhere: `prepare-mdcath download` fetches and
verifies the domain file, `prepare-mdcath convert` writes one temperature.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from starmd.config import dataclass_section, section_json, section_keys
from starmd.data.download import DownloadError, RetryPolicy, download_resumable
from starmd.data.residues import protein_residues
from starmd.data.splits import SPLITS
from starmd.data.structure import check_continuous, protein_atoms, select_protein
from starmd.errors import InputError, open_h5
from starmd.io import atomic_dir, write_json

log = logging.getLogger(__name__)
FRAME_PS = 1000.0  # mdCATH saves one frame per ns
NM_PER_A = 0.1
MDCATH_FIX = "delete it; snakemake downloads it again"
DOMAIN = re.compile(r"[A-Za-z0-9]+")  # CATH domain ids (1a02F00); `{domain}_{T}` is then a workflow {name}


@dataclass(frozen=True)
class MdcathConfig:
    """The `mdcath` config section."""

    base_url: str = "https://huggingface.co/datasets/compsciencelab/mdCATH/resolve/main"
    domains: list[dict[str, str]] = field(default_factory=list)  # [{domain, split}]: what the workflow prepares
    temperatures: list[int] = field(default_factory=lambda: [320])
    replicas: list[int] = field(default_factory=lambda: [0, 1, 2])
    max_retries: int = 5
    backoff_base_s: float = 2.0
    timeout_s: float = 60.0
    chunk_bytes: int = 1 << 20
    verify_size: bool = True

    @classmethod
    def from_json(cls, text: str) -> "MdcathConfig":
        return cls.from_dict(section_json(text, "mdcath"))

    @classmethod
    def from_dict(cls, section: object) -> "MdcathConfig":
        cfg = cls(**dataclass_section(cls, section, "mdcath"))
        if not cfg.temperatures or not cfg.replicas or len(set(cfg.replicas)) != len(cfg.replicas):
            raise ValueError(f"mdcath: need temperatures and distinct replicas, got {cfg.temperatures}, {cfg.replicas}")
        cfg.splits()  # every domain entry checked
        return cfg

    def splits(self) -> dict[str, list[str]]:
        """{split: [`{domain}_{T}`, ...]}: each listed domain at each chosen temperature, in the domain's split."""
        out: dict[str, list[str]] = {split: [] for split in SPLITS}
        seen: set[str] = set()
        for i, raw in enumerate(self.domains):
            where = f"mdcath.domains[{i}]"
            entry = section_keys(raw, ("domain", "split"), where)
            domain, split = entry.get("domain"), entry.get("split")
            if not isinstance(domain, str) or not DOMAIN.fullmatch(domain):
                raise ValueError(f"{where}: domain {domain!r} is not a CATH domain id (letters, digits: 1a02F00)")
            if split not in SPLITS:
                raise ValueError(f"{where} ({domain}): split {split!r} is not one of {list(SPLITS)}")
            if domain in seen:
                raise ValueError(f"{where}: duplicate domain {domain}")
            seen.add(domain)
            out[split] += [f"{domain}_{t}" for t in self.temperatures]
        return out

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(**{f.name: getattr(self, f.name) for f in fields(RetryPolicy)})


# The keys of the section each part of `prepare-mdcath` reads, and so its jobs' params: listing another domain or
# temperature changes neither, so Snakemake never re-downloads or re-converts a domain already done. The domain and
# the temperature come on the command line.
PART_KEYS = {"download": ("base_url", *(f.name for f in fields(RetryPolicy))), "convert": ("replicas",)}


def part_section(section: Mapping[str, Any], part: str) -> dict[str, Any]:
    """The keys of the `mdcath` section that `prepare-mdcath {part}` reads (those present)."""
    return {k: section[k] for k in PART_KEYS[part] if k in section}


def domain_file(domain: str) -> str:
    """mdCATH's file name for a domain, on the server (under data/) and on disk alike."""
    return f"mdcath_dataset_{domain}.h5"


def mdcath_url(base_url: str, domain: str) -> str:
    return f"{base_url.rstrip('/')}/data/{domain_file(domain)}"


def verify_domain_file(path: Path, domain: str) -> None:
    """The file opens as HDF5 and holds group `{domain}` with `pdbProteinAtoms`; else an InputError naming it."""
    with open_h5(path, "mdCATH HDF5", MDCATH_FIX) as h5:
        if domain not in h5:
            raise InputError(path, f"no group {domain!r} (groups: {sorted(h5)[:5]})", MDCATH_FIX)
        group = h5[domain]
        if "pdbProteinAtoms" not in group and "pdbProteinAtoms" not in group.attrs:
            raise InputError(path, f"{domain}/pdbProteinAtoms missing (mdCATH layout)", MDCATH_FIX)


def download_domain(domain: str, h5_dir: Path, cfg: MdcathConfig) -> Path:
    """`{h5_dir}/mdcath_dataset_{domain}.h5`, downloaded (resuming a `.part`) unless present; verified either way."""
    path = h5_dir / domain_file(domain)
    if not path.exists():
        url = mdcath_url(cfg.base_url, domain)
        try:
            download_resumable(url, path, cfg.retry_policy(), desc=domain)
        except DownloadError as e:
            raise DownloadError(f"mdCATH domain {domain!r}: {e}") from e
    try:
        verify_domain_file(path, domain)
    except InputError:
        path.unlink()
        raise
    return path


def _pdb_text(group: h5py.Group) -> str:
    raw = group["pdbProteinAtoms"][()] if "pdbProteinAtoms" in group else group.attrs["pdbProteinAtoms"]
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def prepare_temperature(h5_path: Path, domain: str, temperature: int, replicas: list[int], out_dir: Path) -> Path:
    """Write `{domain}_{T}.pdb` and `{domain}_{T}_prod_R{k}_fit.xtc` (replica replicas[k-1]) into out_dir."""
    import mdtraj as md

    name = f"{domain}_{temperature}"
    with open_h5(h5_path, "mdCATH HDF5", MDCATH_FIX) as h5, atomic_dir(out_dir) as work:
        group = h5[domain]
        if str(temperature) not in group:
            raise InputError(h5_path, f"{domain} has no temperature {temperature} K (has {sorted(group)})",
                             "choose mdcath.temperatures among them")
        pdb = work / f"{name}.pdb"
        pdb.write_text(_pdb_text(group))
        full = md.load(str(pdb))
        start, removed = select_protein(full, h5_path)
        protein_residues(start.topology, str(h5_path))
        check_continuous(start, h5_path)
        start.save_pdb(str(pdb))
        index = protein_atoms(full.topology)[0]  # coords hold every atom of pdbProteinAtoms
        ca = start.topology.select("name CA")
        for k, rep in enumerate(replicas, start=1):
            key = f"{temperature}/{rep}/coords"
            if key not in group:
                raise InputError(h5_path, f"{domain}/{key} missing", "choose mdcath.replicas among those present")
            coords = group[key]
            if coords.ndim != 3 or coords.shape[1:] != (full.n_atoms, 3):
                raise InputError(h5_path, f"{domain}/{key} is {coords.shape}, expected [F, {full.n_atoms}, 3] "
                                 "(atoms of pdbProteinAtoms)", MDCATH_FIX)
            xyz = np.asarray(coords[()], dtype=np.float32)[:, index] * NM_PER_A
            traj = md.Trajectory(xyz, start.topology, time=FRAME_PS * np.arange(len(xyz)))
            traj.superpose(start, 0, atom_indices=ca)
            traj.save_xtc(str(work / f"{name}_prod_R{k}_fit.xtc"))
        write_json(work / "provenance.json", {
            "dataset": "mdcath", "domain": domain, "temperature_k": temperature, "mdcath_replicas": replicas,
            "source": h5_path.name, "removed_residues": removed, "frame_interval_ps": FRAME_PS,
            "fit": "superposed on the start structure's CA"})
    log.info("%s: %d residues, replicas %s -> %s", name, start.n_residues, replicas, out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m starmd prepare-mdcath", description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=tuple(PART_KEYS),
                        help="download (and verify) the domain file, or convert it to the raw layout")
    parser.add_argument("--domain", required=True, help="CATH domain, e.g. 1a02F00")
    parser.add_argument("--h5-dir", required=True, type=Path, help="where mdcath_dataset_{domain}.h5 is kept")
    parser.add_argument("--out-root", type=Path, help="convert: receives {domain}_{T}/ per temperature")
    parser.add_argument("--temperature", type=int, help="convert: only this temperature (default: the config's)")
    parser.add_argument("--config-json", default="{}",
                        help="JSON of the `mdcath` config section (the workflow passes only the keys this part reads)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    cfg = MdcathConfig.from_json(args.config_json)
    if args.part == "download":
        download_domain(args.domain, args.h5_dir, cfg)
        return 0
    if args.out_root is None:
        parser.error("convert needs --out-root")
    h5 = args.h5_dir / domain_file(args.domain)
    for temperature in cfg.temperatures if args.temperature is None else [args.temperature]:
        prepare_temperature(h5, args.domain, temperature, cfg.replicas, args.out_root / f"{args.domain}_{temperature}")
    return 0
