import dataclasses
from pathlib import Path

import pytest

from train.classify import ClassifyConfig
from train.config import load_config, read_yaml
from train.continual import ContinualConfig
from train.evaluate import EvaluateConfig
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


JOB_CONFIGS = (ClassifyConfig, MAEConfig, MemoryConfig, ContinualConfig, VideoConfig)


@pytest.mark.parametrize(
    "text, message",
    [
        ("ema_decay: 1.0", r"ema_decay: expected a number in \[0, 1\), got 1.0"),
        ("ema_decay: -0.1", r"ema_decay: expected a number in \[0, 1\)"),
        ("amp: fp8", r"amp: expected one of \('none', 'bf16', 'fp16'\), got 'fp8'"),
        ("checkpoint_every: -1", r"checkpoint_every: expected a number >= 0, got -1"),
        ("threads: -1", r"threads: expected a number >= 0"),
        ("epochs: 1.5", r"epochs: expected a whole number, got 1.5 \(float\)"),
        ("epochs: 0", r"epochs: expected a number >= 1, got 0"),
        ("epochs: two", r"epochs: expected a whole number, got 'two' \(str\)"),
        ("flip: 'no'", r"flip: expected true or false, got 'no' \(str\)"),
        ("flip: 1", r"flip: expected true or false, got 1 \(int\)"),
        ("lr: fast", r"lr: expected a finite number, got 'fast' \(str\)"),
        ("lr: 0", r"lr: expected a number > 0, got 0.0"),
        ("lr: .nan", r"lr: expected a finite number, got nan"),
        ("model_args: 5", r"model_args: expected a mapping, got 5 \(int\)"),
        ("image_size: 0", r"image_size: expected a number in \[1, 4096\], got 0"),
        ("image_size: 1000000", r"image_size: expected a number in \[1, 4096\]"),
        ("batch_size: true", r"batch_size: expected a whole number, got True \(bool\)"),
        (
            "dataset: imagenet",
            r"dataset: expected one of \('shapes', .*, 'folder'\), got 'imagenet'",
        ),
    ],
)
def test_a_bad_setting_in_a_file_is_named_with_what_it_allows(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text + "\n")
    with pytest.raises(ValueError, match=message):
        load_config(ClassifyConfig, ["--config", str(tmp_path / "c.yaml")], "t", "t")


@pytest.mark.parametrize("flags", [["--lr", "0"], ["--image-size", "0"], ["--ema-decay", "1"]])
def test_a_bad_flag_is_refused_like_a_bad_file_setting(flags):
    name = flags[0][2:].replace("-", "_")
    with pytest.raises(ValueError, match=rf"^{name}: expected a number"):
        load_config(ClassifyConfig, flags, "t", "t")


@pytest.mark.parametrize("cls", [*JOB_CONFIGS, EvaluateConfig], ids=lambda c: c.__name__)
def test_every_job_checks_its_settings_when_built_in_code_too(cls):
    with pytest.raises(ValueError, match="batch_size: expected a whole number"):
        cls(batch_size=1.5)
    with pytest.raises(ValueError, match="threads: expected a number >= 0"):
        cls(threads=-1)


def test_a_job_that_changes_a_default_keeps_the_allowed_values_of_its_base():
    # ClassifyConfig redeclares epochs and lr with its own defaults.
    with pytest.raises(ValueError, match="epochs: expected a number >= 1"):
        ClassifyConfig(epochs=0)
    with pytest.raises(ValueError, match="lr: expected a number > 0"):
        ClassifyConfig(lr=-1.0)


def test_numbers_become_floats_where_floats_belong(tmp_path):
    # YAML 1.1 reads 1e-3 as text, and 1 as an int.
    (tmp_path / "c.yaml").write_text("lr: 1e-3\nwarmup_epochs: 1\n")
    config = load_config(ClassifyConfig, ["--config", str(tmp_path / "c.yaml")], "t", "t")
    assert (config.lr, config.warmup_epochs) == (1e-3, 1.0)
    assert isinstance(config.warmup_epochs, float)


def test_a_binary_settings_file_is_named(tmp_path):
    (tmp_path / "c.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(ValueError, match=r"c.yaml: not a text file"):
        load_config(ClassifyConfig, ["--config", str(tmp_path / "c.yaml")], "t", "t")


def test_a_flag_that_is_not_valid_yaml_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        load_config(ClassifyConfig, ["--model-args", "{depth: 4"], "t", "t")
    assert "--model-args: not valid YAML" in capsys.readouterr().err


def test_help_lists_the_allowed_values(capsys):
    with pytest.raises(SystemExit):
        load_config(ClassifyConfig, ["--help"], "t", "t")
    text = " ".join(capsys.readouterr().out.split())
    assert "[one of ('none', 'bf16', 'fp16')]" in text
    assert "[a number in [0, 1)]" in text
