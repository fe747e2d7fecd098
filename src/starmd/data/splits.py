"""`make-splits`: write `data/splits/{train,val,test}.txt` (one protein name per line).

ATLAS uses the AlphaFlow/MDGen split lists shipped as package data (`starmd/data/splits/atlas_{split}.csv`, verbatim
from bjing2016/mdgen@81482a4), so our test set is the peers' test set. The demo takes its split from the `split`
field of each protein in the `demo` config section. The synthetic known-answer system is its own train and test
protein on purpose: the question it answers is whether the model learns the dynamics it was shown (scored against
exact statistics, not against a held-out replica). Local MD and mdCATH take theirs from their config sections (a
manifest entry's split; an mdCATH domain's split, shared by all its temperatures). Any of them can be narrowed for
a cheaper run: explicit name lists replace a split, `max_seqlen` drops long chains, `limit` keeps the first n names
(file order, so no seed is needed).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping

from starmd.config import section_keys
from starmd.io import atomic_path

SPLITS: tuple[str, ...] = ("train", "val", "test")
DATASETS: tuple[str, ...] = ("atlas", "demo", "synthetic", "local", "mdcath")
# Splits that may not come out empty: training needs proteins, and evaluation needs held-out ones.
_REQUIRED_NONEMPTY: tuple[str, ...] = ("train", "test")


@dataclass(frozen=True)
class SplitsConfig:
    """The `splits` config section. `None` everywhere means: keep the dataset's own split unchanged."""

    limit: Mapping[str, int | None] | None = None  # split -> keep the first n names
    names: Mapping[str, list[str] | None] | None = None  # split -> explicit names replacing that split
    max_seqlen: int | None = None  # drop chains longer than this many residues

    @classmethod
    def from_dict(cls, section: Mapping[str, Any]) -> "SplitsConfig":
        """Validate the JSON section; an unknown key or a bad value is an error naming `splits.<key>`."""
        section = section_keys(section, ("limit", "names", "max_seqlen"), "splits")
        limit = _per_split(section.get("limit"), "limit", _check_limit)
        names = _per_split(section.get("names"), "names", _check_names)
        max_seqlen = section.get("max_seqlen")
        if max_seqlen is not None and (isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int)
                                       or max_seqlen < 1):
            raise ValueError(f"splits.max_seqlen: expected a positive integer or null, got {max_seqlen!r}")
        return cls(limit=limit, names=names, max_seqlen=max_seqlen)


def _per_split(value: Any, key: str, check: Callable[[Any, str], None]) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"splits.{key}: expected an object keyed by {list(SPLITS)}, got {value!r}")
    unknown = set(value) - set(SPLITS)
    if unknown:
        raise ValueError(f"splits.{key}: unknown split(s) {sorted(unknown)}; expected {list(SPLITS)}")
    for split, v in value.items():
        if v is not None:
            check(v, f"splits.{key}.{split}")
    return dict(value)


def _check_limit(v: Any, where: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{where}: expected a non-negative integer or null, got {v!r}")


def _check_names(v: Any, where: str) -> None:
    if not isinstance(v, list) or not all(isinstance(n, str) and n for n in v):
        raise ValueError(f"{where}: expected a list of protein names, got {v!r}")
    if len(set(v)) != len(v):
        raise ValueError(f"{where}: duplicate names {sorted({n for n in v if v.count(n) > 1})}")


def _read_packaged_csv(filename: str) -> list[dict[str, str]]:
    text = resources.files("starmd.data").joinpath("splits", filename).read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or "name" not in rows[0]:
        raise ValueError(f"starmd/data/splits/{filename}: expected a CSV with a 'name' column")
    return rows


def atlas_sequences() -> dict[str, str]:
    """All 1390 ATLAS chains: name -> SEQRES (from the shipped `atlas.csv`)."""
    return {row["name"]: row["seqres"] for row in _read_packaged_csv("atlas.csv")}


def atlas_splits() -> dict[str, list[str]]:
    """The AlphaFlow/MDGen ATLAS split: split -> names in file order (1266 / 39 / 82)."""
    return {split: [row["name"] for row in _read_packaged_csv(f"atlas_{split}.csv")] for split in SPLITS}


def demo_splits(demo_section: Mapping[str, Any]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Split lists and sequences from the `demo` config section's `proteins` (each: name, sequence, split)."""
    proteins = demo_section.get("proteins") if isinstance(demo_section, Mapping) else None
    if not isinstance(proteins, list) or not proteins:
        raise ValueError("demo.proteins: expected a non-empty list of {name, sequence, split} objects")
    splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    sequences: dict[str, str] = {}
    for i, protein in enumerate(proteins):
        missing = {"name", "sequence", "split"} - set(protein) if isinstance(protein, Mapping) else {"name"}
        if missing:
            raise ValueError(f"demo.proteins[{i}]: missing key(s) {sorted(missing)}; got {protein!r}")
        name, split = protein["name"], protein["split"]
        if split not in SPLITS:
            raise ValueError(f"demo.proteins[{i}] ({name}): split {split!r} is not one of {list(SPLITS)}")
        if name in sequences:
            raise ValueError(f"demo.proteins[{i}]: duplicate protein name {name!r}")
        sequences[name] = protein["sequence"]
        splits[split].append(name)
    return splits, sequences


def synthetic_splits(synthetic_section: Mapping[str, Any]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The one synthetic system, in both train and test (see the module docstring)."""
    from starmd.data.synthetic import SyntheticConfig

    cfg = SyntheticConfig(**{k: v for k, v in synthetic_section.items() if k in ("name", "sequence")})
    return {"train": [cfg.name], "val": [], "test": [cfg.name]}, {cfg.name: cfg.sequence}


def local_splits(local_section: Mapping[str, Any]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Split lists from the `local` manifest, and each protein's sequence (amino-acid residues of its topology)."""
    import mdtraj as md

    from starmd.data.local import load_entries
    from starmd.data.residues import is_amino_acid, one_letter

    splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    sequences: dict[str, str] = {}
    for entry in load_entries(local_section):
        splits[entry.split].append(entry.name)
        residues = [r for r in md.load_topology(str(entry.topology)).residues if is_amino_acid(r.name)]
        sequences[entry.name] = "".join(one_letter(r.name, entry.where) for r in residues)
    return splits, sequences


def mdcath_splits(mdcath_section: Mapping[str, Any]) -> dict[str, list[str]]:
    """Split lists of the `mdcath` section's domains (one protein per domain and temperature)."""
    from starmd.data.mdcath import MdcathConfig

    cfg = MdcathConfig.from_dict(mdcath_section)
    if not cfg.domains:
        raise ValueError("mdcath.domains: empty; list the CATH domains to prepare ({domain, split} each)")
    return cfg.splits()


def apply_config(base: Mapping[str, list[str]], sequences: Mapping[str, str] | None,
                 config: SplitsConfig, allow_train_test_overlap: bool = False) -> dict[str, list[str]]:
    """Narrow a dataset's split: explicit names -> `max_seqlen` filter -> `limit` (first n).

    Explicit names must belong to the dataset (so they can be downloaded/prepared) and stay disjoint across splits:
    a protein in both train and test would leak the test set into training. `sequences` is None where they are
    known only after a download (mdCATH): `max_seqlen` is then an error, not a silent no-op.
    """
    if sequences is None and config.max_seqlen is not None:
        raise ValueError("splits.max_seqlen: this dataset's sequences are known only after download; list the "
                         "proteins you want instead (or set max_seqlen to null)")
    known = set(sequences) if sequences is not None else {n for names in base.values() for n in names}
    out: dict[str, list[str]] = {}
    for split in SPLITS:
        chosen = (config.names or {}).get(split)
        if chosen is not None:
            unknown = [n for n in chosen if n not in known]
            if unknown:
                raise ValueError(f"splits.names.{split}: {unknown} are not in this dataset's protein list")
        names = list(base[split] if chosen is None else chosen)
        if sequences is not None and config.max_seqlen is not None:
            names = [n for n in names if len(sequences[n]) <= config.max_seqlen]
        n_keep = (config.limit or {}).get(split)
        out[split] = names if n_keep is None else names[:n_keep]
    seen: dict[str, str] = {}
    for split in SPLITS:
        for name in out[split]:
            if name in seen and not (allow_train_test_overlap and {seen[name], split} == {"train", "test"}):
                raise ValueError(f"splits: protein {name!r} is in both {seen[name]!r} and {split!r}")
            seen[name] = split
    for split in _REQUIRED_NONEMPTY:
        if not out[split]:
            raise ValueError(f"splits: the {split!r} split is empty after applying limit/names/max_seqlen")
    return out


def write_splits(splits: Mapping[str, list[str]], out_dir: str | Path) -> dict[str, Path]:
    """Write `{out_dir}/{split}.txt`, one name per line, each atomically. Returns split -> path."""
    paths = {}
    for split in SPLITS:
        path = Path(out_dir) / f"{split}.txt"
        with atomic_path(path) as tmp:
            tmp.write_text("".join(f"{name}\n" for name in splits[split]))
        paths[split] = path
    return paths


def read_split(path: str | Path) -> list[str]:
    """Names from a `{split}.txt` written by `write_splits` (blank lines ignored)."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def make_splits(dataset: str, config: SplitsConfig, demo_section: Mapping[str, Any] | None = None,
                synthetic_section: Mapping[str, Any] | None = None,
                local_section: Mapping[str, Any] | None = None,
                mdcath_section: Mapping[str, Any] | None = None) -> dict[str, list[str]]:
    """Resolve the final split lists for `dataset` (one of DATASETS)."""
    if dataset == "atlas":
        base, sequences = atlas_splits(), atlas_sequences()
    elif dataset == "demo":
        if demo_section is None:
            raise ValueError("make-splits --dataset demo needs --demo-json (the demo config section)")
        base, sequences = demo_splits(demo_section)
    elif dataset == "local":
        if local_section is None:
            raise ValueError("make-splits --dataset local needs --local-json (the local config section)")
        base, sequences = local_splits(local_section)
    elif dataset == "mdcath":
        if mdcath_section is None:
            raise ValueError("make-splits --dataset mdcath needs --mdcath-json (the mdcath config section)")
        base, sequences = mdcath_splits(mdcath_section), None
    elif dataset == "synthetic":
        base, sequences = synthetic_splits(synthetic_section or {})
        return apply_config(base, sequences, config, allow_train_test_overlap=True)
    else:
        raise ValueError(f"make-splits: unknown dataset {dataset!r}; expected one of {list(DATASETS)}")
    return apply_config(base, sequences, config)


def _json_arg(text: str, flag: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{flag}: not valid JSON ({e})") from e


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m starmd make-splits", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--out-dir", required=True, type=Path, help="writes {train,val,test}.txt here")
    parser.add_argument("--config-json", default="{}", help="the `splits` config section as JSON")
    parser.add_argument("--demo-json", default=None, help="the `demo` config section as JSON (for --dataset demo)")
    parser.add_argument("--synthetic-json", default=None,
                        help="the `synthetic` config section as JSON (for --dataset synthetic)")
    parser.add_argument("--local-json", default=None, help="the `local` config section as JSON (for --dataset local)")
    parser.add_argument("--mdcath-json", default=None,
                        help="the `mdcath` config section as JSON (for --dataset mdcath)")
    args = parser.parse_args(argv)
    try:
        config = SplitsConfig.from_dict(_json_arg(args.config_json, "--config-json"))
        demo = None if args.demo_json is None else _json_arg(args.demo_json, "--demo-json")
        synthetic = None if args.synthetic_json is None else _json_arg(args.synthetic_json, "--synthetic-json")
        local = None if args.local_json is None else _json_arg(args.local_json, "--local-json")
        mdcath = None if args.mdcath_json is None else _json_arg(args.mdcath_json, "--mdcath-json")
        splits = make_splits(args.dataset, config, demo, synthetic, local, mdcath)
    except ValueError as e:
        print(f"make-splits: {e}", file=sys.stderr)
        return 2
    write_splits(splits, args.out_dir)
    print(f"make-splits: {args.dataset}: " + ", ".join(f"{s} {len(splits[s])}" for s in SPLITS), file=sys.stderr)
    return 0
