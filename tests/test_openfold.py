"""OpenFold featurizer on CPU with random-weight checkpoints that the tests write in the official state-dict format.

Speed: most tests use a model_3_ptm variant with 2 instead of 48 evoformer blocks (features.openfold.evoformer_blocks:
everything else, including the 384/128 widths, the extra-MSA stack, the structure module and the loading code, is the
real preset). The slow test runs the full 48-block preset once.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
from pathlib import Path

import h5py
import mdtraj as md
import numpy as np
import pytest
import torch

from starmd.features import openfold as of
from starmd.features.openfold_compat import TorchSoftmaxKernel, import_openfold
from starmd.io import sha256sum

pytestmark = pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning",
                                        "ignore::DeprecationWarning")
SEQ = "MKTAYIAKQR"
HAVE_OPENFOLD = importlib.util.find_spec("openfold") is not None
needs_openfold = pytest.mark.skipif(
    not HAVE_OPENFOLD, reason="openfold is not installed (bash scripts/install_openfold.sh, about 30 s)")


def write_random_checkpoint(path: Path, evoformer_blocks: int | None, seed: int = 0) -> Path:
    """AlphaFold(model_3_ptm) with every parameter perturbed (OpenFold zero-inits many output layers, which would
    make blocks no-ops), saved as a plain state dict like OpenFold's finetuning_*.pt files."""
    import_openfold()
    from openfold.config import model_config
    from openfold.model.model import AlphaFold

    config = model_config("model_3_ptm")
    if evoformer_blocks is not None:
        config.model.evoformer_stack.no_blocks = evoformer_blocks
    torch.manual_seed(seed)
    model = AlphaFold(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    if not HAVE_OPENFOLD:
        pytest.skip("openfold is not installed (bash scripts/install_openfold.sh, about 30 s)")
    return write_random_checkpoint(tmp_path_factory.mktemp("weights") / "finetuning_no_templ_ptm_1.pt", 2)


def features_cfg(weights: Path, **overrides) -> dict:
    return {"openfold": {"weights": str(weights), "evoformer_blocks": 2, "recycles": 1, "cache_dir": None,
                         **overrides}}


# --- compat module (no openfold needed) ---------------------------------------------------------------------------

def test_torch_softmax_kernel_matches_softmax_and_its_gradient():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)  # [*, H, Q, K]
    values = torch.randn(2, 3, 7, 4, generator=g, dtype=torch.float64)  # [*, H, K, C]
    grad_out = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64)  # [*, H, Q, C]

    probs = logits.clone()
    TorchSoftmaxKernel.forward_(probs, 2 * 3 * 5, 7)
    torch.testing.assert_close(probs, torch.softmax(logits, -1))

    leaf = logits.clone().requires_grad_()
    (torch.softmax(leaf, -1) @ values).backward(grad_out)
    TorchSoftmaxKernel.backward_(probs, grad_out, values, 2 * 3 * 5, 7, 4)
    torch.testing.assert_close(probs, leaf.grad)

    with pytest.raises(ValueError, match="expected 30 rows of 6"):
        TorchSoftmaxKernel.forward_(logits.clone(), 30, 6)


@needs_openfold
def test_installed_openfold_was_built_without_its_cuda_kernel():
    """scripts/install_openfold.sh builds OpenFold's setup.py with our `get_nvidia_cc` shim: no compute capability,
    so no compiled extension; a build that picked up a GPU (or another shim) would install a .so here."""
    files = importlib.metadata.files("openfold")
    assert any(str(f).endswith("openfold/model/model.py") for f in files)  # the installed package, listed
    assert [str(f) for f in files if f.suffix in (".so", ".pyd")] == []


@needs_openfold
def test_import_openfold_replaces_the_compiled_kernel_everywhere():
    import_openfold()
    import openfold.model.structure_module as sm
    import openfold.utils.kernel.attention_core as ac
    from openfold.data import templates  # reads np.object at import

    assert sm.attn_core_inplace_cuda is TorchSoftmaxKernel and ac.attn_core_inplace_cuda is TorchSoftmaxKernel
    assert importlib.import_module("attn_core_inplace_cuda") is TorchSoftmaxKernel  # the installer builds none
    assert templates.TEMPLATE_FEATURES["template_sequence"] is object


# --- input checks ------------------------------------------------------------------------------------------------

def test_missing_weights_error_says_how_to_get_them(tmp_path):
    missing = tmp_path / "finetuning_no_templ_ptm_1.pt"
    with pytest.raises(FileNotFoundError) as err:
        of.featurize(name="p1", sequence=SEQ, pdb_path=None, cfg=features_cfg(missing))
    text = str(err.value)
    assert str(missing) in text and "features.openfold.weights" in text
    assert "download_openfold_params.sh" in text and "s3://openfold/openfold_params/" in text
    with pytest.raises(FileNotFoundError, match="is not set"):
        of.featurize(name="p1", sequence=SEQ, pdb_path=None, cfg={"openfold": {}})


def test_unknown_residue_letter_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"p1: .*\['B', 'X'\] outside the 20 amino acids"):
        of.featurize(name="p1", sequence="MKXTB", pdb_path=None, cfg=features_cfg(tmp_path / "w.pt"))


@pytest.mark.parametrize("bad, match", [({"pair_dtype": "bfloat16"}, "pair_dtype"),
                                        ({"recycle": 3}, r"features.openfold: unknown key\(s\) \['recycle'\]"),
                                        ({"recycles": -1}, "recycles"), ({"chunk_size": 0}, "chunk_size"),
                                        ({"device": "gpu"}, "device")])
def test_bad_settings_rejected(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        of.OpenFoldSettings.from_config(features_cfg(tmp_path / "w.pt", **bad))


def test_schema_fragment_matches_the_settings(repo_root):
    import jsonschema
    import yaml

    schema = yaml.safe_load((repo_root / "schemas" / "features_openfold.schema.yaml").read_text())
    defaults = {k: v["default"] for k, v in schema["properties"].items()}
    assert defaults == dataclasses.asdict(of.OpenFoldSettings())
    jsonschema.validate(defaults, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**defaults, "recycle": 3}, schema)


# --- model runs (tiny preset variant) ------------------------------------------------------------------------------

def test_shapes_dtypes_attrs_and_determinism(tiny_weights):
    single, pair, attrs = of.featurize(name="p1", sequence=SEQ, pdb_path=None, cfg=features_cfg(tiny_weights))
    assert single.shape == (len(SEQ), 384) and single.dtype == np.float32
    assert pair.shape == (len(SEQ), len(SEQ), 128) and pair.dtype == np.float32
    assert np.isfinite(single).all() and np.isfinite(pair).all() and single.std() > 0 and pair.std() > 0
    assert attrs["weights_sha256"] == sha256sum(tiny_weights)
    assert (attrs["preset"], attrs["recycles"], attrs["sequence"], attrs["msa"]) == ("model_3_ptm", 1, SEQ,
                                                                                     "single_sequence")

    of._runner.cache_clear()  # a freshly loaded model gives bit-identical features
    single2, pair2, _ = of.featurize(name="p1", sequence=SEQ, pdb_path=None, cfg=features_cfg(tiny_weights))
    np.testing.assert_array_equal(single, single2)
    np.testing.assert_array_equal(pair, pair2)

    half = of.featurize(name="p1", sequence=SEQ, pdb_path=None,
                        cfg=features_cfg(tiny_weights, pair_dtype="float16"))[1]
    assert half.dtype == np.float16
    np.testing.assert_allclose(half, pair, rtol=1e-3, atol=1e-2)

    no_recycling = of.featurize(name="p1", sequence=SEQ, pdb_path=None,
                                cfg=features_cfg(tiny_weights, recycles=0))[0]
    assert np.abs(no_recycling - single).max() > 1e-3  # the recycles setting reaches the model


def test_identical_sequences_are_computed_once(tiny_weights, tmp_path, monkeypatch):
    cfg = features_cfg(tiny_weights, cache_dir=str(tmp_path / "cache"))
    single, pair, attrs = of.featurize(name="p1", sequence=SEQ, pdb_path=None, cfg=cfg)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{attrs['cache_key']}.npz"]

    def no_model(*args, **kwargs):
        raise AssertionError("the model ran for a cached sequence")

    monkeypatch.setattr(of, "_runner", no_model)
    single2, pair2, attrs2 = of.featurize(name="p1_copy", sequence=SEQ, pdb_path=None, cfg=cfg)
    np.testing.assert_array_equal(single, single2)
    np.testing.assert_array_equal(pair, pair2)
    assert attrs2 == attrs
    with pytest.raises(AssertionError, match="model ran"):  # any change to what the features depend on recomputes
        of.featurize(name="p1", sequence=SEQ, pdb_path=None, cfg={**cfg, "openfold": {**cfg["openfold"], "seed": 1}})


def test_msa_file_is_used_and_checked(tiny_weights, tmp_path):
    msa_dir = tmp_path / "msas"
    msa_dir.mkdir()
    # a3m: lowercase letters are insertions (dropped, counted in the deletion matrix), '-' gaps
    (msa_dir / "p1.a3m").write_text(f">p1\n{SEQ}\n>hom1\nMKSAYIcAKQ-\n>hom2\nMRTAYLAKgaQK\n")
    single_seq = of.featurize(name="p1", sequence=SEQ, pdb_path=None, cfg=features_cfg(tiny_weights))[0]
    single, _, attrs = of.featurize(name="p1", sequence=SEQ, pdb_path=None,
                                    cfg=features_cfg(tiny_weights, msa_dir=str(msa_dir)))
    assert attrs["msa"] == "p1.a3m" and attrs["msa_sha256"] == sha256sum(msa_dir / "p1.a3m")
    assert np.abs(single - single_seq).max() > 1e-3

    (msa_dir / "p2.a3m").write_text(">p2\nMKTAYIAKQQ\n")
    with pytest.raises(ValueError, match="is not the query sequence"):
        of.featurize(name="p2", sequence=SEQ, pdb_path=None, cfg=features_cfg(tiny_weights, msa_dir=str(msa_dir)))
    (msa_dir / "p4.a3m").write_text(f">p4\n{SEQ}\n>short\nMKTAYIAKQ\n")
    with pytest.raises(ValueError, match="aligned sequence 2 has 9 match columns, the query has 10"):
        of.featurize(name="p4", sequence=SEQ, pdb_path=None, cfg=features_cfg(tiny_weights, msa_dir=str(msa_dir)))
    with pytest.raises(FileNotFoundError, match="p3.a3m does not exist"):
        of.featurize(name="p3", sequence=SEQ, pdb_path=None, cfg=features_cfg(tiny_weights, msa_dir=str(msa_dir)))


def test_training_checkpoint_layout_and_mismatched_weights(tiny_weights, tmp_path):
    state = torch.load(tiny_weights, weights_only=True)
    wrapped = tmp_path / "openfold_training.ckpt"
    torch.save({"ema": {"params": state}}, wrapped)
    np.testing.assert_array_equal(
        of.featurize(name="p1", sequence=SEQ, pdb_path=None, cfg=features_cfg(wrapped))[0],
        of.featurize(name="p1", sequence=SEQ, pdb_path=None, cfg=features_cfg(tiny_weights))[0])

    with pytest.raises(ValueError, match=r"does not match preset 'model_3_ptm'.* 0 missing keys.* unexpected keys"):
        of.featurize(name="p1", sequence=SEQ, pdb_path=None, cfg=features_cfg(tiny_weights, evoformer_blocks=1))
    with pytest.raises(ValueError, match="features.openfold.preset: 'model_9' is not an OpenFold preset"):
        of.featurize(name="p1", sequence=SEQ, pdb_path=None, cfg=features_cfg(tiny_weights, preset="model_9"))


def test_trimmed_msa_padding_gives_openfolds_own_outputs(tiny_weights):
    """Our only change to OpenFold's inference: pad the MSA to its own row count, not 512 + 5120 masked rows."""
    from openfold.data import data_pipeline, feature_pipeline

    runner = of._runner(str(tiny_weights), sha256sum(tiny_weights), "model_3_ptm", 1, 4, 2, "cpu")
    ours = runner.evoformer_outputs(SEQ, ([SEQ], [[0] * len(SEQ)]), seed=0)
    raw = {**data_pipeline.make_sequence_features(sequence=SEQ, description="query", num_res=len(SEQ)),
           **data_pipeline.make_msa_features(msas=[[SEQ]], deletion_matrices=[[[0] * len(SEQ)]])}
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        batch = feature_pipeline.FeaturePipeline(runner.config.data).process_features(raw, mode="predict")
        assert batch["extra_msa"].shape[0] == 5120
        out = runner.model(batch)
    # equal up to float32 summation order (|single| ~ 5, |pair| ~ 70)
    np.testing.assert_allclose(ours[0], out["single"].numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ours[1], out["pair"].numpy(), rtol=1e-5, atol=1e-4)


def test_cli_writes_the_offline_featurizers_schema(tiny_weights, demo_protein, tmp_path):
    """`python -m starmd featurize` with either featurizer: same datasets, dtypes, N and shared attrs."""
    from starmd.features import cli
    from starmd.features.io import read_features

    outs = {}
    for featurizer, sub in (("offline", {}), ("openfold", features_cfg(tiny_weights)["openfold"])):
        outs[featurizer] = tmp_path / featurizer / f"{demo_protein.name}.h5"
        assert cli.main(["--featurizer", featurizer, "--name", demo_protein.name, "--pdb", str(demo_protein.pdb),
                         "--out", str(outs[featurizer]), "--config-json",
                         json.dumps({"featurizer": featurizer, featurizer: sub})]) == 0
    with h5py.File(outs["offline"], "r") as off, h5py.File(outs["openfold"], "r") as ofd:
        assert set(off) == set(ofd) == {"single", "pair"}
        assert {k: off[k].dtype for k in off} == {k: ofd[k].dtype for k in ofd}
        assert off["single"].shape[0] == ofd["single"].shape[0] == off["pair"].shape[0] == ofd["pair"].shape[1]
        shared = {"name", "featurizer", "sequence", "c_s", "c_z"}
        assert shared <= set(off.attrs) and shared <= set(ofd.attrs)
    feats = read_features(outs["openfold"])
    assert feats["single"].shape == (6, 384) and feats["pair"].shape == (6, 6, 128)
    attrs = feats["attrs"]
    assert (attrs["featurizer"], attrs["sequence"], attrs["c_s"], attrs["c_z"]) == ("openfold", "GAWKEA", 384, 128)
    assert attrs["weights_sha256"] == sha256sum(tiny_weights) and attrs["preset"] == "model_3_ptm"


@pytest.mark.slow
def test_training_and_rollout_run_on_openfold_features(tiny_weights, demo_protein, tmp_path):
    """demo MD -> frames -> OpenFold features (CLI) -> 2 training steps -> a 3-frame rollout, all through the CLIs."""
    from training_data import TINY_MODEL

    from starmd.data.frames import main as frames_main
    from starmd.features.cli import main as featurize_main
    from starmd.rollout.cli import main as rollout_main
    from starmd.training.cli import main as train_main

    name = demo_protein.name
    frames, features = tmp_path / "frames" / f"{name}.h5", tmp_path / "features" / "openfold" / f"{name}.h5"
    assert frames_main(["--pdb", str(demo_protein.pdb), "--xtc", *map(str, demo_protein.xtcs), "--out", str(frames),
                        "--name", name, "--config-json", "{}"]) == 0
    assert featurize_main(["--featurizer", "openfold", "--name", name, "--pdb", str(demo_protein.pdb), "--out",
                           str(features), "--config-json",
                           json.dumps({"featurizer": "openfold", **features_cfg(tiny_weights, pair_dtype="float16")})
                           ]) == 0
    run = tmp_path / "run"
    training = {"steps": 2, "num_frames": 2, "strides": [1], "batch_size": 1, "warmup_steps": 1, "val_every": 100,
                "checkpoint_every": 100, "log_every": 1, "bf16": False}
    assert train_main(["--frames", str(frames), "--features", str(features), "--run-dir", str(run), "--config-json",
                       json.dumps({"training": training, "model": TINY_MODEL}), "--device", "cpu"]) == 0
    out = tmp_path / "rollouts" / f"{name}.h5"
    rollout = {"n_frames": 3, "delta_t_ps": 0.2, "n_samples": 1, "steps": 2, "progress_bar": False, "device": "cpu"}
    assert rollout_main(["--checkpoint", str(run / "checkpoints" / "final.pt"), "--features", str(features),
                         "--frames", str(frames), "--out", str(out), "--config-json", json.dumps(rollout)]) == 0
    traj = md.load(out.with_name(f"{name}_s0.xtc"), top=out.with_suffix(".pdb"))
    assert (traj.n_frames, traj.n_residues) == (3, 6) and np.isfinite(traj.xyz).all()


@pytest.mark.slow
@needs_openfold
def test_full_model_3_ptm_preset(tmp_path):
    """The real 48-block preset (about 93M parameters) with 3 recycles, loaded from an official-format file."""
    weights = write_random_checkpoint(tmp_path / "finetuning_no_templ_ptm_1.pt", None)
    cfg = {"openfold": {"weights": str(weights), "cache_dir": None}}
    single, pair, attrs = of.featurize(name="p1", sequence=SEQ[:8], pdb_path=None, cfg=cfg)
    assert single.shape == (8, 384) and pair.shape == (8, 8, 128) and attrs["recycles"] == 3
    assert np.isfinite(single).all() and np.isfinite(pair).all()
    runner = of._runner(str(weights), attrs["weights_sha256"], "model_3_ptm", 3, 4, None, "cpu")
    assert len(runner.model.evoformer.blocks) == 48
    assert sum(p.numel() for p in runner.model.parameters()) > 90_000_000
    of._runner.cache_clear()
