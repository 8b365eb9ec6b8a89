"""``python -m train.evaluate`` on tiny classification and MAE checkpoints: the files it writes
into ``--output-dir`` / ``--output_dir``, and what it prints."""

import json

import pytest

from train import classify, evaluate, mae
from train.engine.config import load_config

MAE_FLAGS = ("--decoder-dim", "16", "--decoder-depth", "1", "--decoder-heads", "2")


def test_a_classifier_is_reported_into_the_output_dir(tiny_job, tmp_path):
    classify.main(tiny_job("--epochs", "1"))
    out = tmp_path / "evaluation"
    checkpoint = str(tmp_path / "run" / "best.pt")
    results = evaluate.main(
        ["--checkpoint", checkpoint, "--output_dir", str(out), "--threads", "1"]
    )
    report = json.loads((out / "classification_report.json").read_text())
    assert report == results == json.loads((out / "evaluation.json").read_text())
    assert sum(map(sum, report["confusion_matrix"])) == report["samples"] == 64  # the test split
    assert set(report["per_class"]["disk"]) == {"precision", "recall", "f1", "support"}
    assert 0 <= report["accuracy"] <= 1 and report["loss"] > 0
    for name in ("confusion_matrix.csv", "confusion_matrix.png", "sample_predictions.png"):
        assert (out / name).stat().st_size > 0, name


def test_an_mae_is_reported_with_its_mask_ratio_table(tiny_job, tmp_path, capsys):
    mae.main(tiny_job("--epochs", "1", *MAE_FLAGS, out="mae", classify=False))
    out = tmp_path / "evaluation"
    checkpoint = str(tmp_path / "mae" / "best.pt")
    flags = ["--checkpoint", checkpoint, "--output-dir", str(out), "--threads", "1"]
    results = evaluate.main([*flags, "--mask-ratios", "0.5,0.9"])
    table = results.pop("mask_ratio_sweep")
    assert [row["mask_ratio"] for row in table] == [0.5, 0.75, 0.9]  # and the trained ratio
    assert results == table[1] and results["mask_ratio"] == 0.75
    assert results["mse"] > 0 and results["mae"] > 0 and 0 < results["ssim"] < 1
    printed = capsys.readouterr().out
    assert "MSE" in printed and "PSNR (dB)" in printed and "SSIM" in printed
    assert f"{table[2]['psnr']:.2f}" in printed.splitlines()[-2]  # the 90 % row, before "wrote"
    assert (out / "reconstructions.png").stat().st_size > 0
    assert json.loads((out / "evaluation.json").read_text())["mask_ratio_sweep"] == table
    assert evaluate.main([*flags, "--mask-ratios", "0.5,0.9"])["mask_ratio_sweep"] == table


@pytest.mark.parametrize("ratios", ["0.5,1.0", "0"])
def test_mask_ratios_outside_zero_to_one_are_refused(ratios):
    with pytest.raises(
        ValueError, match=r"mask_ratios: expected one or more fractions in \(0, 1\)"
    ):
        load_config(evaluate.EvaluateConfig, ["--mask-ratios", ratios], "train.evaluate", "")
