"""What the estimate reads from the workflow: the merged, validated config (YAML files merged as Snakemake's
repeated --configfile does, schema defaults filled), the model's widths, and every protein's residue count."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from starmd.bench.config import fill_defaults
from starmd.estimate.model import Dims

ROOT = Path(__file__).resolve().parents[3]
OPENFOLD_DIMS = {"c_s": 384, "c_z": 128}  # evoformer single/pair widths (DESIGN.md section 3)


def merge(base: dict, override: Mapping) -> dict:
    """Recursive dict update: a later --configfile overrides keys of an earlier one (Snakemake's behaviour)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def load_config(paths: list[Path], schema: Path = ROOT / "schemas" / "config.schema.yaml") -> dict:
    """Merged config, validated like the workflow does (an unknown key is an error naming it), defaults filled."""
    from snakemake.utils import validate

    from starmd.config import validate_config

    config: dict = {}
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"--configfile {path}: no such file")
        config = merge(config, yaml.safe_load(path.read_text()) or {})
    validate_config(config, schema)
    validate(config, str(schema))  # fills the top-level defaults; the sections' own schemas fill theirs below
    for section in ("rollout", "training"):
        section_schema = yaml.safe_load((schema.parent / f"{section}.schema.yaml").read_text())
        config[section] = fill_defaults(config.get(section, {}), section_schema)
    return config


def feature_dims(config: Mapping[str, Any]) -> dict[str, int]:
    """Frozen single/pair widths of the configured featurizer."""
    features = config["features"]
    if features["featurizer"] == "openfold":
        return dict(OPENFOLD_DIMS)
    from starmd.features.offline import OfflineSettings

    settings = OfflineSettings.from_config(features)
    return {"c_s": settings.c_s, "c_z": settings.c_z}


def model_dims(model_kwargs: Mapping[str, Any], features: Mapping[str, int]) -> Dims:
    """Widths and parameter count of StarMD(**model_kwargs), built on the meta device (no memory, no time)."""
    import inspect

    import torch

    from starmd.model import StarMD

    with torch.device("meta"):
        model = StarMD(c_s_in=features["c_s"], c_z_in=features["c_z"], **model_kwargs)
    kw = {**{k: p.default for k, p in inspect.signature(StarMD.__init__).parameters.items()
             if p.default is not inspect.Parameter.empty}, **model_kwargs}
    return Dims(c_s=kw["c_s"], c_z=kw["c_z"], n_blocks=kw["n_blocks"], n_heads=kw["n_heads"],
                c_hidden=kw["c_hidden"], c_s_in=features["c_s"], c_z_in=features["c_z"],
                n_parameters=sum(p.numel() for p in model.parameters()))


def protein_lengths(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{name: {n_res, splits}} for every protein of the config's splits. N is the length of the sequence the dataset
    declares (ATLAS: the shipped split CSVs' seqres; demo/synthetic: the config), so no data file must exist yet."""
    from starmd.data import splits as sp

    dataset = config["dataset"]
    chosen = sp.make_splits(dataset, sp.SplitsConfig.from_dict(config["splits"]), demo_section=config.get("demo"),
                            synthetic_section=config.get("synthetic"))
    if dataset == "atlas":
        sequences = sp.atlas_sequences()
    elif dataset == "demo":
        sequences = sp.demo_splits(config["demo"])[1]
    else:
        sequences = sp.synthetic_splits(config["synthetic"])[1]
    out: dict[str, dict[str, Any]] = {}
    for split, names in chosen.items():
        for name in names:
            out.setdefault(name, {"n_res": len(sequences[name]), "splits": []})["splits"].append(split)
    return out
