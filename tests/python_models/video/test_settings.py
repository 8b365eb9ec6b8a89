"""HierarchicalVLM's typed settings and the flat preset keys that set their fields."""

import dataclasses

import pytest
import torch

from python_models import create_model
from python_models.video import (
    FLAT_KEYS,
    ImportanceSettings,
    MergeSettings,
    MixerSettings,
)
from python_models.video.settings import SETTINGS, gather_flat_keys

SMALL = dict(num_frames=4, img_size=32, embed_dim=24, num_heads=2, depth=2)


def test_every_flat_key_names_a_field_of_its_settings():
    for key, (argument, field) in FLAT_KEYS.items():
        fields = {f.name for f in dataclasses.fields(SETTINGS[argument])}
        assert field in fields, key


def test_flat_keys_build_the_model_the_settings_build():
    flat = dict(
        attention="performer",
        attention_args={"nb_features": 16},
        merge_ratio=0.5,
        merge_at=[1, 0],
        merge_budget="frame",
        motion_alpha=0.25,
        saliency_ramp_steps=3,
    )
    typed = dict(
        mixer=MixerSettings("performer", {"nb_features": 16}),
        merging=MergeSettings(ratio=0.5, at=(0, 1), budget="frame"),
        importance=ImportanceSettings(motion_alpha=0.25, saliency_ramp_steps=3),
    )
    torch.manual_seed(0)
    from_flat = create_model("hvlm_tiny", **SMALL, **flat)
    torch.manual_seed(0)
    from_typed = create_model("hvlm_tiny", **SMALL, **typed)
    for argument, settings in typed.items():
        assert getattr(from_flat, argument) == settings
    assert from_flat.state_dict().keys() == from_typed.state_dict().keys()
    assert "merge_steps" in from_flat.state_dict()  # the ramp's step count is saved
    clips = torch.randint(0, 256, (2, 4, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(from_flat.eval()(clips), from_typed.eval()(clips))


def test_flat_keys_apply_on_top_of_given_settings_and_mappings_are_accepted():
    arguments = gather_flat_keys({"merging": {"ratio": 0.3, "at": [0]}, "merge_mode": "random"})
    assert arguments == {"merging": MergeSettings(ratio=0.3, at=(0,), mode="random")}
    model = create_model("hvlm_tiny", **SMALL, mixer={"type": "linear"})
    assert model.mixer == MixerSettings("linear")
    model.set_merge_ratio(0.25)
    assert model.merging.ratio == 0.25 and model.merging.at == (1,)


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="token_merging.merge_at must hold distinct block"):
        MergeSettings(at=(1, 1))
    with pytest.raises(ValueError, match=r"target_compression_ratio must be in \[0, 1\), got -0.1"):
        create_model("hvlm_tiny", **SMALL).set_merge_ratio(-0.1)
    with pytest.raises(
        TypeError, match="merging: expected a MergeSettings, a mapping of its fields or None"
    ):
        create_model("hvlm_tiny", **SMALL, merging=0.5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'rate'"):
        create_model("hvlm_tiny", **SMALL, merging={"rate": 0.5})
