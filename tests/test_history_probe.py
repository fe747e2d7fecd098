"""The history probe (issue 13): does a trained model use its context?

A tiny model is trained briefly on the synthetic known-answer system; then, from clean MD context frames and a
target drawn from the prior (diffusion time t = 1: the target itself says nothing), its x0 prediction must be closer
to the true next frame than to a random frame of the same trajectory. The first design (targets updated from their
own noisy frame, history only through invariant singles) fails this; the probe is run on it too so that the test
shows it can fail.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from starmd.data.frames import FramesConfig, extract_frames, read_frames
from starmd.data.synthetic import SyntheticConfig, prepare_synthetic
from starmd.diffusion import SE3Diffuser
from starmd.evaluation.metrics import rmsd_to
from starmd.features.cli import main as featurize
from starmd.geometry import Rigid
from starmd.rollout.inputs import load_features, load_model
from starmd.rollout.sampler import centred

MODEL = dict(c_s=32, c_z=16, n_blocks=2, n_heads=2, c_hidden=8, no_heads_ipa=2, c_hidden_ipa=8, no_qk_points=2,
             no_v_points=2, transition_n=1, c_time=8, c_phys_time=8, n_rbf=8, c_relative_time=8)
TRAINING = dict(steps=400, batch_size=2, num_frames=4, strides=[1], crop_size=64, lr=2e-3, warmup_steps=10,
                tau_max=0.0, dist_loss_weight=100.0, ema_decay=0.9, log_every=50, val_every=1000, val_samples=0,
                checkpoint_every=1000, seed=0)
CONTEXT = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    raw = prepare_synthetic(root / "enm1_A", SyntheticConfig(n_frames=1500, truth_mc_samples=20,
                                                             truth_max_lag_frames=10))
    frames = extract_frames(raw / "enm1_A.pdb", [raw / f"enm1_A_prod_R{k}_fit.xtc" for k in (1, 2, 3)],
                            root / "frames.h5", FramesConfig(stride=1), name="enm1_A")
    features = root / "features.h5"
    assert featurize(["--featurizer", "offline", "--name", "enm1_A", "--pdb", str(raw / "enm1_A.pdb"),
                      "--out", str(features), "--config-json", '{"featurizer": "offline"}']) == 0
    return root, frames, features


def _train(root, frames, features, anchor: str):
    run = root / f"run_{anchor}"
    cfg = {"training": TRAINING, "model": {**MODEL, "target_anchor": anchor}, "diffusion": {}}
    subprocess.run([sys.executable, "-m", "starmd", "train", "--frames", str(frames), "--features", str(features),
                    "--run-dir", str(run), "--config-json", json.dumps(cfg)], check=True, capture_output=True)
    return run / "checkpoints" / "final.pt"


def _probe(checkpoint, frames, features) -> tuple[float, float]:
    """Mean over windows of (RMSD(x0 at t = 1, true frame), RMSD(x0, a frame 300 frames away)), Angstrom."""
    feats = load_features(features)
    model, config, _ = load_model(checkpoint, feats)
    model = model.double()
    diffuser = SE3Diffuser(**config["diffusion"])
    data = read_frames(frames)
    rep = data["replicas"]["R1"]
    rots, trans = torch.as_tensor(rep["rotations"]).double(), torch.as_tensor(rep["translations"]).double()
    dt = float(data["attrs"]["dt_ps"])
    g = torch.Generator().manual_seed(0)
    d_true, d_far = [], []
    with torch.no_grad():
        for target in range(200, 1200, 100):
            cache = model.init_cache(torch.as_tensor(feats.single).double()[None],
                                     torch.as_tensor(feats.pair).double()[None], torch.ones(1, rots.shape[1]).double(),
                                     torch.tensor([dt]).double())
            for f in range(target - CONTEXT, target):
                frame = centred(Rigid(rots[f], trans[f]))[None]
                model.append(cache, frame, torch.zeros(1).double(), torch.tensor([f * dt]).double())
            noisy = diffuser.sample_ref((1, rots.shape[1]), g, dtype=torch.float64)
            pred = model.step(cache, noisy, torch.ones(1).double(), torch.tensor([target * dt]).double())
            ca = pred["pred_rigids"].trans[0].numpy()
            d_true.append(rmsd_to(ca[None], trans[target].numpy())[0])
            d_far.append(rmsd_to(ca[None], trans[target + 300].numpy())[0])
    return float(np.mean(d_true)), float(np.mean(d_far))


@pytest.mark.slow
def test_trained_model_uses_its_history_and_the_first_design_did_not(data):
    root, frames, features = data
    d_true, d_far = _probe(_train(root, frames, features, "previous"), frames, features)
    assert d_true < 0.8 * d_far, (d_true, d_far)
    d_true_old, d_far_old = _probe(_train(root, frames, features, "self"), frames, features)
    assert d_true_old > 0.9 * d_far_old, (d_true_old, d_far_old)  # blind to its history: as far as a random frame
