"""Autoregressive rollout on a tiny random-weight StarMD: KV cache == full recompute, determinism, cache memory
(singles only), long horizons, EMA weights, bad inputs, and CLI outputs that mdtraj opens.

The start structure is the first residues of a real MD snapshot (villin headpiece, shipped with OpenMM); the
checkpoint is written here in the training format (`starmd.training.checkpoint.save_checkpoint`).
"""

from __future__ import annotations

import gc
import json
import logging
import warnings
from pathlib import Path

import h5py
import jsonschema
import mdtraj as md
import numpy as np
import pytest
import torch
import yaml
from torch._subclasses.fake_tensor import FakeTensor

from starmd.data.residues import sequence_to_aatype
from starmd.diffusion import SE3Diffuser
from starmd.evaluation.inputs import load_rollout
from starmd.features.io import write_features
from starmd.geometry import Rigid
from starmd.model.network import StarMD
from starmd.rollout.cli import main, rollout_protein
from starmd.rollout.config import RolloutConfig
from starmd.rollout.context import CachedContext
from starmd.rollout.inputs import load_features, load_model, load_start
from starmd.rollout.sampler import iter_frames, make_context, run_rollout
from starmd.training.checkpoint import save_checkpoint
from starmd.training.cli import main as train_main
from starmd.training.config import TrainingConfig
from starmd.training.optim import build_ema

N_RES, C_S_IN, C_Z_IN = 8, 6, 4
MODEL = dict(c_s=16, c_z=8, n_blocks=2, n_heads=2, c_hidden=4, no_heads_ipa=2, c_hidden_ipa=4, no_qk_points=2,
             no_v_points=2, transition_n=1, c_time=8, c_phys_time=4, n_rbf=4, c_relative_time=4)
DIFFUSION = {"so3": {"num_sigma": 64, "num_omega": 256}}
TRAIN_WINDOW = 2  # training.num_frames of the test checkpoint
DT_PS = 10.0  # stored frame spacing of the test frames file; strides [1, 4] -> trained Delta-t 10..40 ps


def _randomise(model: torch.nn.Module, seed: int, std: float = 0.3) -> None:
    """Random weights everywhere: the "final"/"gating" inits zero the residual branches, which would make the
    cache (attention to earlier frames) invisible and the equality tests vacuous."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def _tiny_model(dtype=torch.float64) -> StarMD:
    model = StarMD(c_s_in=C_S_IN, c_z_in=C_Z_IN, **MODEL).to(dtype)
    _randomise(model, 0)
    return model.eval()


@pytest.fixture(scope="module")
def villin_frames(villin_backbone) -> tuple[str, Rigid, np.ndarray]:
    """(sequence, Rigid [T=3, N] of three perturbed copies, residue_index) from the first N_RES villin residues."""
    atoms = villin_backbone.atoms[:N_RES]
    frames = Rigid.from_3_points(atoms[:, 0], atoms[:, 1], atoms[:, 2])
    shifts = torch.tensor([0.0, 0.3, -0.3], dtype=torch.float64)[:, None, None]  # three "MD frames"
    return (villin_backbone.sequence[:N_RES], Rigid(frames.rots.expand(3, -1, -1, -1), frames.trans + shifts),
            villin_backbone.residue_index[:N_RES])


@pytest.fixture(scope="module")
def files(tmp_path_factory, villin_frames) -> dict[str, Path]:
    """checkpoint (training format, EMA weights != raw weights), features HDF5 and frames HDF5 of one protein."""
    root = tmp_path_factory.mktemp("rollout_inputs")
    seq, frames, resseq = villin_frames
    model = StarMD(c_s_in=C_S_IN, c_z_in=C_Z_IN, **MODEL)
    _randomise(model, 1)
    ema = build_ema(model, TrainingConfig())
    _randomise(ema.module, 2)
    training = TrainingConfig(num_frames=TRAIN_WINDOW, strides=[1, 4]).to_dict()
    save_checkpoint(root / "final.pt", {"step": 1, "model": model.state_dict(), "ema": ema.state_dict(),
                                        "optimizer": {}, "scheduler": {}, "rng": [], "world_size": 1,
                                        "config": {"training": training, "model": MODEL, "diffusion": DIFFUSION,
                                                   "features": {"c_s": C_S_IN, "c_z": C_Z_IN}}})
    g = torch.Generator().manual_seed(3)
    _write_features(root / "features.h5", seq, torch.randn(N_RES, C_S_IN, generator=g),
                    torch.randn(N_RES, N_RES, C_Z_IN, generator=g))
    with h5py.File(root / "frames.h5", "w") as h5:
        h5.attrs.update({"name": "villin8", "sequence": seq, "n_residues": N_RES, "stride": 1, "dt_ps": DT_PS,
                         "format_version": 1})
        h5["aatype"] = sequence_to_aatype(seq)
        h5["residue_index"] = resseq
        h5["start/rotations"] = frames.rots[0].float().numpy()
        h5["start/translations"] = frames.trans[0].float().numpy()
        h5["replicas/R1/rotations"] = frames.rots.float().numpy()
        h5["replicas/R1/translations"] = frames.trans.float().numpy()
        h5["replicas/R1/time_ps"] = DT_PS * np.arange(3.0)
    return {"checkpoint": root / "final.pt", "features": root / "features.h5", "frames": root / "frames.h5"}


def _write_features(path: Path, sequence: str, single: torch.Tensor, pair: torch.Tensor) -> None:
    write_features(path, single.float().numpy(), pair.float().numpy(), {"featurizer": "test", "sequence": sequence})


def _inputs(villin_frames, dtype=torch.float64):
    g = torch.Generator().manual_seed(4)
    single = torch.randn(N_RES, C_S_IN, generator=g, dtype=dtype)
    pair = torch.randn(N_RES, N_RES, C_Z_IN, generator=g, dtype=dtype)
    return single, pair, villin_frames[1][0]


def _cfg(**kw) -> RolloutConfig:
    base = dict(n_frames=4, delta_t_ps=20.0, n_samples=2, steps=3, tau=0.1, seed=5, progress_bar=False,
                device="cpu")
    return RolloutConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def diffuser() -> SE3Diffuser:
    return SE3Diffuser(**DIFFUSION)


@pytest.mark.parametrize("window", [0, 2])
def test_cached_rollout_equals_uncached_recompute(villin_frames, diffuser, window):
    model = _tiny_model()
    single, pair, start = _inputs(villin_frames)
    cfg = _cfg(n_frames=5 if window else 4, context_window=window)
    cached = run_rollout(model, diffuser, single, pair, start, cfg, use_cache=True)
    recomputed = run_rollout(model, diffuser, single, pair, start, cfg, use_cache=False)
    assert cached.translations.dtype == torch.float64
    assert (cached.translations - recomputed.translations).abs().max() < 1e-5
    assert (cached.rotations - recomputed.rotations).abs().max() < 1e-5
    # not vacuous: the context reaches the prediction (another start structure changes the next frame)
    moved = Rigid(start.rots, start.trans * 1.2)
    other = run_rollout(model, diffuser, single, pair, moved, cfg, use_cache=True)
    assert (other.translations[:, 0] - cached.translations[:, 0]).abs().max() > 1e-3


def test_rollout_is_deterministic_given_the_seed(villin_frames, diffuser):
    model = _tiny_model(torch.float32)
    single, pair, start = _inputs(villin_frames, torch.float32)
    a = run_rollout(model, diffuser, single, pair, start, _cfg())
    b = run_rollout(model, diffuser, single, pair, start, _cfg())
    c = run_rollout(model, diffuser, single, pair, start, _cfg(seed=6))
    no_ctx_noise = run_rollout(model, diffuser, single, pair, start, _cfg(tau=0.0))  # the ablation
    assert torch.equal(a.rotations, b.rotations) and torch.equal(a.translations, b.translations)
    assert (a.translations - c.translations).abs().max() > 1e-2
    assert (a.translations - no_ctx_noise.translations).abs().max() > 1e-3
    assert (a.translations[0] - a.translations[1]).abs().max() > 1e-2  # the batched samples are independent
    assert a.rotations.shape == (2, 4, N_RES, 3, 3) and a.time_ps.tolist() == [20.0, 40.0, 60.0, 80.0]
    r = a.rotations
    eye = torch.eye(3).expand_as(r)
    assert torch.allclose(r @ r.transpose(-1, -2), eye, atol=1e-4)  # proper frames
    assert a.translations.mean(dim=-2).abs().max() < 1e-4  # centred, like the training frames


def _live_tensor_bytes() -> int:
    """Bytes of every distinct tensor storage reachable from Python objects."""
    gc.collect()
    seen: dict[int, int] = {}
    with warnings.catch_warnings():  # isinstance on some torch module objects emits deprecation warnings
        warnings.simplefilter("ignore")
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for obj in tensors:
        if obj.device.type == "cpu" and not isinstance(obj, FakeTensor):  # torch.compile's fakes hold no memory
            st = obj.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


@pytest.mark.parametrize("window", [0, 3])
def test_cache_holds_singles_only(villin_frames, diffuser, window):
    model = _tiny_model(torch.float32)
    single, pair, start = _inputs(villin_frames, torch.float32)
    s, n_frames = 2, 6
    cfg = _cfg(n_frames=n_frames, n_samples=s, steps=2, context_window=window)
    per_frame = 2 * MODEL["n_blocks"] * s * N_RES * MODEL["n_heads"] * MODEL["c_hidden"] * 4  # K and V, fp32
    with torch.no_grad():
        context = make_context(model, single, pair, s, cfg.delta_t_ps, window or None, use_cache=True)
        assert isinstance(context, CachedContext)
        frames = iter_frames(context, diffuser, start.to(torch.float32).unsqueeze(0).expand(s, N_RES), cfg,
                             torch.Generator().manual_seed(0))
        live, held = [], []
        for f, frame in enumerate(frames, start=1):
            del frame
            held.append(context.cache.n_frames)
            assert context.cache.n_frames == (min(f, window) if window else f)  # start + f - 1 appended
            assert context.cache.nbytes() == per_frame * context.cache.n_frames
            live.append(_live_tensor_bytes())
    assert context.cache.frames_seen == n_frames + 1
    # live memory grows by exactly one frame of singles K/V (+ its S fp32 frame times) per frame while the cache
    # grows, then stays flat: a retained per-frame pair state (S N^2 c_z floats) or any other per-frame leftover
    # would break the equality
    growth = np.diff(live)
    expected = np.diff(held) * (per_frame + s * 4)
    np.testing.assert_array_equal(growth, expected)
    assert context.peak_nbytes == per_frame * ((window or n_frames + 1))


def test_long_horizon_cli_outputs_load_with_mdtraj(files, tmp_path, caplog, villin_frames):
    """10x the training window through `python -m starmd rollout`, starting from an MD frame."""
    n_frames = 10 * TRAIN_WINDOW
    cfg = dict(n_frames=n_frames, delta_t_ps=20.0, n_samples=2, steps=2, tau=0.05, context_window=0, seed=1,
               progress_bar=True, device="auto")
    out = tmp_path / "runs" / "demo" / "rollouts" / "villin8.h5"
    with caplog.at_level(logging.WARNING):
        rc = main(["--checkpoint", str(files["checkpoint"]), "--features", str(files["features"]), "--frames",
                   str(files["frames"]), "--out", str(out), "--start-replica", "R1", "--start-frame", "1",
                   "--config-json", json.dumps(cfg)])
    assert rc == 0
    assert not [r for r in caplog.records if "outside the Delta-t range" in r.message]  # 20 ps is within 10..40
    with h5py.File(out) as h5:
        assert h5["rotations"].shape == (2, n_frames, N_RES, 3, 3)
        assert h5["translations"].shape == (2, n_frames, N_RES, 3)
        assert h5["validity"].shape == (2, n_frames) and h5["validity"].dtype == bool
        np.testing.assert_allclose(h5["time_ps"][()], 20.0 * np.arange(1, n_frames + 1))
        assert np.isfinite(h5["translations"][()]).all()
        attrs = dict(h5.attrs)
        assert attrs["start"].endswith("replicas/R1[1]") and attrs["weights"] == "ema" and attrs["seed"] == 1
        assert attrs["peak_cache_bytes"] == 2 * MODEL["n_blocks"] * 2 * N_RES * (n_frames + 1) * 8 * 4
        assert len(attrs["checkpoint_sha256"]) == 64 and json.loads(attrs["config"])["n_frames"] == n_frames
        start_ca = h5["start/translations"][()]
    np.testing.assert_allclose(start_ca, load_start(files["frames"], "R1", 1).frames.trans.numpy(), atol=1e-6)
    pdb = md.load(out.with_suffix(".pdb"))
    assert (pdb.n_residues, pdb.n_atoms) == (N_RES, 4 * N_RES)
    np.testing.assert_allclose(pdb.xyz[0, 1::4] * 10, start_ca, atol=2e-3)
    for k in range(2):
        traj = md.load(out.with_name(f"villin8_s{k}.xtc"), top=out.with_suffix(".pdb"))
        assert (traj.n_frames, traj.n_residues) == (n_frames, N_RES)
        np.testing.assert_allclose(traj.time, 20.0 * np.arange(1, n_frames + 1))
    evaluated = load_rollout(out)  # the evaluation stage's reader accepts the outputs (CA of xtc == translations)
    assert evaluated.backbone.shape == (2, n_frames, N_RES, 4, 3) and evaluated.delta_t_ps == 20.0
    assert sorted(p.name for p in out.parent.iterdir()) == ["villin8.h5", "villin8.pdb", "villin8_s0.xtc",
                                                            "villin8_s1.xtc"]


def test_ema_weights_are_used_by_default(files):
    features = load_features(files["features"])
    ema, _, which = load_model(files["checkpoint"], features)
    raw, _, which_raw = load_model(files["checkpoint"], features, use_ema=False)
    assert (which, which_raw) == ("ema", "model")
    reference = StarMD(c_s_in=C_S_IN, c_z_in=C_Z_IN, **MODEL)
    _randomise(reference, 2)  # the EMA weights the fixture wrote
    for a, b in zip(ema.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)
    assert not torch.equal(raw.single_in[1].weight, ema.single_in[1].weight)


def test_bad_inputs_are_named(files, tmp_path, villin_frames, caplog):
    seq = villin_frames[0]
    kw = dict(checkpoint=files["checkpoint"], frames_path=files["frames"], out=tmp_path / "x.h5",
              cfg=_cfg(n_frames=1, steps=1, n_samples=1))
    wrong_cs = tmp_path / "wrong_cs.h5"
    _write_features(wrong_cs, seq, torch.zeros(N_RES, C_S_IN + 1), torch.zeros(N_RES, N_RES, C_Z_IN))
    with pytest.raises(ValueError, match=r"c_s = 6 channels.*c_s = 7"):
        rollout_protein(features_path=wrong_cs, **kw)
    wrong_cz = tmp_path / "wrong_cz.h5"
    _write_features(wrong_cz, seq, torch.zeros(N_RES, C_S_IN), torch.zeros(N_RES, N_RES, C_Z_IN + 2))
    with pytest.raises(ValueError, match=r"c_z = 4 channels.*c_z = 6"):
        rollout_protein(features_path=wrong_cz, **kw)
    wrong_n = tmp_path / "wrong_n.h5"
    _write_features(wrong_n, seq + "A", torch.zeros(N_RES + 1, C_S_IN), torch.zeros(N_RES + 1, N_RES + 1, C_Z_IN))
    with pytest.raises(ValueError, match=r"N = 9 residues.*N = 8"):
        rollout_protein(features_path=wrong_n, **kw)
    wrong_seq = tmp_path / "wrong_seq.h5"
    mutated = ("A" if seq[3] != "A" else "G").join([seq[:3], seq[4:]])
    _write_features(wrong_seq, mutated, torch.zeros(N_RES, C_S_IN), torch.zeros(N_RES, N_RES, C_Z_IN))
    with pytest.raises(ValueError, match=r"sequence of .*wrong_seq.h5 differs .* position\(s\) \[3\]"):
        rollout_protein(features_path=wrong_seq, **kw)
    with pytest.raises(ValueError, match="replica 'R7'"):
        rollout_protein(features_path=files["features"], start_replica="R7", **kw)
    with pytest.raises(ValueError, match="start frame 3 is out of range"):
        rollout_protein(features_path=files["features"], start_replica="R1", start_frame=3, **kw)
    for bad, match in (({"n_frames": 0}, "rollout.n_frames must be >= 1"),
                       ({"n_frames": -3}, "rollout.n_frames must be >= 1"),
                       ({"tau": 1.5}, "rollout.tau"), ({"n_frame": 3}, r"rollout: unknown key\(s\) \['n_frame'\]"),
                       ({"steps": 2.5}, "rollout.steps must be int")):
        with pytest.raises(ValueError, match=match):
            RolloutConfig.from_dict(bad)
    with caplog.at_level(logging.WARNING):  # Delta-t outside the trained 10..40 ps: warn, still roll out
        rollout_protein(features_path=files["features"], **{**kw, "cfg": _cfg(n_frames=1, steps=1, n_samples=1,
                                                                               delta_t_ps=1000.0)})
    assert any("1000 ps is outside the Delta-t range" in r.message and "[10, 40]" in r.message
               for r in caplog.records)


def test_schema_fragment_matches_the_config(repo_root):
    schema = yaml.safe_load((repo_root / "schemas" / "rollout.schema.yaml").read_text())
    defaults = {k: v["default"] for k, v in schema["properties"].items()}
    assert defaults == RolloutConfig().to_dict()
    jsonschema.validate(defaults, schema)
    for bad in ({"n_frame": 3}, {"n_frames": 0}, {"device": "tpu"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_rollout_from_a_checkpoint_written_by_train(files, tmp_path):
    """The real training CLI's final.pt (2 optimizer steps on the test protein) rolls out through the CLI."""
    run = tmp_path / "run"
    config = {"training": {"steps": 2, "num_frames": 2, "strides": [1], "batch_size": 1, "warmup_steps": 1,
                           "val_every": 100, "checkpoint_every": 100, "log_every": 1, "bf16": False},
              "model": MODEL, "diffusion": DIFFUSION}
    assert train_main(["--frames", str(files["frames"]), "--features", str(files["features"]), "--run-dir",
                       str(run), "--config-json", json.dumps(config), "--device", "cpu"]) == 0
    out = tmp_path / "rollouts" / "villin8.h5"
    cfg = dict(n_frames=3, delta_t_ps=10.0, n_samples=1, steps=2, progress_bar=False, device="cpu")
    assert main(["--checkpoint", str(run / "checkpoints" / "final.pt"), "--features", str(files["features"]),
                 "--frames", str(files["frames"]), "--out", str(out), "--config-json", json.dumps(cfg)]) == 0
    traj = md.load(out.with_name("villin8_s0.xtc"), top=out.with_suffix(".pdb"))
    assert (traj.n_frames, traj.n_atoms) == (3, 4 * N_RES) and np.isfinite(traj.xyz).all()


def test_chain_longer_than_the_training_crop_warns(files, tmp_path, caplog):
    """The checkpoint records training.crop_size; a longer chain still rolls out, with a warning naming both."""
    ckpt = torch.load(files["checkpoint"], weights_only=False)
    ckpt["config"]["training"]["crop_size"] = N_RES - 2
    short_crop = tmp_path / "crop6.pt"
    torch.save(ckpt, short_crop)
    for checkpoint, warned in ((files["checkpoint"], False), (short_crop, True)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            rollout_protein(checkpoint=checkpoint, features_path=files["features"], frames_path=files["frames"],
                            out=tmp_path / f"{checkpoint.stem}.h5", cfg=_cfg(n_frames=1, steps=1, n_samples=1))
        assert any(f"has {N_RES} residues, more than the checkpoint's training crop (training.crop_size = "
                   f"{N_RES - 2})" in r.message for r in caplog.records) == warned
        assert (tmp_path / f"{checkpoint.stem}.h5").exists()


def test_inference_fast_path_equals_the_masked_per_sample_path(villin_frames, diffuser):
    """No attention mask (nothing padded) and one projected static pair shared by the samples give the same frames
    as the previous path (an all-True mask rebuilt every step, the static pair projected per sample): float64,
    agreement to 1e-12 (only summation order may differ)."""
    model = _tiny_model()
    single, pair, start = _inputs(villin_frames)
    s, n_frames = 3, 3
    fast = make_context(model, single, pair, s, 20.0, None, use_cache=True).cache
    res_mask = torch.ones(s, N_RES, dtype=torch.float64)
    slow = model.init_cache(single.repeat(s, 1, 1), pair.repeat(s, 1, 1, 1), res_mask,
                            torch.full((s,), 20.0, dtype=torch.float64))
    slow.masked = True  # the previous path: build and apply the (all-True) mask at every step
    assert not fast.masked
    assert slow.static_nbytes() - fast.static_nbytes() == (s - 1) * N_RES * (N_RES * MODEL["c_z"] + MODEL["c_s"]) * 8
    g = torch.Generator().manual_seed(0)
    frame = Rigid(start.rots.expand(s, -1, -1, -1), start.trans.expand(s, -1, -1))
    with torch.no_grad():
        for f in range(n_frames):
            times, tau = torch.full((s,), 20.0 * f, dtype=torch.float64), torch.full((s,), 0.1, dtype=torch.float64)
            for cache in (fast, slow):
                model.append(cache, frame, tau, times)
            noisy = diffuser.sample_ref((s, N_RES), g, dtype=torch.float64)
            t = torch.full((s,), 0.5, dtype=torch.float64)
            a = model.step(fast, noisy, t, times + 20.0)["pred_rigids"]
            b = model.step(slow, noisy, t, times + 20.0)["pred_rigids"]
            assert (a.trans - b.trans).abs().max() < 1e-12 and (a.rots - b.rots).abs().max() < 1e-12
            assert not torch.equal(a.trans[0], a.trans[1])  # the samples differ: the shared pair is not mixing them
            frame = a
    for i in range(MODEL["n_blocks"]):
        assert (fast.keys[i] - slow.keys[i]).abs().max() < 1e-12
