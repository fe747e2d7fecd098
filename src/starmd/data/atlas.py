"""`download-atlas`: fetch one ATLAS chain and unpack it into `data/raw/atlas/{name}/`.

Source and layout follow AlphaFlow's `scripts/download_atlas.sh`: `{base_url}/ATLAS/database/ATLAS/{name}/
{name}_protein.zip`, which unzips flat into `{name}.pdb` and `{name}_prod_R{1,2,3}_fit.xtc`. We also accept the
members inside one subfolder, in case the archive layout changes. The archive is untrusted input: it is
CRC-checked, must hold every expected member, and is refused whole if any member would land outside the output
directory (zip-slip). Extraction goes to a temp dir beside the output and is renamed into place, so an existing good
output is never damaged by a failed download.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import zipfile
import zlib
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, TextIO, get_type_hints

from starmd.config import dataclass_section
from starmd.data.download import DownloadError, NotFoundError, RetryPolicy, download_resumable
from starmd.io import atomic_dir

REPLICAS: tuple[int, ...] = (1, 2, 3)
_NAME = re.compile(r"[A-Za-z0-9]+_[A-Za-z0-9]+")  # PDB id + chain, e.g. 6o2v_A; also keeps the URL well-formed
_DRIVE = re.compile(r"^[A-Za-z]:")


class AtlasArchiveError(ValueError):
    """The downloaded archive is corrupt, incomplete, or unsafe to extract."""


@dataclass(frozen=True)
class AtlasConfig:
    """The `atlas` config section."""

    base_url: str = "https://www.dsimb.inserm.fr"
    max_retries: int = 5
    backoff_base_s: float = 2.0
    timeout_s: float = 60.0
    chunk_bytes: int = 1 << 20
    verify_size: bool = True
    keep_zip: bool = False

    @classmethod
    def from_dict(cls, section: Mapping[str, Any]) -> "AtlasConfig":
        """Validate the JSON section; an unknown key or a wrong type is an error naming `atlas.<key>`."""
        section = dataclass_section(cls, section, "atlas")
        hints = get_type_hints(cls)
        for key, value in section.items():
            want = hints[key]
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool) if want is float
                  else isinstance(value, want) and (want is bool or not isinstance(value, bool)))
            if not ok:
                raise ValueError(f"atlas.{key}: expected {want.__name__}, got {value!r}")
        config = cls(**section)
        if not re.match(r"https?://", config.base_url):
            raise ValueError(f"atlas.base_url: expected an http(s):// URL, got {config.base_url!r}")
        for key in ("max_retries", "backoff_base_s"):
            if getattr(config, key) < 0:
                raise ValueError(f"atlas.{key}: must be >= 0, got {getattr(config, key)!r}")
        for key in ("timeout_s", "chunk_bytes"):
            if getattr(config, key) <= 0:
                raise ValueError(f"atlas.{key}: must be > 0, got {getattr(config, key)!r}")
        return config

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(**{f.name: getattr(self, f.name) for f in fields(RetryPolicy)})


def atlas_url(base_url: str, name: str) -> str:
    """URL of one chain's archive (AlphaFlow `scripts/download_atlas.sh`)."""
    return f"{base_url.rstrip('/')}/ATLAS/database/ATLAS/{name}/{name}_protein.zip"


def expected_members(name: str) -> list[str]:
    """File names every ATLAS chain archive must contain: start structure + three fitted replicas."""
    return [f"{name}.pdb"] + [f"{name}_prod_R{k}_fit.xtc" for k in REPLICAS]


def _check_member_path(member: str) -> PurePosixPath:
    """Refuse names that would escape the extraction directory (absolute, drive letters, `..`)."""
    path = PurePosixPath(member.replace("\\", "/"))
    if path.is_absolute() or _DRIVE.match(member) or ".." in path.parts:
        raise AtlasArchiveError(f"refusing archive member {member!r}: it would be written outside the output dir")
    return path


def verify_archive(zip_path: str | Path, name: str) -> PurePosixPath:
    """CRC-check the archive and locate the expected members. Returns their folder inside the zip ('.' if flat)."""
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as e:
        raise AtlasArchiveError(f"{zip_path}: not a valid zip archive ({e})") from e
    with zf:
        members = [(info, _check_member_path(info.filename)) for info in zf.infolist()]
        try:
            bad = zf.testzip()
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:  # damaged deflate stream rather than a bad CRC
            raise AtlasArchiveError(f"{zip_path}: member data cannot be decompressed (corrupt download): {e}") from e
    if bad is not None:
        raise AtlasArchiveError(f"{zip_path}: member {bad!r} fails its CRC check (corrupt download)")
    files = [path for info, path in members if not info.is_dir()]
    folders = set()
    for want in expected_members(name):
        found = [p for p in files if p.name == want]
        if len(found) != 1:
            raise AtlasArchiveError(f"{zip_path}: expected exactly one member named {want!r}, found "
                                    f"{[str(p) for p in found]}; members: {[str(p) for p in files]}")
        folders.add(found[0].parent)
    if len(folders) != 1:
        raise AtlasArchiveError(f"{zip_path}: expected members {expected_members(name)} in one folder, "
                                f"found them in {sorted(map(str, folders))}")
    return folders.pop()


def extract_archive(zip_path: str | Path, out_dir: str | Path, name: str) -> list[Path]:
    """Verify, then unpack the expected members' folder into `out_dir` (flattened), atomically. Returns the files.

    Members outside that folder (e.g. `__MACOSX/` debris) are skipped. An existing `out_dir` is replaced only after
    the new one is complete.
    """
    out_dir = Path(out_dir)
    root = verify_archive(zip_path, name)
    with atomic_dir(out_dir) as tmp, zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            path = PurePosixPath(info.filename.replace("\\", "/"))
            if info.is_dir() or not path.is_relative_to(root):
                continue
            dest = tmp.joinpath(*path.relative_to(root).parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    return sorted(p for p in out_dir.rglob("*") if p.is_file())


def download_atlas(name: str, out_dir: str | Path, config: AtlasConfig = AtlasConfig(), *,
                   zip_dir: str | Path | None = None, progress_file: TextIO | None = None) -> list[Path]:
    """Download, verify and unpack chain `name` into `out_dir`. Returns the extracted files.

    The zip (and its resumable `.part`) live in `zip_dir` (default: beside `out_dir`), so a failed run resumes the
    download and a zip kept by `config.keep_zip` is reused without a request; a corrupt archive is deleted so the
    next run fetches it afresh.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"download-atlas: {name!r} is not an ATLAS chain name like '6o2v_A'")
    out_dir = Path(out_dir)
    zip_dir = out_dir.parent if zip_dir is None else Path(zip_dir)
    if zip_dir.resolve().is_relative_to(out_dir.resolve()):
        raise ValueError(f"download-atlas: --zip-dir {zip_dir} must not be inside --out-dir {out_dir} "
                         "(the output dir is replaced as a whole)")
    zip_path = zip_dir / f"{name}_protein.zip"
    url = atlas_url(config.base_url, name)
    if not zip_path.exists():
        try:
            download_resumable(url, zip_path, config.retry_policy(), desc=name, progress_file=progress_file)
        except NotFoundError as e:
            raise NotFoundError(f"ATLAS protein {name!r} not found: {url} answered 404 "
                                "(ATLAS chain names are listed in starmd/data/splits/atlas.csv)") from e
        except DownloadError as e:
            raise DownloadError(f"ATLAS protein {name!r}: {e}") from e
    try:
        files = extract_archive(zip_path, out_dir, name)
    except AtlasArchiveError as e:
        zip_path.unlink(missing_ok=True)
        raise AtlasArchiveError(f"ATLAS protein {name!r} from {url}: {e}; deleted {zip_path}, "
                                "the next run downloads it again") from e
    if not config.keep_zip:
        zip_path.unlink()
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m starmd download-atlas", description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="ATLAS chain, e.g. 6o2v_A")
    parser.add_argument("--out-dir", required=True, type=Path, help="receives {name}.pdb and the replica xtcs")
    parser.add_argument("--zip-dir", type=Path, default=None, help="where the zip is downloaded (default: beside "
                        "--out-dir)")
    parser.add_argument("--config-json", default="{}", help="the `atlas` config section as JSON")
    args = parser.parse_args(argv)
    try:
        config = AtlasConfig.from_dict(json.loads(args.config_json))
        files = download_atlas(args.name, args.out_dir, config, zip_dir=args.zip_dir)
    except json.JSONDecodeError as e:
        print(f"download-atlas: --config-json is not valid JSON ({e})", file=sys.stderr)
        return 2
    except (ValueError, DownloadError) as e:
        print(f"download-atlas: {e}", file=sys.stderr)
        return 1
    print(f"download-atlas: {args.name}: {len(files)} files in {args.out_dir}", file=sys.stderr)
    return 0
