"""Config sections: one place that turns `--config-json` text into a dict and rejects keys a section does not have.

Every step validates its own section; this module only does the part they all share, so a misspelt key reads the
same everywhere (`<section>: unknown key(s) [...]; expected some of [...]`) instead of silently keeping a default.
Types and ranges stay with each section, which knows what they mean.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any


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
