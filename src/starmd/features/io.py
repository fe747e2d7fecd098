"""The features HDF5 (`data/features/{featurizer}/{name}.h5`): one schema for every featurizer.

The model reads `single` [N, c_s] and `pair` [N, N, c_z] and never learns which featurizer made them; the checks here
keep every featurizer honest about that contract (docs/architecture.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from starmd.errors import InputError, check_finite_dataset, open_h5
from starmd.io import atomic_path

REQUIRED_ATTRS = ("featurizer", "sequence")
PAIR_DTYPES = (np.float32, np.float16)  # float16 allowed for OpenFold's large pair tensors
# what to do about a features file a reader cannot use
FEATURES_FIX = "delete it; snakemake reruns featurize"


def write_features(path: str | os.PathLike, single: np.ndarray, pair: np.ndarray, attrs: dict[str, Any]) -> Path:
    """Check shapes/dtypes against the schema and write atomically; `c_s`/`c_z` are taken from the arrays.

    Dict or list attrs are stored as sorted JSON strings (HDF5 attrs hold scalars and strings only).
    """
    path = Path(path)
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise ValueError(f"{path}: features attrs miss {missing} (required: {list(REQUIRED_ATTRS)})")
    n = len(attrs["sequence"])
    if single.ndim != 2 or single.shape[0] != n or single.dtype != np.float32:
        raise ValueError(f"{path}: single must be [N={n}, c_s] float32, got {single.shape} {single.dtype}")
    if pair.ndim != 3 or pair.shape[:2] != (n, n) or pair.dtype not in PAIR_DTYPES:
        raise ValueError(f"{path}: pair must be [N={n}, N={n}, c_z] float32/float16, got {pair.shape} {pair.dtype}")
    for key, arr in (("single", single), ("pair", pair)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{path}: {key} has non-finite values")
    shape_attrs = {"c_s": int(single.shape[1]), "c_z": int(pair.shape[2])}
    for key, value in shape_attrs.items():
        if key in attrs and attrs[key] != value:
            raise ValueError(f"{path}: attrs[{key!r}]={attrs[key]} disagrees with the array width {value}")
    stored = {k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list, tuple)) else v
              for k, v in {**attrs, **shape_attrs}.items()}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(stored)
        f.create_dataset("single", data=single)
        f.create_dataset("pair", data=pair)
    return path


def check_features(h5: h5py.File, path: str | os.PathLike) -> tuple[int, int, int]:
    """Check an open features HDF5 against the schema, values included (all finite); returns (N, c_s, c_z).

    The one check every reader (rollout via read_features, training) runs before it trusts the file.
    """
    for key in ("single", "pair"):
        if key not in h5:
            raise InputError(path, f"missing dataset {key!r} (features schema, docs/architecture.md)", FEATURES_FIX)
    single, pair = h5["single"].shape, h5["pair"].shape
    if len(single) != 2 or len(pair) != 3 or pair[:2] != (single[0], single[0]):
        raise InputError(path, f"expected single [N, c_s] and pair [N, N, c_z], got single {single}, pair {pair}",
                         FEATURES_FIX)
    for key in ("single", "pair"):
        check_finite_dataset(path, h5[key], FEATURES_FIX)
    return int(single[0]), int(single[1]), int(pair[2])


def read_features(path: str | os.PathLike) -> dict[str, Any]:
    """-> {'single': [N, c_s], 'pair': [N, N, c_z], 'attrs': {...}} (JSON-valued attrs stay strings)."""
    with open_h5(path, "features HDF5", FEATURES_FIX) as f:
        check_features(f, path)
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        return {"single": f["single"][()], "pair": f["pair"][()], "attrs": attrs}
