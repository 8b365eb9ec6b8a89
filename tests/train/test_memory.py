"""``python -m train.memory`` end to end on tiny settings: the source design's supervised and
few-shot protocols and config file, the episodic protocol, RAF-DB, and the memory_vit preset
through ``train.classify``."""

import json
from pathlib import Path

import pytest
import torch

from tests.train.data.test_rafdb import write_rafdb
from train import classify, memory
from train.data.digits import write_digits_folder
from train.data.rafdb import RAFDB_CLASSES
from train.engine import checkpoint
from train.engine.config import load_config, read_yaml, source_key_table
from train.memory import MemoryConfig

TINY_BACKBONE = "{embed_dim: 12, depth: 2, num_heads: 2}"
TINY = [
    "--shapes-train-size",
    "600",
    "--shapes-test-size",
    "600",
    "--pretrain-epochs",
    "1",
    "--epochs",
    "2",
    "--batch-size",
    "32",
    "--model-args",
    TINY_BACKBONE,
    "--mem-size",
    "20",
]
ROOT = Path(__file__).resolve().parents[2]
SEED_CONFIG = str(ROOT / "configs" / "config_memory_vit.yaml")


def test_supervised_trains_every_method_and_the_backbone_stays_frozen(tmp_path, capsys):
    summary = memory.main([*TINY, "--out-dir", str(tmp_path)])
    methods = {"linear_probe", "vpt_shallow", "vpt_deep", "memory_vit (learned)"}
    assert summary["protocol"] == "supervised" and set(summary["results"]) == methods
    for row in summary["results"].values():
        assert 0 <= row["test_acc"] <= 1 and len(row["per_class_test_acc"]) == 10
    assert summary["classes"][0] == "solid disk"  # the first novel class, by name
    assert "per class: solid disk" in capsys.readouterr().out
    (backbone,) = tmp_path.glob("backbone-*/last.pt")
    pretrained = checkpoint.load(backbone, accept=("memory",))["model"]
    trained = checkpoint.load(tmp_path / "memory_vit-learned" / "last.pt", accept=("memory",))
    trained_backbone = {
        key[len("backbone.") :]: value
        for key, value in trained["model"].items()
        if key.startswith("backbone.")
    }
    for key, value in trained_backbone.items():
        assert torch.equal(value, pretrained[key]), key
    memory_layer = {k: v for k, v in trained["model"].items() if k.startswith("hopfield.")}
    assert memory_layer["hopfield.1.gate"] != 0  # what is not the backbone did train
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (
        saved["results"]["linear_probe"]["test_acc"]
        == summary["results"]["linear_probe"]["test_acc"]
    )


def test_few_shot_trains_on_k_shots_of_every_class_over_seeded_draws(tmp_path):
    out = ["--out-dir", str(tmp_path)]
    args = [*TINY, *out, "--model", "memory_vit", "--few-shot", "--n-shot", "2", "--repeats", "2"]
    summary = memory.main([*args, "--memory-modes", "learned,class_prototype"])
    assert summary["protocol"] == "few_shot"
    assert set(summary["results"]) == {"memory_vit (learned)", "memory_vit (class_prototype)"}
    cell = summary["results"]["memory_vit (learned)"]["2-shot"]
    assert cell["runs"] == 2 and 0 <= cell["accuracy"] <= 1 and cell["ci95"] >= 0
    trained = checkpoint.load(tmp_path / "few_shot-2-memory_vitlearned-0" / "last.pt")
    assert trained["config"]["batch_size"] == 20  # all 10 classes × 2 shots in one batch


def test_episodic_meets_every_method_on_the_same_episodes(tmp_path):
    args = [*TINY, "--out-dir", str(tmp_path), "--config", "memory_vit_episodic"]
    summary = memory.main([*args, "--episodes", "2", "--n-query", "3", "--adapt-steps", "2"])
    methods = {
        "linear_probe",
        "vpt_shallow",
        "vpt_deep",
        "ncm",
        *(f"memory_vit ({mode})" for mode in ("class_prototype", "associative", "learned")),
    }
    assert set(summary["results"]) == methods
    for row in summary["results"].values():
        assert set(row) == {"1-shot", "5-shot"} and row["5-shot"]["runs"] == 2


def test_the_source_designs_config_file_translates_key_by_key():
    config = load_config(MemoryConfig, ["--config-path", SEED_CONFIG], "t", "t")
    assert (config.model, config.backbone, config.num_classes) == (
        "memory_vit",
        "vit_base_patch16_224",
        10,
    )
    assert (config.mem_size, config.hopfield_position, config.beta) == (1000, "after_attn", 0.125)
    assert (config.freeze_backbone, config.epochs, config.batch_size, config.lr) == (
        True,
        100,
        64,
        0.001,
    )
    assert (config.dataset, config.image_size, config.protocol) == ("cifar10", 224, "supervised")
    flags = ["--config-path", SEED_CONFIG, "--model", "linear_probe", "--few-shot", "--epochs", "3"]
    config = load_config(MemoryConfig, [*flags, "--learning-rate", "0.01"], "t", "t")
    assert (config.model, config.protocol, config.epochs, config.lr) == (
        "linear_probe",
        "few_shot",
        3,
        0.01,
    )
    assert "| `training.learning_rate` | `lr` |" in source_key_table(MemoryConfig)


@pytest.mark.parametrize(
    "text, message",
    [
        ("training:\n  learning_rate: fast\n", r"training.learning_rate \(setting lr\): expected"),
        ("model:\n  freeze_backbone: 'yes'\n", r"model.freeze_backbone .*: expected true or false"),
        ("model:\n  memory_size: 10\n", r"unknown settings \['model.memory_size'\]"),
    ],
)
def test_a_bad_source_key_is_named(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_yaml(MemoryConfig, tmp_path / "c.yaml")


def test_rafdb_trains_with_its_class_names(tmp_path):
    listed = [(f"train_{i:05d}.jpg", 1 + i % 7) for i in range(42)]
    listed += [(f"test_{i:04d}.jpg", 1 + i % 7) for i in range(14)]
    root = write_rafdb(tmp_path / "rafdb", listed)
    flags = ["--dataset", "rafdb", "--data-dir", str(root), "--image-size", "16", "--model"]
    summary = memory.main(
        [*TINY, *flags, "linear_probe", "--batch-size", "8", "--out-dir", str(tmp_path / "run")]
    )
    assert summary["classes"] == list(RAFDB_CLASSES)
    assert list(summary["results"]["linear_probe"]["per_class_test_acc"]) == list(RAFDB_CLASSES)


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="model: expected one of"):
        memory.main(["--model", "knn"])
    with pytest.raises(
        ValueError, match=r"num_classes \(model.num_classes\): expected the task's 10"
    ):
        memory.main([*TINY, "--out-dir", str(tmp_path), "--num-classes", "7"])
    with pytest.raises(ValueError, match=r"n_shot: class '.*' \(\d\) has \d+ images, fewer than 2"):
        memory.main([*TINY, "--out-dir", str(tmp_path), "--few-shot", "--n-shot", "60"])


def test_the_memory_vit_preset_trains_through_classify(tmp_path):
    args = ["--model", "memory_vit", "--model-args", "{mem_size: 16, embed_dim: 12, depth: 2}"]
    summary = classify.main(
        [*args, "--shapes-train-size", "128", "--shapes-test-size", "64", "--epochs", "1"]
        + ["--batch-size", "32", "--no-linear-baseline", "--out-dir", str(tmp_path)]
    )
    assert 0 <= summary["test_acc"] <= 1


def test_the_documented_translation_table_is_the_code_s():
    page = (ROOT / "docs" / "jobs" / "few-shot.md").read_text()
    assert source_key_table(MemoryConfig) in page


def test_the_source_designs_file_trains_and_tests_on_the_digits_folder(tmp_path):
    counts = write_digits_folder(tmp_path / "digits")
    assert counts == {"train": 1347, "test": 450}
    assert sorted(p.name for p in (tmp_path / "digits" / "train").iterdir()) == list("0123456789")
    overrides = [
        "--backbone",
        "vit_micro_patch4_32",
        "--image-size",
        "16",
        "--pretrain-epochs",
        "1",
    ]
    summary = memory.main(
        [
            "--config-path",
            SEED_CONFIG,
            "--dataset",
            "folder",
            "--data-dir",
            str(tmp_path / "digits"),
        ]
        + ["--epochs", "1", "--model-args", TINY_BACKBONE, *overrides]
        + ["--out-dir", str(tmp_path / "run")]
    )
    assert summary["classes"] == list("0123456789")
    assert 0 <= summary["results"]["memory_vit (learned)"]["test_acc"] <= 1
