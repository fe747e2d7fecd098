"""Benchmark settings: the `benchmarks` config section, validated against schemas/benchmarks.schema.yaml with its
defaults filled in, so a script run by hand and a script run by Snakemake see the same values and a mistyped key is an
error naming it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SHARED_KEYS = ("threads", "seed", "feature_dims", "demo_model", "paper_model")


def fill_defaults(value: Any, schema: dict) -> Any:
    """Recursively add every missing property that has a `default` (what snakemake.utils.validate does)."""
    if schema.get("type") != "object" or not isinstance(value, dict):
        return value
    out = dict(value)
    for key, sub in schema.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = fill_defaults(out[key], sub)
    return out


def load_settings(text: str, schema_path: str | Path) -> dict:
    """Parse `--config-json` (the whole section or a part of it), validate and fill defaults."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--config-json is not valid JSON ({exc})") from exc
    schema = yaml.safe_load(Path(schema_path).read_text())
    try:
        jsonschema.validate(raw, schema)
    except jsonschema.ValidationError as exc:
        where = "benchmarks." + ".".join(map(str, exc.absolute_path)) if exc.absolute_path else "benchmarks"
        raise ValueError(f"config {where}: {exc.message} (schema {schema_path})") from None
    return fill_defaults(raw, schema)


def section_for(settings: dict, name: str) -> dict:
    """The shared keys plus one benchmark's sub-section: what that benchmark's rule passes (its rerun trigger)."""
    return {**{k: settings[k] for k in SHARED_KEYS if k in settings}, name: settings.get(name, {})}
