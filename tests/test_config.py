"""starmd.config: the shared unknown-key check every config section goes through, and the base seed."""

from dataclasses import dataclass

import pytest

from starmd.config import apply_base_seed, dataclass_section, section_json, section_keys


@dataclass(frozen=True)
class _Section:
    stride: int = 1
    seed: int = 0


def test_known_keys_pass_through_as_a_new_dict():
    raw = {"stride": 2}
    out = section_keys(raw, ["stride", "seed"], "frames")
    assert out == {"stride": 2} and out is not raw
    assert section_keys({}, ["stride"], "frames") == {}
    assert dataclass_section(_Section, {"seed": 3, "stride": 4}, "frames") == {"seed": 3, "stride": 4}


def test_unknown_key_is_named_with_its_section_and_the_known_keys():
    with pytest.raises(ValueError, match=r"^features\.offline: unknown key\(s\) \['n_rbfs', 'zeta'\]; "
                                         r"expected some of \['n_rbf', 'relpos_clip'\]$"):
        section_keys({"zeta": 1, "n_rbfs": 3, "n_rbf": 2}, {"relpos_clip", "n_rbf"}, "features.offline")
    with pytest.raises(ValueError,
                       match=r"^frames: unknown key\(s\) \['strid'\]; expected some of \['seed', 'stride'\]$"):
        dataclass_section(_Section, {"strid": 2}, "frames")


@pytest.mark.parametrize("raw", [[1, 2], "stride", 3, None])
def test_non_mapping_is_rejected_naming_the_section(raw):
    with pytest.raises(ValueError, match=rf"^demo: expected a JSON object .*got {type(raw).__name__}$"):
        section_keys(raw, ["stride"], "demo")


def test_section_json_names_the_section_on_bad_json():
    assert section_json('{"stride": 2}', "frames") == {"stride": 2}
    with pytest.raises(ValueError, match=r"^rollout: --config-json is not valid JSON"):
        section_json("{stride: 2}", "rollout")
    with pytest.raises(ValueError, match=r"^rollout: expected a JSON object .*got list$"):
        dataclass_section(_Section, section_json("[1]", "rollout"), "rollout")


def test_base_seed_reseeds_the_model_steps_and_leaves_the_data_seeds():
    config = {"seed": 3, "training": {"seed": 0, "lr": 1e-3}, "rollout": {"seed": 2}, "evaluation": {},
              "demo": {"replica_seeds": [1, 2, 3]}, "synthetic": {"truth_seed": 0}}
    apply_base_seed(config)
    assert (config["training"], config["rollout"], config["evaluation"]) == (
        {"seed": 3, "lr": 1e-3}, {"seed": 5}, {"seed": 3})
    assert config["demo"] == {"replica_seeds": [1, 2, 3]} and config["synthetic"] == {"truth_seed": 0}
    zero = {"seed": 0, "training": {"seed": 7}}
    apply_base_seed(zero)
    assert zero["training"]["seed"] == 7 and zero["rollout"] == {"seed": 0}
