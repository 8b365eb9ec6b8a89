"""The jobs end to end on tiny settings: MAE pre-training → fine-tuning → evaluation, and the
hierarchical models trained and evaluated from the CLI."""

import json

import pytest

from train import classify, evaluate, mae
from train.engine import checkpoint
from train.metrics.logger import read_jsonl

MAE_FLAGS = (
    "--decoder-dim",
    "16",
    "--decoder-depth",
    "1",
    "--decoder-heads",
    "2",
    "--lr",
    "3e-3",
    "--warmup-epochs",
    "0.5",
)


def test_mae_pretrain_finetune_and_evaluate(tiny_job, tmp_path):
    mae.main(tiny_job("--epochs", "3", *MAE_FLAGS, out="mae", classify=False))
    records = read_jsonl(tmp_path / "mae" / "metrics.jsonl")
    assert records[-1]["val_loss"] < records[0]["val_loss"]  # the masked-patch loss falls

    results = evaluate.main(["--checkpoint", str(tmp_path / "mae" / "best.pt"), "--threads", "1"])
    sweep = results["mask_ratio_sweep"]
    assert [r["mask_ratio"] for r in sweep] == [0.25, 0.5, 0.75, 0.9]
    assert all(0 < r["ssim"] <= 1 and r["psnr"] > 0 for r in sweep)
    assert (tmp_path / "mae" / "reconstructions.png").stat().st_size > 0

    classify.main(
        tiny_job("--epochs", "1", "--init-from", str(tmp_path / "mae" / "best.pt"), out="finetune")
    )
    results = evaluate.main(
        ["--checkpoint", str(tmp_path / "finetune" / "best.pt"), "--threads", "1"]
    )
    assert (tmp_path / "finetune" / "confusion_matrix.png").stat().st_size > 0
    assert sum(map(sum, results["confusion_matrix"])) == 64
    assert set(results["per_class"]["disk"]) == {"precision", "recall", "f1", "support"}
    assert (
        json.loads((tmp_path / "finetune" / "evaluation.json").read_text())["accuracy"]
        == results["accuracy"]
    )


@pytest.mark.parametrize(
    "model, layout",
    [
        (
            "hvit_cifar100",
            [
                "--model-args",
                "{mlp_ratio: 2}",
                "--embed-dims",
                "8,16",
                "--depths",
                "1,1",
                "--num-heads",
                "1,2",
            ],
        ),
        (
            "hvit_cifar100",
            [
                "--model-args",
                "{embed_dims: [8, 16], depths: [1, 1], num_heads: [1, 2], local_window: 16, global_tokens: 1}",
            ],
        ),
        (
            "hrm_vision_cifar10",
            [
                "--model-args",
                "{hidden_dim: 16, num_heads: 2, h_layers: 1, l_layers: 1, segments: 2}",
            ],
        ),
    ],
    ids=["hvit", "hvit-local", "hrm-deep-supervision"],
)
def test_hierarchical_models_train_and_evaluate_from_the_cli(tiny_job, tmp_path, model, layout):
    classify.main(tiny_job("--model", model, *layout, "--epochs", "3", "--lr", "3e-3"))
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    results = evaluate.main(["--checkpoint", str(tmp_path / "run" / "best.pt"), "--threads", "1"])
    assert sum(map(sum, results["confusion_matrix"])) == 64 and 0 <= results["accuracy"] <= 1


TINY_HYBRID = ("--model-args", "{embed_dim: 16, depth: 2, num_heads: 2}", "--epochs", "2")


def test_vision_mambas_named_configs_run_as_its_commands(tiny_job, tmp_path):
    """cifar10_tiny_mae then cifar10_tiny (their settings, on the built-in data and tiny):
    MAE without a class token → fine-tuning → resume from an every-N-epochs checkpoint."""
    on_shapes = ("--dataset", "shapes", "--data-dir", str(tmp_path / "data"), "--batch-size", "32")
    mae_flags = ("--decoder-dim", "16", "--decoder-depth", "1", "--decoder-heads", "2")
    mae.main(
        tiny_job(
            "--config",
            "cifar10_tiny_mae",
            *on_shapes,
            *TINY_HYBRID,
            *mae_flags,
            out="mae",
            classify=False,
        )
    )
    assert (tmp_path / "mae" / "mae_reconstruction.png").stat().st_size > 0
    encoder = checkpoint.load(tmp_path / "mae" / "best.pt")
    assert encoder["config"]["model"] == "vim_hybrid_tiny"
    assert not any(key.endswith("cls_token") for key in encoder["model"])

    fine_tune = ("--config", "cifar10_tiny", *on_shapes, *TINY_HYBRID, "--save-every", "1")
    start = ("--init-from", str(tmp_path / "mae" / "best.pt"))
    summary = classify.main(tiny_job(*fine_tune, *start, out="classify"))
    for name in (
        "test_confusion_matrix.png",
        "test_classification_report.json",
        "test_sample_predictions.png",
    ):
        assert (tmp_path / "classify" / name).stat().st_size > 0, name
    assert {"test_acc", "best_test_acc", "best_val_acc"} <= set(summary)

    resumed = str(tmp_path / "classify" / "checkpoint_epoch_1.pt")
    again = classify.main(tiny_job(*fine_tune, *start, "--resume", resumed, out="resumed"))
    assert again["test_acc"] == summary["test_acc"]
