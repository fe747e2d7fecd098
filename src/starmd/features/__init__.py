"""Frozen single/pair features per protein; every featurizer writes the same HDF5 schema (features.io).

A featurizer is a module with `featurize(*, name, sequence, pdb_path, cfg) -> (single, pair, attrs)`, where `cfg` is
the whole `features` config section (each featurizer reads its own sub-object). Adding one is one line below;
modules are imported only when chosen, so the offline path never imports OpenFold.
"""

from __future__ import annotations

import importlib
from typing import Callable

FEATURIZERS: dict[str, str] = {
    "offline": "starmd.features.offline",
    "openfold": "starmd.features.openfold",
}


def get_featurizer(name: str) -> Callable:
    """The `featurize` function of featurizer `name`."""
    if name not in FEATURIZERS:
        raise ValueError(f"unknown featurizer {name!r}; choose one of {sorted(FEATURIZERS)}")
    return importlib.import_module(FEATURIZERS[name]).featurize
