"""`featurizer: openfold`: frozen OpenFold evoformer single [N, 384] and pair [N, N, 128] for one protein.

The paper conditions on frozen OpenFold representations; like ConfRover we run the AlphaFold model with OpenFold's
`finetuning_no_templ_ptm_1.pt` weights (preset `model_3_ptm`, no templates), recycle 3 times and keep the
evoformer outputs of the last cycle (`outputs["single"]`, `outputs["pair"]`). Input: the sequence as a
single-sequence MSA, or `{msa_dir}/{name}.a3m` when `msa_dir` is set. OpenFold is imported through
`openfold_compat.import_openfold` (install: scripts/install_openfold.sh, docs/openfold.md).

Two departures from OpenFold's own inference, both output-preserving: the MSA is padded to the number of rows it has
instead of 512 cluster / 5120 extra rows (padded rows are fully masked; tests/test_openfold.py checks the outputs are
identical), and the chunk size is fixed from config instead of being tuned by trial runs.

Results are cached on disk by `cache_key` (sequence, MSA, weights checksum, preset, recycles, blocks, seed), so
proteins with identical sequences are computed once even across Snakemake jobs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from starmd.config import dataclass_section
from starmd.data.residues import sequence_to_aatype
from starmd.features.openfold_compat import import_openfold
from starmd.io import atomic_path, sha256sum

C_S, C_Z = 384, 128  # evoformer single / pair widths of every AlphaFold preset
PAIR_DTYPES = {"float32": np.float32, "float16": np.float16}
WEIGHTS_HELP = (
    "Get OpenFold's weights with scripts/download_openfold_params.sh from github.com/aqlaboratory/openfold (not in "
    "the PyPI sdist; it runs `aws s3 cp --no-sign-request --region us-east-1 s3://openfold/openfold_params/ "
    "<dir>/openfold_params --recursive`), or fetch the one file: `aws s3 cp --no-sign-request --region us-east-1 "
    "s3://openfold/openfold_params/finetuning_no_templ_ptm_1.pt .`. Then set features.openfold.weights to the "
    "file's path. See docs/openfold.md."
)


@dataclasses.dataclass(frozen=True)
class OpenFoldSettings:
    """The `features.openfold` config sub-object (schemas/features_openfold.schema.yaml)."""

    weights: str | None = None
    preset: str = "model_3_ptm"
    recycles: int = 3
    msa_dir: str | None = None
    chunk_size: int | None = 4
    pair_dtype: str = "float32"
    cache_dir: str | None = "data/features/openfold/cache"
    device: str = "auto"
    seed: int = 0
    evoformer_blocks: int | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "OpenFoldSettings":
        """Read `cfg["openfold"]` (the `features` section) and check every key and value."""
        s = cls(**dataclass_section(cls, cfg.get("openfold") or {}, "features.openfold"))
        if s.pair_dtype not in PAIR_DTYPES:
            raise ValueError(f"features.openfold.pair_dtype: {s.pair_dtype!r}, expected one of {sorted(PAIR_DTYPES)}")
        for key in ("recycles", "seed"):
            if not isinstance(getattr(s, key), int) or getattr(s, key) < 0:
                raise ValueError(f"features.openfold.{key}: {getattr(s, key)!r}, expected an integer >= 0")
        for key in ("chunk_size", "evoformer_blocks"):
            value = getattr(s, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"features.openfold.{key}: {value!r}, expected null or an integer >= 1")
        if s.device != "auto":
            try:
                torch.device(s.device)
            except RuntimeError as err:
                raise ValueError(f"features.openfold.device: {s.device!r} is not a torch device ({err})") from None
        return s

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def featurize(*, name: str, sequence: str, pdb_path: str | os.PathLike | None,
              cfg: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """single [N, 384] float32, pair [N, N, 128] float32/float16 and HDF5 attrs for one protein.

    `pdb_path` is not read: OpenFold features depend on the sequence (and MSA) only. `cfg` is the `features`
    config section; its `openfold` sub-object holds the settings.
    """
    settings = OpenFoldSettings.from_config(cfg)
    try:
        sequence_to_aatype(sequence)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    weights_sha = weights_checksum(settings.weights)
    msa_path = _msa_path(settings, name)
    msa = read_a3m(msa_path, sequence) if msa_path else ([sequence], [[0] * len(sequence)])
    msa_sha = sha256sum(msa_path) if msa_path else "single_sequence"
    key = cache_key(sequence=sequence, msa_sha256=msa_sha, weights_sha256=weights_sha, settings=settings)
    attrs = {"featurizer": "openfold", "weights_sha256": weights_sha, "weights_file": Path(settings.weights).name,
             "preset": settings.preset, "recycles": settings.recycles,
             "msa": msa_path.name if msa_path else "single_sequence", "msa_sha256": msa_sha, "seed": settings.seed,
             "sequence": sequence, "cache_key": key}

    start = time.perf_counter()
    cached = _cache_file(settings, key)
    if cached is not None and cached.exists():
        with np.load(cached) as f:
            single, pair = f["single"], f["pair"]
        _progress(f"{name}: {len(sequence)} residues, cache hit {cached}")
    else:
        _progress(f"{name}: {len(sequence)} residues, {len(msa[0])} MSA rows, running OpenFold "
                  f"({settings.preset}, {settings.recycles} recycles) on {settings.torch_device()}")
        runner = _runner(settings.weights, weights_sha, settings.preset, settings.recycles, settings.chunk_size,
                         settings.evoformer_blocks, str(settings.torch_device()))
        single, pair = runner.evoformer_outputs(sequence, msa, seed=settings.seed)
        if cached is not None:
            with atomic_path(cached) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, single=single, pair=pair)
    _progress(f"{name}: done in {time.perf_counter() - start:.1f} s")
    return single, pair.astype(PAIR_DTYPES[settings.pair_dtype]), attrs


def weights_checksum(weights: str | None) -> str:
    """sha256 of the weights file; a missing file is an error that says how to get it and where to put it."""
    if not weights:
        raise FileNotFoundError(f"features.openfold.weights is not set. {WEIGHTS_HELP}")
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"OpenFold weights file {path} (features.openfold.weights) does not exist. "
                                f"{WEIGHTS_HELP}")
    stat = path.stat()
    return _sha256_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    """Hash a weights file once per process (size/mtime in the key invalidate it if the file changes)."""
    return sha256sum(path)


def cache_key(*, sequence: str, msa_sha256: str, weights_sha256: str, settings: OpenFoldSettings) -> str:
    """Everything that changes the features; identical proteins share one key (chunk size and device do not)."""
    parts = {"sequence": sequence, "msa_sha256": msa_sha256, "weights_sha256": weights_sha256,
             "preset": settings.preset, "recycles": settings.recycles, "seed": settings.seed,
             "evoformer_blocks": settings.evoformer_blocks}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def read_a3m(path: Path, sequence: str) -> tuple[list[str], list[list[int]]]:
    """Aligned sequences and deletion matrix of an a3m file whose first sequence must be the query."""
    import_openfold()
    from openfold.data import parsers

    sequences, deletions = parsers.parse_a3m(path.read_text())
    if not sequences:
        raise ValueError(f"{path}: no sequences in the a3m file")
    if sequences[0] != sequence:
        raise ValueError(f"{path}: first a3m sequence {sequences[0]!r} is not the query sequence {sequence!r}")
    for i, row in enumerate(sequences):
        if len(row) != len(sequence):
            raise ValueError(f"{path}: aligned sequence {i + 1} has {len(row)} match columns, the query has "
                             f"{len(sequence)} (insertions must be lowercase)")
    return list(sequences), [list(row) for row in deletions]


def _msa_path(settings: OpenFoldSettings, name: str) -> Path | None:
    if settings.msa_dir is None:
        return None
    path = Path(settings.msa_dir) / f"{name}.a3m"
    if not path.is_file():
        raise FileNotFoundError(f"features.openfold.msa_dir is set but {path} does not exist (one a3m per protein, "
                                "named {name}.a3m, first sequence = the query; unset msa_dir for single-sequence)")
    return path


def _cache_file(settings: OpenFoldSettings, key: str) -> Path | None:
    return None if settings.cache_dir is None else Path(settings.cache_dir) / f"{key}.npz"


def _progress(message: str) -> None:
    print(f"openfold: {message}", file=sys.stderr, flush=True)


@functools.lru_cache(maxsize=1)
def _runner(weights: str, weights_sha256: str, preset: str, recycles: int, chunk_size: int | None,
            evoformer_blocks: int | None, device: str) -> "OpenFoldRunner":
    """One loaded model per process: a featurize run over many proteins loads the 93M parameters once."""
    return OpenFoldRunner(weights=weights, preset=preset, recycles=recycles, chunk_size=chunk_size,
                          evoformer_blocks=evoformer_blocks, device=torch.device(device))


class OpenFoldRunner:
    """AlphaFold (OpenFold) built from a preset, loaded from an official-format state-dict file, inference only."""

    def __init__(self, *, weights: str | os.PathLike, preset: str, recycles: int, chunk_size: int | None,
                 evoformer_blocks: int | None, device: torch.device):
        import_openfold()
        from openfold.config import model_config
        from openfold.model.model import AlphaFold

        try:
            self.config = model_config(preset)
        except ValueError as err:
            raise ValueError(f"features.openfold.preset: {preset!r} is not an OpenFold preset ({err})") from None
        self.config.data.common.max_recycling_iters = recycles
        self.config.globals.chunk_size = chunk_size
        model = self.config.model
        for stack in (model.evoformer_stack, model.extra_msa.extra_msa_stack, model.template.template_pair_stack):
            stack.tune_chunk_size = False
        if evoformer_blocks is not None:
            self.config.model.evoformer_stack.no_blocks = evoformer_blocks
        self.device = device
        self.model = AlphaFold(self.config)
        self.model.load_state_dict(load_state_dict(weights, self.model.state_dict().keys(), preset))
        self.model.eval().to(device)

    def evoformer_outputs(self, sequence: str, msa: tuple[list[str], list[list[int]]],
                          seed: int) -> tuple[np.ndarray, np.ndarray]:
        """single [N, 384] and pair [N, N, 128] float32 of the last recycling iteration."""
        from openfold.data import data_pipeline, feature_pipeline

        raw = {**data_pipeline.make_sequence_features(sequence=sequence, description="query", num_res=len(sequence)),
               **data_pipeline.make_msa_features(msas=[msa[0]], deletion_matrices=[msa[1]])}
        data_config = self.config.data.copy_and_resolve_references()
        # Pad to the rows this MSA has, not 512 / 5120: padded rows are masked, so only the cost changes.
        n_seq = len(raw["msa"])
        data_config.predict.max_msa_clusters = min(n_seq, self.config.data.predict.max_msa_clusters)
        data_config.predict.max_extra_msa = max(1, min(n_seq - data_config.predict.max_msa_clusters,
                                                       self.config.data.predict.max_extra_msa))
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings(), torch.no_grad():
            # OpenFold 0.0.1 indexes with lists and asks for the autocast dtype with APIs torch 2.9 deprecates: one
            # warning per call, not actionable here.
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
            warnings.filterwarnings("ignore", message=r"torch.get_autocast_gpu_dtype\(\) is deprecated")
            torch.manual_seed(seed)  # the masked-MSA augmentation of OpenFold's predict mode draws from torch's RNG
            batch = feature_pipeline.FeaturePipeline(data_config).process_features(raw, mode="predict")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            out = self.model(batch)
        single = out["single"].float().cpu().numpy()  # [N, 384]
        pair = out["pair"].float().cpu().numpy()  # [N, N, 128]
        if single.shape != (len(sequence), C_S) or pair.shape != (len(sequence), len(sequence), C_Z):
            raise RuntimeError(f"OpenFold returned single {single.shape} / pair {pair.shape}, expected "
                               f"[{len(sequence)}, {C_S}] / [{len(sequence)}, {len(sequence)}, {C_Z}]")
        return single, pair


def load_state_dict(path: str | os.PathLike, expected: Any, preset: str) -> dict[str, torch.Tensor]:
    """Tensors of an official OpenFold weights file (a plain state dict; OpenFold training checkpoints keep it
    under ["ema"]["params"]); keys must match the preset's model exactly."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "ema" in state:
        state = state["ema"]["params"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected an OpenFold state dict (name -> tensor), got {type(state).__name__}")
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path} does not match preset {preset!r} (features.openfold.preset / evoformer_blocks): "
                         f"{len(missing)} missing keys (first: {missing[:3]}), {len(unexpected)} unexpected keys "
                         f"(first: {unexpected[:3]})")
    return state
