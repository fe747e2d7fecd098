"""Config sections: one place that turns `--config-json` text into a dict and rejects keys a section does not have.

Every step validates its own section; this module only does the part they all share, so a misspelt key reads the
same everywhere (`<section>: unknown key(s) [...]; expected some of [...]`) instead of silently keeping a default.
Types and ranges stay with each section, which knows what they mean. `validate_config` checks a whole workflow config
against schemas/config.schema.yaml at workflow start (rules/common.smk), one line per problem, and
`apply_base_seed` turns the top-level `seed` into the seeds the model's steps read.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import jsonschema
import referencing
import yaml
from referencing.jsonschema import DRAFT202012


def section_keys(raw: object, known: Iterable[str], section: str) -> dict[str, Any]:
    """`raw` as a new dict, after checking it is a mapping whose keys all lie in `known`.

    `section` names the section in the errors, dotted for sub-objects (e.g. `features.offline`).
    """
    if not isinstance(raw, Mapping):
        raise ValueError(f"{section}: expected a JSON object (the `{section}` section), got {type(raw).__name__}")
    known = sorted(known)
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"{section}: unknown key(s) {unknown}; expected some of {known}")
    return dict(raw)


def dataclass_section(cls: type, raw: object, section: str) -> dict[str, Any]:
    """`section_keys` with the dataclass's field names as the known keys (the keys a `cls(**d)` accepts)."""
    return section_keys(raw, (f.name for f in dataclasses.fields(cls)), section)


def section_json(text: str, section: str) -> Any:
    """Parse `--config-json` text holding one section; bad JSON is an error naming the section. The result still goes
    through `section_keys`/`dataclass_section`, which reject a non-object."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{section}: --config-json is not valid JSON ({exc})") from None


def _strict_validator(schema_path: Path) -> jsonschema.protocols.Validator:
    """A draft 2020-12 validator of the schema file at `schema_path` (its `$ref`s name files beside it) whose
    `integer` is an int only: JSON-schema counts 20.0 as an integer, which `range(steps)` does not."""
    def read(path: Path) -> dict[str, Any]:
        # without `$schema`: jsonschema would check a fragment that names its draft with the stock (lenient) validator
        return {k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "$schema"}

    def load(uri: str) -> referencing.Resource:
        return DRAFT202012.create_resource(read(Path(url2pathname(urlparse(uri).path))))

    base = jsonschema.Draft202012Validator
    strict = base.TYPE_CHECKER.redefine("integer", lambda _, x: isinstance(x, int) and not isinstance(x, bool))
    cls = jsonschema.validators.extend(base, type_checker=strict)
    return cls({**read(schema_path), "$id": schema_path.resolve().as_uri()}, registry=referencing.Registry(retrieve=load))


def _allowed(schema: Mapping[str, Any]) -> str:
    """What a schema node allows, in a few words (type, range, choices, pattern, keys)."""
    parts = []
    if "enum" in schema:
        parts.append("one of " + ", ".join(map(str, schema["enum"])))
    elif "type" in schema:
        parts.append(str(schema["type"]))
    for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in schema:
            parts.append(f"{op} {schema[key]}")
    low, high = schema.get("minItems"), schema.get("maxItems")
    if low is not None or high is not None:
        parts.append(f"of {low} items" if low == high else f"of {low or 0}..{'' if high is None else high} items")
    if "pattern" in schema:
        parts.append(f"matching {schema['pattern']}")
    if "properties" in schema:
        parts.append("keys " + ", ".join(sorted(schema["properties"])))
    return " ".join(parts)


def validate_config(config: Mapping[str, Any], schema_path: str | os.PathLike) -> None:
    """Validate a whole workflow config against its schema; the first problem is a ValueError of one line,
    `config <key path>: <what is wrong> (allowed: ...)`. Defaults are not filled in (snakemake.utils.validate does
    that, and only for what it always filled: the rules' params, and so their rerun triggers, stay as they were)."""
    error = jsonschema.exceptions.best_match(_strict_validator(Path(schema_path)).iter_errors(config))
    if error is None:
        return
    where = ".".join(map(str, error.absolute_path))
    if error.validator == "additionalProperties":
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        where = ".".join(filter(None, [where, unknown[0]]))
        problem = "unknown key" + (f"s {unknown}" if len(unknown) > 1 else "")
    else:
        problem = error.message
    raise ValueError(f"config {where or '(top level)'}: {problem} (allowed: {_allowed(error.schema)})")


# The model's stochastic steps; the data's seeds (replica_seeds, truth_seed, features) belong to the data.
SEEDED_BY_BASE = ("training", "rollout", "evaluation")


def apply_base_seed(config: dict[str, Any]) -> None:
    """Adds the top-level `seed` to training.seed, rollout.seed and evaluation.seed (each 0 when unset, as in their
    schemas), in place: one value reseeds training, sampling and the evaluation's subsamples together, and seed 0
    leaves every section's own seed as it is. Call once per loaded config (the workflow does, at start)."""
    base = config.get("seed", 0)
    for section in SEEDED_BY_BASE:
        own = config.setdefault(section, {})
        own["seed"] = own.get("seed", 0) + base
