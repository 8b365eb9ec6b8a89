import dataclasses
from pathlib import Path

import pytest

from train.classify import ClassifyConfig
from train.config import load_config, read_yaml
from train.continual import ContinualConfig
from train.mae import MAEConfig
from train.memory import MemoryConfig
from train.video import VideoConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    (tmp_path / "c.yaml").write_text("epochs: 7\nlr: 0.01\nmodel_args: {depth: 3}\n")
    config = load_config(
        ClassifyConfig, ["--config", str(tmp_path / "c.yaml"), "--lr", "0.5", "--no-flip"], "t", "t"
    )
    assert (config.epochs, config.lr, config.model_args, config.flip) == (
        7,
        0.5,
        {"depth": 3},
        False,
    )
    assert config.batch_size == ClassifyConfig().batch_size


def test_a_dict_flag_updates_the_files_dict_key_by_key(tmp_path):
    (tmp_path / "c.yaml").write_text("model_args: {depth: 3, embed_dim: 32}\n")
    argv = ["--config", str(tmp_path / "c.yaml"), "--model-args", "{depth: 5}"]
    config = load_config(ClassifyConfig, argv, "t", "t")
    assert config.model_args == {"depth": 5, "embed_dim": 32}


def test_stage_layout_flags_go_into_the_model_arguments():
    config = load_config(
        ClassifyConfig,
        ["--model-args", "{mlp_ratio: 2}", "--depths", "1,2,2", "--num-heads", "[1, 2, 4]"],
        "t",
        "t",
    )
    assert config.model_args == {"mlp_ratio": 2, "depths": [1, 2, 2], "num_heads": [1, 2, 4]}
    assert (
        ClassifyConfig(**dataclasses.asdict(config)).model_args == config.model_args
    )  # as a checkpoint reloads it


def test_unknown_yaml_key_is_an_error(tmp_path):
    (tmp_path / "c.yaml").write_text("epocs: 7\n")
    with pytest.raises(ValueError, match=r"unknown settings \['epocs'\]"):
        load_config(ClassifyConfig, ["--config", str(tmp_path / "c.yaml")], "t", "t")


@pytest.mark.parametrize(
    "text, message",
    [
        ("- 1\n- 2\n", r"c.yaml: expected a mapping of settings, got a list"),
        ("epochs: [1\n", r"c.yaml: not valid YAML"),
    ],
)
def test_a_yaml_file_that_is_no_mapping_of_settings_is_named(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(ClassifyConfig, ["--config", str(tmp_path / "c.yaml")], "t", "t")


def test_builtin_default_config_file_is_the_default_job():
    assert read_yaml(ClassifyConfig, CONFIGS / "classify_shapes.yaml") == dataclasses.asdict(
        ClassifyConfig()
    )
    assert read_yaml(MAEConfig, CONFIGS / "mae_shapes.yaml") == dataclasses.asdict(MAEConfig())
    assert read_yaml(MemoryConfig, CONFIGS / "memory_vit_shapes.yaml") == dataclasses.asdict(
        MemoryConfig()
    )
    assert read_yaml(ContinualConfig, CONFIGS / "continual_shapes.yaml") == dataclasses.asdict(
        ContinualConfig()
    )


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_file_loads(path):
    job = {
        "mae": MAEConfig,
        "memory": MemoryConfig,
        "video": VideoConfig,
        "continual": ContinualConfig,
    }
    cls = job.get(path.name.split("_")[0], ClassifyConfig)
    load_config(cls, ["--config", str(path)], "t", "t")
