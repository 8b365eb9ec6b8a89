import dataclasses
import os
from pathlib import Path
from typing import ClassVar

import pytest

from train.classify import ClassifyConfig
from train.continual import ContinualConfig
from train.engine.config import at_least, check_settings, field, load_config, read_yaml
from train.evaluate import EvaluateConfig
from train.mae import MAEConfig
from train.memory import MemoryConfig
from train.video import VideoConfig

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


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


def job_of(path: Path) -> type:
    """The job a config file is written for, by its name."""
    if path.stem.endswith("_mae"):
        return MAEConfig
    named = {"training_config": VideoConfig, "config_memory_vit": MemoryConfig}
    if path.stem in named:
        return named[path.stem]
    jobs = {"mae": MAEConfig, "memory": MemoryConfig, "video": VideoConfig}
    return jobs.get(
        path.stem.split("_")[0],
        {"continual": ContinualConfig}.get(path.stem.split("_")[0], ClassifyConfig),
    )


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_file_loads(path):
    load_config(job_of(path), ["--config", str(path)], "t", "t")


def test_a_config_is_found_by_name_and_listed_by_the_jobs_that_read_it(capsys):
    by_name = load_config(ClassifyConfig, ["--config", "cifar10_tiny"], "t", "t")
    by_path = load_config(
        ClassifyConfig, ["--config-path", str(CONFIGS / "cifar10_tiny.yaml")], "t", "t"
    )
    assert by_name == by_path
    with pytest.raises(SystemExit) as stopped:
        load_config(ClassifyConfig, ["--list-configs"], "t", "t")
    assert stopped.value.code == 0
    listed = capsys.readouterr().out.split()
    assert {"cifar10_tiny", "cifar100_tiny", "fashion_mnist", "classify_shapes"} <= set(listed)
    assert "cifar10_tiny_mae" not in listed
    with pytest.raises(SystemExit):
        load_config(MAEConfig, ["--list-configs"], "t", "t")
    assert {"cifar10_tiny_mae", "mae_shapes"} <= set(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        load_config(ClassifyConfig, ["--config", "no_such_config"], "t", "t")
    assert "neither a file nor a configuration" in capsys.readouterr().err


def test_vision_mambas_config_layout_is_translated():
    config = load_config(ClassifyConfig, ["--config", "cifar10_tiny"], "t", "t")
    assert (config.model, config.dataset, config.lr, config.epochs) == (
        "vim_hybrid_tiny",
        "cifar10",
        1e-3,
        100,
    )
    assert config.model_args == {"patch_size": 4, "d_state": 16, "d_conv": 4, "drop_path_rate": 0.1}
    assert (config.patience, config.clip_grad, config.amp, config.save_every) == (
        15,
        1.0,
        "auto",
        10,
    )
    assert (config.val_split, config.out_dir) == (0.1, "./runs/vision_mamba_cifar10_tiny")
    mae = load_config(MAEConfig, ["--config", "cifar10_tiny_mae"], "t", "t")
    assert (mae.decoder_dim, mae.decoder_depth, mae.decoder_heads, mae.mask_ratio) == (
        512,
        8,
        8,
        0.75,
    )
    assert mae.use_cls_token is False and mae.normalize is False
    fashion = load_config(ClassifyConfig, ["--config", "fashion_mnist"], "t", "t")
    assert fashion.dataset == "fashion_mnist"


def test_both_layouts_mix_in_one_file_and_flags_still_win(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "model: {name: vim_shapes, embed_dim: 32}\ntraining: {learning_rate: 0.01, epochs: 3}\n"
        "flip: false\n"
    )
    config = load_config(
        ClassifyConfig, ["--config", str(tmp_path / "c.yaml"), "--epochs", "4"], "t", "t"
    )
    assert (config.model, config.model_args, config.lr, config.epochs, config.flip) == (
        "vim_shapes",
        {"embed_dim": 32},
        0.01,
        4,
        False,
    )


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "training: {learning_rat: 0.1}",
            r"unknown settings \['training.learning_rat'\]; known: .*'training.learning_rate'",
        ),
        (
            "training: {epochs: {n: 3}}",
            r"training.epochs \(setting epochs\): expected a whole number, got \{'n': 3\}",
        ),
        ("model: {embed_dim: wide}", r"model.embed_dim: expected a whole number, got 'wide'"),
        (
            "model: {size: huge}",
            r"model.size: expected one of \('tiny', 'small', 'base', 'large'\)",
        ),
        ("training: {mixed_precision: 1}", r"training.mixed_precision: expected true or false"),
    ],
)
def test_a_bad_source_key_is_named(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text + "\n")
    with pytest.raises(ValueError, match=message):
        load_config(ClassifyConfig, ["--config", str(tmp_path / "c.yaml")], "t", "t")


def test_the_hrm_global_batch_is_divided_among_the_processes(tmp_path, monkeypatch):
    (tmp_path / "c.yaml").write_text(
        "global_batch_size: 256\narch: {hidden_size: 64, H_cycles: 1}\n"
    )
    monkeypatch.setenv("WORLD_SIZE", "4")
    config = load_config(ClassifyConfig, ["--config", str(tmp_path / "c.yaml")], "t", "t")
    assert config.batch_size == 64 and config.model_args == {"hidden_dim": 64, "h_cycles": 1}


def test_dataset_names_in_any_case_and_the_launchers_local_rank(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    config = load_config(ClassifyConfig, ["--dataset", "CIFAR100", "--local-rank=1"], "t", "t")
    assert config.dataset == "cifar100"
    assert os.environ["LOCAL_RANK"] == "1"


JOB_CONFIGS = (ClassifyConfig, MAEConfig, MemoryConfig, ContinualConfig, VideoConfig)


@pytest.mark.parametrize(
    "text, message",
    [
        ("ema_decay: 1.0", r"ema_decay: expected a number in \[0, 1\), got 1.0"),
        ("ema_decay: -0.1", r"ema_decay: expected a number in \[0, 1\)"),
        ("amp: fp8", r"amp: expected one of \('auto', 'none', 'bf16', 'fp16'\), got 'fp8'"),
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
    assert "[one of ('auto', 'none', 'bf16', 'fp16')]" in text
    assert "[a number in [0, 1)]" in text


def test_the_translation_tables_are_documented_as_they_are():
    from train.engine.config import source_key_table

    page = (CONFIGS.parent / "docs" / "jobs" / "classify.md").read_text()
    for cls in (ClassifyConfig, MAEConfig):
        for row in source_key_table(cls).splitlines():
            assert row in page, row


@dataclasses.dataclass
class Adapter:
    KEY: ClassVar[str] = "model.adapter"

    rank: int = field(8, "rank", at_least(1))
    modules: list = field(["qkv"], "adapted layers")


@dataclasses.dataclass
class Head:
    adapter: Adapter = field(Adapter(), "its adapter")
    kind: str = field("linear", "head", ("linear", "mlp"))


@dataclasses.dataclass
class Job:
    head: Head = field(Head(), "the head")
    epochs: int = field(1, "epochs")

    def __post_init__(self) -> None:
        check_settings(self)


def test_a_section_takes_some_of_its_keys_and_keeps_the_defaults_of_the_rest(tmp_path):
    (tmp_path / "c.yaml").write_text("head: {kind: mlp, adapter: {rank: 2}}\n")
    config = load_config(Job, ["--config", str(tmp_path / "c.yaml"), "--epochs", "3"], "t", "t")
    assert config.head == Head(Adapter(rank=2, modules=["qkv"]), "mlp")
    assert Job().head is not Job().head  # each job its own copy of the defaults
    assert Job(**dataclasses.asdict(config)) == config  # as a checkpoint saves and reads it


@pytest.mark.parametrize(
    "head, message",
    [
        ({"kinds": "mlp"}, r"head: unknown keys \['kinds'\]; allowed: \['adapter', 'kind'\]"),
        ({"kind": "conv"}, r"head\.kind: expected one of \('linear', 'mlp'\), got 'conv'"),
        ({"adapter": {"rank": 0}}, r"model\.adapter\.rank: expected a number >= 1, got 0"),
        ({"adapter": 4}, r"model\.adapter: expected a mapping, got 4 \(int\)"),
    ],
)
def test_a_bad_key_of_a_section_is_named_by_its_dotted_key(head, message):
    with pytest.raises(ValueError, match=message):
        Job(head=head)
