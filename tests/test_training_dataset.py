"""FrameWindowDataset / collate / StepBatchSampler on real frames HDF5 (written by starmd.data.frames)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from starmd.training.config import TrainingConfig
from starmd.training.dataset import FrameWindowDataset, StepBatchSampler, collate
from training_data import make_protein, make_two_proteins


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[list[Path], list[Path]]:
    return make_two_proteins(tmp_path_factory.mktemp("proteins"))


def _dataset(files, **kw) -> FrameWindowDataset:
    args = dict(num_frames=4, strides=[1, 2, 3], crop_size=12, centre="per_frame", seed=7)
    args.update(kw)
    return FrameWindowDataset(frames=files[0], features=files[1], **args)


def test_sample_is_a_pure_function_of_seed_and_id(files):
    a, b = _dataset(files), _dataset(files)
    ids = [5, 0, 17, 5, 123456]
    for g in ids:
        x, y = a[g], b[g]
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k
    assert not torch.equal(a[1]["trans"], a[2]["trans"])
    other_seed = _dataset(files, seed=8)
    assert any(not torch.equal(a[g]["trans"], other_seed[g]["trans"]) for g in range(4) if
               a[g]["trans"].shape == other_seed[g]["trans"].shape)


def test_window_matches_file_content(files):
    ds = _dataset(files, centre="first_frame")
    seen_strides, seen_crops = set(), set()
    for g in range(40):
        c = ds.draw(g)
        e = ds.entries[c["protein"]]
        item = ds[g]
        n = min(e.n_residues, 12)
        idx = c["start"] + c["stride"] * np.arange(4)
        with h5py.File(e.frames_path) as f:
            rep = f["replicas"][e.replicas[c["replica"]]]
            trans = rep["translations"][()][idx][:, c["crop"]:c["crop"] + n]
            rots = rep["rotations"][()][idx][:, c["crop"]:c["crop"] + n]
            time_ps = rep["time_ps"][()]
        with h5py.File(e.features_path) as h:
            single = h["single"][()][c["crop"]:c["crop"] + n]
        np.testing.assert_allclose(item["trans"].numpy(), trans - trans[0].mean(0), atol=1e-5)
        np.testing.assert_array_equal(item["rots"].numpy(), rots)
        np.testing.assert_array_equal(item["single"].numpy(), single)
        np.testing.assert_allclose(item["frame_time_ps"].numpy(), time_ps[idx] - time_ps[0], atol=1e-4)
        assert float(item["delta_t_ps"]) == pytest.approx(10.0 * c["stride"])  # dt_ps of the fixture is 10
        assert item["pair"].shape == (n, n, 4) and item["res_mask"].sum() == n
        seen_strides.add(c["stride"])
        seen_crops.add((c["protein"], c["crop"]))
    assert seen_strides == {1, 2, 3}
    assert {crop for p, crop in seen_crops if p == 1} != {0}  # the 13-residue protein gets random 12-residue crops
    assert {crop for p, crop in seen_crops if p == 0} == {0}


def test_per_frame_centring(files):
    item = _dataset(files, centre="per_frame")[3]
    assert item["trans"].mean(dim=1).abs().max() < 1e-5


def test_collate_pads_with_masked_identity_frames(files):
    ds = _dataset(files, crop_size=100)
    items = [ds[g] for g in range(8)]
    lengths = {it["res_mask"].shape[0] for it in items}
    assert lengths == {10, 13}
    batch = collate(items)
    assert batch["rots"].shape == (8, 4, 13, 3, 3) and batch["pair"].shape == (8, 13, 13, 4)
    short = next(i for i, it in enumerate(items) if it["res_mask"].shape[0] == 10)
    assert batch["res_mask"][short].tolist() == [1.0] * 10 + [0.0] * 3
    assert torch.equal(batch["rots"][short, :, 10:], torch.eye(3).expand(4, 3, 3, 3))
    assert batch["trans"][short, :, 10:].abs().sum() == 0 and batch["pair"][short, 10:].abs().sum() == 0
    assert torch.equal(batch["trans"][short, :, :10], items[short]["trans"])


def test_sampler_splits_each_global_batch_exactly_once():
    world, accum, bs, steps = 3, 2, 2, 4
    per_rank = [list(StepBatchSampler(start_step=0, steps=steps, batch_size=bs, grad_accum=accum, rank=r,
                                      world_size=world)) for r in range(world)]
    all_ids = sorted(i for batches in per_rank for batch in batches for i in batch)
    assert all_ids == list(range(steps * world * accum * bs))
    resumed = list(StepBatchSampler(start_step=2, steps=steps, batch_size=bs, grad_accum=accum, rank=1,
                                    world_size=world))
    assert resumed == per_rank[1][2 * accum:]
    # one process over the same global batch takes the same ids as two ranks together
    single = list(StepBatchSampler(start_step=0, steps=1, batch_size=4, grad_accum=1, rank=0, world_size=1))
    two = [list(StepBatchSampler(start_step=0, steps=1, batch_size=2, grad_accum=1, rank=r, world_size=2))[0]
           for r in range(2)]
    assert single[0] == two[0] + two[1]


def test_workers_open_hdf5_lazily_and_agree(files):
    ds = _dataset(files)
    ds[0]  # opens the files in this process; forked workers must reopen their own handles
    sampler = StepBatchSampler(start_step=0, steps=3, batch_size=2, grad_accum=1, rank=0, world_size=1)
    serial = [collate([ds[i] for i in ids]) for ids in sampler]
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=2)
    for a, b in zip(serial, loader):
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_bad_inputs_name_the_file(files, tmp_path):
    with pytest.raises(ValueError, match="one features file per frames file"):
        FrameWindowDataset(frames=files[0], features=files[1][:1], num_frames=4, strides=[1], crop_size=8,
                           centre="per_frame", seed=0)
    with pytest.raises(ValueError, match=r"pb_B\.h5: single \(13, 8\) / pair \(13, 13, 4\) do not match 10"):
        FrameWindowDataset(frames=files[0][:1], features=files[1][1:], num_frames=4, strides=[1], crop_size=8,
                           centre="per_frame", seed=0)
    other = tmp_path / "other.h5"
    with h5py.File(files[1][0]) as src, h5py.File(other, "w") as dst:
        for key in ("single", "pair"):
            dst.create_dataset(key, data=src[key][()])
        dst.attrs["sequence"] = "A" * 10
    with pytest.raises(ValueError, match=r"other\.h5: sequence attribute differs"):
        FrameWindowDataset(frames=files[0][:1], features=[other], num_frames=4, strides=[1], crop_size=8,
                           centre="per_frame", seed=0)
    with pytest.raises(ValueError, match=r"pa_A\.h5: replica R1 has 12 frames, too few"):
        FrameWindowDataset(frames=files[0][:1], features=files[1][:1], num_frames=13, strides=[1], crop_size=8,
                           centre="per_frame", seed=0)
    broken = tmp_path / "broken.h5"
    with h5py.File(broken, "w") as f:
        f.attrs.update({"name": "x", "sequence": "AC", "n_residues": 2, "stride": 1, "dt_ps": 1.0})
        f.create_dataset("replicas/R1/rotations", data=np.zeros((5, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"broken\.h5: replicas/R1/rotations must be \[T, 2, 3, 3\]"):
        FrameWindowDataset(frames=[broken], features=files[1][:1], num_frames=2, strides=[1], crop_size=8,
                           centre="per_frame", seed=0)


def test_training_config_rejects_unknown_and_mistyped_keys():
    assert TrainingConfig.from_dict({"lr": 1, "strides": [1, 5]}).lr == 1.0
    with pytest.raises(ValueError, match=r"training: unknown key\(s\) \['learning_rate'\]"):
        TrainingConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="training.steps must be int"):
        TrainingConfig.from_dict({"steps": "10"})
    with pytest.raises(ValueError, match="training.tau_max must be in"):
        TrainingConfig.from_dict({"tau_max": -0.1})


def test_schema_fragment_matches_the_config_dataclass(repo_root):
    import yaml

    schema = yaml.safe_load((repo_root / "schemas" / "training.schema.yaml").read_text())
    assert schema["additionalProperties"] is False
    defaults = TrainingConfig().to_dict()
    assert {k: v["default"] for k, v in schema["properties"].items()} == defaults
    assert all(v.get("description") for v in schema["properties"].values())
