import pytest
import torch

from python_models import canonical_name, create_model, list_models, model_aliases, register_model
from python_models.registry import _ALIASES, _MODELS

SMALL = dict(embed_dim=16, depth=1, num_heads=2)


def test_an_alias_builds_its_canonical_preset_and_is_not_listed():
    aliases = model_aliases()
    assert aliases["vim_shapes"] == "vim_micro_shapes"
    assert not set(aliases) & set(list_models())
    assert set(aliases.values()) <= set(list_models())
    torch.manual_seed(0)
    old = create_model("vim_shapes", **SMALL)
    torch.manual_seed(0)
    new = create_model("vim_micro_shapes", **SMALL)
    assert type(old) is type(new)
    for (name, a), (_, b) in zip(old.state_dict().items(), new.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)


def test_canonical_name_resolves_names_and_names_the_unknown():
    assert canonical_name("vpt_deep") == canonical_name("vpt_deep_vit") == "vpt_deep_vit"
    with pytest.raises(ValueError, match="unknown model 'nope'; known: \\['hrm_base_cifar10'"):
        canonical_name("nope")


@pytest.fixture
def scratch_registry():
    """Leaves the registry as it was after a test registers into it."""
    models, aliases = dict(_MODELS), dict(_ALIASES)
    yield
    _MODELS.clear()
    _MODELS.update(models)
    _ALIASES.clear()
    _ALIASES.update(aliases)


def test_register_model_with_aliases_and_clashes(scratch_registry):
    @register_model(aliases="toy_old")
    def toy_new(**overrides):
        return torch.nn.Linear(2, overrides.get("out", 3))

    assert create_model("toy_old", out=4).out_features == 4
    assert "toy_new" in list_models() and "toy_old" not in list_models()
    with pytest.raises(ValueError, match="a model named 'toy_old' is already registered"):

        @register_model(aliases=("toy_old",))
        def toy_other():
            return torch.nn.Identity()

    with pytest.raises(ValueError, match="a model named 'vim_shapes' is already registered"):

        @register_model
        def vim_shapes():
            return torch.nn.Identity()

    assert "toy_other" not in list_models()
